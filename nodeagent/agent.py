"""The node agent loop: make this node's libvirt match its desired domains, and say what it sees.

It reads `/nodes/<node>/desired/`, `/nodes/<node>/tombstones/` and the cluster id, and writes only
`/nodes/<node>/observed/<vps>`, the lease-bound heartbeat and the removal of a tombstone it has
carried out. A domain is deleted only for a tombstone bound to its uid: a managed domain with
neither desired entry nor tombstone is an orphan, reported in the heartbeat and left running
(an empty or wrong etcd must never cost a disk). Domains stamped with another cluster's id are
never touched. One work-queue key per VPS, so one VM never has two operations at once.
Three sources wake a key — etcd watch events, libvirt lifecycle events (re-registered after a
reconnect; a guest's STOPPED is debounced so a reboot inside it is not taken for a stop) and a
periodic resync with a full scan that finds orphans — and every reconcile re-reads both sides
(level-triggered). Domains without Hostplane metadata are never touched, only counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt

from nodeagent import plan as P
from nodeagent import report
from nodeagent.console_source import console_source
from nodeagent.domain_xml import domain_name
from nodeagent.endpoint import ConsoleUnavailable, Endpoint, EndpointConfig
from nodeagent.errors import AgentError, HypervisorUnavailable
from nodeagent.events import ensure_event_loop
from nodeagent.hypervisor import Hypervisor, Observation
from nodeagent.images import ImagePolicy
from nodeagent.sampler import Sampler
from reconcile import keys
from reconcile.cluster import await_cluster_id
from reconcile.controller import Controller, Result
from reconcile.errors import NotFound, StoreError
from reconcile.informer import Informer
from reconcile.objects import Store
from specs.domain import DomainSpec, ObservedDomain, Tombstone

log = logging.getLogger(__name__)

MAX_STEPS = 25
HEARTBEAT_REWRITE = 25.0
# A libvirt call running longer than this is reported (condition LibvirtResponsive=False).
LIBVIRT_CALL_LIMIT = 60.0


def _decode_spec(_name: str, raw: bytes) -> DomainSpec:
    return DomainSpec.model_validate_json(raw)


def _decode_tombstone(_name: str, raw: bytes) -> Tombstone:
    return Tombstone.model_validate_json(raw)


class Agent:
    """One node's agent. `start()` returns once the desired entries are listed; `stop()` ends it.

    For a fleet in one process, pass `enqueue` (and drive `reconcile_key`/`housekeep` from shared
    threads); otherwise the agent runs its own controller and housekeeping thread.
    """

    def __init__(self, store: Store, node: str, conn_uri: str, data_dir: Path, *, resync: float = 60.0,
                 workers: int = 2, heartbeat_ttl: int = 10, debounce_seconds: float = 2.0,
                 pool_name: str | None = None, network: str = "user", netns: str | None = None,
                 enqueue: Callable[[str, float], None] | None = None, image_policy: ImagePolicy | None = None,
                 endpoint: EndpointConfig | None = None, stats_interval: float = 10.0) -> None:
        self.store = store
        self.node = node
        self.data_dir = data_dir
        self.resync = resync
        self.heartbeat_ttl = heartbeat_ttl
        self.debounce_seconds = debounce_seconds
        self.hv = Hypervisor(conn_uri, data_dir, pool_name=pool_name, network=network, netns=netns,
                             image_policy=image_policy)
        self.informer: Informer[DomainSpec] = Informer(store, keys.desired_prefix(node, store.root),
                                                       decode=_decode_spec, name=f"agent {node}")
        # Keyed by uid: the explicit deletions this node is asked to carry out.
        self.tombstones: Informer[Tombstone] = Informer(store, keys.tombstone_prefix(node, store.root),
                                                        decode=_decode_tombstone, name=f"agent {node} tombstones")
        self.cluster_id = ""
        self.orphans: list[dict[str, str]] = []
        # VPS whose domain still runs the balloon-limited memory model (ADR 013): moved at their next start.
        self.legacy_memory: set[str] = set()
        self.orphan_volumes: list[str] = []
        self.managed_domains = 0
        self._own_controller = enqueue is None
        self.controller: Controller | None = None
        if enqueue is None:
            self.controller = Controller(f"agent-{node}", self.reconcile_key, workers=workers)
            queue = self.controller.queue

            def _enqueue(vps: str, after: float) -> None:
                if after > 0:
                    queue.add_after(vps, after)
                else:
                    queue.add(vps)

            enqueue = _enqueue
        self.enqueue: Callable[[str, float], None] = enqueue
        self._lock = threading.Lock()
        self._reported: dict[str, ObservedDomain] = {}
        self._uids: dict[str, set[str]] = {}  # vps -> uids of domains seen for it
        self._names: dict[str, str] = {}  # domain name -> vps
        self._notes: dict[str, dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lease: int | None = None
        self._last_scan = 0.0
        self._scan_requested = threading.Event()
        self._callback_ids: list[int] = []
        self.hv_error = ""
        self.reconciles = 0
        self._hb_content: dict[str, object] | None = None
        self._hb_written = 0.0
        self._hb_thread: threading.Thread | None = None
        self._hb_lock = threading.Lock()
        # Facts are read from libvirt by housekeeping; the heartbeat only reports the last ones, so a
        # slow libvirt never stops the beat. `warm`: the first connection (QEMU probed, pool ready) is done.
        self._facts: object | None = None
        self.warm = False
        self.call_limit = LIBVIRT_CALL_LIMIT
        self._warned_user_mode = False
        # The node's TLS endpoint (consoles, metrics) for the API; its address goes into the heartbeat.
        # Load figures for Prometheus: one bulk-stats call per interval, served by the endpoint at /metrics.
        self.sampler = Sampler(self.hv, node, self.domain_names, facts=lambda: self._facts, interval=stats_interval)
        self.endpoint = Endpoint(endpoint, resolve=self.console_target,
                                 metrics=self.sampler.text) if endpoint is not None else None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Agent:
        ensure_event_loop()
        # Nothing is touched before the agent knows which cluster's domains are its own.
        log.info("agent %s: reading the cluster id", self.node)
        cluster_id = await_cluster_id(self.store, self._stop)
        if cluster_id is None:
            return self
        self.cluster_id = cluster_id
        self.hv.cluster_id = self.cluster_id
        self._load_reported()
        self.informer.add_handler(self._on_desired)
        self.tombstones.add_handler(self._on_tombstone)
        if self.endpoint is not None:
            self.endpoint.start()
            self.sampler.start()
        if self._own_controller:
            # Beat before touching libvirt: a first connection can take minutes (QEMU probing), and
            # the node must say "warming" meanwhile, not vanish.
            self._hb_thread = threading.Thread(target=self._beating, name=f"agent-{self.node}-hb", daemon=True)
            self._hb_thread.start()
        self._connect()
        self.refresh_facts()
        self.tombstones.start()
        self.informer.start()
        if self.controller is not None:
            self.controller.start()
        self.scan()
        self._warn_user_mode()
        self.heartbeat()
        if self._own_controller:
            self._thread = threading.Thread(target=self._housekeeping, name=f"agent-{self.node}-hk", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.informer.stop()
        self.tombstones.stop()
        if self.controller is not None:
            self.controller.stop()
        if self._thread is not None:
            self._thread.join(10)
        if self._hb_thread is not None:
            self._hb_thread.join(10)
        if self.endpoint is not None:
            self.sampler.stop()
            self.endpoint.stop()
        self._deregister_events()
        if self._lease is not None:
            with contextlib.suppress(StoreError):
                self.store.revoke_lease(self._lease)
            self._lease = None
        self.hv.close()

    def _beating(self) -> None:
        interval = max(0.5, self.heartbeat_ttl / 3)
        while True:
            self.heartbeat()
            if self._stop.wait(interval):
                return

    def _housekeeping(self) -> None:
        interval = max(0.5, self.heartbeat_ttl / 3)
        while not self._stop.wait(interval if not self._scan_requested.is_set() else 0.05):
            self.housekeep(beat=False)

    def refresh_facts(self) -> None:
        """Read capacity and domain counts from libvirt (the heartbeat reports the last reading)."""
        if not self.hv.alive():
            self._facts = None
            return
        try:
            self._facts = self.hv.facts()
        except (AgentError, libvirt.libvirtError) as exc:
            self._facts = None
            self.hv_error = str(exc)

    def housekeep(self, *, beat: bool = True) -> None:
        """Reconnect if needed, read facts, beat (unless a thread of its own does), and scan when due."""
        if not self.hv.alive():
            self._connect()
        self.refresh_facts()
        if beat:
            self.heartbeat()
        due = time.monotonic() - self._last_scan >= self.resync
        if self.hv.alive() and (due or self._scan_requested.is_set()):
            self._scan_requested.clear()
            self.scan()

    # ---------------------------------------------------------- connection

    def _connect(self) -> None:
        try:
            conn = self.hv.connect()
        except AgentError as exc:
            self.hv_error = str(exc)
            log.warning("agent %s: %s", self.node, exc)
            return
        self.hv_error = ""
        if not self.warm:
            log.info("agent %s: libvirt at %s is warm (QEMU probed, pool ready)", self.node, self.hv.uri)
        self.warm = True
        self._callback_ids = []
        try:
            self._callback_ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None))
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError as exc:
            log.warning("agent %s: lifecycle events unavailable (%s); resync only", self.node, exc)
        self._scan_requested.set()
        if self.informer.synced:
            for vps in self.informer.items():
                self.enqueue(vps, 0)

    def _deregister_events(self) -> None:
        conn = self.hv.conn
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
        for cid in self._callback_ids:
            try:
                if conn is not None:
                    conn.domainEventDeregisterAny(cid)
            except libvirt.libvirtError:
                pass
        self._callback_ids = []

    def _on_close(self, _conn: object, reason: int, _opaque: object) -> None:
        log.warning("agent %s: libvirt connection closed (reason %d)", self.node, reason)
        self._scan_requested.set()

    def _on_lifecycle(self, _conn: object, dom: libvirt.virDomain, event: int, detail: int, _opaque: object) -> None:
        vps = self._names.get(dom.name())
        if vps is None:
            self._scan_requested.set()
            return
        guest_stop = event == libvirt.VIR_DOMAIN_EVENT_STOPPED and detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN
        # A STOPPED straight after a shutdown request from inside can be a reboot on its way; look a bit later.
        self.enqueue(vps, self.debounce_seconds if guest_stop else 0)

    # ------------------------------------------------------------- informer

    def _on_desired(self, vps: str, old: DomainSpec | None, new: DomainSpec | None) -> None:
        with self._lock:
            for spec in (old, new):
                if spec is not None:
                    self._uids.setdefault(vps, set()).add(spec.uid)
                    self._names[domain_name(spec.uid)] = vps
        self.enqueue(vps, 0)

    def _on_tombstone(self, uid: str, _old: Tombstone | None, new: Tombstone | None) -> None:
        if new is None:
            return  # carried out (we removed it) or withdrawn: nothing more to do for it
        with self._lock:
            self._uids.setdefault(new.vps, set()).add(uid)
            self._names[domain_name(uid)] = new.vps
        self.enqueue(new.vps, 0)

    def tombstoned(self, uid: str) -> bool:
        t = self.tombstones.get(uid)
        return t is not None and t.uid == uid

    def _load_reported(self) -> None:
        kvs, _ = self.store.kv_range(keys.observed_prefix(self.node, self.store.root))
        prefix = keys.observed_prefix(self.node, self.store.root)
        for kv in kvs:
            try:
                obs = ObservedDomain.model_validate_json(kv.value)
            except ValueError:
                continue
            vps = kv.key[len(prefix):]
            self._reported[vps] = obs
            self._uids.setdefault(vps, set()).add(obs.uid)
            self._names[obs.domainName] = vps

    # ----------------------------------------------------------------- scan

    def scan(self) -> None:
        """Every domain of this cluster gets a look; orphans (no desired entry, no tombstone) are listed only."""
        self._last_scan = time.monotonic()
        try:
            domains = self.hv.all_domains()
        except (libvirt.libvirtError, AgentError) as exc:
            log.warning("agent %s: scan failed: %s", self.node, exc)
            return
        found: set[str] = set()
        desired_uids = {s.uid for s in self.informer.items().values()}
        orphans: list[dict[str, str]] = []
        managed = 0
        for dom, meta in domains:
            if meta is None or not self.hv.ours(meta):
                continue  # not Hostplane's, or another cluster's: never touched
            managed += 1
            with self._lock:
                self._uids.setdefault(meta.vps, set()).add(meta.uid)
                self._names[dom.name()] = meta.vps
            found.add(meta.vps)
            if meta.uid not in desired_uids and not self.tombstoned(meta.uid):
                orphans.append({"domain": dom.name(), "vps": meta.vps, "uid": meta.uid})
        orphans.sort(key=lambda o: o["domain"])
        if orphans != self.orphans and orphans:
            log.warning("agent %s: orphan domains (no desired entry, no tombstone; left alone): %s",
                        self.node, ", ".join(o["domain"] for o in orphans))
        self.orphans = orphans
        self.managed_domains = managed
        for vps in found | set(self.informer.items()) | set(self._reported):
            self.enqueue(vps, 0)
        for tomb in self.tombstones.items().values():
            self.enqueue(tomb.vps, 0)

        def claimed(name: str) -> bool:
            return name in {domain_name(u) for u in desired_uids | set(self.tombstones.items())}

        try:
            unbound = self.hv.network_housekeeping(list(self.informer.items().values()))
        except (libvirt.libvirtError, AgentError) as exc:
            log.warning("agent %s: node network housekeeping failed: %s", self.node, exc)
        else:
            if unbound:
                log.info("agent %s: removed filter bindings of stopped taps %s", self.node, unbound)
        try:
            leftovers = self.hv.orphan_volumes(claimed)
        except (libvirt.libvirtError, AgentError) as exc:
            log.warning("agent %s: orphan volume scan failed: %s", self.node, exc)
            return
        self.orphan_volumes = sorted(v for vols in leftovers.values() for v in vols)

    def _warn_user_mode(self, specs: list[DomainSpec] | None = None) -> None:
        """User-mode NICs reach the host's loopback: say so, once, loudly (a developer choice, never production)."""
        if self._warned_user_mode:
            return
        specs = list(self.informer.items().values()) if specs is None else specs
        if any(s.network.mode == "user" or (s.network.mode is None and self.hv.network == "user") for s in specs):
            self._warned_user_mode = True
            log.warning("agent %s: WARNING: VPS NICs in user mode (QEMU SLIRP) can reach every service on this "
                        "host's loopback (etcd, API, agent) and are not filtered against spoofing; use mode "
                        "bridge or isolated-nat for anything but development", self.node)

    # ------------------------------------------------------------ reconcile

    def note(self, vps: str) -> Callable[[str, str], None]:
        def _note(kind: str, message: str) -> None:
            self._notes.setdefault(vps, {})[kind] = message
        return _note

    def reconcile_key(self, vps: str) -> Result | None:
        self.reconciles += 1
        spec = self.informer.get(vps)
        generation = self.informer.mod_revision(vps)
        with self._lock:
            uids = set(self._uids.get(vps, set()))
        wait: float | None = None
        error: tuple[str, str] | None = None
        obs: Observation | None = None
        converged = False
        try:
            # A tombstoned domain (an earlier incarnation of this VPS, or this one deleted) goes first.
            # One without a tombstone is an orphan: reported by the scan, never touched here.
            for uid in sorted(uids - ({spec.uid} if spec else set())):
                if not self.tombstoned(uid):
                    gone = self.hv.read(uid).actual if self.hv.alive() else None
                    if gone is not None and not gone.defined and gone.disk_gib is None and not gone.seed_present:
                        with self._lock:  # nothing of it is left: nothing to report or keep
                            self._uids.get(vps, set()).discard(uid)
                    continue
                stale, _done, w = self._converge(None, uid, vps, tombstoned=True)
                if not stale.actual.defined and stale.actual.disk_gib is None and not stale.actual.seed_present:
                    with self._lock:
                        self._uids.get(vps, set()).discard(uid)
                    self.store.kv_delete(keys.tombstone_key(self.node, uid, self.store.root))
                elif w is not None:
                    wait = w if wait is None else min(wait, w)
            if spec is not None:
                self._warn_user_mode([spec])
                obs, converged, w = self._converge(spec, spec.uid, vps)
                if w is not None:
                    wait = w if wait is None else min(wait, w)
        except (AgentError, libvirt.libvirtError) as exc:
            reason = exc.reason if isinstance(exc, AgentError) else "LibvirtError"
            error = (reason, str(exc))
            log.warning("agent %s: %s: %s", self.node, vps, exc)
        if spec is None:
            with self._lock:
                left = set(self._uids.get(vps, set()))
            leftover = any(self.tombstoned(u) for u in left)
            orphaned = bool(left) and not leftover
            if not leftover and not orphaned and error is None:
                self._delete_report(vps)
            elif error is not None:
                self._report_error_only(vps, error)
        else:
            if obs is None:
                try:
                    obs = self.hv.read(spec.uid, spec=spec)
                except (AgentError, libvirt.libvirtError):
                    obs = Observation(P.Actual(), None)
            self._report(vps, spec, obs, generation, converged, error)
        if error is not None:
            raise _Retry(error[1])
        return Result(requeue_after=wait) if wait is not None else None

    def _converge(self, spec: DomainSpec | None, uid: str, vps: str, *,
                  tombstoned: bool = False) -> tuple[Observation, bool, float | None]:
        if not self.hv.alive():
            raise HypervisorUnavailable(self.hv_error or f"not connected to {self.hv.uri}")
        with self._lock:
            self._names[domain_name(uid)] = vps
        for _ in range(MAX_STEPS):
            obs = self.hv.read(uid, spec=spec)
            now = time.time()
            actions = P.plan(spec, obs.actual, now=now, tombstoned=tombstoned)
            if not actions:
                return (obs, P.settled(spec, obs.actual, tombstoned=tombstoned),
                        P.wake_after(spec, obs.actual, now=now, tombstoned=tombstoned))
            for action in actions:
                log.info("agent %s: %s: %s", self.node, vps, action)
                self.hv.execute(action, spec, uid, vps, self.note(vps))
        obs = self.hv.read(uid, spec=spec)
        return obs, False, 1.0

    # -------------------------------------------------------------- reports

    def _write(self, vps: str, obs: ObservedDomain) -> None:
        if report.same_report(self._reported.get(vps), obs):
            return
        self.store.kv_put(keys.observed_key(self.node, vps, self.store.root),
                          obs.model_dump_json(exclude_none=False).encode())
        self._reported[vps] = obs

    def _report(self, vps: str, spec: DomainSpec, obs: Observation, generation: int | None, converged: bool,
                error: tuple[str, str] | None) -> None:
        notes = self._notes.pop(vps, {}) if converged else self._notes.get(vps, {})
        prev = self._reported.get(vps)
        if prev is not None and prev.uid != spec.uid:
            prev = None
        new = report.observe(spec, obs.actual, vps=vps, uid=spec.uid, generation=generation, converged=converged,
                             error=error, notes=notes, previous=prev, now=datetime.now(UTC))
        if obs.actual.defined and obs.actual.legacy_memory:
            self.legacy_memory.add(vps)
        else:
            self.legacy_memory.discard(vps)
        self._write(vps, new)

    def _report_error_only(self, vps: str, error: tuple[str, str]) -> None:
        prev = self._reported.get(vps)
        if prev is not None:
            self._write(vps, prev.model_copy(update={"lastError": f"{error[0]}: {error[1]}"}))

    def _delete_report(self, vps: str) -> None:
        if self._reported.pop(vps, None) is not None:
            self.store.kv_delete(keys.observed_key(self.node, vps, self.store.root))

    # ------------------------------------------------------------ consoles

    def domain_names(self) -> dict[str, str]:
        """Domain name -> VPS of this node's desired entries (what the sampler labels)."""
        return {domain_name(spec.uid): vps for vps, spec in self.informer.items().items()}

    def console_target(self, vps: str, kind: str) -> str:
        """The PTY or VNC socket of `vps`'s running domain on this node (for the endpoint). Blocking."""
        spec = self.informer.items().get(vps)
        if spec is None:
            raise ConsoleUnavailable("the server is not on this node")
        return console_source(self.hv, domain_name(spec.uid), kind)

    # ------------------------------------------------------------ heartbeat

    def allocated(self) -> dict[str, int]:
        specs = self.informer.items().values()
        return {"vcpus": sum(s.vcpus for s in specs), "memoryMiB": sum(s.memoryMiB for s in specs),
                "diskGiB": sum(s.diskGiB for s in specs), "domains": len(specs)}

    def heartbeat(self) -> None:
        """Refresh the lease and report the last facts. Never calls libvirt: it must beat while libvirt is slow."""
        facts = self._facts
        warming = not self.warm and not self.hv_error
        stuck = self.hv.stuck(self.call_limit)
        value = report.heartbeat(self.node, facts, allocated=self.allocated(), libvirt_ok=facts is not None,
                                 error=self.hv_error, now=datetime.now(UTC), orphans=self.orphans,
                                 orphan_volumes=self.orphan_volumes, warming=warming,
                                 legacy_memory=sorted(self.legacy_memory & set(self.informer.items())),
                                 conditions=report.node_conditions(
                                     orphans=self.orphans, orphan_volumes=self.orphan_volumes,
                                     desired=len(self.informer.items()), managed=self.managed_domains,
                                     libvirt_error=self.hv_error, warming=warming, stuck=stuck),
                                 endpoint=self.endpoint.address if self.endpoint is not None else "")
        key = keys.heartbeat_key(self.node, self.store.root)
        with self._hb_lock:
            self._beat(key, value)

    def _beat(self, key: str, value: dict[str, Any]) -> None:
        try:
            if self._lease is not None:
                try:
                    self.store.refresh_lease(self._lease)
                except NotFound:
                    self._lease = None
            fresh = self._lease is None
            if fresh:
                self._lease = self.store.grant_lease(self.heartbeat_ttl)
            # The lease is the liveness signal; the value is rewritten only when it says something new
            # (or its time is getting old), so a quiet node costs one lease refresh per beat.
            content = {k: v for k, v in value.items() if k != "time"}
            if fresh or content != self._hb_content or time.monotonic() - self._hb_written >= HEARTBEAT_REWRITE:
                self.store.kv_put(key, report_bytes(value), lease=self._lease)
                self._hb_content = content
                self._hb_written = time.monotonic()
        except StoreError as exc:
            log.warning("agent %s: heartbeat failed: %s", self.node, exc)


def report_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


class _Retry(Exception):
    """Raised after a failed reconcile has been reported, so the work queue retries with backoff."""
