"""The NoCloud seed: its documents and the ISO that carries them."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from nodeagent import cloudinit
from specs.domain import DomainImage, DomainNetwork, DomainSpec, IPAssignment


def spec(**kw: object) -> DomainSpec:
    base: dict[str, object] = {
        "vps": "web-1", "uid": "3f2a", "vcpus": 1, "memoryMiB": 128, "diskGiB": 2, "maxVcpus": 4,
        "maxMemoryMiB": 512, "image": DomainImage(name="tiny"), "hostname": "web-1",
        "network": DomainNetwork(mac="52:54:00:00:00:01",
                                 ipv4=IPAssignment(address="192.0.2.10", prefixLength=24, gateway="192.0.2.1")),
    }
    base.update(kw)
    return DomainSpec.model_validate(base)


def test_iso_is_labelled_cidata_and_round_trips() -> None:
    """The seed ISO is labelled cidata and holds exactly the three NoCloud files."""
    files = cloudinit.seed_files(spec(sshKeys=["ssh-ed25519 AAAAC3Nza test@host"]))
    iso = cloudinit.build_iso(files)
    assert cloudinit.volume_label(iso) == "cidata"
    assert cloudinit.read_iso(iso) == files
    assert set(files) == {"meta-data", "user-data", "network-config"}


def test_static_network_from_allocated_ips() -> None:
    """Allocated addresses become a static config matched by MAC, with a default route."""
    net = cloudinit.network_config(spec())
    eth = net["ethernets"]["eth0"]
    assert eth["addresses"] == ["192.0.2.10/24"] and eth["match"] == {"macaddress": "52:54:00:00:00:01"}
    assert eth["routes"] == [{"to": "0.0.0.0/0", "via": "192.0.2.1"}]


@given(st.text(max_size=60), st.lists(st.text(max_size=80), max_size=3))
def test_user_values_are_data_not_template(hostname: str, keys: list[str]) -> None:
    """Whatever the hostname or keys contain, user-data parses back to exactly those values."""
    s = spec().model_copy(update={"hostname": hostname, "sshKeys": keys})
    ud = cloudinit.seed_files(s)["user-data"]
    assert ud.startswith(b"#cloud-config\n")
    doc = json.loads(ud.split(b"\n", 1)[1])
    assert doc["hostname"] == hostname and doc["ssh_authorized_keys"] == keys


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Zl", "Zp")) | st.just("\n"), max_size=200)
       .map(lambda t: "#!/bin/sh\n" + t))
def test_user_script_is_a_verbatim_multipart_part(script: str) -> None:
    """A `#!` script travels beside the cloud-config as cloud-init's multipart user-data, byte for byte."""
    import email

    ud = cloudinit.seed_files(spec(userScript=script))["user-data"]
    msg = email.message_from_bytes(ud)
    parts = [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.walk() if not p.is_multipart()]
    assert [t for t, _ in parts] == ["text/cloud-config", "text/x-shellscript"]
    body = parts[1][1]
    assert isinstance(body, bytes) and body.rstrip(b"\n") == script.encode().rstrip(b"\n")
