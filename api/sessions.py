"""Customer panel login: argon2 password hashes and opaque session ids, both kept in etcd.

    <root>/auth/passwords/<customer>      {"argon2": "$argon2id$...", "updated": ISO time}
    <root>/auth/sessions/<sha256(id)>     {"customer", "role", "name", "created", "expires"} (on a lease)
    <root>/auth/session-index/<customer>/<sha256(id)>   {"expires"} (same lease): a customer's live sessions,
                                          counted at login (at most `max_per_customer`)

The session id lives only in the client's cookie; etcd holds its sha256, so reading etcd
does not let anyone log in. This module must never log, return or store a password or a
session id in plain text (the id is returned once, to be set as the cookie).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from api.auth import Principal
from reconcile.errors import NotFound
from reconcile.store import Delete, Put, Store, UnchangedSince
from specs.kinds import Customer

SESSION_COOKIE = "hostplane_session"
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
# Tries when other logins of the same customer write its session index meanwhile.
_CREATE_ATTEMPTS = 10

_hasher = PasswordHasher()
# Verified against when the e-mail matches no customer, so a miss costs as long as a hit.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class PasswordError(ValueError):
    field = "password"


def passwords_prefix(root: str) -> str:
    return f"{root}/auth/passwords/"


def password_key(root: str, customer: str) -> str:
    return passwords_prefix(root) + customer


def sessions_prefix(root: str) -> str:
    return f"{root}/auth/sessions/"


def session_key(root: str, session_id: str) -> str:
    return sessions_prefix(root) + hashlib.sha256(session_id.encode()).hexdigest()


def session_index_prefix(root: str, customer: str) -> str:
    return f"{root}/auth/session-index/{customer}/"


class TooManySessions(Exception):
    """The customer has `max_per_customer` live sessions; `retry_after`: seconds until the oldest ends."""

    def __init__(self, limit: int, retry_after: float) -> None:
        super().__init__(f"at most {limit} panel sessions may be open at once; log out elsewhere first")
        self.retry_after = retry_after


def check_password(password: Any) -> str:
    """The password if acceptable as a new one, else PasswordError. Pure."""
    if not isinstance(password, str):
        raise PasswordError("password: must be a string")
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"password: must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordError(f"password: must be at most {MAX_PASSWORD} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise PasswordError("password: must not contain control characters")
    return password


def set_password(store: Store, customer: str, password: str) -> None:
    """Store the argon2 hash of a customer's new password (the customer must exist)."""
    store.get(Customer, customer)
    rec = {"argon2": _hasher.hash(check_password(password)), "updated": datetime.now(UTC).isoformat()}
    store.kv_put(password_key(store.root, customer), json.dumps(rec).encode())


def _customer_by_email(store: Store, email: str, candidates: list[str] | None) -> Customer | None:
    """The first customer (by name) with this e-mail. `candidates`: the names an index gives for it
    (each read and checked here); None: scan every customer."""
    wanted = email.strip().lower()
    if candidates is None:
        found = (c for c in store.list(Customer).items if c.spec.email.lower() == wanted)
        return next(found, None)
    for name in candidates:
        try:
            cust = store.get(Customer, name)
        except NotFound:
            continue
        if cust.spec.email.lower() == wanted:
            return cust
    return None


def check_login(store: Store, email: str, password: str, *, slots: threading.Semaphore | None = None,
                candidates: list[str] | None = None) -> Customer | None:
    """The customer whose e-mail and password these are, else None. Costs one argon2 verify either way.

    `slots` bounds concurrent verifications: each holds 64 MiB for tens of milliseconds, so a
    burst of logins must queue rather than exhaust memory. `candidates` are the customers an
    e-mail index names (the API's watch hub keeps one); without them every customer is read.
    """
    cust = _customer_by_email(store, email, candidates) if len(email) <= 254 else None
    kv = store.kv_get(password_key(store.root, cust.name)) if cust is not None else None
    stored = _DUMMY_HASH
    if kv is not None:
        try:
            stored = str(json.loads(kv.value)["argon2"])
        except (ValueError, KeyError, TypeError):
            stored = _DUMMY_HASH
    ok = False
    with slots or contextlib.nullcontext(), \
            contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
        ok = _hasher.verify(stored, password[:MAX_PASSWORD])
    return cust if ok and kv is not None else None


