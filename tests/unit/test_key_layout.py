"""Keys are built only in reconcile/keys.py: a scan of the production code for hand-built etcd keys."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("specs", "reconcile", "controllers", "nodeagent", "api")
LAYOUT = ROOT / "reconcile" / "keys.py"
# Segments of the key layout (DESIGN.md): a string holding one of them outside keys.py builds a key.
SEGMENTS = ("/specs/", "/status/", "/nodes/", "/alloc/", "/billing/", "/auth/", "/audit/", "/election",
            "/ledger/", "/idempotency/", "/events/", "/names/", "/meta/", "/desired/", "/observed/")


def _is_root(node: ast.expr) -> bool:
    """`root`, `self.root`, `store.root`, `self._store.root`, ...: the installation's key root."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name == "root" or name.endswith("_root")


def _segment(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return next((s for s in SEGMENTS if node.value.startswith(s)), None)
    return None


def offences(source: str) -> list[tuple[int, str]]:
    """The places in `source` that build an etcd key by hand (line, what)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr) and len(node.values) > 1:
            first, second = node.values[0], node.values[1]
            if isinstance(first, ast.FormattedValue) and _is_root(first.value):
                out.append((node.lineno, "f-string starting with the key root"))
            elif isinstance(first, ast.FormattedValue) and (hit := _segment(second)) is not None:
                out.append((node.lineno, f"f-string joining a key segment {hit!r}"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            if _is_root(node.left):
                out.append((node.lineno, "the key root + a string"))
            elif (hit := _segment(node.right)) is not None:
                out.append((node.lineno, f"a string + the key segment {hit!r}"))
    return out


def test_keys_are_built_only_in_the_layout_module() -> None:
    """No production module other than reconcile/keys.py builds an etcd key from the root or a layout segment."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == LAYOUT:
                continue
            for line, what in offences(path.read_text()):
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert found == [], "keys built outside reconcile/keys.py:\n" + "\n".join(found)


def test_the_scan_catches_hand_built_keys() -> None:
    """The scan flags each way a key is built by hand, and not a call of the layout module."""
    assert [w for _, w in offences('k = f"{store.root}/billing/x/{name}"')] == ["f-string starting with the key root"]
    assert [w for _, w in offences('k = self.root + "/s"')] == ["the key root + a string"]
    assert [w for _, w in offences('k = prefix + "/alloc/vps/"')] == ["a string + the key segment '/alloc/'"]
    assert [w for _, w in offences('k = f"{r}/nodes/"')] == ["f-string joining a key segment '/nodes/'"]
    assert offences('@router.get("/nodes/{name}/orphans")\ndef f() -> None: ...') == []
    assert offences("k = keys.spec_key(VPS, name, store.root)") == []
