"""What `hostplane apply` and `diff` decide, as pure functions over objects.

Files are read and validated all at once (nothing is written unless every document is
valid); each object gets the label `hostplane.io/source=<source>` so `--prune` can later
delete exactly what this source created and nothing else. Apply owns an object's labels
and spec and the annotations the files name; other annotations (set by hand: drain,
force-orphan) and finalizers stay as the server has them (finalizers belong to
controllers, and dropping one would skip a cleanup). This module must never talk to the server.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from specs import SpecError, SpecErrorDetail
from specs.io import Document, load_file
from specs.kinds import Resource

SOURCE_LABEL = "hostplane.io/source"
# Referenced kinds first, so a fresh cluster gets plans before the subscriptions naming them.
KIND_ORDER = ("Plan", "Image", "Node", "IPPool", "Customer", "Subscription", "VPS")
_SUFFIXES = (".yaml", ".yml", ".json")
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")


class InputError(ValueError):
    """A path or argument the CLI cannot use (not a spec problem)."""


def collect_files(paths: Sequence[str]) -> list[Path]:
    """Expand files and directories (recursively: *.yaml, *.yml, *.json) in a stable order."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _SUFFIXES)
            if not found:
                raise InputError(f"{raw}: no .yaml, .yml or .json files in this directory")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{raw}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in out:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def sanitize_label_value(text: str) -> str:
    value = _LABEL_VALUE_BAD.sub("-", text)[:63].strip("-._")
    return value or "cli"


def derive_source(paths: Sequence[str]) -> str:
    """The source label for a set of -f paths: the file stems / directory names, joined.

    Joining (not taking the first) keeps `apply -f a -f b --prune` from ever pruning
    what `apply -f a` created under another source.
    """
    names = []
    for raw in paths:
        p = Path(raw).resolve()
        names.append(p.name if p.is_dir() else p.stem)
    return sanitize_label_value(".".join(sorted(set(names))))


def load_all(files: Iterable[Path]) -> list[Document]:
    """Load every file; raise one SpecError listing every problem in every file."""
    docs: list[Document] = []
    errors: list[SpecErrorDetail] = []
    seen: dict[tuple[str, str], Document] = {}
    for f in files:
        try:
            loaded = load_file(f)
        except SpecError as exc:
            errors.extend(exc.details)
            continue
        except OSError as exc:
            errors.append(SpecErrorDetail(str(f), None, "", f"cannot read: {exc.strerror or exc}"))
            continue
        for doc in loaded:
            key = (doc.obj.KIND, doc.obj.name)
            first = seen.get(key)
            if first is not None:
                errors.append(SpecErrorDetail(doc.source, doc.line, "metadata.name",
                                              f"{doc.obj.KIND} {doc.obj.name!r} is also defined at "
                                              f"{first.source}:{first.line}"))
                continue
            seen[key] = doc
            docs.append(doc)
    if errors:
        raise SpecError(errors)
    return docs


def in_apply_order(docs: Iterable[Document]) -> list[Document]:
    return sorted(docs, key=lambda d: KIND_ORDER.index(d.obj.KIND) if d.obj.KIND in KIND_ORDER else len(KIND_ORDER))


def with_source(obj: Resource, source: str) -> Resource:
    labels = {**obj.metadata.labels, SOURCE_LABEL: source}
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"labels": labels}), "status": None})


# Spec fields the API sets itself (a body's value is ignored): never drift, never in a diff.
SERVER_SET_SPEC: dict[str, tuple[str, ...]] = {"VPS": ("subscriptionUID",)}


def managed_view(obj: Resource, *, annotations_of: Resource | None = None) -> dict[str, Any]:
    """The part of an object that apply owns and diff compares.

    With `annotations_of`, only the annotations that object names are compared: operators
    set others by hand (drain, force-orphan) and apply must neither see them as drift nor
    remove them. Spec fields the API sets itself (a VPS's subscriptionUID) are left out.
    """
    data = obj.model_dump(mode="json", exclude_none=True, include={"apiVersion", "kind", "metadata", "spec"})
    for server_set in SERVER_SET_SPEC.get(obj.KIND, ()):
        data.get("spec", {}).pop(server_set, None)
    meta = data.get("metadata", {})
    if annotations_of is not None:
        wanted = annotations_of.metadata.annotations
        meta["annotations"] = {k: v for k, v in meta.get("annotations", {}).items() if k in wanted}
    data["metadata"] = {k: meta[k] for k in ("name", "labels", "annotations") if meta.get(k) or k == "name"}
    return data


def is_unchanged(current: Resource, desired: Resource) -> bool:
    return managed_view(current, annotations_of=desired) == managed_view(desired)


def merged_for_update(current: Resource, desired: Resource) -> Resource:
    """`desired`'s labels, annotations and spec on top of the server's object (CAS on its version)."""
    meta = current.metadata.model_copy(update={
        "labels": dict(desired.metadata.labels),
        "annotations": {**current.metadata.annotations, **desired.metadata.annotations},
    })
    return current.model_copy(update={"metadata": meta, "spec": desired.spec, "status": None})


def ref(obj: Resource) -> str:
    return f"{obj.KIND.lower()}/{obj.name}"


def _yaml_lines(view: dict[str, Any] | None) -> list[str]:
    if view is None:
        return []
    return yaml.safe_dump(view, sort_keys=True, allow_unicode=True).splitlines(keepends=True)


def diff_text(current: Resource | None, desired: Resource) -> str:
    """A unified diff from the server's object to the file's; empty when they agree."""
    before = managed_view(current, annotations_of=desired) if current is not None else None
    after = managed_view(desired)
    if before == after:
        return ""
    name = ref(desired)
    return "".join(difflib.unified_diff(_yaml_lines(before), _yaml_lines(after),
                                        fromfile=f"live/{name}" if current else "/dev/null",
                                        tofile=f"file/{name}"))


def removal_text(current: Resource) -> str:
    """A unified diff for an object that pruning would delete."""
    return "".join(difflib.unified_diff(_yaml_lines(managed_view(current)), [],
                                        fromfile=f"live/{ref(current)}", tofile="/dev/null"))
