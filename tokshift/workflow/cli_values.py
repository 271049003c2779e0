"""Values given with `snakemake --config` turned into the types the config schema asks for.

Snakemake parses a top-level `--config key=4` as a number, but nested values
(`--config 'frames={shards: 4}'`) as strings only, which the schema would reject. Before
validation, each string that came from the command line is converted where the schema does
not accept a string there and the text reads as a value of a type it does accept (integer,
number, boolean, null). Anything else is left as given, so a wrong value is still rejected
by the schema, naming its key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from tokshift.settings import load_schema

_INTEGER = re.compile(r"[+-]?\d+")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _expand(node: Any) -> Iterator[dict[str, Any]]:
    """`node` and every schema it brings in ($ref, allOf/anyOf/oneOf, then/else)."""
    if not isinstance(node, dict):
        return
    yield node
    if "$ref" in node:
        target: Any = load_schema()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        yield from _expand(target)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key) or []:
            yield from _expand(sub)
    for key in ("then", "else"):
        yield from _expand(node.get(key))


def _child(nodes: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    """The schemas of `key` of an object (or of the items of an array when key is None)."""
    out: list[dict[str, Any]] = []
    for node in nodes:
        for n in _expand(node):
            if key is None:
                if isinstance(n.get("items"), dict):
                    out.append(n["items"])
            elif key in (n.get("properties") or {}):
                out.append(n["properties"][key])
            elif isinstance(n.get("additionalProperties"), dict):
                out.append(n["additionalProperties"])
    return out


def _accepted(nodes: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(JSON types accepted, string literals accepted) at a place of the schema."""
    types: set[str] = set()
    literals: set[str] = set()
    for node in nodes:
        for n in _expand(node):
            declared = n.get("type")
            types.update([declared] if isinstance(declared, str) else declared or [])
            for value in ([n["const"]] if "const" in n else []) + list(n.get("enum") or []):
                if isinstance(value, str):
                    literals.add(value)
                else:
                    types.add(_JSON_TYPES.get(type(value), "object"))
    return types, literals


def _convert(text: str, types: set[str], literals: set[str]) -> Any:
    """`text` as the first type the schema accepts that it reads as; unchanged otherwise."""
    if "string" in types or text in literals:
        return text
    if types & {"integer", "number"} and _INTEGER.fullmatch(text.strip()):
        return int(text)
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            pass
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "null" in types and text in ("null", "~"):
        return None
    return text


def _coerce(config: Any, given: Any, nodes: list[dict[str, Any]]) -> Any:
    if isinstance(given, dict) and isinstance(config, dict):
        for key, value in given.items():
            if key in config:
                config[key] = _coerce(config[key], value, _child(nodes, key))
        return config
    if isinstance(given, list) and isinstance(config, list) and len(given) == len(config):
        items = _child(nodes, None)
        return [_coerce(c, g, items) for c, g in zip(config, given)]
    if isinstance(given, str) and config == given and nodes:
        return _convert(given, *_accepted(nodes))
    return config


def coerce_command_line(config: dict[str, Any], command_line: dict[str, Any]) -> None:
    """Convert, in place, the string values of `config` that `command_line` (--config) set."""
    _coerce(config, command_line or {}, [load_schema()])
