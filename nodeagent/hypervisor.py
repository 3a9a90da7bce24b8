"""The libvirt side of one node: read what a VPS has (`read`), carry out planned actions (`execute`).

Holds one libvirt connection (thread-safe) and the agent's storage pool. Every action re-reads
what it needs and is safe to repeat after a crash at any line: intent is written to the domain's
metadata before the power call it describes, so a restarted agent resumes rather than restarts.
It never touches a domain without Hostplane metadata for the uid it was asked about, nor one whose
metadata names another cluster.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from nodeagent import cloudinit, domain_xml, hostnet, netfilter
from nodeagent import plan as P
from nodeagent.errors import ActionFailed, AgentError, HypervisorUnavailable, NameConflict
from nodeagent.events import ensure_event_loop
from nodeagent.hostnet import HostNetwork
from nodeagent.images import ImagePolicy
from nodeagent.metadata import NS, PREFIX, Meta, from_domain_xml
from nodeagent.storage import Storage
from specs.domain import DomainSpec

log = logging.getLogger(__name__)


@functools.cache
def _may_raise_memlock() -> bool:
    """Whether this host lets libvirt raise a process's locked-memory limit (CAP_SYS_RESOURCE).

    With a `<memtune><hard_limit>` libvirt sets QEMU's RLIMIT_MEMLOCK to that limit before exec; a
    host without the capability (a container with a reduced capability set) then fails every start
    ("cannot limit locked memory ... Operation not permitted"). There the domains run without the
    cgroup limit, said once in the log; their memory is still bounded by what the host plugs in.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard + 4096))
    except (ValueError, OSError):
        log.warning("this host may not raise the locked-memory limit (no CAP_SYS_RESOURCE): VPS run without "
                    "the <memtune> hard limit, bounded only by the memory the host plugs in")
        return False
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
    return True

