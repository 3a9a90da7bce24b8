"""Label selectors, parsed and matched as kubectl does. Pure.

    a=b  a==b  a!=b  a  !a  a in (x,y)  a notin (x,y)      joined by ',' (AND)

Keys and values must be what a label can hold, so a typo is an error rather than a selector
that silently matches nothing (or, with `!=`, everything).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from specs.meta import LABEL_KEY_RE, LABEL_VALUE_RE


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists", "in", "notin"
    value: str = ""
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "=":
            return labels.get(self.key) == self.value
        if self.op == "!=":
            return labels.get(self.key) != self.value
        if self.op == "exists":
            return self.key in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        if self.op == "notin":
            return labels.get(self.key) not in self.values
        return self.key not in labels


Selector = tuple[Requirement, ...]

_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _requirement(part: str) -> Requirement:
    m = _SET.match(part)
    if m:
        values = tuple(v.strip() for v in m["values"].split(","))
        return Requirement(m["key"], m["op"], values=values)
    for token, op in (("!=", "!="), ("==", "="), ("=", "=")):
        if token in part:
            k, v = part.split(token, 1)
            return Requirement(k.strip(), op, v.strip())
    if part.startswith("!"):
        return Requirement(part[1:].strip(), "!exists")
    return Requirement(part, "exists")


def parse_selector(text: str | Mapping[str, str] | None) -> Selector:
    """Parse a selector string or an equality mapping; raise ValueError on bad syntax."""
    if text is None:
        return ()
    if isinstance(text, Mapping):
        out = [Requirement(k, "=", v) for k, v in text.items()]
    else:
        out = [_requirement(p.strip()) for p in _split(text) if p.strip()]
    for r in out:
        if not LABEL_KEY_RE.fullmatch(r.key):
            raise ValueError(f"invalid label selector {text!r}: {r.key!r} is not a label key")
        for v in (r.value, *r.values):
            if not LABEL_VALUE_RE.fullmatch(v):
                raise ValueError(f"invalid label selector {text!r}: {v!r} is not a label value")
    return tuple(out)


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in selector)