class Sessions:
    """Creates, checks (with a short cache) and ends panel sessions."""

    def __init__(self, store: Store, *, ttl_seconds: int = 12 * 3600, cache_seconds: float = 10.0,
                 concurrent_logins: int = 4, max_per_customer: int = 20) -> None:
        self._store = store
        self.max_per_customer = max_per_customer
        self.hash_slots = threading.BoundedSemaphore(concurrent_logins)
        self.ttl_seconds = ttl_seconds
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def create(self, customer: Customer) -> str:
        """A new session for `customer`; returns the id for the cookie (never stored).

        TooManySessions when the customer has `max_per_customer` live ones. The count and the new
        session's keys are one decision: the write compares that the customer's index is unchanged
        since it was counted, so logins racing each other cannot pass the cap together."""
        session_id = secrets.token_urlsafe(32)
        key = session_key(self._store.root, session_id)
        index = session_index_prefix(self._store.root, customer.name)
        lease: int | None = None
        for _ in range(_CREATE_ATTEMPTS):
            now = datetime.now(UTC)
            kvs, revision = self._store.kv_range(index)
            live = sorted(_expiry(kv.value) for kv in kvs if _expiry(kv.value) > now)
            if 0 < self.max_per_customer <= len(live):
                raise TooManySessions(self.max_per_customer, (live[0] - now).total_seconds())
            expires = (now + timedelta(seconds=self.ttl_seconds)).isoformat()
            rec = {"customer": customer.name, "role": "customer", "name": customer.spec.displayName or customer.name,
                   "created": now.isoformat(), "expires": expires}
            # The lease removes the records by themselves; the stored expiry is what is checked.
            lease = lease or self._store.grant_lease(self.ttl_seconds + 60)
            res = self._store.txn([UnchangedSince(index, revision)],
                                  [Put(key, json.dumps(rec).encode(), lease),
                                   Put(index + key.rsplit("/", 1)[-1], json.dumps({"expires": expires}).encode(),
                                       lease)])
            if res.succeeded:
                return session_id
        raise TooManySessions(self.max_per_customer, 1.0)

    def end(self, session_id: str) -> None:
        key = session_key(self._store.root, session_id)
        kv = self._store.kv_get(key)
        ops = [Delete(key)]
        try:
            customer = json.loads(kv.value)["customer"] if kv is not None else None
        except (ValueError, KeyError, TypeError):
            customer = None
        if isinstance(customer, str):
            ops.append(Delete(session_index_prefix(self._store.root, customer) + key.rsplit("/", 1)[-1]))
        self._store.txn([], ops)
        self.invalidate(key)

    def invalidate(self, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._cache.clear()
            else:
                self._cache.pop(key, None)

    def cached(self, session_id: str) -> Principal | None:
        key = session_key(self._store.root, session_id)
        with self._lock:
            hit = self._cache.get(key)
        if hit is None or hit[0] <= time.monotonic() or hit[1] is None:
            return None
        return _principal(key, hit[1])

    def verify(self, session_id: str) -> Principal | None:
        if not session_id or len(session_id) > 256:
            return None
        key = session_key(self._store.root, session_id)
        rec = self._record(key)
        return _principal(key, rec) if rec is not None else None

    def alive(self, key: str) -> bool:
        """The session stored at `key` still exists and has not expired (cached; logouts invalidate the cache)."""
        rec = self._record(key)
        return rec is not None and _principal(key, rec) is not None

    def _record(self, key: str) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        kv = self._store.kv_get(key)
        try:
            loaded = json.loads(kv.value) if kv is not None else None
        except ValueError:
            loaded = None
        rec = loaded if isinstance(loaded, dict) else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + (self._cache_seconds if rec else min(1.0, self._cache_seconds)), rec)
        return rec


def end_customer_sessions(store: Store, customer: str) -> None:
    """End every session of `customer` and forget its password (the customer was deleted)."""
    index = session_index_prefix(store.root, customer)
    kvs, _ = store.kv_range(index, keys_only=True)
    for kv in kvs:
        store.txn([], [Delete(sessions_prefix(store.root) + kv.key[len(index):]), Delete(kv.key)])
    store.kv_delete(password_key(store.root, customer))


def _expiry(raw: bytes) -> datetime:
    try:
        return datetime.fromisoformat(str(json.loads(raw)["expires"]))
    except (ValueError, KeyError, TypeError):
        return datetime.min.replace(tzinfo=UTC)


def _principal(key: str, rec: dict[str, Any]) -> Principal | None:
    try:
        if datetime.fromisoformat(str(rec["expires"])) <= datetime.now(UTC):
            return None
        customer = str(rec["customer"])
    except (KeyError, ValueError):
        return None
    # The principal's id names the record's hash, never the session id itself.
    return Principal("session:" + key.rsplit("/", 1)[-1][:16], "customer", customer, str(rec.get("name", "")),
                     via="session")


def customer_exists(store: Store, name: str) -> bool:
    try:
        store.get(Customer, name)
    except NotFound:
        return False
    return True
