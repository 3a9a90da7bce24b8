"""Label selectors: `a=b,c!=d,e,!f` (as kubectl), parsed and matched. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "=":
            return labels.get(self.key) == self.value
        if self.op == "!=":
            return labels.get(self.key) != self.value
        if self.op == "exists":
            return self.key in labels
        return self.key not in labels


Selector = tuple[Requirement, ...]


def parse_selector(text: str | Mapping[str, str] | None) -> Selector:
    """Parse a selector string or an equality mapping; raise ValueError on bad syntax."""
    if text is None:
        return ()
    if isinstance(text, Mapping):
        return tuple(Requirement(k, "=", v) for k, v in text.items())
    out: list[Requirement] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append(Requirement(k.strip(), "!=", v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            out.append(Requirement(k.strip(), "=", v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            out.append(Requirement(k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            out.append(Requirement(part[1:].strip(), "!exists"))
        else:
            out.append(Requirement(part, "exists"))
    for r in out:
        if not r.key or any(c in r.key for c in " \t!=,"):
            raise ValueError(f"invalid label selector {text!r}")
    return tuple(out)


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in selector)
