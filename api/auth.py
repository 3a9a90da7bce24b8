"""Bearer tokens: minting, storing only their hash in etcd, and checking them.

A token reads `hpt_<id>_<secret>`. etcd holds, under `<root>/auth/tokens/<id>`, the token's
role (one of ROLES), its customer (role `customer`), an optional expiry, a random per-token salt
and sha256(salt + secret). Revoking a token deletes that key. The secret is 256 random bits, so a
fast hash is enough (no password stretching needed); comparison is constant-time.

The plaintext admin token lives only in `<data_dir>/admin-token` (mode 0600) so `hostplane up`
can print it on every start. This module must never log or store a plaintext token in etcd.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconcile.errors import AlreadyExists
from reconcile.store import Store

ADMIN_TOKEN_FILE = "admin-token"
_PREFIX = "hpt"


ROLES = ("admin", "operator", "customer", "gitops", "billing-webhook")


class TokenError(ValueError):
    """A token cannot be minted as asked (unknown role, customer missing or misplaced)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Principal:
    """Who a verified token (or panel session) speaks for."""

    token_id: str
    role: str  # one of ROLES; api.access decides what each may do
    customer: str | None = None
    name: str = ""
    via: str = "token"  # "token" or "session": a session must send the CSRF header on writes


def tokens_prefix(root: str) -> str:
    return f"{root}/auth/tokens/"


def token_key(root: str, token_id: str) -> str:
    return tokens_prefix(root) + token_id


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """Split a token into (id, secret); None if it is not shaped like one of ours."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX or not parts[1] or not parts[2]:
        return None
    if not all(c in "0123456789abcdef" for c in parts[1]):
        return None
    return parts[1], parts[2]


def new_token() -> tuple[str, str, str]:
    """Return (token, id, secret) for a fresh random token."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return f"{_PREFIX}_{token_id}_{secret}", token_id, secret


def token_record(token_id: str, secret: str, role: str, *, customer: str | None = None,
                 expires: datetime | None = None, name: str | None = None) -> dict[str, Any]:
    salt = secrets.token_hex(16)
    rec: dict[str, Any] = {
        "id": token_id,
        "role": role,
        "salt": salt,
        "sha256": _digest(salt, secret),
        "created": datetime.now(UTC).isoformat(),
    }
    if customer is not None:
        rec["customer"] = customer
    if expires is not None:
        rec["expires"] = expires.astimezone(UTC).isoformat()
    if name:
        rec["name"] = name
    return rec


def check_token_request(role: str, customer: str | None, expires: datetime | None) -> None:
    """Refuse a token that could never be used as intended. Pure."""
    if role not in ROLES:
        raise TokenError("role", f"must be one of {', '.join(ROLES)}")
    if role == "customer" and not customer:
        raise TokenError("customer", "a customer token must name its customer")
    if role != "customer" and customer:
        raise TokenError("customer", "only a customer token is bound to a customer")
    if expires is not None and expires.tzinfo is None:
        raise TokenError("expires", "must carry a time zone")


def expired(record: dict[str, Any], now: datetime) -> bool:
    """True if the record has an expiry at or before `now`; an unreadable expiry counts as expired."""
    raw = record.get("expires")
    if raw is None:
        return False
    try:
        return datetime.fromisoformat(str(raw)) <= now
    except ValueError:
        return True


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """What may be shown about a token: never its salt or hash."""
    return {k: v for k, v in record.items() if k not in ("salt", "sha256")}


def _matches(record: dict[str, Any], secret: str) -> bool:
    try:
        expected = str(record["sha256"])
        got = _digest(str(record["salt"]), secret)
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(expected, got)


def create_token(store: Store, role: str, *, customer: str | None = None, expires: datetime | None = None,
                 name: str | None = None) -> str:
    """Mint a token, store its hash, and return the plaintext (shown once). TokenError if ill-formed."""
    check_token_request(role, customer, expires)
    token, token_id, secret = new_token()
    rec = token_record(token_id, secret, role, customer=customer, expires=expires, name=name)
    store.kv_put(token_key(store.root, token_id), json.dumps(rec).encode(), expect=0)
    return token


