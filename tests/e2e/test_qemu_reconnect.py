"""The node agent across a libvirt daemon restart on real QEMU: it reports the outage, reconnects and carries on."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import libvirt
import pytest

from nodeagent.agent import Agent
from nodeagent.domain_xml import domain_name
from reconcile import keys
from reconcile.objects import Store
from specs.domain import DomainImage, DomainNetwork, DomainSpec, ObservedDomain
from tests.e2e.guest.build import GuestImage
from tests.e2e.guest.session import _cleanup, _start_private_daemon, qemu_pids
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.qemu


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.mark.timeout(240)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a private libvirt daemon it can stop and start")
def test_agent_reconnects_after_libvirt_restart(store: Store, guest_image: GuestImage) -> None:
    """With libvirtd down the heartbeat says so; once it is back the agent re-registers and applies a change."""
    base = Path(tempfile.mkdtemp(prefix="hpr", dir="/tmp"))
    os.chmod(base, 0o755)
    uri, proc = _start_private_daemon(base)
    work = base / "w"
    work.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    node = "rc-" + uuid.uuid4().hex[:6]
    agent = Agent(store, node, uri, work, resync=2.0, heartbeat_ttl=3, pool_name=f"hp-{node}")
    spec = DomainSpec.model_validate({
        "vps": "rc-1", "uid": f"r{uuid.uuid4().hex[:10]}", "vcpus": 1, "memoryMiB": 128, "diskGiB": 1,
        "maxVcpus": 2, "maxMemoryMiB": 256, "hostname": "rc-1",
        "image": DomainImage(name="test-guest", path=guest_image.disk, sha256=guest_image.disk_sha256,
                             kernel=guest_image.kernel, initrd=guest_image.initrd, cmdline=guest_image.cmdline),
        "network": DomainNetwork(mac="52:54:00:bb:00:01"),
    })
    key = keys.desired_key(node, spec.vps, store.root)

    def observed() -> ObservedDomain | None:
        kv = store.kv_get(keys.observed_key(node, spec.vps, store.root))
        return None if kv is None else ObservedDomain.model_validate_json(kv.value)

    def libvirt_ok() -> bool | None:
        kv = store.kv_get(keys.heartbeat_key(node, store.root))
        return None if kv is None else bool(json.loads(kv.value)["libvirt"])

    try:
        agent.start()
        gen = store.kv_put(key, spec.model_dump_json().encode())
        wait_for(lambda: (o := observed()) is not None and o.observedGeneration == gen and o.power == "Running",
                 timeout=60, what="running")

        _stop(proc)
        wait_for(lambda: libvirt_ok() is False, timeout=20, what="heartbeat reports libvirt down")
        gen = store.kv_put(key, spec.model_copy(update={"power": "Paused"}).model_dump_json().encode())
        wait_for(lambda: "LibvirtUnavailable" in (((o := observed()) and o.lastError) or ""), timeout=20,
                 what="the VPS reports the outage")

        uri2, proc = _start_private_daemon(base)
        assert uri2 == uri
        wait_for(lambda: libvirt_ok() is True, timeout=30, what="heartbeat reports libvirt back")
        wait_for(lambda: (o := observed()) is not None and o.observedGeneration == gen and o.power == "Paused",
                 timeout=30, what="the change applied after reconnecting")
        conn = libvirt.open(uri)
        assert conn.lookupByName(domain_name(spec.uid)).state()[0] == libvirt.VIR_DOMAIN_PAUSED
        conn.close()

        # And it keeps following the desired state on the new connection.
        gen = store.kv_put(key, spec.model_dump_json().encode())
        wait_for(lambda: (o := observed()) is not None and o.observedGeneration == gen and o.power == "Running",
                 timeout=30, what="resumed")
    finally:
        agent.stop()
        _cleanup(uri)
        _stop(proc)
        # Should the daemon have died with the guest still up, the guest goes too (it is ours, by name).
        for pid in qemu_pids(domain_name(spec.uid) + ","):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
