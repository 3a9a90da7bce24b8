"""One writer per status field: a scan of the production code for writes of each kind's status,
held against the owner table of docs/architecture.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("specs", "reconcile", "controllers", "nodeagent", "api")
DOC = ROOT / "docs" / "architecture.md"
# reconcile/ is the store: it writes what its callers hand it and owns no field.
STORE = ("reconcile/",)


def _status_kind(node: ast.expr, tkeys: dict[str, str]) -> str | None:
    """The kind whose status key `node` is: `keys.status_key(Kind, ...)` or a name bound to one."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
        fname = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
        if fname == "status_key" and node.args and isinstance(node.args[0], ast.Name):
            return node.args[0].id
    if isinstance(node, ast.Name):
        return tkeys.get(node.id)
    return None


def status_writes(source: str) -> list[tuple[int, str]]:
    """(line, kind) of each status write in `source`: a Put of a status key, or put_status(Kind, ...)."""
    out: list[tuple[int, str]] = []
    tree = ast.parse(source)
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
            continue
        tkeys: dict[str, str] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else [node.targets[0]]
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                for t, v in zip(targets, values, strict=False):
                    kind = _status_kind(v, {})
                    if isinstance(t, ast.Name) and kind is not None:
                        tkeys[t.id] = kind
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "Put" and (kind := _status_kind(node.args[0], tkeys)) is not None:
                out.append((node.lineno, kind))
            elif name == "put_status" and isinstance(node.args[0], ast.Name):
                out.append((node.lineno, node.args[0].id))
    return sorted(set(out))


def owners_in_doc() -> dict[str, str]:
    """The field-owner table of docs/architecture.md: kind -> the module that writes its status."""
    text = DOC.read_text()
    table = text[text.index("<!-- status-owners -->"):text.index("<!-- /status-owners -->")]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)\.status` \| `([\w/.]+)` \|", table, re.M)}


def test_each_status_is_written_by_its_one_owner() -> None:
    """Every status write in the production code is in the module the owner table names for that kind."""
    owners = owners_in_doc()
    assert set(owners) == {"VPS", "Node", "IPPool", "Subscription", "Customer"}
    wrong = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel.startswith(STORE):
                continue
            for line, kind in status_writes(path.read_text()):
                if owners.get(kind) != rel:
                    wrong.append(f"{rel}:{line}: writes {kind}.status (owner: {owners.get(kind)})")
    assert wrong == [], "\n".join(wrong)


def test_the_scan_sees_each_form_of_a_status_write() -> None:
    """Put of a status key (direct or through a name) and put_status are found; reads are not."""
    src = '''
def f(store, r):
    skey, tkey = keys.spec_key(Subscription, n, r), keys.status_key(Subscription, n, r)
    store.txn([], [Get(tkey)])
    store.txn([], [Put(tkey, b"")])
    batch.put_status(Node, n, st)
    return Put(keys.status_key(Customer, n, r), b"")
'''
    assert [k for _, k in status_writes(src)] == ["Subscription", "Node", "Customer"]
