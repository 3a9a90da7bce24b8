"""Load graphs: a server's or a node's time series, read from Prometheus with queries built here.

    GET /v1/vps/<name>/metrics?range=1h|24h|7d|30d     the owner (404 for anyone else's) and staff
    GET /v1/nodes/<name>/metrics?range=…               staff only (admin, operator)
    GET /v1/vps/<name>/traffic?month=YYYY-MM            received/sent bytes of a calendar month (UTC)

Answer: `{"vps"|"node", "range", "stepSeconds", "series": {name: [[unix seconds, value], ...]}}`.
The caller never sends PromQL: the API checks that the caller may see the object, then puts its
name into fixed queries (`api.prometheus`). 503 when no Prometheus is configured or it does not
answer. This module must never pass a caller's text into a query unchecked.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api import access, prometheus, traffic
from api.auth import Principal
from api.deps import Caller, State
from api.errors import ApiError, Forbidden, Invalid
from reconcile.errors import NotFound
from reconcile.store import Store
from specs.kinds import VPS, Node, Plan, Subscription

router = APIRouter(prefix="/v1", tags=["metrics"])


class MetricsUnavailable(ApiError):
    status, title, slug = 503, "Metrics unavailable", "metrics-unavailable"


def _range(value: str) -> prometheus.Range:
    rng = prometheus.RANGES.get(value)
    if rng is None:
        raise Invalid(f"range: one of {', '.join(prometheus.RANGES)}",
                      [{"path": "range", "message": f"one of {', '.join(prometheus.RANGES)}"}])
    return rng


def _visible_vps(store: Store, caller: Principal, name: str) -> VPS:
    access.deny_unreadable_kind(caller, VPS, name)
    return access.require_visible(store, caller, store.get(VPS, name))


async def _series(state: Any, queries: dict[str, str], rng: prometheus.Range) -> dict[str, list[list[float]]]:
    base = state.prometheus_url
    if not base:
        raise MetricsUnavailable("no Prometheus is configured for this API (`hostplane api --prometheus URL`)")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            return await prometheus.query_range(client, base, queries, rng, time.time())
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise MetricsUnavailable(f"Prometheus did not answer: {type(exc).__name__}") from None


@router.get("/vps/{name}/metrics", summary="a server's CPU, memory, disk and network series (owner and staff)")
async def vps_metrics(name: str, state: State, caller: Caller,
                      range_: str = Query("1h", alias="range")) -> dict[str, Any]:
    vps = await run_in_threadpool(_visible_vps, state.store, caller, name)  # before anything else: 404 first
    rng = _range(range_)
    series = await _series(state, prometheus.vps_queries(vps.name, rng.window), rng)
    return {"vps": vps.name, "range": range_, "stepSeconds": rng.step, "series": series}


@router.get("/nodes/{name}/metrics", summary="a node's CPU, memory and pool series (staff)")
async def node_metrics(name: str, state: State, caller: Caller,
                       range_: str = Query("1h", alias="range")) -> dict[str, Any]:
    if caller.role not in access.STAFF:
        raise Forbidden(f"role {caller.role!r} may not read node metrics")
    node = await run_in_threadpool(state.store.get, Node, name)
    rng = _range(range_)
    series = await _series(state, prometheus.node_queries(node.name, rng.window), rng)
    return {"node": node.name, "range": range_, "stepSeconds": rng.step, "series": series}


def _included_gib(store: Store, vps: VPS) -> int | None:
    try:
        sub = store.get(Subscription, vps.spec.subscription)
        return store.get(Plan, sub.spec.plan).spec.trafficGiB
    except NotFound:
        return None


TRAFFIC_STEP = 300  # seconds between the counter samples summed (Prometheus keeps them at the scrape interval)


@router.get("/vps/{name}/traffic", summary="a server's received and sent bytes in a calendar month (owner and staff)")
async def vps_traffic(name: str, state: State, caller: Caller, month: str | None = None) -> dict[str, Any]:
    vps = await run_in_threadpool(_visible_vps, state.store, caller, name)
    try:
        start, end, label = traffic.month_bounds(month, datetime.now(UTC))
    except ValueError as exc:
        raise Invalid(f"month: {exc}", [{"path": "month", "message": "YYYY-MM, not in the future"}]) from None
    if not state.prometheus_url:
        raise MetricsUnavailable("no Prometheus is configured for this API (`hostplane api --prometheus URL`)")
    totals: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(timeout=20) as client:
            for key, promql in prometheus.traffic_queries(vps.name).items():
                values = await prometheus.series_values(client, state.prometheus_url, promql, start.timestamp(),
                                                        end.timestamp(), TRAFFIC_STEP)
                totals[key] = traffic.series_total(values)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise MetricsUnavailable(f"Prometheus did not answer: {type(exc).__name__}") from None
    included = await run_in_threadpool(_included_gib, state.store, vps)
    used = totals["rx"] + totals["tx"]
    return {"vps": vps.name, "month": label, "rxBytes": totals["rx"], "txBytes": totals["tx"], "totalBytes": used,
            "includedBytes": None if included is None else included * traffic.GIB,
            "overageBytes": traffic.overage_bytes(used, included)}
