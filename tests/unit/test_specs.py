"""Every kind round-trips through YAML and JSON; documents are built valid by hypothesis strategies."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specs import KINDS, SpecError, dump_json, dump_yaml, json_schema, load_documents, validate_object
from specs.money import CURRENCY_EXPONENT

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"

dns_labels = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
label_keys = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?\Z"),
    st.builds(lambda p, n: f"{p}.io/{n}", dns_labels, dns_labels),
)
label_values = st.from_regex(r"\A([A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?)?\Z")
labels = st.dictionaries(label_keys, label_values, max_size=4)
# Free text of any printable kind, including non-ASCII and YAML-significant characters.
texts = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
                  blacklist_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"),
    max_size=40,
)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                     timezones=st.just(UTC))
small = st.integers(min_value=1, max_value=1 << 20)
nonneg = st.integers(min_value=0, max_value=1 << 20)


def optional(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, Any]:
    return drop_none({
        "name": draw(dns_labels),
        "labels": draw(labels),
        "annotations": draw(st.dictionaries(label_keys, texts, max_size=3)),
        "finalizers": draw(st.lists(label_keys, max_size=2)),
        "uid": draw(optional(st.uuids().map(str))),
        "generation": draw(optional(small)),
        "resourceVersion": draw(optional(small.map(str))),
        "creationTimestamp": draw(optional(times.map(lambda t: t.isoformat()))),
    })


@st.composite
def money(draw: st.DrawFn, nonnegative: bool = True) -> dict[str, Any]:
    cur = draw(st.sampled_from(sorted(CURRENCY_EXPONENT)))
    exp = CURRENCY_EXPONENT[cur]
    minor = draw(st.integers(min_value=0 if nonnegative else -(10**12), max_value=10**12))
    text = str(minor) if exp == 0 else f"{minor // 10**exp}.{minor % 10**exp:0{exp}d}"
    # Authors write amounts as strings, integers or (unquoted in YAML) floats.
    amount: Any = draw(st.sampled_from([text, text.rstrip("0").rstrip(".") or "0"]))
    return {"amount": amount, "currency": draw(st.sampled_from([cur, cur.lower()]))}


def billing_policy() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "graceDays": nonneg, "suspendDays": nonneg, "retentionDays": nonneg, "suspendShutdownAfterHours": nonneg,
    })


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    spec = drop_none({
        "vcpus": draw(small), "memoryMiB": draw(small), "diskGiB": draw(small),
        "trafficGiB": draw(optional(small)),
        "bandwidth": draw(optional(st.fixed_dictionaries({}, optional={"inboundKbps": small, "outboundKbps": small}))),
        "price": {**draw(money()), "period": "month"},
        "billingInterval": draw(st.sampled_from(["hour", "day"])),
        "billing": draw(billing_policy()),
        "description": draw(texts),
        "public": draw(st.booleans()),
    })
    return {"apiVersion": "hostplane.io/v1", "kind": "Plan", "metadata": draw(metadata()), "spec": spec}


hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
abs_paths = st.lists(dns_labels, min_size=1, max_size=4).map(lambda p: "/" + "/".join(p))


@st.composite
def images(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        source = {"path": draw(abs_paths), "sha256": draw(hex64)}
    else:
        source = {"url": "https://images.example.com" + draw(abs_paths), "sha256": draw(hex64)}
    source["format"] = draw(st.sampled_from(["qcow2", "raw"]))
    spec = drop_none({
        "os": draw(st.text(_ALNUM, min_size=1, max_size=10)), "version": draw(st.from_regex(r"\A[0-9]{1,2}\.[0-9]\Z")),
        "source": source, "minDiskGiB": draw(small), "cloudInit": draw(st.booleans()),
        "kernel": draw(optional(abs_paths)), "cmdline": draw(optional(texts)),
    })
    status = draw(optional(st.fixed_dictionaries({"ready": st.booleans(), "sizeBytes": nonneg})))
    return drop_none({"kind": "Image", "metadata": draw(metadata()), "spec": spec, "status": status})


@st.composite
def nodes(draw: st.DrawFn) -> dict[str, Any]:
    spec = {
        "libvirtURI": draw(st.sampled_from(["qemu:///system", "test:///default", "qemu+ssh://h1/system"])),
        "capacity": {"vcpus": draw(small), "memoryMiB": draw(small), "diskGiB": draw(small)},
        "overcommit": {"cpu": draw(st.floats(1.0, 64.0)), "memory": draw(st.floats(1.0, 4.0))},
        "maxResize": {"vcpus": draw(small), "memoryMiB": draw(small)},
        "schedulable": draw(st.booleans()),
    }
    status = draw(optional(st.fixed_dictionaries({
        "state": st.sampled_from(["Ready", "NotReady", "Unknown"]),
        "lastHeartbeat": times.map(lambda t: t.isoformat()),
        "allocated": st.dictionaries(st.sampled_from(["vcpus", "memoryMiB", "diskGiB"]), nonneg),
        "unmanagedDomains": nonneg,
        "conditions": st.lists(conditions(), max_size=2),
    })))
    return drop_none({"kind": "Node", "metadata": draw(metadata()), "spec": spec, "status": status})


def conditions() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["Ready", "Scheduled"]), "status": st.sampled_from(["True", "False", "Unknown"])},
        optional={"reason": texts, "message": texts, "lastTransitionTime": times.map(lambda t: t.isoformat())},
    )


@st.composite
def ippools(draw: st.DrawFn) -> dict[str, Any]:
    prefix = draw(st.integers(16, 29))
    base = draw(st.integers(0, (1 << 32) - 1)) >> (32 - prefix) << (32 - prefix)
    size = 1 << (32 - prefix)

    def addr(i: int) -> str:
        return ".".join(str((base + i) >> s & 255) for s in (24, 16, 8, 0))

    spec = {
        "cidr": f"{addr(0)}/{prefix}",
        "gateway": addr(draw(st.integers(1, size - 2))),
        "dns": draw(st.lists(st.sampled_from(["1.1.1.1", "9.9.9.9", "2606:4700:4700::1111"]), max_size=3)),
        "nodeSelector": draw(labels),
        "reserved": [addr(i) for i in draw(st.lists(st.integers(0, size - 1), max_size=3))],
    }
    if draw(st.booleans()):
        spec["ipv6Prefix"] = "2001:db8:1::/64"
        spec["ipv6Gateway"] = "2001:db8:1::1"
    return {"kind": "IPPool", "metadata": draw(metadata()), "spec": spec}


@st.composite
def customers(draw: st.DrawFn) -> dict[str, Any]:
    limit = draw(money())
    spec = drop_none({
        "email": draw(st.builds(lambda u, d: f"{u}@{d}.example", dns_labels, dns_labels)),
        "displayName": draw(texts),
        "currency": limit["currency"],
        "creditLimit": limit["amount"],
        "suspendHoldUntil": draw(optional(times.map(lambda t: t.isoformat()))),
        "billing": draw(billing_policy()),
    })
    status = draw(optional(st.fixed_dictionaries({
        "balance": st.just("1.00"), "balanceMinor": st.integers(-(10**9), 10**9), "state": st.just("Active")})))
    return drop_none({"kind": "Customer", "metadata": draw(metadata()), "spec": spec, "status": status})


@st.composite
def subscriptions(draw: st.DrawFn) -> dict[str, Any]:
    spec = drop_none({
        "customer": draw(dns_labels), "plan": draw(dns_labels), "autoRenew": draw(st.booleans()),
        "billingMode": draw(st.sampled_from(["internal", "external"])),
        "suspend": draw(optional(st.sampled_from(["nonpayment", "abuse", "admin", "customer"]))),
        "cancelled": draw(st.booleans()),
    })
    status = draw(optional(st.fixed_dictionaries(
        {"state": st.sampled_from(["Active", "Overdue", "Suspended", "Terminated"])},
        optional={"paidUntil": times.map(lambda t: t.isoformat()), "suspendReason": st.just("nonpayment")},
    )))
    return drop_none({"kind": "Subscription", "metadata": draw(metadata()), "spec": spec, "status": status})


def ssh_keys() -> st.SearchStrategy[str]:
    def key(raw: bytes, comment: str) -> str:
        t = b"ssh-ed25519"
        blob = len(t).to_bytes(4, "big") + t + (32).to_bytes(4, "big") + raw
        return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}".strip()

    return st.builds(key, st.binary(min_size=32, max_size=32), st.text(_ALNUM + "@.-", max_size=12))


@st.composite
def vpses(draw: st.DrawFn) -> dict[str, Any]:
    spec = drop_none({
        "subscription": draw(dns_labels), "image": draw(dns_labels),
        "hostname": ".".join(draw(st.lists(dns_labels, min_size=1, max_size=3))),
        "sshKeys": draw(st.lists(ssh_keys(), max_size=2)),
        "passwordHash": draw(optional(st.just("$6$salt$abcdefghijklmnop"))),
        "powerState": draw(st.sampled_from(["Running", "Stopped"])),
        "rebuildGeneration": draw(nonneg), "restartGeneration": draw(nonneg),
        "nodeSelector": draw(labels), "node": draw(optional(dns_labels)),
    })
    status = draw(optional(st.fixed_dictionaries({}, optional={
        "phase": st.sampled_from(["Pending", "Running", "Suspended"]),
        "node": dns_labels, "observedGeneration": nonneg, "message": texts,
        "ips": st.fixed_dictionaries({}, optional={"ipv4": st.just("10.0.0.5"), "pool": dns_labels}),
        "actual": st.fixed_dictionaries({}, optional={"vcpus": small, "power": st.just("Running")}),
        "conditions": st.lists(conditions(), max_size=2),
    })))
    return drop_none({"kind": "VPS", "metadata": draw(metadata()), "spec": spec, "status": status})


STRATEGIES = {
    "Plan": plans(), "Image": images(), "Node": nodes(), "IPPool": ippools(),
    "Customer": customers(), "Subscription": subscriptions(), "VPS": vpses(),
}
any_document = st.one_of(*STRATEGIES.values())


# ------------------------------------------------------------------ properties


def test_every_kind_has_a_strategy() -> None:
    """The round-trip properties below cover every kind the model defines."""
    assert set(STRATEGIES) == set(KINDS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=any_document)
def test_valid_documents_validate_as_their_kind(doc: dict[str, Any]) -> None:
    """A document built valid validates as the kind it names."""
    obj = validate_object(doc, "<gen>")
    assert doc["kind"] == obj.KIND


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=any_document)
def test_yaml_round_trip(doc: dict[str, Any]) -> None:
    """dump_yaml then load_documents gives back an equal object."""
    obj = validate_object(doc, "<gen>")
    (back,) = load_documents(dump_yaml([obj]), "<yaml>")
    assert back.obj == obj
    assert type(back.obj) is type(obj)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=any_document)
def test_json_round_trip(doc: dict[str, Any]) -> None:
    """dump_json then validate_object of the parsed JSON gives back an equal object."""
    obj = validate_object(doc, "<gen>")
    assert validate_object(json.loads(dump_json(obj)), "<json>") == obj


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(any_document, min_size=1, max_size=5))
def test_multi_document_yaml_round_trip_keeps_order_and_lines(docs: list[dict[str, Any]]) -> None:
    """A multi-document YAML stream comes back in order, each document with its starting line."""
    objs = [validate_object(d, "<gen>") for d in docs]
    text = dump_yaml(objs)
    back = load_documents(text, "<yaml>")
    assert [d.obj for d in back] == objs
    lines = text.splitlines()
    for d in back:
        assert lines[d.line - 1].startswith(("apiVersion:", "kind:", "---")) or d.line == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=any_document)
def test_json_text_is_yaml_too(doc: dict[str, Any]) -> None:
    """A JSON document (as the API or an editor writes it) loads through load_documents."""
    obj = validate_object(doc, "<gen>")
    (back,) = load_documents(dump_json(obj), "<json>")
    assert back.obj == obj


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=any_document)
def test_dump_is_a_fixed_point(doc: dict[str, Any]) -> None:
    """Dumping a loaded dump gives the same text: the canonical form is stable."""
    obj = validate_object(doc, "<gen>")
    once = dump_yaml([obj])
    assert dump_yaml([d.obj for d in load_documents(once)]) == once


def test_json_schema_of_every_kind() -> None:
    """json_schema(kind) accepts any name of a kind and describes its spec, fixing kind and apiVersion."""
    for name, cls in KINDS.items():
        for alias in (name, name.lower(), cls.PLURAL):
            schema = json_schema(alias)
            assert schema["title"] == name
            assert schema["properties"]["kind"]["const"] == name
            assert "spec" in schema["required"]
            json.dumps(schema)
    assert json_schema(KINDS["VPS"]) == json_schema("servers")


def test_json_schema_of_an_unknown_kind_names_the_known_ones() -> None:
    """json_schema of an unknown kind raises KeyError listing the known kinds."""
    with pytest.raises(KeyError, match="known kinds: Customer"):
        json_schema("Flavor")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(any_document, min_size=1, max_size=4))
def test_json_array_of_objects_loads_as_documents(docs: list[dict[str, Any]]) -> None:
    """dump_json of a list is read back by load_documents as one document per element."""
    objs = [validate_object(d, "<gen>") for d in docs]
    assert [d.obj for d in load_documents(dump_json(objs), "<json>")] == objs


def test_json_surrogate_escapes_are_joined() -> None:
    """A JSON file escaping an emoji as a surrogate pair loads as the emoji itself."""
    text = '{"kind": "Plan", "metadata": {"name": "p", "annotations": {"note": "\\ud83d\\ude00"}},' \
           ' "spec": {"vcpus": 1, "memoryMiB": 1, "diskGiB": 1, "price": {"amount": "1", "currency": "EUR"}}}'
    (doc,) = load_documents(text, "p.json")
    assert doc.obj.metadata.annotations["note"] == "\U0001f600"


YAML_LOOKALIKES = ["yes", "No", "on", "OFF", "null", "~", "1e3", "0x10", "0o17", "012", ".inf", "-.nan",
                   "2020-01-01", "2020-01-01T00:00:00Z", "12:30:00", "<<", "=", "- a", "{a: 1}", "[1]", "'q'",
                   '"dq"', "a: b", "#c", "&anchor", "*alias", "!tag", "%dir", "@at", "`bt`", "|", ">", " lead",
                   "trail ", "", "\u00e9t\u00e9", "\U0001f600", "\u00a0nbsp"]


@pytest.mark.parametrize("value", YAML_LOOKALIKES)
def test_strings_that_look_like_other_yaml_types_survive(value: str) -> None:
    """Strings YAML could read as bools, numbers, dates or syntax come back as the same strings."""
    obj = validate_object({"kind": "Plan", "metadata": {"name": "p", "annotations": {"note": value}},
                           "spec": {"vcpus": 1, "memoryMiB": 1, "diskGiB": 1, "description": value,
                                    "price": {"amount": "1", "currency": "EUR"}}}, "<t>")
    (back,) = load_documents(dump_yaml([obj]))
    assert back.obj == obj
    assert back.obj.metadata.annotations["note"] == value


@pytest.mark.parametrize("value", ["a\x00b", "esc\x1b[31m", "\u202eevil", "iso\u2066late", "c1\x85"])
def test_annotation_values_refuse_control_and_bidi_characters(value: str) -> None:
    """An annotation may hold several lines, never control characters or bidi overrides (they spoof the panel)."""
    with pytest.raises(SpecError, match="annotation 'note' must not contain control character"):
        validate_object({"kind": "Plan", "metadata": {"name": "p", "annotations": {"note": value}},
                         "spec": {"vcpus": 1, "memoryMiB": 1, "diskGiB": 1,
                                  "price": {"amount": "1", "currency": "EUR"}}}, "<t>")
    ok = validate_object({"kind": "Plan", "metadata": {"name": "p", "annotations": {"note": "line 1\n\tline 2"}},
                          "spec": {"vcpus": 1, "memoryMiB": 1, "diskGiB": 1,
                                   "price": {"amount": "1", "currency": "EUR"}}}, "<t>")
    assert ok.metadata.annotations["note"] == "line 1\n\tline 2"
