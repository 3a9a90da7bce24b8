"""The OpenAPI document as a contract: every route with its request body, its answers and its errors.

Routes read their bodies through `api.deps.Body` (size-limited, JSON or YAML), so FastAPI
cannot see them; this module adds them, the kinds' schemas (from the pydantic models),
the problem document every error uses, and the success answers, in one table keyed by
(method, path). FastAPI's default 422 "HTTPValidationError" is removed: query errors are
400 problems here. `tests/unit/test_openapi_snapshot.py` holds the result to a committed
snapshot. This module must never change how a request is handled, only how it is described.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from specs import KINDS

PROBLEM = "application/problem+json"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _obj(props: dict[str, Any], required: list[str] | None = None, *, extra: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if not extra:
        out["additionalProperties"] = False
    return out


_STR = {"type": "string"}
_NULLABLE_STR = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_INT = {"type": "integer"}
_ANY_OBJECT = {"type": "object", "additionalProperties": True}
_META_RV = _obj({"resourceVersion": _STR}, ["resourceVersion"], extra=True)

SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": _obj({
        "type": _STR, "title": _STR, "status": _INT, "detail": _STR,
        "errors": {"type": "array", "items": _obj({"path": _STR, "message": _STR}, ["path", "message"])},
    }, ["type", "title", "status", "detail"]),
    "EventList": _obj({"apiVersion": _STR, "kind": {"const": "EventList"}, "metadata": _META_RV,
                       "items": {"type": "array", "items": _ANY_OBJECT}}, ["kind", "metadata", "items"], extra=True),
    "ObjectStatus": _obj({"apiVersion": _STR, "kind": _STR, "metadata": _ANY_OBJECT, "status": _ANY_OBJECT},
                         ["kind", "metadata", "status"], extra=True),
    "TokenRequest": _obj({"role": {"enum": ["admin", "operator", "customer", "gitops", "billing-webhook"]},
                          "customer": _STR, "expires": {"type": "string", "format": "date-time"}, "name": _STR},
                         ["role"]),
    "TokenMinted": _obj({"id": _STR, "token": _STR, "role": _STR, "customer": _NULLABLE_STR,
                         "expires": _NULLABLE_STR, "name": _STR}, ["id", "token", "role"], extra=True),
    "TokenList": _obj({"items": {"type": "array", "items": _obj(
        {"id": _STR, "role": _STR, "customer": _STR, "created": _STR, "expires": _STR, "name": _STR},
        ["id", "role"], extra=True)}, "roles": {"type": "array", "items": _STR}}, ["items"], extra=True),
    "LoginRequest": _obj({"email": _STR, "password": _STR}, ["email", "password"]),
    "JoinRequest": _obj({"token": _STR, "csr": {"type": "string", "description": "PEM, CN=node-<name>, P-256"},
                         "node": _ref("NodeSpec"), "labels": {"type": "object", "additionalProperties": _STR}},
                        ["token", "csr", "node"]),
    "JoinResult": _obj({"certificate": _STR, "ca": _STR, "node": _STR,
                        "etcd": _obj({"endpoints": {"type": "array", "items": _STR}}, ["endpoints"])},
                       ["certificate", "ca", "node", "etcd"]),
    "JoinCA": _obj({"ca": _STR}, ["ca"]),
    "WhoAmI": _obj({"role": _STR, "customer": _NULLABLE_STR, "name": _STR, "via": _STR, "csrfHeader": _STR},
                   ["role", "customer", "name"], extra=True),
    "PasswordRequest": _obj({"password": {"type": "string", "minLength": 10, "maxLength": 1024}}, ["password"]),
    "ActionRequest": _obj({"plan": _STR, "image": _STR}),
    "MetricSeries": _obj({"vps": _STR, "node": _STR, "range": {"type": "string", "enum": ["1h", "24h", "7d", "30d"]},
                          "stepSeconds": _INT, "series": {"type": "object", "additionalProperties": {
                              "type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
                         ["range", "stepSeconds", "series"]),
    "Traffic": _obj({"vps": _STR, "month": _STR, "rxBytes": _INT, "txBytes": _INT, "totalBytes": _INT,
                     "includedBytes": {"type": ["integer", "null"]}, "overageBytes": _INT},
                    ["vps", "month", "rxBytes", "txBytes", "totalBytes", "overageBytes"]),
    "ConsoleRequest": _obj({"kind": {"type": "string", "enum": ["serial", "vnc"], "default": "serial"}}),
    "ConsoleTicket": _obj({"vps": _STR, "kind": _STR, "ticket": _STR, "expiresInSeconds": _INT, "url": _STR},
                          ["vps", "kind", "ticket", "expiresInSeconds", "url"]),
    "ActionResult": _obj({"vps": _STR, "action": _STR, "subscription": _STR, "plan": _STR,
                          "resourceVersion": _STR}, ["vps", "resourceVersion"], extra=True),
    "OrderRequest": _obj({"plan": _STR, "image": _STR, "hostname": _STR, "sshKeys": {"type": "array", "items": _STR},
                          "name": _STR, "customer": _STR}, ["plan", "image", "hostname"]),
    "OrderResult": _obj({"subscription": _ref("Subscription"), "vps": _ref("VPS"),
                         "firstPeriod": _obj({"amount": _STR, "currency": _STR, "amountMinor": _INT},
                                             ["amount", "currency", "amountMinor"]),
                         "resourceVersion": _STR}, ["subscription", "vps", "firstPeriod"], extra=True),
    "AuditList": _obj({"items": {"type": "array", "items": _obj(
        {"id": _STR, "time": _STR, "actor": _ANY_OBJECT, "method": _STR, "path": _STR,
         "route": _NULLABLE_STR, "status": _INT, "ip": _NULLABLE_STR}, ["id", "time", "actor", "method", "path"],
        extra=True)}, "resourceVersion": _STR}, ["items"], extra=True),
}

_ERRORS = {
    "400": "Malformed body or query", "401": "No or invalid credentials", "403": "The role may not do this",
    "404": "No such object (or not the caller's)", "409": "Stale resourceVersion, or the name is taken",
    "413": "Body or object too large", "422": "Invalid object (errors name the fields)",
    "429": "Rate limited; see Retry-After", "500": "Unexpected failure (no detail)", "503": "etcd unreachable",
}
_OPEN = {"/healthz", "/readyz", "/metrics"}


def _kinds_one_of() -> dict[str, Any]:
    return {"oneOf": [_ref(cls.KIND) for cls in KINDS.values()]}


def _lists_one_of() -> dict[str, Any]:
    return {"oneOf": [_ref(f"{cls.KIND}List") for cls in KINDS.values()]}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any], *, required: bool = True, yaml: bool = False,
          media: str = "application/json") -> dict[str, Any]:
    content = {media: {"schema": schema}}
    if yaml:
        content["application/yaml"] = {"schema": schema}
    return {"required": required, "content": content}


# (method, path) -> (request body or None, {status: response}).
def _operations() -> dict[tuple[str, str], tuple[dict[str, Any] | None, dict[str, Any]]]:
    kind, kinds_list = _kinds_one_of(), _lists_one_of()
    empty = {"description": "Done (no body)"}
    return {
        ("get", "/v1/{kind}"): (None, {"200": _json(kinds_list, "The objects the caller may see")}),
        ("post", "/v1/{kind}"): (_body(kind, yaml=True), {"201": _json(kind, "Created")}),
        ("get", "/v1/{kind}/{name}"): (None, {"200": _json(kind, "The object with its status")}),
        ("put", "/v1/{kind}/{name}"): (_body(kind, yaml=True), {"200": _json(kind, "Replaced")}),
        ("patch", "/v1/{kind}/{name}"): (_body(_ANY_OBJECT, media="application/merge-patch+json"),
                                         {"200": _json(kind, "Patched")}),
        ("delete", "/v1/{kind}/{name}"): (None, {"204": {"description": "Deleted"},
                                                 "202": _json(kind, "Marked for deletion (finalizers remain)")}),
        ("get", "/v1/{kind}/{name}/status"): (None, {"200": _json(_ref("ObjectStatus"), "The status")}),
        ("get", "/v1/events"): (None, {"200": _json(_ref("EventList"), "Events, oldest first")}),
        ("get", "/v1/watch"): (None, {"200": {"description": "Server-sent events", "content": {
            "text/event-stream": {"schema": {"type": "string"}}}}, "410": {"description": "Revision compacted"}}),
        ("post", "/v1/tokens"): (_body(_ref("TokenRequest")), {"201": _json(_ref("TokenMinted"), "Minted")}),
        ("get", "/v1/tokens"): (None, {"200": _json(_ref("TokenList"), "Every token (no secrets)")}),
        ("delete", "/v1/tokens/{token_id}"): (None, {"204": {"description": "Revoked"}}),
        ("post", "/v1/auth/login"): (_body(_ref("LoginRequest")), {"200": _json(_ref("WhoAmI"), "Logged in")}),
        ("post", "/v1/auth/logout"): (None, {"204": {"description": "Logged out"}}),
        ("get", "/v1/join/ca"): (None, {"200": _json(_ref("JoinCA"), "The CA certificate (PEM)")}),
        ("post", "/v1/join"): (_body(_ref("JoinRequest")), {"200": _json(_ref("JoinResult"),
                                                                          "Joined: the node's certificate")}),
        ("get", "/v1/auth/whoami"): (None, {"200": _json(_ref("WhoAmI"), "The caller")}),
        ("put", "/v1/customers/{name}/password"): (_body(_ref("PasswordRequest")), {"204": empty}),
        ("post", "/v1/vps/{name}/actions/{action}"): (_body(_ref("ActionRequest"), required=False),
                                                      {"202": _json(_ref("ActionResult"), "Recorded")}),
        ("post", "/v1/vps/{name}/console"): (_body(_ref("ConsoleRequest"), required=False),
                                             {"201": _json(_ref("ConsoleTicket"), "A one-time ticket for "
                                                           "GET /v1/console?ticket=… (WebSocket), valid 30 s"),
                                              "409": {"description": "Suspended, not placed yet, or its node "
                                                      "is unreachable"}}),
        ("get", "/v1/vps/{name}/metrics"): (None, {"200": _json(_ref("MetricSeries"), "[unix seconds, value] "
                                                                "points per series: cpuPercent, memoryBytes, disk and "
                                                                "network per second")}),
        ("get", "/v1/vps/{name}/traffic"): (None, {"200": _json(_ref("Traffic"), "Bytes of the month, counter "
                                                                "resets included; overage is not charged yet")}),
        ("get", "/v1/nodes/{name}/metrics"): (None, {"200": _json(_ref("MetricSeries"), "cpuPercent, memory and "
                                                                  "pool use of the node")}),
        ("post", "/v1/orders"): (_body(_ref("OrderRequest")), {"201": _json(_ref("OrderResult"), "Ordered"),
                                                               "402": {"description": "Balance and credit do not "
                                                                       "cover the monthly cost of the customer's "
                                                                       "subscriptions with this one"},
                                                               "409": {"description": "The name is taken"}}),
        ("get", "/v1/audit"): (None, {"200": _json(_ref("AuditList"), "Audit records, oldest first")}),
        ("get", "/metrics"): (None, {"200": {"description": "Prometheus text format", "content": {
            "text/plain": {"schema": {"type": "string"}}}}}),
        ("post", "/v1/customers/{name}/payments"): (_body(_ANY_OBJECT), {}),
        ("post", "/v1/webhooks/payments/{provider}"): (_body(_ANY_OBJECT), {}),
        ("post", "/v1/webhooks/external-billing"): (_body(_ANY_OBJECT), {}),
        # {"uids": [...]} (optional): which of the listed orphans; default every one.
        ("post", "/v1/nodes/{name}/orphans/purge"): (_body(_ANY_OBJECT, required=False), {}),
    }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, completed as described in the module docstring (cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _, defs = models_json_schema([(cls, "validation") for cls in KINDS.values()], ref_template=_REF + "{model}")
    schemas.update(defs.get("$defs", {}))
    for cls in KINDS.values():
        schemas[f"{cls.KIND}List"] = _obj({"apiVersion": _STR, "kind": {"const": f"{cls.KIND}List"},
                                           "metadata": _META_RV, "items": {"type": "array", "items": _ref(cls.KIND)}},
                                          ["kind", "metadata", "items"], extra=True)
    schemas.update(copy.deepcopy(SCHEMAS))
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "hpt_<id>_<secret>"},
        "session": {"type": "apiKey", "in": "cookie", "name": "hostplane_session",
                    "description": "panel session; writes also need the header X-Hostplane-CSRF: 1"},
    }
    ops = _operations()
    problem = {"content": {PROBLEM: {"schema": _ref("Problem")}}}
    kind_names = sorted({n for cls in KINDS.values() for n in (cls.KIND, cls.KIND.lower(), cls.PLURAL, *cls.ALIASES)})
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            for param in op.get("parameters", []):
                if param.get("in") == "path" and param.get("name") == "kind":
                    # Every name of every kind, and nothing else: /v1/tokens is not a kind.
                    param["schema"] = {"type": "string", "enum": kind_names, "title": "Kind"}
            responses: dict[str, Any] = op.setdefault("responses", {})
            default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
            if "HTTPValidationError" in str(default_422):
                del responses["422"]
            body, answers = ops.get((method, path), (None, {}))
            if body is not None:
                op["requestBody"] = body
            if answers:
                for status in [s for s in responses if s.startswith("2") and s not in answers]:
                    del responses[status]
                responses.update(copy.deepcopy(answers))
            if path in _OPEN:
                responses.setdefault("503", {"description": _ERRORS["503"], **problem})
                continue
            op["security"] = [{"bearer": []}, {"session": []}]
            for status, description in _ERRORS.items():
                if status not in responses:
                    responses[status] = {"description": description, **problem}
                elif "content" not in responses[status]:
                    responses[status] = {**responses[status], **problem}
            for status in ("402", "410"):
                if status in responses and "content" not in responses[status]:
                    responses[status] = {**responses[status], **problem}
    app.openapi_schema = doc
    return doc
