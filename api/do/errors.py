"""DigitalOcean's error shape for every /v2 answer that is not a success.

    {"id": "not_found", "message": "...", "request_id": "..."}

The status code is the one api.errors.problem_for decides (one place for statuses); only the
body differs from the native API's problem+json. A 402 (an order the balance does not cover)
keeps its status and gets the id `payment_required`.
"""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import problem_for

IDS = {400: "bad_request", 401: "unauthorized", 402: "payment_required", 403: "forbidden", 404: "not_found",
       405: "method_not_allowed", 409: "conflict", 410: "gone", 413: "request_too_large",
       422: "unprocessable_entity", 429: "too_many_requests", 500: "server_error", 503: "service_unavailable"}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"id": IDS.get(status, "error"), "message": message, "request_id": str(uuid.uuid4())}
    return JSONResponse(body, status_code=status, headers=headers)


async def on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = "The resource you were accessing could not be found."
        return error_response(exc.status_code, message)
    if isinstance(exc, RequestValidationError):
        return error_response(400, "; ".join(str(e.get("msg", "")) for e in exc.errors()))
    problem = problem_for(exc)
    headers = dict(problem.headers)
    if problem.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    message = problem.detail
    if problem.status == 401:
        message = "Unable to authenticate you"
    return error_response(problem.status, message, headers)
