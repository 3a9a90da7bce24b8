"""The controllers' own etcd keys and the names they put on objects. Pure string functions.

    <root>/alloc/vps/<vps>          Booking: the VPS's node, size, MAC and IPs (one per VPS)
    <root>/alloc/nodes/<node>       NodeAllocation: the sum of the node's bookings
    <root>/alloc/ips/<pool>/<ip>    the VPS holding that address (IPv4 and IPv6)
    <root>/alloc/macs/<mac>         the VPS holding that MAC address

Every booking, resize and release writes all of its keys in one transaction, so the sums,
the addresses and the bookings can never disagree. This module must never do I/O.
"""

from __future__ import annotations

FINALIZER = "hostplane.io/domain"
FORCE_ORPHAN_ANNOTATION = "hostplane.io/force-orphan"
DRAIN_ANNOTATION = "hostplane.io/drain"
ELECTION_NAME = "controllers"
EVENT_KINDS = ("VPS", "Node")


def event_object_prefix(events_prefix: str, kind: str, name: str) -> str:
    return f"{events_prefix}{kind}/{name}/"
