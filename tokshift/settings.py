"""The settings of a run: the config schema (config.schema.yaml beside this file) and its defaults.

The schema is the one place where a setting's default is written. Snakemake's validation
fills them into the config; the CLI options that mirror a setting and the engine's own
defaults (views per video, resize method, loader workers) read them from here, so a direct
`tokshift ...` call, a Python call and a workflow run agree. Neither the engine nor the CLI
imports the workflow layer for this: this module sits below all of them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@functools.cache
def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` ("#/$defs/...") to the definition it names."""
    while "$ref" in node:
        target: Any = load_schema()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def default(*keys: str) -> Any:
    """The schema's default for the setting at `keys`, e.g. ``default("frames", "timeout")``.

    A default may sit on the setting itself or in its parent object's default mapping.
    Raises KeyError for a setting without a default, so a CLI option cannot silently
    fall back to a value of its own.
    """
    missing = object()
    node, value = _resolve(load_schema()), missing
    for i, key in enumerate(keys):
        props = node.get("properties") or {}
        if key not in props:
            raise KeyError(f"config schema has no setting {'.'.join(keys[: i + 1])!r}")
        node = _resolve(props[key])
        if "default" in node:
            value = node["default"]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            value = missing
    if value is missing:
        raise KeyError(f"config schema declares no default for {'.'.join(keys)!r}")
    return value


def _setting(keys: tuple[str, ...]) -> dict[str, Any]:
    node = _resolve(load_schema())
    for i, key in enumerate(keys):
        props = node.get("properties") or {}
        if key not in props:
            raise KeyError(f"config schema has no setting {'.'.join(keys[: i + 1])!r}")
        node = _resolve(props[key])
    return node


def choices(*keys: str) -> list[Any]:
    """The values the schema allows for the setting at `keys` (its enum), e.g. ``choices("evaluate", "resize")``,
    so a CLI option's choices cannot drift from the config's."""
    return list(_setting(keys)["enum"])


def definition_default(definition: str, key: str) -> Any:
    """The default of `key` in a block the schema declares once and several settings share
    (``$defs``), e.g. ``definition_default("cvdf", "retries")`` for every dataset's `cvdf` entry."""
    node = _resolve(load_schema()["$defs"][definition])
    return _resolve(node["properties"][key])["default"]
