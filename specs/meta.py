"""Object metadata and conditions shared by every kind (Kubernetes-shaped)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

API_VERSION = "hostplane.io/v1"

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(
            "must be a DNS label: 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for k, v in value.items():
        if not _LABEL_KEY.match(k):
            raise ValueError(f"label key {k!r} is not a valid [prefix/]name")
        if not _LABEL_VALUE.match(v):
            raise ValueError(f"label {k!r}: value {v!r} must be ≤63 of [A-Za-z0-9._-]")
    return value


Name = Annotated[str, AfterValidator(_dns_label)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]


class Model(BaseModel):
    """Base for every spec model: unknown fields are errors, names are camelCase as written."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ObjectMeta(Model):
    name: Name
    uid: str | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    resourceVersion: str | None = None
    creationTimestamp: datetime | None = None
    deletionTimestamp: datetime | None = None
    finalizers: list[str] = Field(default_factory=list)


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
