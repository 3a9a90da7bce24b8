"""A node's orphan domains: list them, and purge them on an operator's explicit word.

    GET  /v1/nodes/<node>/orphans         the orphans the node's agent reports (staff)
    POST /v1/nodes/<node>/orphans/purge   {"uids": [...]} (optional; default: every listed orphan)

An orphan is a domain of this cluster with neither a desired entry nor a tombstone: the agent
leaves it running with its disks. A purge records, per orphan, a request under
`purges/<node>/<uid>`; the controllers turn it into the same uid-bound tombstone their deletion
path writes (reason "Purged") unless that uid is desired on the node again, and the agent then
deletes the domain and its volumes. Only admin and operator may purge. This module must never
write under a node's keys itself (the API's etcd role cannot).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api import access
from api.auth import Principal
from api.deps import Caller, State, parse_body, read_limited
from api.errors import Forbidden, Invalid, refuse_unknown_fields
from reconcile import keys
from reconcile.etcd import Put
from reconcile.objects import Store, encode_value
from specs.domain import Tombstone
from specs.kinds import Node

router = APIRouter(prefix="/v1", tags=["nodes"])


def _invalid(path: str, message: str) -> Invalid:
    return Invalid(f"{path}: {message}", [{"path": path, "message": message}])


def list_orphans(store: Store, caller: Principal, node: str) -> dict[str, Any]:
    access.require_staff(caller, "list a node's orphan domains")
    st = store.get(Node, node).status
    return {"node": node, "orphans": [o.model_dump() for o in (st.orphans if st else [])]}


def purge(store: Store, caller: Principal, node: str, body: Any) -> dict[str, Any]:
    if caller.role not in ("admin", "operator"):
        raise Forbidden(f"role {caller.role!r} may not purge a node's domains")
    listed = {o["uid"]: o for o in list_orphans(store, caller, node)["orphans"]}
    wanted = list(listed)
    if body is not None:
        if not isinstance(body, dict):
            raise _invalid("", "the body must be an object")
        refuse_unknown_fields(body, {"uids"})
        uids = body.get("uids")
        if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
            raise _invalid("uids", "must be a list of orphan uids")
        unknown = [u for u in uids if u not in listed]
        if unknown:
            raise _invalid("uids", f"not orphans of node {node}: {', '.join(sorted(unknown))}")
        wanted = uids
    now = datetime.now(UTC)
    ops = [Put(keys.purge_key(node, uid, store.root),
               encode_value(Tombstone(vps=listed[uid]["vps"], uid=uid, reason="Purged", at=now))) for uid in wanted]
    if ops:
        store.txn([], ops)
    return {"node": node, "requested": wanted}


@router.get("/nodes/{name}/orphans", summary="The node's orphan domains: no desired entry, no tombstone (staff)")
async def get_orphans(name: str, state: State, caller: Caller) -> dict[str, Any]:
    return await run_in_threadpool(list_orphans, state.store, caller, name)


@router.post("/nodes/{name}/orphans/purge",
             summary="Delete the node's orphan domains and their disks (admin, operator)")
async def purge_orphans(name: str, request: Request, state: State, caller: Caller) -> dict[str, Any]:
    raw = await read_limited(request, state.settings.max_body_bytes)
    body = parse_body(raw, request.headers.get("content-type", "")) if raw.strip() else None
    return await run_in_threadpool(purge, state.store, caller, name, body)
