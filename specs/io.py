"""Read and write objects as multi-document YAML or JSON, with errors that say where.

`load_documents(text, source)` parses every document, validates it as the kind it names,
and on failure raises one `SpecError` listing every problem as `source:line: path: message`,
the line being that of the offending field when it can be found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from specs.errors import SpecError, SpecErrorDetail
from specs.kinds import KINDS, Resource, kind_for


@dataclass
class Document:
    obj: Resource
    source: str
    line: int


class _Located:
    """Maps a field path inside one YAML document to its 1-based line."""

    def __init__(self, node: yaml.Node | None, base_line: int) -> None:
        self.node = node
        self.base_line = base_line

    def line(self, path: tuple[str | int, ...]) -> int:
        node = self.node
        line = self.base_line
        for part in path:
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        nxt = v
                        line = k.start_mark.line + 1
                        break
                if nxt is None:
                    return line
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings (pydantic parses them)."""


_SafeLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _format_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # pydantic inserts validator names (e.g. "function-after[...]") into loc; drop them.
    return tuple(p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "json-or-python")))


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "list_type": "must be a list",
    "string_too_long": "must be at most {max_length} characters",
    "string_too_short": "must be at least {min_length} characters",
    "too_long": "must have at most {max_length} items",
    "literal_error": "must be one of {expected}",
}


def _message(err: Any) -> str:
    template = _MESSAGES.get(err["type"])
    if template is not None:
        try:
            return template.format(**err.get("ctx", {}))
        except (KeyError, IndexError):
            pass
    msg: str = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


def validate_object(data: Any, source: str, locate: _Located | None = None) -> Resource:
    """Validate one parsed document (a dict) as the kind it names."""
    line = locate.base_line if locate else None
    if not isinstance(data, dict):
        raise SpecError([SpecErrorDetail(source, line, "", "document must be a mapping")])
    kind = data.get("kind")
    if kind is None:
        raise SpecError([SpecErrorDetail(source, line, "kind", "field required")])
    if not isinstance(kind, str):
        where = locate.line(("kind",)) if locate else None
        raise SpecError([SpecErrorDetail(source, where, "kind", "must be a string")])
    try:
        cls = kind_for(kind)
    except KeyError as exc:
        where = locate.line(("kind",)) if locate else None
        raise SpecError([SpecErrorDetail(source, where, "kind", str(exc.args[0]))]) from None
    if kind != cls.KIND:
        data = {**data, "kind": cls.KIND}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        details = []
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            where = locate.line(loc) if locate else None
            details.append(SpecErrorDetail(source, where, _format_path(loc), _message(err)))
        raise SpecError(details) from None


