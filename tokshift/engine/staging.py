"""Copy a job's frame shards to node-local storage before reading them (`frames.stage_to`).

Thousands of random reads per second from a shared file system are what slows a cluster
training down; the same reads from a node-local NVMe or `$TMPDIR` are cheap. One process per
node (local rank 0) copies the shards and their seals, checks each copy against its seal, and
marks the folder complete; every rank then reads the copies of its own node. When the
destination lacks the space, cannot be written or the copy fails, the job logs why and reads
the shards in place: staging changes where bytes are read from, never what is read. The folder
is removed when the job ends, interrupted or not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tokshift.data.store import ShardCorruptError, ShardReader, read_seal, seal_path
from tokshift.engine import distributed as D

log = logging.getLogger("tokshift.engine")

#: Written last into a staged folder: its presence means every copy was checked.
COMPLETE = "staged.json"
#: Free space kept on the destination beyond the shards themselves.
HEADROOM = 0.05


def shard_bytes(paths: Sequence[str | os.PathLike[str]]) -> int:
    """What the shards and their seals occupy."""
    return sum(Path(p).stat().st_size + seal_path(p).stat().st_size for p in paths)


def resolve_destination(stage_to: str) -> Path | None:
    """`stage_to` with `$VARS` and `~` expanded in the job's own environment; None if a variable is unset."""
    expanded = os.path.expanduser(os.path.expandvars(stage_to))
    if "$" in expanded:
        log.warning("staging: %s names an unset variable (%s); reading the shards in place", stage_to, expanded)
        return None
    return Path(expanded)


def staging_plan(groups: dict[str, Sequence[str]], dest: Path) -> dict[str, list[tuple[Path, Path]]]:
    """(source, copy) per shard of each group: `<dest>/<group>/<i>-<name>` (train and val shards share names)."""
    return {g: [(Path(p), dest / g / f"{i}-{Path(p).name}") for i, p in enumerate(v)] for g, v in groups.items()}


def copy_shards(
    pairs: Sequence[tuple[Path, Path]],
    dest: Path,
    free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
) -> bool:
    """Copy and check the shards (source, copy) under `dest`; False (the reason logged) when not staged."""
    need = shard_bytes([src for src, _ in pairs])
    try:
        dest.mkdir(parents=True, exist_ok=True)
        free = free_bytes(dest)
    except OSError as err:
        log.warning("staging: cannot use %s (%s); reading the shards in place", dest, err)
        return False
    if free < need * (1 + HEADROOM):
        log.warning(
            "staging: %s has %.2f GB free, the shards need %.2f GB (+%d %%); reading the shards in place",
            dest,
            free / 1e9,
            need / 1e9,
            round(HEADROOM * 100),
        )
        shutil.rmtree(dest, ignore_errors=True)
        return False
    t0 = time.perf_counter()
    try:
        for src, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(seal_path(src), seal_path(dst))
            shutil.copyfile(src, dst)
            if dst.stat().st_size != read_seal(dst)["size"]:
                raise ShardCorruptError(dst, "the copy's size differs from its seal")
            ShardReader(dst).close()  # opening checks the LMDB file against the seal
    except (OSError, ShardCorruptError) as err:
        log.warning("staging: copying to %s failed (%s); reading the shards in place", dest, err)
        shutil.rmtree(dest, ignore_errors=True)
        return False
    seconds = time.perf_counter() - t0
    record = {"copies": {str(dst): str(src) for src, dst in pairs}, "bytes": need, "seconds": round(seconds, 3)}
    (dest / COMPLETE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    log.info(
        "staging: copied %d shards (%.1f MB) from %s to %s in %.1f s (%.0f MB/s), sizes checked against their seals",
        len(pairs),
        need / 1e6,
        pairs[0][0].parent,
        dest,
        seconds,
        need / 1e6 / max(seconds, 1e-9),
    )
    return True


@contextlib.contextmanager
def staged_shards(
    groups: dict[str, Sequence[str]], stage_to: str | None, ctx: D.DistContext
) -> Iterator[dict[str, list[str]]]:
    """The shard lists in `groups` (e.g. train, val), read from node-local copies when staging works.

    Collective: every rank of the job must enter it. Each node stages into its own folder
    (`<stage_to>/tokshift-<job tag>-<node>`); ranks of a node that could not stage read in place.
    """
    originals = {k: [str(p) for p in v] for k, v in groups.items()}
    if not stage_to or not any(originals.values()):
        yield originals
        return
    root = resolve_destination(stage_to)
    tag = D.broadcast_object(ctx, f"{os.getpid()}-{time.time_ns()}")
    dest = None if root is None else root / f"tokshift-{tag}-{D.node_name()}"
    copier = ctx.launch.local_rank == 0
    plan = staging_plan(originals, dest) if dest is not None else {}
    if dest is not None and copier:
        copy_shards([pair for pairs in plan.values() for pair in pairs], dest)
    D.barrier(ctx)
    staged = dest is not None and (dest / COMPLETE).exists()
    try:
        if staged:
            yield {g: [str(dst) for _, dst in pairs] for g, pairs in plan.items()}
        else:
            yield originals
        D.barrier(ctx)  # every rank of the node is done reading before the copies go
    finally:
        if dest is not None and copier:
            shutil.rmtree(dest, ignore_errors=True)
            if staged:
                log.info("staging: removed %s", dest)
