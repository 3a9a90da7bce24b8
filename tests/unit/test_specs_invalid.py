"""Invalid documents are refused with the source, the document's line and the field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from specs import SpecError, load_documents, load_file

VPS_YAML = """\
# A customer's server.
apiVersion: hostplane.io/v1
kind: VPS
metadata:
  name: web-1
  labels:
    team: blue
spec:
  subscription: acme-basic
  image: debian-12
  hostname: web-1.example.com
  powerState: Running
  rebuildGeneration: 0
  restartGeneration: {restart}
"""

PLAN = """\
kind: Plan
metadata:
  name: {name}
spec:
  vcpus: 1
  memoryMiB: {memory}
  diskGiB: 10
  price: {{amount: "4.99", currency: EUR}}
"""


def errors(text: str, source: str = "examples/x.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        load_documents(text, source)
    assert str(info.value) == "\n".join(errors_of(info.value))
    return errors_of(info.value)


def errors_of(exc: SpecError) -> list[str]:
    return [str(d) for d in exc.details]


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(VPS_YAML.format(restart=-1), "examples/x.yaml:14: spec.restartGeneration: must be >= 0",
                 id="negative-generation"),
    pytest.param(VPS_YAML.format(restart="true"), "examples/x.yaml:14: spec.restartGeneration: must be an integer",
                 id="bool-for-int"),
    pytest.param(VPS_YAML.format(restart='"3"'), "examples/x.yaml:14: spec.restartGeneration: must be an integer",
                 id="string-for-int"),
    pytest.param(PLAN.format(name="small", memory=0), "examples/x.yaml:6: spec.memoryMiB: must be > 0",
                 id="memory-zero"),
    pytest.param(PLAN.format(name="small", memory="1.5"), "examples/x.yaml:6: spec.memoryMiB: must be an integer",
                 id="fractional"),
    pytest.param(PLAN.format(name="Small", memory=1).replace("  vcpus", "  cpus"),
                 "examples/x.yaml:3: metadata.name: must be a DNS label", id="bad-name"),
    pytest.param("kind: Flavor\nmetadata: {name: a}\n", "examples/x.yaml:1: kind: unknown kind 'Flavor'",
                 id="unknown-kind"),
    pytest.param("metadata: {name: a}\n", "examples/x.yaml:1: kind: field required", id="no-kind"),
    pytest.param("kind: [Plan]\n", "examples/x.yaml:1: kind: must be a string", id="kind-not-string"),
    pytest.param(PLAN.format(name="a", memory=1) + "  cpus: 4\n", "examples/x.yaml:9: spec.cpus: unknown field",
                 id="unknown-field"),
    pytest.param(PLAN.format(name="a", memory=1) + "  memoryMiB: 2\n",
                 "examples/x.yaml:9: spec.memoryMiB: duplicate key", id="duplicate-key"),
    pytest.param(PLAN.format(name="a", memory=1).replace('"4.99"', '"4.999"'),
                 "examples/x.yaml:8: spec.price.amount: EUR has 2 decimal places", id="over-precise-price"),
    pytest.param(PLAN.format(name="a", memory=1).replace('"4.99"', '"-1"'),
                 "examples/x.yaml:8: spec.price.amount: a price must be >= 0", id="negative-price"),
    pytest.param(PLAN.format(name="a", memory=1).replace("EUR", "XTS"),
                 "examples/x.yaml:8: spec.price.currency: unknown currency 'XTS'", id="unknown-currency"),
    pytest.param("kind: Plan\nmetadata: {name: a\nspec: x\n", "examples/x.yaml:3: invalid YAML:", id="invalid-yaml"),
    pytest.param("kind: Plan\n\tmetadata: {}\n", "examples/x.yaml:2: invalid YAML:", id="tab-indent"),
    pytest.param("just a string\n", "examples/x.yaml:1: document must be a mapping", id="scalar"),
    pytest.param("kind: Plan\nmetadata: {name: a}\nspec: " + "[" * 2000 + "]" * 2000 + "\n",
                 "examples/x.yaml: invalid YAML: nested too deeply", id="deep-nesting"),
])
def test_invalid_document_is_refused_with_line_and_path(text: str, expected: str) -> None:
    """Each kind of bad input gives one error naming file, line and field (table)."""
    got = errors(text)
    assert any(e.startswith(expected) for e in got), got


def test_error_in_the_second_document_gives_its_own_line() -> None:
    """In a multi-document file the line is counted from the file's start, not the document's."""
    text = PLAN.format(name="a", memory=512) + "---\n" + PLAN.format(name="b", memory=0)
    assert errors(text) == ["examples/x.yaml:15: spec.memoryMiB: must be > 0"]


def test_every_bad_document_of_a_file_is_reported() -> None:
    """All problems of all documents come back together, in file order."""
    text = PLAN.format(name="a", memory=0) + "---\n" + PLAN.format(name="B", memory=1)
    assert errors(text) == [
        "examples/x.yaml:6: spec.memoryMiB: must be > 0",
        "examples/x.yaml:12: metadata.name: must be a DNS label: 1-63 lowercase letters, digits or '-', "
        "starting and ending with a letter or digit",
    ]


def test_the_vps_example_error_names_the_field_line() -> None:
    """The VPS example's error points at line 14 of the file, as the CLI prints it."""
    assert errors(VPS_YAML.format(restart=-1), "examples/vps.yaml") == [
        "examples/vps.yaml:14: spec.restartGeneration: must be >= 0"]


