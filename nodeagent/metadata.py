"""Hostplane's record inside a domain's libvirt `<metadata>`: whose domain it is and what was in flight.

The uid marks the domain as Hostplane's (a domain without it is never touched) and the cluster id
says which cluster's (another cluster's domain is never touched). The rest is intent
that must survive an agent restart: when a graceful stop began and why, crash-loop count, the
generations the disk and the last boot satisfy, hashes of the applied config and seed.
Built and parsed with ElementTree; never by string formatting.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields, replace
from typing import Any, cast

from nodeagent.plan import DEFAULT_GRACE_SECONDS, StopIntent

NS = "https://hostplane.io/xmlns/domain/1"
PREFIX = "hp"
ROOT_TAG = "instance"

_STOP_INTENTS = ("stop", "restart", "rebuild", "delete", "suspend")


@dataclass(frozen=True)
class Meta:
    vps: str
    uid: str
    config_hash: str | None = None
    seed_hash: str | None = None
    rebuild_generation: int = 0
    restart_generation: int = 0
    stop_intent: StopIntent | None = None
    stop_requested_at: float | None = None
    last_acpi_at: float | None = None
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    paused_at: float | None = None
    crash_count: int = 0
    crashed_at: float | None = None
    last_start_at: float | None = None
    # The balloon target last set: a guest without a balloon driver never reports reaching it.
    memory_target_mib: int | None = None
    # The id of the cluster that created the domain: another cluster's agent never touches it.
    cluster: str | None = None

    def with_(self, **changes: Any) -> Meta:
        return replace(self, **changes)

    def element(self, *, namespaced: bool = True) -> ET.Element:
        """The `<hp:instance>` element for a domain's `<metadata>` (bare names for virDomainSetMetadata)."""
        ns = f"{{{NS}}}" if namespaced else ""
        root = ET.Element(f"{ns}{ROOT_TAG}")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            child = ET.SubElement(root, f"{ns}{f.name}")
            child.text = repr(value) if isinstance(value, float) else str(value)
        return root

    def to_xml(self) -> str:
        """XML for virDomainSetMetadata, which itself puts the element in our namespace."""
        return ET.tostring(self.element(namespaced=False), encoding="unicode")


def _parse_value(name: str, text: str) -> object:
    kind = {f.name: f.type for f in fields(Meta)}[name]
    if "float" in str(kind):
        return float(text)
    if "int" in str(kind):
        return int(text)
    if name == "stop_intent":
        return text if text in _STOP_INTENTS else None
    return text


def from_element(el: ET.Element) -> Meta | None:
    """Parse `<hp:instance>`; None if it lacks the uid or vps (then the domain is not ours)."""
    values: dict[str, object] = {}
    known = {f.name for f in fields(Meta)}
    for child in el:
        tag = child.tag.split("}", 1)[-1]
        if tag in known and child.text is not None:
            try:
                values[tag] = _parse_value(tag, child.text)
            except ValueError:
                continue
    if not values.get("uid") or not values.get("vps"):
        return None
    return Meta(**cast(dict[str, Any], values))


def from_domain_xml(domain_xml: str) -> Meta | None:
    """The Hostplane metadata of a domain's XML, or None when the domain is not Hostplane's."""
    root = ET.fromstring(domain_xml)
    el = root.find(f"metadata/{{{NS}}}{ROOT_TAG}")
    return None if el is None else from_element(el)
