"""The scheduling decision: table tests for every reason, hypothesis for no overbooking."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.schedule import NodeView, Resources, schedule

SMALL = Resources(1, 1024, 10)


def node(name: str, vcpus: int = 4, mem: int = 8192, disk: int = 100, **kw: object) -> NodeView:
    return NodeView(name=name, capacity=Resources(vcpus, mem, disk), **kw)  # type: ignore[arg-type]


def test_spread_prefers_the_emptiest_node() -> None:
    """spread places on the node left least utilised."""
    nodes = [node("a", allocated=Resources(2, 4096, 20)), node("b"), node("c", allocated=Resources(1, 1024, 10))]
    assert schedule(SMALL, nodes).node == "b"


def test_pack_prefers_the_fullest_node_that_fits() -> None:
    """pack places on the node left most utilised that still has room."""
    nodes = [node("a", allocated=Resources(2, 4096, 20)), node("b"), node("c", allocated=Resources(4, 8192, 10))]
    assert schedule(SMALL, nodes, policy="pack").node == "a"


def test_overcommit_multiplies_cpu_and_memory_not_disk() -> None:
    """Room is capacity x overcommit - allocated for CPU and memory, capacity - allocated for disk."""
    n = node("a", vcpus=2, mem=1024, disk=10, cpu_overcommit=4.0, memory_overcommit=2.0,
             allocated=Resources(7, 1024, 0))
    assert schedule(Resources(1, 1024, 10), [n]).node == "a"
    assert schedule(Resources(2, 1024, 10), [n]).reason == "InsufficientCapacity"
    assert schedule(Resources(1, 1024, 11), [n]).reason == "PlanTooLarge"


@pytest.mark.parametrize(("nodes", "kw", "reason"), [
    ([], {}, "NoMatchingNode"),
    ([node("a", labels={"region": "eu"})], {"node_selector": {"region": "us"}}, "NoMatchingNode"),
    ([node("a")], {"pinned": "b"}, "NodeNotFound"),
    ([node("a", ready=False)], {}, "NoReadyNode"),
    ([node("a", schedulable=False)], {}, "NoSchedulableNode"),
    ([node("a", allocated=Resources(16, 8192, 0))], {}, "InsufficientCapacity"),
])
def test_no_room_says_why(nodes: list[NodeView], kw: dict[str, object], reason: str) -> None:
    """When nothing fits the decision names the reason and explains it."""
    d = schedule(SMALL, nodes, **kw)  # type: ignore[arg-type]
    assert d.node is None and d.reason == reason and d.message


def test_selector_and_pin() -> None:
    """nodeSelector and a pinned node restrict the candidates."""
    nodes = [node("a", labels={"region": "eu"}), node("b", labels={"region": "us"})]
    assert schedule(SMALL, nodes, node_selector={"region": "us"}).node == "b"
    assert schedule(SMALL, nodes, pinned="a").node == "a"


def test_unknown_policy_is_refused() -> None:
    """An unknown policy is an error naming the field."""
    with pytest.raises(ValueError, match="policy"):
        schedule(SMALL, [node("a")], policy="random")  # type: ignore[arg-type]


REQ = st.builds(Resources, st.integers(1, 4), st.integers(128, 4096), st.integers(1, 80))
OPS = st.lists(st.one_of(st.tuples(st.just("add"), REQ), st.tuples(st.just("del"), st.integers(0, 50))),
               max_size=60)


@given(ops=OPS, policy=st.sampled_from(["spread", "pack"]), sizes=st.lists(st.integers(1, 8), min_size=1, max_size=5))
def test_no_overbooking_under_any_sequence(ops: list[tuple[str, object]], policy: str, sizes: list[int]) -> None:
    """Whatever the sequence of placements and releases, no node exceeds its limit and each VPS has one node."""
    nodes = {f"n{i}": node(f"n{i}", vcpus=s, mem=s * 2048, disk=s * 50, cpu_overcommit=2.0)
             for i, s in enumerate(sizes)}
    placed: dict[int, tuple[str, Resources]] = {}
    seq = 0
    for op, arg in ops:
        if op == "add":
            assert isinstance(arg, Resources)
            d = schedule(arg, nodes.values(), policy=policy)  # type: ignore[arg-type]
            if d.node is None:
                assert all(not arg.fits_in(n.free) for n in nodes.values())
                continue
            n = nodes[d.node]
            nodes[d.node] = replace(n, allocated=n.allocated + arg)
            placed[seq] = (d.node, arg)
            seq += 1
        elif placed:
            assert isinstance(arg, int)
            key = sorted(placed)[arg % len(placed)]
            name, req = placed.pop(key)
            nodes[name] = replace(nodes[name], allocated=nodes[name].allocated - req)
        for n in nodes.values():
            assert n.allocated.fits_in(n.limit)
    per_node: dict[str, Resources] = {}
    for name, req in placed.values():
        per_node[name] = per_node.get(name, Resources()) + req
    for name, n in nodes.items():
        assert per_node.get(name, Resources()) == n.allocated


@given(req=REQ, sizes=st.lists(st.integers(1, 8), min_size=1, max_size=6))
def test_decision_is_deterministic_and_order_free(req: Resources, sizes: list[int]) -> None:
    """The decision does not depend on the order the nodes are listed in."""
    nodes = [node(f"n{i}", vcpus=s) for i, s in enumerate(sizes)]
    assert schedule(req, nodes) == schedule(req, list(reversed(nodes)))