def test_billion_laughs_is_refused_quickly() -> None:
    """Aliases that expand to billions of nodes are refused without building them."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    got = errors("\n".join(lines) + "\nkind: Plan\n")
    assert got == ["examples/x.yaml:1: document is too large or nested too deeply (over 100000 nodes)"]


def test_empty_documents_are_skipped() -> None:
    """Empty documents and comment-only files load as nothing, not as errors."""
    assert load_documents("", "x") == []
    assert load_documents("# nothing\n---\n---\n", "x") == []


def test_load_file_names_the_file_and_refuses_non_utf8(tmp_path: Path) -> None:
    """load_file reports errors under the file's path and refuses bytes that are not UTF-8."""
    base = tmp_path
    bad = base / "plan.yaml"
    bad.write_text(PLAN.format(name="a", memory=0))
    with pytest.raises(SpecError, match=rf"^{bad}:6: spec.memoryMiB: must be > 0$"):
        load_file(bad)
    binary = base / "bin.yaml"
    binary.write_bytes(b"kind: \xff\xfe\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_file(binary)


def test_error_in_a_json_array_names_the_elements_line() -> None:
    """In a JSON array of objects the error line is that of the offending field of that element."""
    ok = '{"kind": "Plan", "metadata": {"name": "a"}, "spec": {"vcpus": 1, "memoryMiB": 1, "diskGiB": 1,' \
         ' "price": {"amount": "1", "currency": "EUR"}}}'
    text = "[\n  " + ok + ",\n  " + ok.replace('"a"', '"b"').replace('"spec"', '\n   "spec"').replace(
        '"vcpus": 1', '"vcpus": 0') + "\n]"
    assert errors(text, "plans.json") == ["plans.json:4: spec.vcpus: must be > 0"]


def test_an_integer_past_python_s_conversion_limit_is_a_spec_error_with_line_and_path() -> None:
    """A 5,000-digit integer in a file is reported with file, line and field (it was a bare ValueError)."""
    text = "apiVersion: hostplane.io/v1\nkind: Plan\nmetadata: {name: p}\nspec:\n  vcpus: " + "9" * 5000 + "\n"
    with pytest.raises(SpecError) as info:
        load_documents(text, "plans.yaml")
    assert str(info.value).startswith("plans.yaml:5: spec.vcpus: an integer of 5000 digits is too long")
