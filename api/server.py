"""The Hostplane HTTP API: app factory (`create_app`) and process entry point (`run_api`).

Routes live in `api.objects` (REST per kind) and `api.watch` (SSE); errors become
application/problem+json in exactly one place (`api.errors.problem_for`, wired here).
Every route but /healthz, /readyz, /docs and /openapi.json needs a bearer token; /metrics
is open to loopback clients only (a scraper on the host), otherwise it needs a token too.

This module must never hold state of its own: etcd is the only truth, so any number of
API processes can serve the same cluster.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import (
    actions,
    audit,
    billing_routes,
    console,
    metrics_routes,
    node_join,
    objects,
    orders,
    orphans,
    panel,
    principals,
    watch,
)
from api.audit import AuditMiddleware, AuditWriter
from api.auth import TokenVerifier, ensure_admin_token
from api.deps import AppState, Settings, State, authenticate
from api.do.routes import build_app as build_do_app
from api.errors import PROBLEM_JSON, ApiError, Forbidden, Problem, problem_for
from api.hub import WatchHub
from api.metrics import ApiMetrics, MetricsMiddleware
from api.openapi import build_openapi
from api.ratelimit import LoginThrottle, StreamSlots, TokenBuckets
from api.sessions import Sessions
from reconcile.aio import AsyncStore
from reconcile.connection import EtcdConnection
from reconcile.errors import StoreError
from reconcile.etcd_server import free_port
from reconcile.pki import PKI
from reconcile.store import Store
from specs import SpecError

log = logging.getLogger(__name__)


def problem_response(problem: Problem) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if problem.status == 401 else {}
    headers.update(problem.headers)
    return JSONResponse(problem.body(), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers)


async def _on_error(request: Request, exc: Exception) -> Response:
    problem = problem_for(exc)
    if problem.status >= 500 and problem.status != 503:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(problem)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed"}
    detail = exc.detail if isinstance(exc.detail, str) else titles.get(exc.status_code, "HTTP error")
    slug = titles.get(exc.status_code, "http-error").lower().replace(" ", "-")
    return problem_response(Problem(exc.status_code, titles.get(exc.status_code, detail), detail, slug))


async def _on_request_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"path": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))}
              for e in exc.errors()]
    detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
    return problem_response(Problem(400, "Bad request", detail, "bad-request", errors))


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(store: Store, *, max_body_bytes: int = 1024 * 1024, heartbeat_seconds: float = 15.0,
               token_cache_seconds: float = 10.0, open_metrics_on_loopback: bool = True,
               rate_per_principal: float = 50.0, burst_per_principal: float = 200.0,
               session_ttl_seconds: int = 12 * 3600, cookie_secure: bool | None = None,
               login_throttle: LoginThrottle | None = None, watch_flush_seconds: float = 0.08,
               streams_per_principal: int = 32, sessions_per_customer: int = 20,
               join_pki: PKI | None = None, console_tls: console.ConsoleTLS | None = None,
               prometheus_url: str | None = None) -> FastAPI:
    """Build the API over `store`. The caller owns the store and closes it.

    No CORS headers are ever sent: browsers keep other origins out, and the panel is served
    from this same origin. `streams_per_principal`: open /v1/watch streams per non-admin principal
    in this process; `sessions_per_customer`: live panel sessions per customer (counted in etcd);
    0 disables either. `watch_flush_seconds`: under sustained change, SSE streams are
    written at least this often (each write carrying every event since the last); api.hub
    writes more often when there are few streams and the loop is not busy.
    """
    settings = Settings(max_body_bytes=max_body_bytes, heartbeat_seconds=heartbeat_seconds,
                        open_metrics_on_loopback=open_metrics_on_loopback, rate_per_principal=rate_per_principal,
                        burst_per_principal=burst_per_principal, cookie_secure=cookie_secure)
    astore = AsyncStore(store)
    state = AppState(store=store, astore=astore, verifier=TokenVerifier(store, cache_seconds=token_cache_seconds),
                     settings=settings,
                     sessions=Sessions(store, ttl_seconds=session_ttl_seconds, cache_seconds=token_cache_seconds,
                                       max_per_customer=sessions_per_customer),
                     buckets=TokenBuckets(rate_per_principal, burst_per_principal),
                     login_throttle=login_throttle or LoginThrottle(),
                     streams=StreamSlots(streams_per_principal),
                     hub=WatchHub(store, flush_seconds=watch_flush_seconds,
                                  tick_seconds=min(1.0, heartbeat_seconds)),
                     join_pki=join_pki, console_tls=console_tls, prometheus_url=prometheus_url)
    metrics = ApiMetrics()
    audit_writer = AuditWriter(astore)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        assert state.sessions is not None
        # Revocations and logouts elsewhere reach this process's caches at once.
        auth_watch = await run_in_threadpool(principals.watch_auth, store, state.verifier, state.sessions)
        try:
            yield
        finally:
            await state.astore.close()
            auth_watch.stop(timeout=0)
            if state.hub is not None:
                state.hub.stop()
            if state.ready_store is not None:
                state.ready_store.close()

    app = FastAPI(
        title="Hostplane API",
        version="v1",
        description="Declarative control plane for VPS hosting. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.hostplane = state
    app.add_middleware(AuditMiddleware, writer=audit_writer)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    panel.install(app)  # the web panel at / (api/panel.py); never shadows an API path
    for exc_type in (ApiError, SpecError, StoreError, Exception):
        app.add_exception_handler(exc_type, _on_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_request_invalid)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="etcd is reachable")
    async def readyz(st: State) -> Response:
        if st.ready_store is None:
            # Its own store without retries: readiness must answer fast, not wait out a retry budget.
            st.ready_store = Store(st.store.conn, root=st.store.root, timeout=2.0, retry_seconds=0)
        try:
            revision = await run_in_threadpool(st.ready_store.revision)
        except StoreError:
            return problem_response(Problem(503, "Not ready", "etcd is unreachable", "unavailable"))
        return JSONResponse({"status": "ready", "revision": revision})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (open on loopback)")
    async def prometheus(request: Request, st: State) -> Response:
        if not (st.settings.open_metrics_on_loopback and _is_loopback(request)):
            principal = await run_in_threadpool(authenticate, request, st)
            if principal.role != "admin":
                raise Forbidden("only an operator token may read metrics")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(watch.router)
    # Before the object routes: /v1/{kind} would otherwise match /v1/tokens, /v1/orders, /v1/audit.
    for router in (principals.router, actions.router, console.router, metrics_routes.router, orders.router,
                   audit.router, node_join.router,
                   orphans.router):
        app.include_router(router)
    app.include_router(objects.router)
    app.include_router(billing_routes.router)
    app.mount("/v2", build_do_app(state))  # the DigitalOcean-compatible API (api/do, docs/adr/012)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]  # bodies, answers, errors: api.openapi
    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `serve_app` owns shutdown.

    uvicorn re-raises a caught SIGTERM after shutting down, which would kill the process
    before the store is closed; here a signal only sets the stop event.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class TLSFiles:
    """The API's own HTTPS certificate and key (PEM files)."""

    cert: Path
    key: Path


