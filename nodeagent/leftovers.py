"""What a stopped `hostplane up` leaves on its libvirt, and `hostplane down --purge` removing it.

On a hypervisor the guests outlive their management by design; on a developer machine a
throw-away data dir would leak them. These functions see only what carries the data dir's
cluster id (domains by their metadata, volumes by the cluster's pool), so a purge can never
reach another instance's guests or anything Hostplane did not create.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from nodeagent.events import ensure_event_loop
from nodeagent.hypervisor import _libvirt_quiet
from nodeagent.metadata import from_domain_xml

_STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
           libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_CRASHED: "crashed"}


@dataclass(frozen=True)
class Leftover:
    domain: str
    vps: str
    state: str


def default_pool_name(cluster_id: str) -> str:
    return f"hostplane-{cluster_id[:12]}"


def _open(uri: str) -> libvirt.virConnect:
    ensure_event_loop()
    libvirt.registerErrorHandler(_libvirt_quiet, None)
    return libvirt.open(uri)


def cluster_domains(uri: str, cluster_id: str) -> list[Leftover]:
    """The domains on `uri` whose metadata names `cluster_id`, with their state."""
    conn = _open(uri)
    try:
        out = []
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                meta = from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                if meta is not None and meta.cluster == cluster_id:
                    out.append(Leftover(dom.name(), meta.vps, _STATES.get(dom.state(0)[0], "other")))
        return sorted(out, key=lambda x: x.domain)
    finally:
        conn.close()


def _drop_idle_nat_networks(conn: libvirt.virConnect) -> list[str]:
    """Hostplane's isolated NAT networks no defined domain uses any more (an agent re-creates one
    when it needs it): left active they outlive the instance, and libvirt re-loads them at every start."""
    used: set[str] = set()
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            used |= {s.get("network", "") for s in root.iterfind("devices/interface/source")}
    dropped = []
    for net in conn.listAllNetworks(0):
        name = net.name()
        if not name.startswith("hostplane-nat-") or name in used:
            continue
        with contextlib.suppress(libvirt.libvirtError):
            if net.isActive():
                net.destroy()
            net.undefine()
            dropped.append(name)
    return dropped


def purge_cluster(uri: str, cluster_id: str, pool_name: str | None = None) -> tuple[list[str], list[str]]:
    """Destroy and undefine the cluster's domains, drop NAT networks no domain uses any more, then
    delete the pool's volumes and the pool.

    Returns (domains, volumes) removed. Only domains whose metadata names `cluster_id` are touched.
    """
    conn = _open(uri)
    domains: list[str] = []
    volumes: list[str] = []
    try:
        for dom in conn.listAllDomains(0):
            try:
                meta = from_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            except libvirt.libvirtError:
                continue
            if meta is None or meta.cluster != cluster_id:
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()
            domains.append(dom.name())
        _drop_idle_nat_networks(conn)
        try:
            pool = conn.storagePoolLookupByName(pool_name or default_pool_name(cluster_id))
        except libvirt.libvirtError:
            return domains, volumes
        try:
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
        except libvirt.libvirtError:
            pass  # its directory is gone (the data dir was deleted): only the definition is left
        if pool.isActive():
            for name in pool.listVolumes():
                pool.storageVolLookupByName(name).delete(0)
                volumes.append(str(name))
            pool.destroy()
        pool.undefine()
        return domains, sorted(volumes)
    finally:
        conn.close()
