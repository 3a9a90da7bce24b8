"""The API's error tree and the one place where errors become HTTP statuses.

    ApiError                      a problem the API reports as application/problem+json
      ├── BadRequest        400   the body is not JSON/YAML, a query parameter is malformed
      ├── Unauthorized      401   no or wrong bearer token
      ├── Forbidden         403   a valid token whose role may not do this
      ├── PaymentRequired   402   an order the customer's balance and credit do not cover
      ├── UnknownKind       404   the path names no kind
      ├── PayloadTooLarge   413   the body exceeds the API's limit
      ├── Invalid           422   the object fails validation (.errors: [{path, message}])
      └── TooManyRequests   429   rate limit or login throttle (.retry_after seconds -> Retry-After)

Store errors (reconcile.errors) and spec errors (specs.SpecError) are not wrapped where
they happen: `problem_for` maps every one of them here, so a status code is decided once.
A response never carries a stack trace; unexpected exceptions become a bare 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from reconcile import errors as store_errors
from specs import SpecError

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://hostplane.io/problems/"


class ApiError(Exception):
    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(self, detail: str = "", errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors or []


class BadRequest(ApiError):
    status, title, slug = 400, "Bad request", "bad-request"


class Unauthorized(ApiError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(ApiError):
    status, title, slug = 403, "Forbidden", "forbidden"


class PaymentRequired(ApiError):
    status, title, slug = 402, "Payment required", "payment-required"


class TooManyRequests(ApiError):
    status, title, slug = 429, "Too many requests", "too-many-requests"

    def __init__(self, detail: str = "", errors: list[dict[str, str]] | None = None, *,
                 retry_after: float = 1.0) -> None:
        super().__init__(detail, errors)
        self.retry_after = retry_after


class UnknownKind(ApiError):
    status, title, slug = 404, "Unknown kind", "unknown-kind"


class PayloadTooLarge(ApiError):
    status, title, slug = 413, "Payload too large", "too-large"


class Invalid(ApiError):
    status, title, slug = 422, "Invalid object", "invalid"


def refuse_unknown_fields(body: dict[str, Any], allowed: set[str] | frozenset[str]) -> None:
    """Invalid (422) naming every field of `body` that is not in `allowed`."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(unknown)}", [{"path": f, "message": "unknown field"}
                                                                  for f in unknown])


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem document."""

    status: int
    title: str
    detail: str
    slug: str
    errors: list[dict[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": _TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            out["errors"] = self.errors
        return out


# Store error -> (status, title, slug). Order matters only for subclasses, of which there are none.
_STORE: list[tuple[type[store_errors.StoreError], int, str, str]] = [
    (store_errors.NotFound, 404, "Not found", "not-found"),
    (store_errors.AlreadyExists, 409, "Already exists", "already-exists"),
    (store_errors.Conflict, 409, "Conflict", "conflict"),
    (store_errors.TooLarge, 413, "Object too large", "too-large"),
    (store_errors.Unavailable, 503, "Store unavailable", "unavailable"),
    (store_errors.Compacted, 410, "Revision compacted", "compacted"),
]


def spec_errors(exc: SpecError) -> list[dict[str, str]]:
    return [{"path": d.path, "message": d.message} for d in exc.details]


def problem_for(exc: BaseException) -> Problem:
    """The single mapping from any exception to the problem the client sees."""
    if isinstance(exc, TooManyRequests):
        return Problem(exc.status, exc.title, exc.detail, exc.slug, exc.errors,
                       {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    if isinstance(exc, ApiError):
        return Problem(exc.status, exc.title, exc.detail, exc.slug, exc.errors)
    if isinstance(exc, SpecError):
        errs = spec_errors(exc)
        detail = "; ".join(f"{e['path']}: {e['message']}" if e["path"] else e["message"] for e in errs)
        return Problem(422, Invalid.title, detail, Invalid.slug, errs)
    for cls, status, title, slug in _STORE:
        if isinstance(exc, cls):
            detail = str(exc) or title
            if isinstance(exc, store_errors.Unavailable):
                # The backend's message may name internal endpoints; keep it generic.
                detail = "the store (etcd) is unreachable; retry later"
            return Problem(status, title, detail, slug)
    return Problem(500, ApiError.title, "the server failed to handle the request", ApiError.slug)
