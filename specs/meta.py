"""Object metadata and conditions shared by every kind (Kubernetes-shaped)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

API_VERSION: Final = "hostplane.io/v1"

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            "must be a DNS label: 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for k, v in value.items():
        if not _LABEL_KEY.fullmatch(k):
            raise ValueError(f"label key {k!r} is not a valid [prefix/]name")
        if not _LABEL_VALUE.fullmatch(v):
            raise ValueError(f"label {k!r}: value {v!r} must be ≤63 of [A-Za-z0-9._-]")
    return value


# C0/C1 control characters (Unicode category Cc), line/paragraph separators, and the
# bidirectional overrides and isolates that make text display differently from what it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_ANNOTATIONS_BYTES = 256 * 1024


def check_text(value: str, *, multiline: bool = False) -> str:
    """Refuse control characters (newlines and tabs only if `multiline`) and bidi overrides.

    Free text ends up in cloud-init files, libvirt metadata, terminals and the panel; a stray
    newline or a right-to-left override there is an injection or a spoof, never a feature.
    """
    bad = (_UNSAFE_MULTILINE if multiline else _UNSAFE).search(value)
    if bad is not None:
        raise ValueError(f"must not contain control character U+{ord(bad.group()):04X}")
    return value


def _qualified_name(value: str) -> str:
    if not _LABEL_KEY.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid [prefix/]name")
    return value


def _annotations(value: dict[str, str]) -> dict[str, str]:
    size = 0
    for k, v in value.items():
        if not _LABEL_KEY.fullmatch(k):
            raise ValueError(f"annotation key {k!r} is not a valid [prefix/]name")
        try:
            check_text(v, multiline=True)  # notes may span lines; other controls and bidi overrides never
        except ValueError as exc:
            raise ValueError(f"annotation {k!r} {exc}") from None
        size += len(k.encode()) + len(v.encode())
    if size > MAX_ANNOTATIONS_BYTES:
        raise ValueError(f"annotations total {size} bytes; at most {MAX_ANNOTATIONS_BYTES}")
    return value


Name = Annotated[str, AfterValidator(_dns_label)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
Text = Annotated[str, AfterValidator(check_text)]
QualifiedName = Annotated[str, AfterValidator(_qualified_name)]


class Model(BaseModel):
    """Base for every spec model: unknown fields are errors, names are camelCase as written."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ObjectMeta(Model):
    name: Name
    uid: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    labels: Labels = Field(default_factory=dict)
    annotations: Annotated[dict[str, str], AfterValidator(_annotations)] = Field(default_factory=dict)
    generation: int | None = None
    resourceVersion: str | None = None
    creationTimestamp: datetime | None = None
    deletionTimestamp: datetime | None = None
    finalizers: list[QualifiedName] = Field(default_factory=list, max_length=32)


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    lastTransitionTime: datetime | None = None


def set_condition(
    conditions: list[Condition], new: Condition, now: datetime
) -> list[Condition]:
    """Return conditions with `new` in place; the transition time moves only on a status change."""
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type == new.type:
            found = True
            moved = c.status != new.status
            out.append(
                new.model_copy(
                    update={"lastTransitionTime": now if moved else (c.lastTransitionTime or now)}
                )
            )
        else:
            out.append(c)
    if not found:
        out.append(new.model_copy(update={"lastTransitionTime": now}))
    return out


# Public for the label selector parser, which must accept exactly what labels allow.
LABEL_KEY_RE = _LABEL_KEY
LABEL_VALUE_RE = _LABEL_VALUE
