"""Field validators refuse the tricks: unicode look-alikes, traversal, control characters, overlong input."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from specs import VPS, Customer, Image, IPPool, ObjectMeta, Plan, SpecError, validate_object

ED25519 = "ssh-ed25519 " + base64.b64encode(
    (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(range(32))).decode()


def vps(**spec: Any) -> dict[str, Any]:
    return {"kind": "VPS", "metadata": {"name": "v"},
            "spec": {"subscription": "s", "image": "i", "hostname": "h", **spec}}


def refused(cls: Any, data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(data)
    return str(info.value)


@pytest.mark.parametrize("name", [
    "../x", "a/b", "..", ".", "x\n", "x\x00", "Ab", "-a", "a-", "a_b", "a.b", "",
    "a" * 64, "\uff41", "\u0430bc",  # fullwidth a; Cyrillic a
    "a\u200bb", "ab\u202e", " a", "a ",
])
def test_bad_object_names_are_refused(name: str) -> None:
    """metadata.name must be a DNS label: no traversal, no look-alikes, no control or invisible characters."""
    with pytest.raises(ValidationError):
        ObjectMeta(name=name)


@pytest.mark.parametrize("name", ["a", "web-1", "0", "a" * 63])
def test_good_object_names_are_accepted(name: str) -> None:
    """Ordinary DNS labels up to 63 characters are valid names."""
    assert ObjectMeta(name=name).name == name


@pytest.mark.parametrize("labels", [
    {"k": "v\n"}, {"k\n": "v"}, {"k": "v" * 64}, {"a/b/c": "v"}, {"../k": "v"}, {"k": "ü"}, {"": "v"},
    {"Example.com/k": "v"}, {"k": "-v"},
])
def test_bad_labels_are_refused(labels: dict[str, str]) -> None:
    """Label keys are [prefix/]name and values ≤63 of [A-Za-z0-9._-], with no trailing newline."""
    with pytest.raises(ValidationError):
        ObjectMeta(name="a", labels=labels)


def test_annotations_and_finalizers_are_checked() -> None:
    """Annotation keys and finalizers are qualified names; annotations are bounded in total size."""
    ObjectMeta(name="a", annotations={"hostplane.io/source": "any text\nwith newlines"},
               finalizers=["hostplane.io/ipam"])
    for bad in ({"annotations": {"bad key": "v"}}, {"finalizers": ["../x"]},
                {"annotations": {"k": "x" * 300_000}}, {"uid": "a/b"}):
        with pytest.raises(ValidationError):
            ObjectMeta(name="a", **bad)


@pytest.mark.parametrize("hostname", [
    "web-1.example.com\n", "Web", "-a", "a-", "a..b", ".a", "a.", "a_b", "\uff57eb", "a" * 64,
    ".".join(["a" * 63] * 5), "a\x00", "",
])
def test_bad_hostnames_are_refused(hostname: str) -> None:
    """Hostnames follow RFC 1123 in lowercase: no newline, no look-alikes, ≤63 per label and ≤253 in all."""
    refused(VPS, vps(hostname=hostname))


def test_good_hostnames_are_accepted() -> None:
    """Lowercase multi-label hostnames and all-digit labels are valid."""
    for h in ("a", "web-1.example.com", "1.2.3.4", ".".join(["a" * 63] * 3)):
        VPS.model_validate(vps(hostname=h))


def test_good_ssh_key_is_accepted_and_trimmed() -> None:
    """A real ed25519 public key line, with comment and surrounding whitespace, is kept trimmed."""
    obj = VPS.model_validate(vps(sshKeys=[f"  {ED25519} alice@laptop \n"]))
    assert obj.spec.sshKeys == [f"{ED25519} alice@laptop"]


@pytest.mark.parametrize("key", [
    "ssh-ed25519 AAAA",  # no key material
    ED25519[:-8],  # truncated
    ED25519.replace("ssh-ed25519 ", "ssh-rsa "),  # type does not match the data
    f"{ED25519} alice\nssh-ed25519 AAAA evil",  # a second line for authorized_keys
    f"{ED25519} alice\rroot",
    f"{ED25519} \x1b[2Jclear",  # terminal escape in the comment
    f"{ED25519} \u202eevil",  # bidi override in the comment
    f"{ED25519} " + "x" * 20000,  # overlong
    "ssh-dss " + "A" * 100,  # unsupported type
    "not a key",
    "ssh-ed25519 " + base64.b64encode((11).to_bytes(4, "big") + b"ssh-ed25519" + b"\xff\xff\xff\xff").decode(),
])
def test_bad_ssh_keys_are_refused(key: str) -> None:
    """SSH keys must be one line of a known type whose key data parses completely."""
    refused(VPS, vps(sshKeys=[key]))


def image(**source: Any) -> dict[str, Any]:
    return {"kind": "Image", "metadata": {"name": "i"}, "spec": {"os": "debian", "version": "12", "source": source}}


@pytest.mark.parametrize("source", [
    {"path": "relative/disk.qcow2"}, {"path": "/var/lib/../../etc/shadow"}, {"path": "/a\x00b"},
    {"path": "/a\nb"}, {"url": "ftp://x/y", "sha256": "0" * 64}, {"url": "https://x/y"},
    {"url": "https://x/a b", "sha256": "0" * 64}, {"url": "https://x/y", "sha256": "0" * 64 + "\n"},
    {"url": "https://x/y", "sha256": "A" * 64}, {}, {"path": "/a", "url": "https://x/y", "sha256": "0" * 64},
    {"path": "/" + "a" * 5000},
    # Every source needs its sha256; only http(s); never credentials (customers read Images).
    {"path": "/var/lib/hostplane/images/d.qcow2"},
    {"url": "file:///etc/shadow", "sha256": "0" * 64},
    {"url": "https://user:secret@mirror.example/d.qcow2", "sha256": "0" * 64},
    {"url": "https://token@mirror.example/d.qcow2", "sha256": "0" * 64},
    {"url": "https:///no-host", "sha256": "0" * 64},
    {"url": "http://mirror.example:99999/d", "sha256": "0" * 64},
])
def test_bad_image_sources_are_refused(source: dict[str, Any]) -> None:
    """Image sources: exactly one of an absolute path without '..' or an http(s) URL, always with a sha256."""
    refused(Image, image(**source))


@pytest.mark.parametrize(("source", "field"), [
    ({"path": "/var/lib/hostplane/images/d.qcow2"}, "spec.source.sha256"),
    ({"url": "file:///etc/shadow", "sha256": "0" * 64}, "spec.source.url"),
    ({"url": "https://u:p@mirror.example/d", "sha256": "0" * 64}, "spec.source.url"),
])
def test_image_source_errors_name_the_field(source: dict[str, Any], field: str) -> None:
    """A missing sha256 or a refused URL is reported at its own field."""
    assert field in refused(Image, image(**source))


def test_image_error_names_the_source_field() -> None:
    """A bad image path is reported at spec.source.path, not at the whole source."""
    assert "spec.source.path" in refused(Image, image(path="rel", sha256="0" * 64))


def pool(**spec: Any) -> dict[str, Any]:
    return {"kind": "IPPool", "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/24", "gateway": "10.0.0.1", **spec}}


@pytest.mark.parametrize(("spec", "field"), [
    ({"cidr": "10.0.0.1/24"}, "spec.cidr"),
    ({"cidr": "10.0.0.0/31"}, "spec.cidr"),
    ({"cidr": "010.0.0.0/24"}, "spec.cidr"),
    ({"cidr": "10.0.0.0/24\n"}, "spec.cidr"),
    ({"gateway": "10.0.1.1"}, "spec.gateway"),
    ({"gateway": "10.0.0.0"}, "spec.gateway"),
    ({"gateway": "10.0.0.255"}, "spec.gateway"),
    ({"gateway": "10.0.0.1 "}, "spec.gateway"),
    ({"reserved": ["10.0.1.5"]}, "spec.reserved"),
    ({"reserved": ["10.0.0.0/16"]}, "spec.reserved"),
    ({"reserved": ["10.0.0.300"]}, "spec.reserved"),
    ({"dns": ["one.one.one.one"]}, "spec.dns"),
    ({"ipv6Prefix": "2001:db8::1/64"}, "spec.ipv6Prefix"),
    ({"ipv6Prefix": "2001:db8::/64", "ipv6Gateway": "2001:db9::1"}, "spec.ipv6Gateway"),
    ({"ipv6Gateway": "2001:db8::1"}, "spec"),
])
def test_bad_ip_pools_are_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    """IP pool addresses are checked against the pool's network and reported at their own field."""
    with pytest.raises(SpecError) as info:
        validate_object(pool(**spec), "pool.yaml")
    assert [d.path for d in info.value.details] == [field]


