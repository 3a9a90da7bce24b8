"""The OpenAPI document is a contract: complete, and unchanged unless deliberately regenerated.

Regenerate after an intended API change with:

    .venv/bin/python -m tests.unit.test_openapi_snapshot

and commit tests/snapshots/openapi.json with the change (the diff is the API review).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from api.server import create_app

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "openapi.json"
REGENERATE = "python -m tests.unit.test_openapi_snapshot"


def current() -> dict[str, Any]:
    # The document depends only on the routes, never on the store: none is needed.
    doc: dict[str, Any] = create_app(None).openapi()  # type: ignore[arg-type]
    return doc


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_openapi_matches_the_committed_snapshot() -> None:
    """/openapi.json equals tests/snapshots/openapi.json; an API change must regenerate it on purpose."""
    assert SNAPSHOT.exists(), f"no snapshot; create it with `{REGENERATE}`"
    assert render(current()) == SNAPSHOT.read_text(), f"the API changed; review and run `{REGENERATE}`"


def test_every_operation_documents_its_answers_and_errors() -> None:
    """Each operation has a success answer; each authenticated one its errors as problem+json; bodies are typed."""
    doc = current()
    schemas = doc["components"]["schemas"]
    for kind in ("Plan", "Image", "Node", "IPPool", "Customer", "Subscription", "VPS", "Problem", "VPSList"):
        assert kind in schemas
    assert "HTTPValidationError" not in json.dumps(doc)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            responses = op["responses"]
            assert any(s.startswith("2") for s in responses), where
            if path.startswith("/v1/"):
                for status in ("400", "401", "403", "404", "429", "500", "503"):
                    assert "application/problem+json" in responses[status]["content"], (where, status)
            if method in ("post", "put", "patch") and not path.endswith(("/logout", "/webhook-secrets/{provider}")):
                assert "requestBody" in op, where


def test_every_reference_resolves() -> None:
    """No $ref points at a schema the document does not define."""
    doc = current()
    text = json.dumps(doc)
    prefix = '"$ref": "#/components/schemas/'
    names = {chunk.split('"', 1)[0] for chunk in text.split(prefix)[1:]}
    assert names <= set(doc["components"]["schemas"]), names - set(doc["components"]["schemas"])


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(render(current()))
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
