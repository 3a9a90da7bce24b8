"""JSON Schema of each kind, for `hostplane schema KIND` and for editors validating YAML.

Pure: builds a dict from the models, never reads or writes anything.
"""

from __future__ import annotations

from typing import Any

from specs.kinds import KINDS, Resource, kind_for


def json_schema(kind: str | type[Resource]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a kind, named by any of its names or given as a class.

    Raises KeyError naming the known kinds for an unknown name. Validators that a schema
    cannot express (hostnames, SSH keys, money precision) still run when a document is loaded.
    """
    cls = kind_for(kind) if isinstance(kind, str) else kind
    schema = cls.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://hostplane.io/schemas/v1/{cls.KIND}.json"
    props = schema.get("properties", {})
    if "kind" in props:
        props["kind"] = {"const": cls.KIND, "type": "string", "title": "Kind"}
    if "apiVersion" in props:
        props["apiVersion"] = {"const": "hostplane.io/v1", "type": "string", "title": "Apiversion"}
    return schema


def all_schemas() -> dict[str, dict[str, Any]]:
    """Every kind's schema, by kind name."""
    return {name: json_schema(cls) for name, cls in KINDS.items()}
