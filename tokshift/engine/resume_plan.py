"""Which resume checkpoint a training continues, and with which layout of its global batch.

A checkpoint records its run's fingerprint: the identity (what the run is: the zoo config without
its batch layout, the global batch, the seed, the training clips and the start weights), which
must match for the run to be continued, and the layout (processes x per-process batch x
accumulation), which may change between attempts as long as the global batch is kept
(docs/resume.md). These are the pure rules; `tokshift.engine.train._Trainer` applies them to the
files in `OUT/resume/`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokshift.zoo import ZooConfig

#: Zoo fields that only say how the global batch is laid out over processes (see `run_identity`).
LAYOUT_FIELDS = ("batch_size", "accum_steps", "gpus")


def _plain(obj: Any) -> Any:
    """`obj` as JSON would give it back (tuples become lists), so fingerprints compare by value."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def run_identity(
    cfg: ZooConfig, seed: int, train_clips: int, init_from_sha256: str | None, global_batch: int
) -> dict[str, Any]:
    """What a run is: a resume checkpoint is continued only by a run of the same identity.

    The zoo config without its layout fields, the global batch, the seed, the number of training
    clips and the starting weights: these fix which clips each optimizer step sees and what it
    does with them, on any number of processes.
    """
    config = {k: v for k, v in cfg.to_dict().items() if k not in LAYOUT_FIELDS}
    return _plain(
        {
            "config": config,
            "global_batch": int(global_batch),
            "seed": seed,
            "train_clips": train_clips,
            "init_from_sha256": init_from_sha256,
        }
    )


