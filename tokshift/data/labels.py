"""Class names shipped with the package, for checkpoints that do not carry their own."""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["kinetics400_classes"]


@functools.cache
def _kinetics400() -> tuple[str, ...]:
    text = resources.files("tokshift.data").joinpath("kinetics400_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 400 or list(names) != sorted(names):
        raise RuntimeError(f"kinetics400_classes.txt lists {len(names)} names, expected 400 sorted ones")
    return names


def kinetics400_classes() -> list[str]:
    """The 400 Kinetics-400 labels in class-index order (sorted: "abseiling" … "zumba")."""
    return list(_kinetics400())
