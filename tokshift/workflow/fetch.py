"""What the fetch rules (rules/fetch.smk) ask of the workflow: which records each job waits for.

The part archives of a split are known only once its part list is downloaded, so the list rule
is a Snakemake checkpoint and these functions take the workflow's ``checkpoints`` object.
"""

from __future__ import annotations

from typing import Any

from tokshift.fetch.cvdf import read_part_list

# Network steps, light on CPU and memory: the rules to run where the network is (e.g. as
# `localrules` on a login node when compute nodes have no internet access).
FETCH_RULES = ("cvdf_part_list", "cvdf_annotations", "fetch_part", "cvdf_replacement")


def part_markers(checkpoints: Any, settings: dict[str, Any], split: str) -> list[str]:
    """One record per part archive of ``split`` (``<download_dir>/extracted/<split>/<part>.json``)."""
    listing = checkpoints.cvdf_part_list.get(split=split).output[0]
    return [f"{settings['download_dir']}/extracted/{split}/{p.name}.json" for p in read_part_list(listing)]


def index_waits_for(checkpoints: Any, settings: dict[str, Any] | None, split: str) -> list[str]:
    """What indexing ``split`` waits for: every extracted part of the split and the applied replacement."""
    if settings is None:
        return []
    out = part_markers(checkpoints, settings, split)
    if settings["replacement"]:
        out.append(f"{settings['download_dir']}/replacement.json")
    return out