def fingerprint(
    cfg: ZooConfig,
    seed: int,
    world_size: int,
    n_train: int,
    init_from_sha256: str | None,
    requested: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A resume checkpoint's record of its run: the identity, which must match to continue, the
    layout of the global batch (processes x batch x accumulation), which may change, and the batch
    and accumulation the command asked for (`requested`, default the layout's), which tell a
    layout that was adapted to the processes from a changed global batch."""
    global_batch = cfg.batch_size * world_size * cfg.accum_steps
    return {
        "identity": run_identity(cfg, seed, n_train, init_from_sha256, global_batch),
        "layout": {"world_size": world_size, "batch_size": cfg.batch_size, "accum_steps": cfg.accum_steps},
        "requested": requested or {"batch_size": cfg.batch_size, "accum_steps": cfg.accum_steps},
    }


def identity_tag(identity: dict[str, Any]) -> str:
    """12 hex digits naming a run's identity (in its checkpoint file names)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _renamed_keys(fp: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint in today's key names, so a run preempted before their rename still resumes."""
    fp = dict(fp)
    if "pretrained_sha256" in fp and "init_from_sha256" not in fp:
        fp["init_from_sha256"] = fp.pop("pretrained_sha256")
    config = fp.get("config")
    if isinstance(config, dict) and "pretrained" in config and "imagenet_weights" not in config:
        config = dict(config)
        config["imagenet_weights"] = config.pop("pretrained")
        fp["config"] = config
    return fp


def split_fingerprint(fp: Any) -> tuple[dict[str, Any], dict[str, int], dict[str, int]] | None:
    """(identity, layout, requested) of a checkpoint's fingerprint (see `fingerprint`); None when it has none.

    Also for a fingerprint written before identity and layout were split (the whole config with
    batch_size and accum_steps, and world_size beside it), so a run preempted then still resumes.
    """
    if not isinstance(fp, dict):
        return None
    if isinstance(fp.get("identity"), dict) and isinstance(fp.get("layout"), dict):
        layout = {k: int(fp["layout"][k]) for k in ("world_size", "batch_size", "accum_steps")}
        requested = fp.get("requested") or layout
        return (
            _plain(fp["identity"]),
            layout,
            {k: int(requested[k]) for k in ("batch_size", "accum_steps")},
        )
    fp = _renamed_keys(fp)
    config = fp.get("config")
    if not isinstance(config, dict) or "batch_size" not in config:
        return None
    layout = {
        "world_size": int(fp.get("world_size", 1)),
        "batch_size": int(config["batch_size"]),
        "accum_steps": int(config.get("accum_steps", 1)),
    }
    identity = {
        "config": {k: v for k, v in config.items() if k not in LAYOUT_FIELDS},
        "global_batch": layout["world_size"] * layout["batch_size"] * layout["accum_steps"],
        "seed": fp.get("seed"),
        "train_clips": fp.get("train_clips"),
        "init_from_sha256": fp.get("init_from_sha256"),
    }
    return _plain(identity), layout, {"batch_size": layout["batch_size"], "accum_steps": layout["accum_steps"]}


def _short(value: Any, width: int = 24) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def identity_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """What differs between two identities, short: `seed 0 -> 1, config.lr 0.001 -> 0.002`."""

    def flat(identity: dict[str, Any]) -> dict[str, Any]:
        out = {f"config.{k}": v for k, v in (identity.get("config") or {}).items()}
        out.update({k: v for k, v in identity.items() if k != "config"})
        return out

    a, b = flat(old), flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    parts = [f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts) or "nothing recorded"


def describe_layout(layout: dict[str, int]) -> str:
    w = layout["world_size"]
    return f"{w} process{'es' if w > 1 else ''} x batch {layout['batch_size']} x accum {layout['accum_steps']}"


def continued_layout(
    old: dict[str, int], epoch_clips: int, batch_in_epoch: int, world_size: int, batch_size: int
) -> tuple[int, int] | str:
    """(accum_steps, start micro-batch) with which a run written with layout `old` continues on
    `world_size` processes of `batch_size`; or why it cannot.

    The global batch stays, so the accumulation is the one that keeps it. The epoch keeps its
    optimizer steps, and the run continues at the same clip of the epoch (the sampler's order
    does not depend on the layout). An epoch's last, partial step that the new micro-batch does
    not divide leaves out the clips that do not fill a micro-batch (`_Trainer._continue` logs
    how many).
    """
    w0, b0, a0 = old["world_size"], old["batch_size"], old["accum_steps"]
    g, m0 = w0 * b0 * a0, w0 * b0
    m = world_size * batch_size
    if g % m:
        return f"no whole accum_steps gives the global batch {g} with {world_size} processes x batch {batch_size}"
    accum = g // m
    if math.ceil((epoch_clips // m) / accum) != math.ceil((epoch_clips // m0) / a0):
        return (
            f"the last step of an epoch ({epoch_clips % g} clips) is smaller than {world_size} processes x batch "
            f"{batch_size}: the epoch would lose an optimizer step"
        )
    if batch_in_epoch >= epoch_clips // m0:  # at the end of its epoch
        return accum, epoch_clips // m
    clips_done = batch_in_epoch * m0
    if clips_done % m:
        return f"the checkpoint is {clips_done} clips into its epoch, not a whole number of micro-batches of {m}"
    return accum, clips_done // m


def layout_suggestion(old: dict[str, int], epoch_clips: int, batch_in_epoch: int, world_size: int, batch: int) -> str:
    """How to continue a run written with layout `old` that `world_size` processes of `batch` cannot:
    its number of processes, or the largest per-process batch up to `batch` that keeps its global batch."""
    g, w0 = old["world_size"] * old["batch_size"] * old["accum_steps"], old["world_size"]
    ways = [f"run on {w0} process{'es' if w0 > 1 else ''} again"] if world_size != w0 else []
    for b in range(min(batch, g), 0, -1):
        fit = continued_layout(old, epoch_clips, batch_in_epoch, world_size, b)
        if not isinstance(fit, str):
            ways.append(f"pass --override batch_size={b} accum_steps={fit[0]} (the same global batch {g})")
            break
    none = f"no batch_size and accum_steps keep the global batch {g} on {world_size} processes"
    if len(ways) == 2 or (ways and "override" in ways[0]):
        return "To continue it, " + " or ".join(ways)
    return f"To continue it, {ways[0]} ({none})" if ways else none[0].upper() + none[1:]


@dataclass
class Found:
    """A resume checkpoint as `_Trainer._choose_resume` sees it (state memory-mapped, or None if unreadable)."""

    path: Path
    state: dict[str, Any] | None
    identity: dict[str, Any] | None
    layout: dict[str, int] | None
    tag: str | None  # the identity tag in its name, else of its fingerprint; None when neither is known
    requested: dict[str, int] | None = None  # the batch and accumulation its command asked for


@dataclass
class ResumePlan:
    """What every rank learns from rank 0 before the sampler is built."""

    path: str | None  # the verified checkpoint to continue; None: from scratch
    accum_steps: int  # the accumulation that keeps the run's global batch on this many processes
    epoch_clips: int | None  # the clips of an epoch of the run; None: a new run's (all whole batches)
    start_batch: int  # the micro-batch of the epoch to continue at, in this run's layout
    tag: str | None  # the identity tag of the continued run
