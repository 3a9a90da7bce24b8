"""The scheduling decision: which node gets a VPS. Pure: values in, a decision out.

A node is a candidate when it is Ready, schedulable (not cordoned or drained), matches the
VPS's `nodeSelector` (and its pinned `node`, if any) and has room for the plan:
`capacity x overcommit - allocated` for vCPU and memory, `capacity - allocated` for disk
(disk is never overcommitted). `spread` picks the candidate left least utilised after the
placement; `pack` the one left most utilised. Ties go to the name, so the decision is
deterministic. This module must never do I/O or read a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

PlacementPolicy = Literal["spread", "pack"]
POLICIES: tuple[PlacementPolicy, ...] = ("spread", "pack")


@dataclass(frozen=True)
class Resources:
    vcpus: int = 0
    memoryMiB: int = 0
    diskGiB: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.vcpus + other.vcpus, self.memoryMiB + other.memoryMiB,
                         self.diskGiB + other.diskGiB)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.vcpus - other.vcpus, self.memoryMiB - other.memoryMiB,
                         self.diskGiB - other.diskGiB)

    def fits_in(self, room: Resources) -> bool:
        return self.vcpus <= room.vcpus and self.memoryMiB <= room.memoryMiB and self.diskGiB <= room.diskGiB

    def as_dict(self) -> dict[str, int]:
        return {"vcpus": self.vcpus, "memoryMiB": self.memoryMiB, "diskGiB": self.diskGiB}


@dataclass(frozen=True)
class NodeView:
    """What the scheduler needs to know about one node."""

    name: str
    capacity: Resources
    cpu_overcommit: float = 1.0
    memory_overcommit: float = 1.0
    allocated: Resources = Resources()
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    schedulable: bool = True

    @property
    def limit(self) -> Resources:
        # Floors keep integer arithmetic: 2.5 x 3 vCPU is 7 bookable vCPU, not 7.5.
        return Resources(int(self.capacity.vcpus * self.cpu_overcommit),
                         int(self.capacity.memoryMiB * self.memory_overcommit),
                         self.capacity.diskGiB)

    @property
    def free(self) -> Resources:
        return self.limit - self.allocated


@dataclass(frozen=True)
class Decision:
    """A node name, or None with a reason (a condition reason) and a message for people."""

    node: str | None
    reason: str = ""
    message: str = ""


def _utilisation(used: Resources, limit: Resources) -> float:
    parts = [used.vcpus / max(limit.vcpus, 1), used.memoryMiB / max(limit.memoryMiB, 1),
             used.diskGiB / max(limit.diskGiB, 1)]
    return max(parts)


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def schedule(
    request: Resources,
    nodes: Iterable[NodeView],
    *,
    node_selector: Mapping[str, str] | None = None,
    pinned: str | None = None,
    policy: PlacementPolicy = "spread",
) -> Decision:
    """Choose a node for `request`, or say why none fits."""
    if policy not in POLICIES:
        raise ValueError(f"policy: must be one of {', '.join(POLICIES)}, not {policy!r}")
    selector = node_selector or {}
    all_nodes = sorted(nodes, key=lambda n: n.name)
    matching = [n for n in all_nodes if selector_matches(selector, n.labels)
                and (pinned is None or n.name == pinned)]
    if not matching:
        if pinned is not None:
            return Decision(None, "NodeNotFound", f"node {pinned!r} does not exist or does not match the selector")
        wanted = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return Decision(None, "NoMatchingNode", f"no node matches nodeSelector {wanted or '(none)'}")
    ready = [n for n in matching if n.ready]
    if not ready:
        return Decision(None, "NoReadyNode", f"none of the {len(matching)} matching node(s) is Ready")
    open_ = [n for n in ready if n.schedulable]
    if not open_:
        return Decision(None, "NoSchedulableNode", f"all {len(ready)} ready matching node(s) are cordoned")
    fitting = [n for n in open_ if request.fits_in(n.free)]
    if not fitting:
        largest = max((n.limit for n in open_), key=lambda r: (r.vcpus, r.memoryMiB, r.diskGiB))
        if not request.fits_in(largest):
            return Decision(None, "PlanTooLarge",
                            f"the plan ({_describe(request)}) exceeds every matching node's capacity")
        return Decision(None, "InsufficientCapacity",
                        f"no matching node has room for {_describe(request)} "
                        f"({len(open_)} schedulable node(s) full)")
    if policy == "spread":
        best = min(fitting, key=lambda n: (_utilisation(n.allocated + request, n.limit), n.name))
    else:
        best = min(fitting, key=lambda n: (-_utilisation(n.allocated + request, n.limit), n.name))
    return Decision(best.name)


def _describe(r: Resources) -> str:
    return f"{r.vcpus} vCPU, {r.memoryMiB} MiB, {r.diskGiB} GiB"


def total(requests: Sequence[Resources]) -> Resources:
    out = Resources()
    for r in requests:
        out = out + r
    return out
