"""A small typed HTTP client for the Hostplane API (used by the CLI, usable by scripts).

    ClientError
      ├── TransportError            the server could not be reached or the connection broke
      └── ProblemError              the server answered with application/problem+json
            ├── BadRequestError     400
            ├── UnauthorizedError   401, 403
            ├── NotFoundError       404
            ├── ConflictError       409  (stale resourceVersion, name taken)
            ├── GoneError           410  (watch revision compacted)
            ├── TooLargeError       413
            ├── InvalidError        422  (.errors: [{path, message}])
            └── UnavailableError    503  (etcd unreachable)

This module must never read a token from anywhere but its constructor.
"""

from __future__ import annotations

import builtins
import json
import ssl
from collections.abc import Iterator
from typing import Any

import httpx

from specs import Resource, kind_for
from specs.io import validate_object


class ClientError(Exception):
    """Base of every client error."""


class TransportError(ClientError):
    pass


class ProblemError(ClientError):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        errs = problem.get("errors")
        self.errors: list[dict[str, str]] = errs if isinstance(errs, list) else []
        super().__init__(self.detail)


class BadRequestError(ProblemError):
    pass


class UnauthorizedError(ProblemError):
    pass


class NotFoundError(ProblemError):
    pass


class ConflictError(ProblemError):
    pass


class GoneError(ProblemError):
    pass


class TooLargeError(ProblemError):
    pass


class InvalidError(ProblemError):
    pass


class UnavailableError(ProblemError):
    pass


_BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequestError, 401: UnauthorizedError, 403: UnauthorizedError, 404: NotFoundError,
    409: ConflictError, 410: GoneError, 413: TooLargeError, 422: InvalidError, 503: UnavailableError,
}


def _plural(kind: str) -> str:
    return kind_for(kind).PLURAL


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        problem = resp.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"title": resp.reason_phrase, "detail": resp.text[:500] or resp.reason_phrase}
    raise _BY_STATUS.get(resp.status_code, ProblemError)(resp.status_code, problem)


def to_object(data: Any) -> Resource:
    return validate_object(data, "server response")


class Client:
    """Talks to one API server with one bearer token."""

    def __init__(self, server: str, token: str | None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, ca: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            try:
                verify = ssl.create_default_context(cafile=ca)
            except OSError as exc:
                raise ClientError(f"CA file {ca}: {exc.strerror or exc}") from None
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport,
                                  verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach the API at {self.server}: {exc}") from exc
        _raise_for(resp)
        return resp

    # ------------------------------------------------------------- objects

    def list(self, kind: str, selector: str | None = None) -> tuple[builtins.list[Resource], str]:
        params = {"labelSelector": selector} if selector else None
        data = self.request("GET", f"/v1/{_plural(kind)}", params=params).json()
        return [to_object(o) for o in data.get("items", [])], str(data.get("metadata", {}).get("resourceVersion", ""))

    def get(self, kind: str, name: str) -> Resource:
        return to_object(self.request("GET", f"/v1/{_plural(kind)}/{name}").json())

    def get_or_none(self, kind: str, name: str) -> Resource | None:
        try:
            return self.get(kind, name)
        except NotFoundError:
            return None

    def create(self, obj: Resource) -> Resource:
        body = obj.model_dump(mode="json", exclude_none=True, exclude={"status"})
        return to_object(self.request("POST", f"/v1/{obj.PLURAL}", json=body).json())

    def replace(self, obj: Resource) -> Resource:
        body = obj.model_dump(mode="json", exclude_none=True, exclude={"status"})
        return to_object(self.request("PUT", f"/v1/{obj.PLURAL}/{obj.name}", json=body).json())

    def patch(self, kind: str, name: str, patch: dict[str, Any]) -> Resource:
        resp = self.request("PATCH", f"/v1/{_plural(kind)}/{name}", content=json.dumps(patch),
                            headers={"Content-Type": "application/merge-patch+json"})
        return to_object(resp.json())

    def delete(self, kind: str, name: str, *, resource_version: str | None = None) -> Resource | None:
        """Delete; returns the object when it is only marked for deletion (finalizers pending)."""
        params = {"resourceVersion": resource_version} if resource_version else None
        resp = self.request("DELETE", f"/v1/{_plural(kind)}/{name}", params=params)
        return to_object(resp.json()) if resp.status_code == 202 else None

    def status(self, kind: str, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.request("GET", f"/v1/{_plural(kind)}/{name}/status").json()
        return data

    def events(self, kind: str, name: str) -> builtins.list[dict[str, Any]]:
        data = self.request("GET", "/v1/events", params={"kind": kind, "name": name}).json()
        items = data.get("items", [])
        return items if isinstance(items, list) else []

    # ------------------------------------------------------------- watch

    def watch(self, kinds: builtins.list[str] | None = None, resource_version: str | None = None,
              ) -> Iterator[dict[str, Any]]:
        """Yield change events (dicts) from the server's SSE stream, until it ends.

        Each event carries `_id` (the revision to resume after) when the server sent one.
        A compaction arrives as {"type": "COMPACTED", ...}, a stream that fell behind ends with
        {"type": "RELIST", ...}; either way, list again and watch from the list's resourceVersion.
        """
        params: dict[str, str] = {}
        if kinds:
            params["kinds"] = ",".join(kinds)
        if resource_version:
            params["resourceVersion"] = resource_version
        try:
            with self._http.stream("GET", "/v1/watch", params=params,
                                   timeout=httpx.Timeout(10.0, read=90.0)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                yield from _sse_events(resp.iter_lines())
        except httpx.HTTPError as exc:
            raise TransportError(f"watch stream from {self.server} broke: {exc}") from exc


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if line == "":
            if data:
                try:
                    ev = json.loads("\n".join(data))
                except ValueError:
                    ev = None
                if isinstance(ev, dict):
                    if event_id is not None:
                        ev["_id"] = event_id
                    yield ev
            data, event_id = [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