def serve_app(app: Any, *, host: str, port: int, stop: threading.Event,
              started: threading.Event | None = None, log_level: str = "warning",
              tls: TLSFiles | None = None, trusted_proxies: Sequence[str] = (), join_pki: PKI | None = None) -> None:
    """Serve `app` with uvicorn until `stop` is set. Returns after open streams are cut off.

    `tls`: serve HTTPS with this certificate. `trusted_proxies`: addresses (or CIDRs) whose
    `X-Forwarded-Proto` / `X-Forwarded-For` are believed (a TLS-terminating proxy in front);
    from anyone else those headers are ignored. None by default: no header is trusted.
    """
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=2, lifespan="on",
                            ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
                            proxy_headers=bool(trusted_proxies),
                            forwarded_allow_ips=list(trusted_proxies) if trusted_proxies else None)
    server = _Server(config)

    def watch_stop() -> None:
        interval = 0.02  # fast until started, so callers waiting on `started` are not held up
        while not stop.wait(interval):
            if server.should_exit:
                return
            if server.started:
                interval = 0.2
                if started is not None and not started.is_set():
                    started.set()
        server.should_exit = True

    watcher = threading.Thread(target=watch_stop, name="api-stop", daemon=True)
    watcher.start()
    try:
        server.run()
    finally:
        stop.set()
        watcher.join(2)


@contextlib.contextmanager
def serving(app: Any, *, host: str = "127.0.0.1", port: int | None = None, tls: TLSFiles | None = None,
            trusted_proxies: Sequence[str] = ()) -> Iterator[str]:
    """Serve `app` on a background thread while the block runs; yields its base URL.

    For tests, benchmarks and embedding; stops the server (and waits for it) on exit.
    """
    port = port or free_port(host)
    stop, started = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve_app, name=f"api:{port}", daemon=True,
                              kwargs={"app": app, "host": host, "port": port, "stop": stop, "started": started,
                                      "tls": tls, "trusted_proxies": tuple(trusted_proxies)})
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not started.wait(0.02):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start on {host}:{port}")
        yield f"{'https' if tls else 'http'}://{host}:{port}"
    finally:
        stop.set()
        thread.join(10)


# How long a thread may hold the interpreter lock while another waits for it (Python's
# default is 5 ms). The event loop is busy under load; the threads that feed it (the watch
# hub's etcd stream, gRPC's own) each need the lock for a moment per etcd event. At 5 ms per
# hand-over they fell behind at a few hundred writes per second (seconds of delay before an
# event reached the streams); at 1 ms they keep up (docs/benchmarks.md, API access).
API_SWITCH_INTERVAL = 0.001


def settle_garbage_collector() -> None:
    """Keep the cycle collector from pausing a busy API for tens of milliseconds.

    Everything alive once the app is built (modules, routes, schemas) is moved out of the
    collector's reach (`gc.freeze`): a full collection no longer walks it. Young objects are
    collected every 20,000 net allocations instead of 700: request objects die by reference
    count, so frequent passes found little. Measured: 7 full collections of up to 80 ms during
    the access benchmark before, none after (docs/benchmarks.md, API access). Process-wide:
    for `hostplane api` only, not for apps embedded in other processes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def run_api(*, etcd: EtcdConnection, host: str, port: int, data_dir: Path, stop: threading.Event | None,
            tls: TLSFiles | None = None, trusted_proxies: Sequence[str] = (), join_pki: PKI | None = None,
            prometheus_url: str | None = None) -> None:
    """Run the API against etcd until `stop` is set or the process gets SIGTERM/SIGINT."""
    stop = stop or threading.Event()
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(API_SWITCH_INTERVAL)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    store = Store(etcd)
    try:
        ensure_admin_token(store, Path(data_dir))
        app = create_app(store, join_pki=join_pki,
                         console_tls=console.ConsoleTLS(ca=etcd.ca, cert=etcd.cert, key=etcd.key),
                         prometheus_url=prometheus_url)
        settle_garbage_collector()
        serve_app(app, host=host, port=port, stop=stop, tls=tls, trusted_proxies=trusted_proxies)
    finally:
        store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.setswitchinterval(switch_interval)
