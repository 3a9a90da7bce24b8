"""Prometheus metrics of the API: request counts and latency by route template and status.

Each app gets its own registry, so several apps in one process (tests, benchmarks) never
collide. Labels use the route template (`/v1/{kind}/{name}`), never the raw path, so the
number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hostplane_api_requests", "HTTP requests handled, by route template and status code",
            ["method", "route", "code"], registry=self.registry)
        self.latency = Histogram(
            "hostplane_api_request_duration_seconds", "Time to the end of the response, by route template",
            ["method", "route"], buckets=_BUCKETS, registry=self.registry)

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        self.requests.labels(method, route, str(code)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


class MetricsMiddleware:
    """Pure ASGI middleware (streams pass through untouched, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.metrics.observe(scope.get("method", ""), template, status, time.perf_counter() - start)
