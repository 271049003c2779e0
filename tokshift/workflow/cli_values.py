"""Values given with `snakemake --config` read as YAML reads them, where the config schema allows it.

Snakemake parses a top-level `--config key=4` as a number, but nested values
(`--config 'frames={shards: 4, stage_to: null}'`) as strings only: `4` and `null` arrive as the
texts "4" and "null". Before validation, each string that came from the command line and reads
as a YAML null, boolean or number (`null`, `~`, `true`, `false`, `4`, `1e-3`) becomes that value
wherever the schema accepts it there (or accepts anything), so `stage_to: null` means no staging
and `init_from: null` no checkpoint, as in config.yaml. Anything else is left as given: a string
where the schema takes strings (`amp: off` stays the word), and a wrong value is still rejected by
the schema, naming its key.
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


_YAML_INTEGER = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def yaml_scalar(text: str) -> Any:
    """What `text` means as a plain YAML 1.2 scalar: None, a bool, an int or a float; else `text` itself."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text.lower() == "true"
    if _YAML_INTEGER.fullmatch(text):
        return int(text)
    if _YAML_FLOAT.fullmatch(text):
        return float(text)
    return text


def _fits(value: Any, types: set[str]) -> bool:
    if value is None:
        return "null" in types
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, int):
        return bool(types & {"integer", "number"})
    return "number" in types or ("integer" in types and float(value).is_integer())


def _convert(text: str, types: set[str], literals: set[str]) -> Any:
    """`text` as YAML reads it where the schema takes that type; else as a value the schema takes; else as given."""
    if text in literals:  # an enum's word (`amp: off`) stays a word
        return text
    value = yaml_scalar(text)
    if not isinstance(value, str) and (not types or _fits(value, types)):
        return int(value) if isinstance(value, float) and "number" not in types else value
    if "string" in types:
        return text
    if types & {"integer", "number"} and _INTEGER.fullmatch(text.strip()):
        return int(text)
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            pass
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
    if isinstance(given, str) and config == given:  # no schema here: a free-form value (train.overrides)
        return _convert(given, *_accepted(nodes)) if nodes else yaml_scalar(given)
    return config


def coerce_command_line(config: dict[str, Any], command_line: dict[str, Any]) -> None:
    """Convert, in place, the string values of `config` that `command_line` (--config) set."""
    _coerce(config, command_line or {}, [load_schema()])
