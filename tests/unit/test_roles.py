"""The role definition: docs/security.md shows exactly it; node roles reach only their own node."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile import roles

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_security_doc_role_table_is_generated_from_code() -> None:
    """The table between the role-table markers of docs/security.md equals role_table()."""
    text = DOC.read_text()
    start = text.index("-->", text.index("<!-- role-table")) + 3
    end = text.index("<!-- /role-table -->")
    assert text[start:end].strip() == roles.role_table().strip()


names = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")


@given(names, names)
def test_node_role_reaches_only_its_own_node(a: str, b: str) -> None:
    """For any two node names, node-a's permissions cover no key of node b (a != b); the cluster id is read-only."""
    root = "/hostplane/v1"
    for p in roles.permissions(f"node-{a}", root):
        if p.key in (root + "/", root + "/meta/cluster-id"):
            # The revision probe and the cluster id: single keys, read only, no node's data.
            assert not p.prefix and p.access == "read"
            continue
        assert p.key.startswith(f"{root}/nodes/{a}/")
        if a != b:
            for rel in ("desired/x", "observed/x", "heartbeat", "tombstones/x"):
                assert not f"{root}/nodes/{b}/{rel}".startswith(p.key), (p, b)


def test_unknown_identity_has_no_role() -> None:
    """An identity outside the scheme has no role (no accidental grant)."""
    for bad in ("root", "node", "admin", "node-", "operator"):
        with pytest.raises(ValueError):
            roles.grants(bad)


def test_controllers_never_reach_auth() -> None:
    """No grant of the controllers or a node covers auth/."""
    root = "/hostplane/v1"
    for ident in ("controllers", "node-x", "fleet"):
        for p in roles.permissions(ident, root):
            assert not f"{root}/auth/tokens/t".startswith(p.key) or not p.prefix, (ident, p)
