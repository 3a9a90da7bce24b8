"""Hostplane's object model: every kind as a pydantic v2 model, and YAML/JSON I/O.

This package must never do I/O beyond parsing text it is handed, and never import anything
but pydantic and PyYAML: every other layer builds on it.
"""

from specs.domain import (
    BandwidthLimit,
    DomainImage,
    DomainNetwork,
    DomainSpec,
    IPAssignment,
    ObservedDomain,
)
from specs.errors import SpecError, SpecErrorDetail
from specs.io import Document, dump_json, dump_yaml, load_documents, load_file, validate_object
from specs.kinds import (
    KINDS,
    VPS,
    Customer,
    Image,
    IPPool,
    Node,
    Plan,
    Resource,
    Subscription,
    kind_for,
)
from specs.meta import Condition, ObjectMeta
from specs.money import Money, format_minor, to_minor
from specs.schema import all_schemas, json_schema

__all__ = [
    "KINDS",
    "VPS",
    "BandwidthLimit",
    "Condition",
    "Customer",
    "Document",
    "DomainImage",
    "DomainNetwork",
    "DomainSpec",
    "IPAssignment",
    "IPPool",
    "Image",
    "Money",
    "Node",
    "ObjectMeta",
    "ObservedDomain",
    "Plan",
    "Resource",
    "SpecError",
    "SpecErrorDetail",
    "Subscription",
    "all_schemas",
    "dump_json",
    "dump_yaml",
    "format_minor",
    "json_schema",
    "kind_for",
    "load_documents",
    "load_file",
    "to_minor",
    "validate_object",
]
