"""Label selectors parse like kubectl's and match labels. Pure."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.selector import Requirement, matches, parse_selector


@pytest.mark.parametrize(("text", "expected"), [
    ("a=b", (Requirement("a", "=", "b"),)),
    ("a==b", (Requirement("a", "=", "b"),)),
    ("a!=b", (Requirement("a", "!=", "b"),)),
    ("a", (Requirement("a", "exists"),)),
    ("!a", (Requirement("a", "!exists"),)),
    (" a = b , c ", (Requirement("a", "=", "b"), Requirement("c", "exists"))),
    ("hostplane.io/source=git", (Requirement("hostplane.io/source", "=", "git"),)),
    ("a=", (Requirement("a", "=", ""),)),
    ("", ()),
    (None, ()),
])
def test_parse_selector(text: str | None, expected: tuple[Requirement, ...]) -> None:
    """Equality, inequality, existence and absence parse; whitespace and empty parts are ignored."""
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text", ["=b", "a b=c", "!=x", "a=b=c,!", "a!b=c", "a=b c", "a=(b)", "a=" + "v" * 64])
def test_bad_selectors_are_refused(text: str) -> None:
    """A selector with no key, spaces or stray operators in the key or value raises ValueError."""
    with pytest.raises(ValueError, match="invalid label selector"):
        parse_selector(text)


def test_mapping_is_an_equality_selector() -> None:
    """A mapping selects objects whose labels contain every pair."""
    sel = parse_selector({"tier": "small", "region": "eu"})
    assert matches(sel, {"tier": "small", "region": "eu", "x": "y"})
    assert not matches(sel, {"tier": "small"})


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("a=b", {"a": "b"}, True), ("a=b", {"a": "c"}, False), ("a=b", {}, False),
    ("a!=b", {}, True), ("a!=b", {"a": "b"}, False), ("a!=b", {"a": "c"}, True),
    ("a", {"a": ""}, True), ("a", {}, False), ("!a", {}, True), ("!a", {"a": "x"}, False),
    ("a=b,c", {"a": "b"}, False), ("a=b,c", {"a": "b", "c": "1"}, True), ("a=", {"a": ""}, True),
])
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    """Every requirement must hold (AND)."""
    assert matches(parse_selector(text), labels) is expected


keys = st.from_regex(r"\A[a-z][a-z0-9.-]{0,8}[a-z0-9](/[a-z0-9]{1,5})?\Z")
values = st.from_regex(r"\A[A-Za-z0-9]{0,6}\Z")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=st.dictionaries(keys, values, min_size=1, max_size=5))
def test_an_objects_own_labels_select_it(labels: dict[str, str]) -> None:
    """The selector written from an object's labels parses back and matches that object."""
    text = ",".join(f"{k}={v}" for k, v in labels.items())
    assert parse_selector(text) == parse_selector(labels)
    assert matches(parse_selector(text), labels)


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("env in (prod,staging)", {"env": "prod"}, True),
    ("env in (prod, staging)", {"env": "staging"}, True),
    ("env in (prod)", {"env": "dev"}, False),
    ("env in (prod)", {}, False),
    ("env notin (prod)", {}, True),
    ("env notin (prod,dev)", {"env": "dev"}, False),
    ("env in (a,b),tier=x", {"env": "a", "tier": "x"}, True),
])
def test_set_based_requirements(text: str, labels: dict[str, str], expected: bool) -> None:
    """`in` and `notin` take a parenthesised list; commas inside it do not split requirements."""
    assert matches(parse_selector(text), labels) is expected
