"""DigitalOcean mapping: action progress follows only the node's observation; sizes, limits, fingerprints."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from api.do import mapping
from specs.domain import ObservedDomain
from specs.kinds import VPS, VPSStatus
from tests.helpers import builders

POWERS = ("Running", "Stopped", "Paused", "ShuttingDown", "Crashed", "Absent", "Unknown")


def server(phase: str = "Running", uid: str = "u-1") -> VPS:
    vps = builders.vps("web", uid=uid)
    return vps.model_copy(update={"status": VPSStatus(phase=phase, node="n1")})


def seen(uid: str = "u-1", **kw: Any) -> ObservedDomain:
    base: dict[str, Any] = {"vps": "web", "uid": uid, "domainName": "hp-x", "power": "Running", "vcpus": 1,
                            "memoryMiB": 512, "diskGiB": 10}
    return ObservedDomain.model_validate({**base, **kw})


def action(**target: Any) -> dict[str, Any]:
    return {"uid": "u-1", "status": "in-progress", "target": target}


def test_each_action_completes_on_its_own_observation() -> None:
    """power, generations and sizes: in-progress until the observation shows the target, then completed."""
    Case = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
    cases: list[Case] = [({"power": "Stopped"}, {"power": "Running"}, {"power": "Stopped"}),
             ({"power": "Running", "restartGeneration": 2}, {"restartGeneration": 1}, {"restartGeneration": 2}),
             ({"power": "Running", "rebuildGeneration": 1}, {}, {"rebuildGeneration": 3}),
             ({"vcpus": 2, "memoryMiB": 1024, "diskGiB": 20}, {"vcpus": 2, "memoryMiB": 1024},
              {"vcpus": 2, "memoryMiB": 1024, "diskGiB": 20})]
    for target, before, after in cases:
        assert mapping.action_progress(action(**target), server(), seen(**before)).status == "in-progress", target
        assert mapping.action_progress(action(**target), server(), seen(**after)).status == "completed", target


def test_failures_error_with_reason() -> None:
    """An error lasting past the grace, a crashed domain, a destroyed or replaced server: errored, with why."""
    started = {"started_at": "2026-01-01T00:00:00Z"}
    failing = seen(power="Absent", lastError="image: not downloaded")
    early, late = datetime(2026, 1, 1, 0, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 6, tzinfo=UTC)
    assert mapping.action_progress({**action(power="Running"), **started}, server(), failing, early).status \
        == "in-progress"  # the agent retries: not final yet
    assert mapping.action_progress({**action(power="Running"), **started}, server(), failing, late) == \
        mapping.Progress("errored", "image: not downloaded")
    crashed = seen(power="Crashed", lastError="qemu died")
    assert mapping.action_progress(action(power="Running"), server(), crashed).reason == "qemu died"
    assert mapping.action_progress(action(power="Running"), None, None).status == "errored"
    assert mapping.action_progress(action(power="Running"), server(uid="u-2"), seen(uid="u-2")).status == "errored"


@given(target=st.fixed_dictionaries({}, optional={
    "power": st.sampled_from(POWERS[:3]), "restartGeneration": st.integers(0, 5),
    "rebuildGeneration": st.integers(0, 5), "vcpus": st.integers(1, 4), "memoryMiB": st.sampled_from([256, 512])}),
    power=st.sampled_from(POWERS[:4]), restart=st.integers(0, 5), rebuild=st.integers(0, 5),
    vcpus=st.integers(1, 4), memory=st.sampled_from([256, 512]))
def test_completed_only_when_every_target_field_is_observed(target: dict[str, Any], power: str, restart: int,
                                                            rebuild: int, vcpus: int, memory: int) -> None:
    """Property: completed iff the observation meets every field of the target; never completed for no observation."""
    obs = seen(power=power, restartGeneration=restart, rebuildGeneration=rebuild, vcpus=vcpus, memoryMiB=memory)
    got = mapping.action_progress(action(**target), server(), obs).status
    meets = all({"power": power == target.get("power"), "restartGeneration": restart >= target.get(
        "restartGeneration", 0), "rebuildGeneration": rebuild >= target.get("rebuildGeneration", 0),
        "vcpus": vcpus == target.get("vcpus"), "memoryMiB": memory == target.get("memoryMiB")}[k] for k in target)
    assert got == ("completed" if meets else "in-progress")
    if target:
        assert mapping.action_progress(action(**target), server(), None).status == "in-progress"


@given(existing=st.integers(0, 50), balance=st.integers(-10_000, 100_000), credit=st.integers(0, 10_000),
       committed=st.integers(0, 50_000), cheapest=st.one_of(st.none(), st.integers(1, 5_000)))
def test_droplet_limit_never_below_existing_and_covers_orders(existing: int, balance: int, credit: int,
                                                              committed: int, cheapest: int | None) -> None:
    """Property: the limit is at least what the account has; each droplet above it is covered by the order rule."""
    limit = mapping.droplet_limit(existing, balance, credit, committed, cheapest)
    assert limit >= existing
    if cheapest is not None:
        assert committed + (limit - existing) * cheapest <= max(committed, balance + credit)


def test_fingerprint_is_md5_of_the_key_blob_and_size_prices_are_numbers() -> None:
    """DigitalOcean's fingerprint form; a plan's monthly price as a number and hourly = monthly / 672."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x"
    digest = hashlib.md5(base64.b64decode(key.split()[1]), usedforsecurity=False).hexdigest()
    assert mapping.fingerprint(key).replace(":", "") == digest and mapping.fingerprint(key).count(":") == 15
    size = mapping.size(builders.plan("s1"), ["sim"])
    assert size["price_monthly"] == 5.0 and size["price_hourly"] == round(5 / 672, 5)
    assert (size["memory"], size["vcpus"], size["disk"], size["regions"]) == (512, 1, 10, ["sim"])


def test_droplet_status_from_phase() -> None:
    """new while provisioning, active when running, off when stopped or suspended, archive when deleting."""
    for phase, want in (("Pending", "new"), ("Provisioning", "new"), ("Running", "active"), ("Resizing", "active"),
                        ("Stopped", "off"), ("Suspended", "off"), ("Terminating", "archive")):
        assert mapping.droplet_status(server(phase)) == want, phase


@given(total=st.integers(0, 1000), per_page=st.integers(1, 200))
def test_pages_cover_every_item_once_and_link_the_way_digitalocean_does(total: int, per_page: int) -> None:
    """Property: following next from page 1 visits every item once; first/prev only after page 1, next/last
    only before the last page; the last page's link names the page that holds the last item."""
    items = list(range(total))
    seen: list[int] = []
    page, visits = 1, 0
    while True:
        window, links = mapping.page_numbers(total, page, per_page)
        seen.extend(items[window])
        visits += 1
        assert ("first" in links) == ("prev" in links) == (page > 1)
        if "next" not in links:
            break
        assert links["last"] == max(1, -(-total // per_page)) and links["next"] == page + 1
        page = links["next"]
    assert seen == items and visits == max(1, -(-total // per_page))
