"""Bearer tokens: minting, storing only their hash in etcd, and checking them.

A token reads `hpt_<id>_<secret>`. etcd holds, under `<root>/auth/tokens/<id>`, the token's
role, a random per-token salt and sha256(salt + secret). The secret is 256 random bits, so a
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


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    token_id: str
    role: str  # "admin" (everything); other roles are refused until they are defined
    customer: str | None = None


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


def token_record(token_id: str, secret: str, role: str, *, customer: str | None = None) -> dict[str, Any]:
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
    return rec


def _matches(record: dict[str, Any], secret: str) -> bool:
    try:
        expected = str(record["sha256"])
        got = _digest(str(record["salt"]), secret)
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(expected, got)


def create_token(store: Store, role: str, *, customer: str | None = None) -> str:
    """Mint a token, store its hash, and return the plaintext (shown once)."""
    token, token_id, secret = new_token()
    rec = token_record(token_id, secret, role, customer=customer)
    store.kv_put(token_key(store.root, token_id), json.dumps(rec).encode(), expect=0)
    return token


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

    A revoked token stops working within `cache_seconds`.
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

    def cached(self, token: str) -> Principal | None:
        """The principal if the token's record is cached and matches; None means: ask `verify`."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        with self._lock:
            hit = self._cache.get(parsed[0])
        if hit is None or hit[0] <= time.monotonic() or hit[1] is None or not _matches(hit[1], parsed[1]):
            return None
        rec = hit[1]
        return Principal(parsed[0], str(rec.get("role", "")), rec.get("customer"))

    def verify(self, token: str) -> Principal | None:
        parsed = parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        rec = self._record(token_id)
        if rec is None or not _matches(rec, secret):
            return None
        return Principal(token_id, str(rec.get("role", "")), rec.get("customer"))