def _libvirt_quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; errors reach us as exceptions instead."""


@dataclass
class Observation:
    """`Actual` for the planner plus what reporting needs (the libvirt state and reason)."""

    actual: P.Actual
    meta: Meta | None
    state: int | None = None
    reason: int | None = None
    conflict: bool = False


@dataclass(frozen=True)
class NodeFacts:
    cpus: int
    memory_mib: int
    free_memory_mib: int
    pool_capacity_gib: float
    pool_available_gib: float
    managed: int
    unmanaged: int
    foreign: int = 0


def _kvm_usable_by_guests(conn: libvirt.virConnect) -> bool:
    """Whether QEMU, as the user libvirt runs it as, may open /dev/kvm.

    libvirt's capabilities are probed as the daemon's user; a system daemon runs guests as an
    unprivileged user (Debian: libvirt-qemu in group kvm), which needs the group permission that
    udev normally sets. Without it (a host or container without udev) KVM fails at start, so TCG is used.
    """
    import grp
    import stat

    try:
        st = os.stat("/dev/kvm")
    except OSError:
        return False
    try:
        uri = conn.getURI()
    except libvirt.libvirtError:
        uri = ""
    system = uri.startswith("qemu:///system") or (uri.startswith("qemu:///session") and os.geteuid() == 0)
    if not system:
        return os.access("/dev/kvm", os.R_OK | os.W_OK)
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH) == (stat.S_IROTH | stat.S_IWOTH):
        return True
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return False
    return st.st_gid == kvm_gid and st.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == (stat.S_IRGRP | stat.S_IWGRP)


class Hypervisor:
    def __init__(self, uri: str, data_dir: Path, *, pool_name: str | None = None, network: str = "user",
                 netns: str | None = None, cluster_id: str | None = None,
                 image_policy: ImagePolicy | None = None) -> None:
        self.uri = uri
        self.image_policy = image_policy or ImagePolicy.for_data_dir(data_dir)
        self.data_dir = data_dir
        self._pool_name = pool_name
        # Set before `connect`; domains of another cluster are never touched.
        self.cluster_id = cluster_id
        self.network = network
        self.hostnet = HostNetwork(netns)
        self._lock = threading.Lock()
        self.conn: libvirt.virConnect | None = None
        self.storage: Storage | None = None
        self.simulated = False
        self.domain_type = "qemu"
        self.logs_dir = data_dir / "logs"
        # libvirt calls under way, by thread: (what, monotonic start). A call cannot be interrupted,
        # but one that does not return is seen (`stuck`) and reported by the independent heartbeat.
        self._inflight: dict[int, tuple[str, float]] = {}
        self._inflight_lock = threading.Lock()
        self.consoles_dir = data_dir / "consoles"

    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Mark a libvirt call as under way for the watchdog."""
        tid = threading.get_ident()
        with self._inflight_lock:
            outer = self._inflight.get(tid)
            if outer is None:
                self._inflight[tid] = (what, time.monotonic())
        try:
            yield
        finally:
            if outer is None:
                with self._inflight_lock:
                    self._inflight.pop(tid, None)

    def stuck(self, limit: float) -> tuple[str, float] | None:
        """The longest libvirt call running for more than `limit` seconds: (what, seconds)."""
        now = time.monotonic()
        with self._inflight_lock:
            calls = list(self._inflight.values())
        worst = max(((w, now - t) for w, t in calls), key=lambda x: x[1], default=None)
        return worst if worst is not None and worst[1] > limit else None

    @property
    def pool_name(self) -> str:
        """The pool is the cluster's: by default its name carries the cluster id, so another
        cluster on the same libvirt never puts disks in (or deletes volumes from) this one."""
        if self._pool_name:
            return self._pool_name
        return f"hostplane-{self.cluster_id[:12]}" if self.cluster_id else "hostplane"

    def ours(self, meta: Meta | None) -> bool:
        """A domain of this cluster. Metadata without a cluster id (written before ids existed) is
        ours only when this cluster names its uid (a desired entry or a tombstone): see `read`."""
        return meta is not None and (meta.cluster is None or meta.cluster == self.cluster_id)

    def foreign(self, meta: Meta | None) -> bool:
        return meta is not None and meta.cluster is not None and meta.cluster != self.cluster_id

    # ------------------------------------------------------------ connection

    def connect(self) -> libvirt.virConnect:
        """Open the connection (or keep the live one), probe QEMU and make sure the pool exists."""
        with self.call("connect (open, probe QEMU capabilities, storage pool)"):
            return self._connect()

    def _connect(self) -> libvirt.virConnect:
        ensure_event_loop()
        libvirt.registerErrorHandler(_libvirt_quiet, None)
        if self.conn is not None and self.alive():
            return self.conn
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"cannot open {self.uri}: {exc}") from exc
        self.simulated = str(conn.getType()).upper() == "TEST"
        if not self.simulated:
            # A daemon that stops answering fails our calls within ~30 s instead of never.
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(5, 6)
        self.domain_type = "test" if self.simulated else self._virt_type(conn)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pool_dir = self.data_dir / "pool"
        try:
            if self.storage is None:
                self.storage = Storage(conn, pool_name=self.pool_name, pool_dir=pool_dir,
                                       work_dir=self.data_dir / "downloads", simulated=self.simulated,
                                       image_policy=self.image_policy)
            else:
                self.storage.reattach(conn)
        except AgentError:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        # Guests' serial consoles: readable by the hypervisor's user and group, never by everyone.
        self.logs_dir.chmod(0o750)
        # Graphics sockets: only the hypervisor's user (and root) may connect to them.
        self.consoles_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.simulated and os.geteuid() == 0 and pool_dir.exists():
            # The hypervisor daemon may run as another user (a session daemon): let it write serial logs.
            st = pool_dir.stat()
            os.chown(self.logs_dir, st.st_uid, st.st_gid)
            uid, gid = st.st_uid, st.st_gid
            if uid == 0:
                # A system daemon builds the pool as root but runs QEMU as its own user (Debian:
                # libvirt-qemu), which creates the graphics sockets itself.
                with contextlib.suppress(KeyError):
                    import pwd

                    qemu = pwd.getpwnam("libvirt-qemu")
                    uid, gid = qemu.pw_uid, qemu.pw_gid
            os.chown(self.consoles_dir, uid, gid)
        self.conn = conn
        self.hostnet.ready = False
        return conn

    @staticmethod
    def _virt_type(conn: libvirt.virConnect) -> str:
        try:
            conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        except libvirt.libvirtError:
            return "qemu"
        return "kvm" if _kvm_usable_by_guests(conn) else "qemu"

    def alive(self) -> bool:
        conn = self.conn
        if conn is None:
            return False
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _conn(self) -> libvirt.virConnect:
        if self.conn is None:
            raise HypervisorUnavailable(f"not connected to {self.uri}")
        return self.conn

    def _storage(self) -> Storage:
        if self.storage is None:
            raise HypervisorUnavailable(f"not connected to {self.uri}")
        return self.storage

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    # --------------------------------------------------------------- reading

    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self._conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorUnavailable(f"lookup {name}: {exc}") from exc

    def all_domains(self) -> list[tuple[libvirt.virDomain, Meta | None]]:
        with self.call("list domains"):
            return self._all_domains()

    def _all_domains(self) -> list[tuple[libvirt.virDomain, Meta | None]]:
        out = []
        for dom in self._conn().listAllDomains(0):
            try:
                out.append((dom, from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))))
            except libvirt.libvirtError:
                continue  # vanished while listing
        return out

    def read(self, uid: str, *, spec: DomainSpec | None = None) -> Observation:
        """Everything the planner needs about the domain and volumes derived from `uid`."""
        with self.call(f"read {domain_xml.domain_name(uid)}"):
            return self._read(uid, spec)

    def _read(self, uid: str, spec: DomainSpec | None) -> Observation:
        st = self._storage()
        name = domain_xml.domain_name(uid)
        base_present = spec is not None and st.base_present(spec.image)
        disk = st.root_gib(name)
        seed = st.seed_present(name)
        dom = self.lookup(name)
        if dom is None:
            return Observation(P.Actual(base_present=base_present, disk_gib=disk, seed_present=seed), None)
        try:
            meta = from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            state, reason = dom.state(0)
            active = state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)
            xml = dom.XMLDesc(0) if active else dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            sizes = domain_xml.read_sizes(xml)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return Observation(P.Actual(base_present=base_present, disk_gib=disk, seed_present=seed), None)
            raise HypervisorUnavailable(f"read {name}: {exc}") from exc
        if meta is None or meta.uid != uid or self.foreign(meta):
            return Observation(P.Actual(defined=True, managed=False), None, state, reason, conflict=True)
        power: P.Power
        if state == libvirt.VIR_DOMAIN_PAUSED or state == libvirt.VIR_DOMAIN_PMSUSPENDED:
            power = "paused"
        elif state == libvirt.VIR_DOMAIN_CRASHED or (
                state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED):
            power = "crashed"
        elif state == libvirt.VIR_DOMAIN_SHUTOFF:
            power = "shutoff"
        else:
            power = "running"
        off_by_guest = (state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN
                        and meta.stop_intent is None)
        memory, requested = sizes.memory_mib, sizes.requested_memory_mib
        if active and meta.memory_target_mib is not None and sizes.legacy_memory:
            # A legacy domain's balloon settles near its target.
            memory = requested = meta.memory_target_mib
        elif active and meta.memory_target_mib is not None and self.simulated:
            # The test driver cannot update the device: what was asked is in the metadata.
            requested = meta.memory_target_mib
        actual = P.Actual(
            defined=True, managed=True, power=power, off_by_guest=off_by_guest,
            vcpus=sizes.vcpus, max_vcpus=sizes.max_vcpus, memory_mib=memory,
            max_memory_mib=sizes.max_memory_mib, requested_memory_mib=requested,
            legacy_memory=sizes.legacy_memory, config_hash=meta.config_hash, seed_hash=meta.seed_hash,
            rebuild_generation=meta.rebuild_generation, restart_generation=meta.restart_generation,
            stop_intent=meta.stop_intent, stop_requested_at=meta.stop_requested_at, last_acpi_at=meta.last_acpi_at,
            grace_seconds=meta.grace_seconds, paused_at=meta.paused_at, crash_count=meta.crash_count,
            crashed_at=meta.crashed_at, last_start_at=meta.last_start_at,
            base_present=base_present, disk_gib=disk, seed_present=seed,
            filter_params=self._read_filter(dom, xml, spec),
        )
        return Observation(actual, meta, state, reason)

    def facts(self) -> NodeFacts:
        with self.call("node facts"):
            return self._facts()

    def _facts(self) -> NodeFacts:
        conn = self._conn()
        info = conn.getInfo()
        cap, avail = self._storage().capacity()
        managed = unmanaged = foreign = 0
        for _, meta in self.all_domains():
            if meta is None:
                unmanaged += 1
            elif self.foreign(meta):
                foreign += 1
            else:
                managed += 1
        return NodeFacts(cpus=int(info[2]), memory_mib=int(info[1]),
                         free_memory_mib=int(conn.getFreeMemory()) // 1024**2,
                         pool_capacity_gib=round(cap / 1024**3, 2), pool_available_gib=round(avail / 1024**3, 2),
                         managed=managed, unmanaged=unmanaged, foreign=foreign)

    # -------------------------------------------------------------- actions

    def _set_meta(self, dom: libvirt.virDomain, meta: Meta) -> None:
        meta = meta.with_(cluster=self.cluster_id)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, meta.to_xml(), PREFIX, NS, flags)

    def _boot(self, spec: DomainSpec, name: str) -> domain_xml.Boot:
        st = self._storage()
        base = st.base_paths(spec.image) if (spec.image.kernel or spec.image.initrd) else None
        return domain_xml.Boot(
            domain_type=self.domain_type, root_disk=st.root_path(name), seed=st.seed_path(name),
            serial_log=str(self.logs_dir / f"{name}.log"),
            kernel=base.kernel if base else None, initrd=base.initrd if base else None,
            arch="i686" if self.simulated else "x86_64", machine=None if self.simulated else "pc",
            network=self.network, guest_agent=not self.simulated,
            graphics_socket=str(self.consoles_dir / f"{name}.vnc"),
            memory_limit=self._memory_tuning(),
        )

    def _memory_tuning(self) -> bool:
        """libvirt refuses `<memtune>` in session mode: no cgroups there. As root, a plain qemu:///session is the
        system daemon; one reached through `?socket=` is a private (unprivileged) session daemon. The test
        driver takes the XML as it is; a real host must also be allowed to raise QEMU's locked-memory limit,
        which libvirt sets to the hard limit before it starts QEMU."""
        uri = self.uri
        if uri.startswith("qemu:///session") and not (os.geteuid() == 0 and "socket=" not in uri):
            return False
        return self.simulated or _may_raise_memlock()

    # ------------------------------------------------------------- networking

    def prepare_network(self, specs: list[DomainSpec], *, force: bool = False) -> None:
        """Filters, host guard and NAT networks the given entries need (`HostNetwork.prepare`)."""
        self.hostnet.prepare(self._conn(), specs, simulated=self.simulated, force=force)

    def network_housekeeping(self, specs: list[DomainSpec]) -> list[str]:
        """At a resync: repair filters, guard, NAT networks and VLANs; delete bindings of stopped taps."""
        managed = [(dom, meta) for dom, meta in self.all_domains() if meta is not None]
        running = [dom.name() for dom, _ in managed if dom.isActive()]
        # Only entries whose domain exists: an entry stuck before its define changes nothing on the host.
        defined = {meta.uid for _, meta in managed}
        return self.hostnet.housekeeping(self._conn(), [s for s in specs if s.uid in defined], running,
                                         simulated=self.simulated)

    def _read_filter(self, dom: libvirt.virDomain, xml: str, spec: DomainSpec | None) -> netfilter.Params | None:
        if spec is None:
            return None
        return hostnet.read_filter(dom, xml, spec.network.mac, simulated=self.simulated)

    def _port_vlan(self, spec: DomainSpec) -> tuple[str, str, int] | None:
        return None if self.simulated else hostnet.port_vlan(spec)

    def _start_on_vlan(self, action: P.Start, spec: DomainSpec, name: str, uid: str,
                       note: Callable[[str, str], None]) -> None:
        """Boot paused, put the tap on its VLAN, then let it run: no frame leaves on the untagged network."""
        vlan = self._port_vlan(spec)
        assert vlan is not None
        self._power(P.Start(action.restart_generation, action.at, paused=True, after_crash=action.after_crash),
                    name, uid, note)
        self.hostnet.ensure_port_vlan(*vlan)
        if not action.paused:
            dom, meta = self._domain(name, uid)
            self._set_meta(dom, meta.with_(paused_at=None))
            dom.resume()

    def _update_filter(self, dom: libvirt.virDomain, mac: str, action: P.UpdateFilter) -> None:
        hostnet.update_filter(self._conn(), dom, mac, action.params, live=action.live, simulated=self.simulated)

    def execute(self, action: P.Action, spec: DomainSpec | None, uid: str, vps: str,
                note: Callable[[str, str], None]) -> None:
        """Carry out one planned action; `note(kind, message)` records something worth reporting."""
        name = domain_xml.domain_name(uid)
        st = self._storage()
        try:
            with self.call(f"{action.name} on {name}"):
                self._execute(action, spec, uid, vps, name, st, note)
        except libvirt.libvirtError as exc:
            if not self.alive():
                raise HypervisorUnavailable(f"libvirt connection lost during {action.name}: {exc}") from exc
            raise ActionFailed(f"{action.name} on {name}: {exc.get_error_message()}") from exc

    def _domain(self, name: str, uid: str) -> tuple[libvirt.virDomain, Meta]:
        dom = self.lookup(name)
        if dom is None:
            raise ActionFailed(f"domain {name} is not defined")
        meta = from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        if meta is None or meta.uid != uid or self.foreign(meta):
            raise NameConflict(f"domain {name} exists but is not this cluster's; it is left alone")
        return dom, meta

    def _execute(self, action: P.Action, spec: DomainSpec | None, uid: str, vps: str, name: str,
                 st: Storage, note: Callable[[str, str], None]) -> None:
        if isinstance(action, P.EnsureImage):
            assert spec is not None
            st.ensure_image(spec.image)
        elif isinstance(action, P.CreateRootDisk):
            assert spec is not None
            st.create_root(name, spec.image, action.size_gib)
        elif isinstance(action, P.RecreateRootDisk):
            assert spec is not None
            dom, meta = self._domain(name, uid)
            st.recreate_root(name, spec.image, action.size_gib)
            self._set_meta(dom, meta.with_(rebuild_generation=action.rebuild_generation))
        elif isinstance(action, P.GrowRootDisk):
            assert spec is not None
            st.grow_root(name, action.size_gib, self.lookup(name), spec.image)
        elif isinstance(action, P.BuildSeed):
            assert spec is not None
            st.write_seed(name, cloudinit.build_iso(cloudinit.seed_files(spec)))
            dom = self.lookup(name)
            if dom is not None:
                dom, meta = self._domain(name, uid)
                self._set_meta(dom, meta.with_(seed_hash=action.seed_hash))
        elif isinstance(action, P.Define):
            assert spec is not None
            self.prepare_network([spec])
            self._define(action, spec, uid, name)
        elif isinstance(action, P.UpdateFilter):
            assert spec is not None
            dom, _meta = self._domain(name, uid)
            self._update_filter(dom, spec.network.mac, action)
        elif isinstance(action, P.Start) and spec is not None and self._port_vlan(spec) is not None:
            self._start_on_vlan(action, spec, name, uid, note)
        elif isinstance(action, P.Resume) and spec is not None and (vlan := self._port_vlan(spec)) is not None:
            # A guest left paused by a failed VLAN step runs only once its port is on the VLAN.
            self.hostnet.ensure_port_vlan(*vlan)
            self._power(action, name, uid, note)
        else:
            self._power(action, name, uid, note)

    def _define(self, action: P.Define, spec: DomainSpec, uid: str, name: str) -> None:
        dom = self.lookup(name)
        meta = Meta(vps=spec.vps, uid=uid)
        uuid = None
        if dom is not None:
            uuid = dom.UUIDString()
            old = from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if old is None or old.uid != uid or self.foreign(old):
                raise NameConflict(f"domain {name} exists but is not this cluster's; it is left alone")
            meta = old
        meta = meta.with_(vps=spec.vps, cluster=self.cluster_id, config_hash=action.config_hash,
                          seed_hash=action.seed_hash,
                          rebuild_generation=action.rebuild_generation,
                          restart_generation=action.restart_generation,
                          grace_seconds=float(spec.shutdownGraceSeconds))
        if dom is None or not dom.isActive():
            meta = meta.with_(memory_target_mib=spec.memoryMiB)
        try:
            xml = domain_xml.build(spec, meta, self._boot(spec, name), uuid=uuid)
        except ValueError as exc:
            raise ActionFailed(f"cannot define {name}: {exc}") from exc
        new = self._conn().defineXML(xml)
        if new.isActive():
            # defineXML changes the persistent config only; keep the live metadata in step.
            self._set_meta(new, meta)

    def _power(self, action: P.Action, name: str, uid: str, note: Callable[[str, str], None]) -> None:
        if isinstance(action, P.DeleteVolumes):
            self._storage().delete_domain_volumes(name)
            return
        dom, meta = self._domain(name, uid)
        if isinstance(action, P.Start):
            meta = meta.with_(restart_generation=max(meta.restart_generation, action.restart_generation),
                              stop_intent=None, stop_requested_at=None, last_acpi_at=None, crashed_at=None,
                              last_start_at=action.at, paused_at=action.at if action.paused else None)
            self._set_meta(dom, meta)
            if not dom.isActive():
                if action.paused and self.simulated:
                    # The test driver knows no START_PAUSED: start, then pause at once.
                    dom.create()
                    dom.suspend()
                else:
                    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if action.paused else 0)
        elif isinstance(action, P.RequestShutdown):
            now = time.time()
            self._set_meta(dom, meta.with_(
                stop_intent=action.intent, last_acpi_at=now, grace_seconds=action.grace_seconds,
                stop_requested_at=now if action.first or meta.stop_requested_at is None else meta.stop_requested_at))
            if dom.isActive():
                try:
                    if self.simulated:
                        dom.shutdown()  # the test driver knows no ACPI flag
                    else:
                        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                        raise
        elif isinstance(action, P.Destroy):
            if meta.stop_intent is None:
                self._set_meta(dom, meta.with_(stop_intent="stop"))
            if dom.isActive():
                dom.destroy()
        elif isinstance(action, P.Pause):
            self._set_meta(dom, meta.with_(paused_at=action.at))
            if dom.state(0)[0] == libvirt.VIR_DOMAIN_RUNNING:
                dom.suspend()
        elif isinstance(action, P.Resume):
            if not action.for_stop:
                self._set_meta(dom, meta.with_(paused_at=None))
            if dom.state(0)[0] in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
                dom.resume()
                self._sync_clock(dom, note)
        elif isinstance(action, P.SetVcpus):
            dom.setVcpusFlags(action.vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            dom.setVcpusFlags(action.vcpus, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        elif isinstance(action, P.GrowMemory):
            self._grow_memory(dom, meta, action.memory_mib)
        elif isinstance(action, P.RecordIntent):
            self._set_meta(dom, meta.with_(**{action.key: action.value}))
        elif isinstance(action, P.RecordCrash):
            self._set_meta(dom, meta.with_(crashed_at=action.crashed_at, crash_count=meta.crash_count + 1))
        elif isinstance(action, P.ForgetCrashes):
            self._set_meta(dom, meta.with_(crash_count=0))
        elif isinstance(action, P.Undefine):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        else:
            raise ActionFailed(f"unknown action {action.name}")

    def _grow_memory(self, dom: libvirt.virDomain, meta: Meta, total_mib: int) -> None:
        """Raise the cgroup limit, then ask the virtio-mem device to plug (ADR 013); the guest's
        acceptance shows as the device's <current>. The config keeps the boot memory: the next define
        boots with the plan's. A legacy domain only gets its balloon target raised."""
        live = libvirt.VIR_DOMAIN_AFFECT_LIVE
        xml = dom.XMLDesc(0)
        if domain_xml.read_sizes(xml).legacy_memory:
            dom.setMemoryFlags(total_mib * 1024, live)
            self._set_meta(dom, meta.with_(memory_target_mib=total_mib))
            return
        update = domain_xml.virtio_mem_update(xml, total_mib)
        if update is None:
            raise ActionFailed(f"{dom.name()} has no virtio-mem device; its memory grows at the next define")
        device, total = update
        if self._memory_tuning():
            dom.setMemoryParameters({"hard_limit": domain_xml.hard_limit_mib(total) * 1024}, live)
        if self.simulated:
            # The test driver cannot update devices: it stands for a guest that accepts the growth, shown
            # as its current memory (what `read_sizes` falls back to without a device <current>).
            self._set_meta(dom, meta.with_(memory_target_mib=total))
            dom.setMemoryFlags(total * 1024, live)
            return
        dom.updateDeviceFlags(device, live)

    @staticmethod
    def _sync_clock(dom: libvirt.virDomain, note: Callable[[str, str], None]) -> None:
        """After a pause the guest clock is behind; only a guest agent can set it."""
        try:
            now = time.time()
            dom.setTime({"seconds": int(now), "nseconds": int((now % 1) * 1e9)}, 0)
            note("ClockSynced", "guest clock set after unpause")
        except libvirt.libvirtError as exc:
            note("ClockNotSynced", f"guest clock not re-synced after unpause (no guest agent): "
                                   f"{exc.get_error_message()}")

    def orphan_volumes(self, wanted: Callable[[str], bool]) -> dict[str, list[str]]:
        """Root disks and seeds in this cluster's pool whose domain is gone and that `wanted(domain_name)`
        does not claim, by domain name. Only listed: deleting one needs a tombstone."""
        out: dict[str, list[str]] = {}
        for vol in self._storage().volume_names():
            if not vol.startswith("hp-"):
                continue
            owner = vol.removesuffix("-root.qcow2").removesuffix("-seed.iso")
            if owner == vol or wanted(owner) or self.lookup(owner) is not None:
                continue
            out.setdefault(owner, []).append(vol)
        return out