def load_documents(text: str, source: str = "<input>") -> list[Document]:
    """Parse YAML (JSON is YAML) with one or more documents into validated objects."""
    try:
        nodes = list(yaml.compose_all(text, Loader=_SafeLoader))
    except RecursionError:
        raise SpecError([SpecErrorDetail(source, None, "", "invalid YAML: nested too deeply")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([SpecErrorDetail(source, line, "", f"invalid YAML: {problem}")]) from None
    docs: list[Document] = []
    errors: list[SpecErrorDetail] = []
    for node in nodes:
        if node is None:
            continue
        try:
            dups = _duplicate_keys(node)
        except (_TooBig, RecursionError):
            errors.append(SpecErrorDetail(source, node.start_mark.line + 1, "",
                                          f"document is too large or nested too deeply (over {MAX_NODES} nodes)"))
            continue
        if dups:
            errors.extend(SpecErrorDetail(source, ln, p, "duplicate key") for p, ln in dups)
            continue
        longs = _long_integers(node)
        if longs:
            # Python refuses to convert an integer literal past 4,300 digits (a ValueError, not a YAML error).
            errors.extend(SpecErrorDetail(source, ln, p, f"an integer of {n} digits is too long (at most "
                                                         f"{MAX_INT_DIGITS})") for p, ln, n in longs)
            continue
        data = _construct(node)
        if data is None:
            continue
        # A JSON array of objects (what `dump_json` of a list writes) is a list of documents.
        items = (list(zip(node.value, data, strict=True))
                 if isinstance(data, list) and isinstance(node, yaml.SequenceNode) else [(node, data)])
        for item_node, item in items:
            item_line = item_node.start_mark.line + 1
            try:
                obj = validate_object(item, source, _Located(item_node, item_line))
                docs.append(Document(obj, source, item_line))
            except SpecError as exc:
                errors.extend(exc.details)
    if errors:
        raise SpecError(errors)
    return docs


# Aliases let a few lines of YAML stand for billions of nodes ("billion laughs"); no
# object of ours comes near this many, so a document past it is refused before it is built.
MAX_NODES = 100_000


class _TooBig(Exception):
    pass


def _duplicate_keys(node: yaml.Node, path: tuple[str | int, ...] = (),
                    budget: list[int] | None = None) -> list[tuple[str, int]]:
    """(path, line) of every key repeated within one mapping: YAML would silently keep the last."""
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    found: list[tuple[str, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    found.append((_format_path((*path, k.value)), k.start_mark.line + 1))
                seen.add(k.value)
                found.extend(_duplicate_keys(v, (*path, k.value), budget))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found.extend(_duplicate_keys(v, (*path, i), budget))
    return found


# No field of any kind holds an integer anywhere near this long.
MAX_INT_DIGITS = 64
_INT_TAG = "tag:yaml.org,2002:int"


def _long_integers(node: yaml.Node, path: tuple[str | int, ...] = ()) -> list[tuple[str, int, int]]:
    """(path, line, digits) of every integer scalar longer than MAX_INT_DIGITS (run after `_duplicate_keys`,
    which bounds the document's size)."""
    if isinstance(node, yaml.ScalarNode):
        digits = len(str(node.value).replace("_", "").lstrip("+-"))
        return [(_format_path(path), node.start_mark.line + 1, digits)] \
            if node.tag == _INT_TAG and digits > MAX_INT_DIGITS else []
    found: list[tuple[str, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            found.extend(_long_integers(v, (*path, str(k.value))))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found.extend(_long_integers(v, (*path, i)))
    return found


def duplicate_keys(node: yaml.Node) -> list[tuple[str, int]]:
    """(path, line) of every key repeated within one mapping of a composed document; ValueError if the
    document is past MAX_NODES nodes or nested too deeply."""
    try:
        return _duplicate_keys(node)
    except (_TooBig, RecursionError):
        raise ValueError(f"document is too large or nested too deeply (over {MAX_NODES} nodes)") from None


def _construct(node: yaml.Node) -> Any:
    loader = _SafeLoader("")
    try:
        return _join_surrogates(loader.construct_document(node))
    finally:
        loader.dispose()


def _join_surrogates(data: Any) -> Any:
    """Join UTF-16 surrogate pairs that JSON escapes (`"\\ud83d\\ude00"`) but YAML keeps apart.

    A lone surrogate cannot be stored or encoded, so it is left for validation to refuse.
    """
    if isinstance(data, str):
        if any("\ud800" <= ch <= "\udfff" for ch in data):
            try:
                return data.encode("utf-16", "surrogatepass").decode("utf-16")
            except UnicodeDecodeError:
                return data
        return data
    if isinstance(data, dict):
        return {_join_surrogates(k): _join_surrogates(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_join_surrogates(v) for v in data]
    return data


def load_file(path: str | Path) -> list[Document]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError([SpecErrorDetail(str(p), None, "", "not UTF-8 text")]) from None
    return load_documents(text, str(p))


def _plain(obj: Resource) -> dict[str, Any]:
    return obj.model_dump(mode="json", exclude_none=True)


def dump_yaml(objs: list[Resource]) -> str:
    return yaml.safe_dump_all([_plain(o) for o in objs], sort_keys=False, allow_unicode=True)


def dump_json(objs: list[Resource] | Resource) -> str:
    if isinstance(objs, Resource):
        return json.dumps(_plain(objs), indent=2, ensure_ascii=False)
    return json.dumps([_plain(o) for o in objs], indent=2, ensure_ascii=False)


__all__ = ["KINDS", "Document", "dump_json", "dump_yaml", "duplicate_keys", "load_documents", "load_file",
           "validate_object"]