def test_ip_pool_addresses_are_normalised() -> None:
    """Addresses are stored in their canonical form."""
    p = IPPool.model_validate(pool(dns=["2606:4700:4700:0::1111"], ipv6Prefix="2001:DB8::/64"))
    assert p.spec.dns == ["2606:4700:4700::1111"]
    assert p.spec.ipv6Prefix == "2001:db8::/64"


@pytest.mark.parametrize("email", [
    "a@b", "a@@b.com", "a b@c.com", "a@b..com", "a\n@b.com", "a@b.com\n", "a@-b.com", "<a>@b.com",
    "a" * 65 + "@b.com", "a@" + "b" * 250 + ".com",
])
def test_bad_emails_are_refused(email: str) -> None:
    """E-mail addresses are one plain address: no spaces, control characters or malformed domains."""
    refused(Customer, {"kind": "Customer", "metadata": {"name": "c"}, "spec": {"email": email}})


def test_free_text_refuses_control_characters_but_description_keeps_newlines() -> None:
    """displayName refuses control and bidi characters; a plan description may be several lines."""
    base = {"kind": "Customer", "metadata": {"name": "c"}, "spec": {"email": "a@b.com"}}
    for bad in ("Eve\x1b[31m", "Bob\u202egnp.exe", "x\ny", "x" * 300):
        refused(Customer, {**base, "spec": {**base["spec"], "displayName": bad}})
    ok = Customer.model_validate({**base, "spec": {**base["spec"], "displayName": "Zoë Ünal 株式会社"}})
    assert ok.spec.displayName == "Zoë Ünal 株式会社"
    plan = {"kind": "Plan", "metadata": {"name": "p"},
            "spec": {"vcpus": 1, "memoryMiB": 1, "diskGiB": 1, "price": {"amount": "1", "currency": "EUR"},
                     "description": "line one\nline two\ttabbed"}}
    assert "\n" in Plan.model_validate(plan).spec.description
    plan["spec"]["description"] = "bell\x07"
    refused(Plan, plan)
