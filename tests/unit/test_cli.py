"""Pure pieces behind the CLI and API: apply decisions, tables, config, merge patch, SSE, error mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import apply as ap
from api.client import _sse_events
from api.config import config_path, resolve
from api.deps import parse_body
from api.errors import BadRequest, problem_for
from api.merge_patch import merge_patch
from api.table import age, render
from api.watch import render_events
from reconcile import errors as store_errors
from reconcile.etcd import WatchEvent
from specs import Plan, SpecError, load_documents
from tests.helpers import builders

PLAN_YAML = """\
kind: Plan
metadata: {name: s1, labels: {line: standard}}
spec: {vcpus: 1, memoryMiB: 1024, diskGiB: 25, price: {amount: "4.49", currency: EUR}}
"""


def plan(**meta: Any) -> Plan:
    obj = load_documents(PLAN_YAML)[0].obj
    assert isinstance(obj, Plan)
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update=meta)})


# ---------------------------------------------------------------- apply


def test_derive_source_uses_names_and_is_a_valid_label(tmp_path: Path) -> None:
    """The source label comes from the file stem or directory name, sanitised, joined when several."""
    (tmp_path / "Git Ops").mkdir()
    (tmp_path / "plans.yaml").write_text("")
    assert ap.derive_source([str(tmp_path / "plans.yaml")]) == "plans"
    assert ap.derive_source([str(tmp_path / "Git Ops")]) == "Git-Ops"
    assert ap.derive_source([str(tmp_path / "plans.yaml"), str(tmp_path / "Git Ops")]) == "Git-Ops.plans"
    assert ap.sanitize_label_value("...") == "cli"
    assert len(ap.sanitize_label_value("x" * 100)) == 63


def test_collect_files_recurses_in_order_and_rejects_missing(tmp_path: Path) -> None:
    """Directories expand to their YAML/JSON files, sorted; a missing path is an input error."""
    (tmp_path / "b").mkdir()
    for name in ("b/z.yaml", "a.yml", "c.json", "notes.txt"):
        (tmp_path / name).write_text("")
    assert [p.name for p in ap.collect_files([str(tmp_path)])] == ["a.yml", "z.yaml", "c.json"]
    with pytest.raises(ap.InputError, match="no such file"):
        ap.collect_files([str(tmp_path / "nope")])


def test_load_all_collects_every_problem_and_duplicates(tmp_path: Path) -> None:
    """Problems in several files are reported together, as is a name defined twice."""
    (tmp_path / "a.yaml").write_text(PLAN_YAML)
    (tmp_path / "b.yaml").write_text(PLAN_YAML + "---\nkind: Plan\nmetadata: {name: s2}\nspec: {vcpus: 0}\n")
    (tmp_path / "c.yaml").write_text("# again\n" + PLAN_YAML)
    with pytest.raises(SpecError) as info:
        ap.load_all(sorted(tmp_path.iterdir()))
    text = str(info.value)
    assert f"{tmp_path / 'c.yaml'}:2: metadata.name: Plan 's1' is also defined at {tmp_path / 'a.yaml'}:1" in text
    assert f"{tmp_path / 'b.yaml'}:7: spec.vcpus:" in text


def test_apply_owns_labels_and_spec_but_keeps_server_finalizers() -> None:
    """An update carries the file's labels and spec, and the server's finalizers and version."""
    current = plan(finalizers=["hostplane.io/x"], resourceVersion="7", labels={"old": "1"})
    desired = ap.with_source(plan(), "gitops")
    assert not ap.is_unchanged(current, desired)
    merged = ap.merged_for_update(current, desired)
    assert merged.metadata.finalizers == ["hostplane.io/x"] and merged.metadata.resourceVersion == "7"
    assert merged.metadata.labels == {"line": "standard", ap.SOURCE_LABEL: "gitops"}
    assert ap.is_unchanged(merged, desired)


def test_apply_keeps_annotations_the_files_do_not_name() -> None:
    """Hand-set annotations are neither drift nor removed; annotations in the file are enforced."""
    desired = ap.with_source(plan(annotations={"team": "web"}), "g")
    current = ap.merged_for_update(plan(annotations={"hostplane.io/drain": "true", "team": "ops"}), desired)
    assert current.metadata.annotations == {"hostplane.io/drain": "true", "team": "web"}
    assert ap.is_unchanged(current, desired) and ap.diff_text(current, desired) == ""


def test_diff_is_empty_when_equal_and_unified_otherwise() -> None:
    """diff_text is empty for equal objects and a unified diff naming the object otherwise."""
    a = ap.with_source(plan(), "s")
    assert ap.diff_text(a.model_copy(update={"metadata": a.metadata.model_copy(update={"uid": "u"})}), a) == ""
    changed = a.model_copy(update={"spec": a.spec.model_copy(update={"vcpus": 2})})
    text = ap.diff_text(a, changed)
    assert text.startswith("--- live/plan/s1\n+++ file/plan/s1\n") and "-  vcpus: 1\n+  vcpus: 2\n" in text
    assert ap.diff_text(None, a).startswith("--- /dev/null")
    assert "+++ /dev/null" in ap.removal_text(a)


def test_apply_order_puts_referenced_kinds_first() -> None:
    """Plans come before subscriptions, which come before servers."""
    docs = load_documents(
        "kind: Subscription\nmetadata: {name: a}\nspec: {customer: c, plan: s1}\n---\n" + PLAN_YAML)
    assert [d.obj.KIND for d in ap.in_apply_order(docs)] == ["Plan", "Subscription"]


# ---------------------------------------------------------------- tables, config


def test_table_columns_and_age() -> None:
    """Tables line up columns per kind; age is compact; missing status renders empty."""
    data = plan().model_dump(mode="json", exclude_none=True)
    out = render("Plan", [data]).splitlines()
    assert out[0].split() == ["NAME", "VCPUS", "MEMORY", "DISK", "PRICE", "AGE"]
    assert out[1].split()[:5] == ["s1", "1", "1Gi", "25Gi", "4.49"]
    vps = {"metadata": {"name": "v"}, "spec": {"hostname": "h"}}
    assert render("VPS", [vps]).splitlines()[1].split() == ["v", "h"]
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert age({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}}, now) == "1d"
    assert age({"metadata": {"creationTimestamp": "2026-01-01T23:59:30Z"}}, now) == "30s"


def test_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags beat environment, which beats the config file under XDG_CONFIG_HOME."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("HOSTPLANE_SERVER", raising=False)
    monkeypatch.delenv("HOSTPLANE_TOKEN", raising=False)
    assert config_path() == tmp_path / "hostplane" / "config.yaml"
    assert resolve().token is None and resolve().server == "http://127.0.0.1:8080"
    config_path().parent.mkdir(parents=True)
    config_path().write_text("server: http://file:1/\ntoken: from-file\n")
    assert resolve() == resolve(None, None)
    assert (resolve().server, resolve().token) == ("http://file:1", "from-file")
    monkeypatch.setenv("HOSTPLANE_TOKEN", "from-env")
    assert resolve().token == "from-env"
    assert resolve(server="http://flag:2", token="from-flag") .token == "from-flag"
    config_path().write_text("- not a mapping\n")
    monkeypatch.delenv("HOSTPLANE_TOKEN")
    with pytest.raises(ValueError, match="must be a mapping"):
        resolve()


# ---------------------------------------------------------------- merge patch

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)
no_nulls = st.recursive(
    st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)


@given(json_values, json_values)
def test_merge_patch_is_idempotent(target: Any, patch: Any) -> None:
    """Applying the same merge patch twice is the same as applying it once."""
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(st.dictionaries(st.text(max_size=3), no_nulls, max_size=4))
def test_merge_patch_empty_patch_and_self_patch(target: dict[str, Any]) -> None:
    """An empty patch changes nothing; a null-free object patched onto itself is itself."""
    assert merge_patch(target, {}) == target
    assert merge_patch(target, target) == target


def test_merge_patch_rfc_examples() -> None:
    """Examples from RFC 7386: null removes, arrays replace, nested objects merge."""
    assert merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}}) == {
        "a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert merge_patch({"a": "b"}, ["c"]) == ["c"]
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}


# ---------------------------------------------------------------- SSE and errors


def test_render_events_filters_kinds_and_ids_only_the_last_of_a_revision() -> None:
    """Frames cover only the wanted kinds; keys changed in one revision share one trailing id."""
    root = "/r"
    evs = [
        WatchEvent("DELETE", "/r/specs/plans/a", b"", 5),
        WatchEvent("DELETE", "/r/status/plans/a", b"", 5),
        WatchEvent("PUT", "/r/specs/images/i", b"{}", 6),
        WatchEvent("PUT", "/r/status/plans/b", b'{"x":1}', 7),
    ]
    frames = render_events(evs, root, {"plans": Plan})
    assert len(frames) == 3
    assert not frames[0].startswith("id:") and frames[1].startswith("id: 5\n")
    assert frames[2].startswith("id: 7\n") and '"object":{"x":1}' in frames[2]


def test_sse_parser_joins_data_and_keeps_ids() -> None:
    """The client parses data lines, ignores comments, and attaches the id."""
    lines = iter(["retry: 2000", ": hi", "", "id: 9", 'data: {"a":', "data: 1}", "", 'data: {"b":2}', ""])
    assert list(_sse_events(lines)) == [{"a": 1, "_id": "9"}, {"b": 2}]


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (store_errors.NotFound("x"), 404), (store_errors.AlreadyExists("x"), 409), (store_errors.Conflict("x"), 409),
        (store_errors.TooLarge("x"), 413), (store_errors.Unavailable("x"), 503), (store_errors.Compacted(3), 410),
        (BadRequest("x"), 400), (RuntimeError("boom"), 500),
    ],
)
def test_problem_mapping(exc: Exception, status: int) -> None:
    """Each error maps to one status; unexpected errors reveal nothing of themselves."""
    p = problem_for(exc)
    assert p.status == status and p.body()["status"] == status
    if status == 500:
        assert "boom" not in str(p.body())


def test_parse_body_content_types() -> None:
    """JSON by default, YAML by content type; other types, aliases and bad syntax are 400."""
    assert parse_body(b'{"a": 1}', "") == {"a": 1}
    assert parse_body(b"a: 1\n", "application/yaml; charset=utf-8") == {"a": 1}
    for raw, ctype in ((b"a: 1", "text/plain"), (b"a: &x 1\nb: *x", "application/yaml"), (b"[", "application/json"),
                       (b"a: 1\n---\nb: 2\n", "application/yaml"), (b"  ", "application/json")):
        with pytest.raises(BadRequest):
            parse_body(raw, ctype)


def test_a_vps_bound_by_the_server_is_not_drift() -> None:
    """The API's spec.subscriptionUID on the live VPS is neither drift nor in a diff against a file without it."""
    desired = ap.with_source(builders.vps("web", "sub"), "g")
    live = desired.model_copy(update={"spec": desired.spec.model_copy(update={"subscriptionUID": "u-1"})})
    assert ap.is_unchanged(live, desired) and ap.diff_text(live, desired) == ""
    moved = desired.model_copy(update={"spec": desired.spec.model_copy(update={"subscription": "other"})})
    assert "subscription: other" in ap.diff_text(live, moved) and "subscriptionUID" not in ap.diff_text(live, moved)