def list_tokens(store: Store) -> list[dict[str, Any]]:
    """Every token's public record (no salt, no hash), oldest first."""
    kvs, _ = store.kv_range(tokens_prefix(store.root))
    out: list[dict[str, Any]] = []
    for kv in kvs:
        try:
            rec = json.loads(kv.value)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(public_record(rec))
    return sorted(out, key=lambda r: str(r.get("created", "")))


def revoke_token(store: Store, token_id: str) -> bool:
    """Delete a token's record; False if there was none. Every API process drops it from its cache."""
    if not token_id or not all(c in "0123456789abcdef" for c in token_id):
        return False
    return store.kv_delete(token_key(store.root, token_id))


def revoke_customer_tokens(store: Store, customer: str) -> int:
    """Delete every token bound to `customer` (it was deleted); returns how many. Every API process
    drops them from its cache through its watch on auth/."""
    kvs, _ = store.kv_range(tokens_prefix(store.root))
    gone = 0
    for kv in kvs:
        try:
            rec = json.loads(kv.value)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("customer") == customer and store.kv_delete(kv.key):
            gone += 1
    return gone


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_admin_token(store: Store, data_dir: Path) -> str:
    """Return the admin token, minting it (hash in etcd, plaintext in data_dir) on first start.

    A token file whose hash is missing from etcd (a fresh etcd under an old data dir) is
    registered again: the file is the operator's credential. A file that does not match
    the stored hash, or no file at all, leads to a new admin token.
    """
    path = Path(data_dir) / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        parsed = parse_token(token)
        if parsed is not None:
            token_id, secret = parsed
            key = token_key(store.root, token_id)
            kv = store.kv_get(key)
            if kv is None:
                rec = token_record(token_id, secret, "admin")
                try:
                    store.kv_put(key, json.dumps(rec).encode(), expect=0)
                    return token
                except AlreadyExists:
                    kv = store.kv_get(key)
            if kv is not None and _matches(json.loads(kv.value), secret):
                return token
    token = create_token(store, "admin")
    _write_private(path, token + "\n")
    return token


class TokenVerifier:
    """Checks bearer tokens against etcd, caching records briefly to spare etcd a read per call.

    A revoked token stops working at once in every process that runs `invalidate` from a
    watch on the tokens prefix (the API does); otherwise within `cache_seconds`.
    """

    def __init__(self, store: Store, *, cache_seconds: float = 10.0) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def _record(self, token_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        kv = self._store.kv_get(token_key(self._store.root, token_id))
        rec: dict[str, Any] | None = None
        if kv is not None:
            try:
                loaded = json.loads(kv.value)
                rec = loaded if isinstance(loaded, dict) else None
            except ValueError:
                rec = None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            # Misses are cached only briefly so a just-minted token works at once.
            ttl = self._cache_seconds if rec is not None else min(1.0, self._cache_seconds)
            self._cache[token_id] = (now + ttl, rec)
        return rec

    def invalidate(self, token_id: str | None = None) -> None:
        """Drop one cached record (or all): the next use reads etcd again."""
        with self._lock:
            if token_id is None:
                self._cache.clear()
            else:
                self._cache.pop(token_id, None)

    def cached(self, token: str) -> Principal | None:
        """The principal if the token's record is cached and matches; None means: ask `verify`."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        with self._lock:
            hit = self._cache.get(parsed[0])
        if hit is None or hit[0] <= time.monotonic() or hit[1] is None or not _matches(hit[1], parsed[1]):
            return None
        return _principal(parsed[0], hit[1])

    def alive(self, token_id: str) -> bool:
        """The token `token_id` still exists and has not expired (cached; revocations invalidate the cache)."""
        rec = self._record(token_id)
        return rec is not None and _principal(token_id, rec) is not None

    def verify(self, token: str) -> Principal | None:
        parsed = parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        rec = self._record(token_id)
        if rec is None or not _matches(rec, secret):
            return None
        return _principal(token_id, rec)


def _principal(token_id: str, rec: dict[str, Any]) -> Principal | None:
    role = str(rec.get("role", ""))
    if role not in ROLES or expired(rec, datetime.now(UTC)):
        return None
    customer = rec.get("customer")
    if role == "customer" and not isinstance(customer, str):
        return None
    return Principal(token_id, role, customer if isinstance(customer, str) else None, str(rec.get("name", "")))
