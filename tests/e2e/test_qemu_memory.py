"""Memory on real QEMU (ADR 013): a guest has exactly its plan's memory, grows live by virtio-mem, and cannot
take more by unloading its balloon driver."""

from __future__ import annotations

import re

import pytest

from nodeagent.domain_xml import QEMU_OVERHEAD_MIB, domain_name
from tests.e2e.guest.session import qemu_pids
from tests.e2e.test_qemu_agent import Harness, _ready, harness  # noqa: F401  (fixture)
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.qemu

NANO_MIB = 256


def memtotals(log: str) -> list[int]:
    """MemTotal (kB) lines the test guest printed, in order."""
    return [int(x) for x in re.findall(r"hostplane-guest: memtotal (\d+) kB", log)]


def rss_mib(name: str) -> int:
    pids = qemu_pids(name + ",")
    assert len(pids) == 1, pids
    with open(f"/proc/{pids[0]}/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.timeout(300)
def test_nano_boots_with_its_plan_and_grows_live_to_1_gib(harness: Harness) -> None:  # noqa: F811
    """A 256 MiB VPS sees <= 256 MiB; a resize to 1 GiB is plugged live (no reboot) and reported as plugged."""
    h = harness
    spec = h.spec(memoryMiB=NANO_MIB, maxMemoryMiB=2048)
    name = domain_name(spec.uid)
    gen = h.put(spec)
    h.wait(_ready(gen), "running", timeout=90)
    wait_for(lambda: memtotals(h.serial(spec)), timeout=90, what="MemTotal printed at boot")
    assert memtotals(h.serial(spec))[0] <= NANO_MIB * 1024
    obs = h.observed()
    assert obs is not None and obs.memoryMiB == NANO_MIB

    boots = h.serial(spec).count("hostplane-guest: booted kernel")
    gen = h.put(spec.model_copy(update={"memoryMiB": 1024}))
    obs = h.wait(lambda o: _ready(gen)(o) and o.memoryMiB == 1024, "1 GiB plugged", timeout=90)
    assert not any(c.type == "MemoryGrowsAtReboot" and c.status == "True" for c in obs.conditions)
    # The guest prints MemTotal every 10 s: it reaches ~1 GiB (less what the kernel keeps) without a reboot.
    wait_for(lambda: memtotals(h.serial(spec))[-1] > (1024 - 128) * 1024, timeout=60, what="MemTotal ~1 GiB")
    assert memtotals(h.serial(spec))[-1] <= 1024 * 1024
    assert h.serial(spec).count("hostplane-guest: booted kernel") == boots
    live = h.conn.lookupByName(name).XMLDesc(0)
    assert f"<current unit='KiB'>{(1024 - NANO_MIB) * 1024}</current>" in live

    # Memory is never taken away live: a smaller plan leaves the running guest as it is.
    gen = h.put(spec)
    obs = h.wait(lambda o: o.observedGeneration == gen, "smaller plan seen", timeout=60)
    assert obs.memoryMiB == 1024


@pytest.mark.timeout(300)
def test_guest_without_balloon_driver_cannot_exceed_its_plan(harness: Harness) -> None:  # noqa: F811
    """Unloading the balloon driver and filling RAM leaves MemTotal and QEMU's RSS at the plan + overhead."""
    h = harness
    script = ("#!/bin/sh\nrmmod virtio_balloon && echo balloon-unloaded\n"
              "mkdir -p /fill && mount -t tmpfs -o size=2g tmpfs /fill\n"
              "dd if=/dev/zero of=/fill/x bs=1M count=1024 2>/dev/null; echo filled\n"
              "sed -n 's/^MemTotal: *\\([0-9]*\\) kB/memtotal-after \\1/p' /proc/meminfo\n")
    spec = h.spec(memoryMiB=NANO_MIB, maxMemoryMiB=2048, userScript=script)
    gen = h.put(spec)
    h.wait(_ready(gen), "running", timeout=90)
    wait_for(lambda: "hostplane-script: balloon-unloaded" in h.serial(spec), timeout=90, what="balloon unloaded")
    # Filling RAM may end in the guest's OOM killer; either way the script's end or a reboot shows up.
    wait_for(lambda: "hostplane-script: filled" in h.serial(spec)
             or h.serial(spec).count("hostplane-guest: booted kernel") > 1, timeout=120, what="RAM filled")
    assert max(memtotals(h.serial(spec))) <= NANO_MIB * 1024
    assert rss_mib(domain_name(spec.uid)) <= NANO_MIB + QEMU_OVERHEAD_MIB
