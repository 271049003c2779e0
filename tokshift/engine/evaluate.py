"""Exact multi-view evaluation: every video once, all its views through the model together.

Each rank takes videos rank, rank+N, rank+2N, ... (no padding), runs all views of
one video through the model in chunks of `view_batch`, fuses them, and sends a
small per-video record to every rank. The metrics are computed from the records
sorted by video index, so N processes give the numbers one process gives.

`tokshift evaluate` keeps the records of finished videos in OUT_DIR/partial/ as it goes
(tokshift.engine.eval_resume): stopped by SIGTERM/SIGUSR1 it exits RETRY_LATER, and a rerun
scores only the videos not kept, writing the metrics an uninterrupted run writes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tokshift import provenance
from tokshift.data.coverage import coverage_block, evaluation_coverage
from tokshift.data.store import ShardCorruptError
from tokshift.engine import distributed as D
from tokshift.engine import eval_resume
from tokshift.engine.class_order import EARLY_VIDEOS
from tokshift.engine.metrics import fuse_logits, fuse_softmax, mean_class_accuracy, percent, topk
from tokshift.engine.runtime import StopFlag, autocast, ignore_stop_signals, loader_workers, scheduled_signal
from tokshift.errors import BadInput, DataDamaged, ExitCode, InputMissing
from tokshift.settings import default

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewLayout:
    """Which of the clip-major views (v = clip * num_crops + crop) form the reported subsets."""

    num_clips: int
    num_crops: int

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops

    @property
    def centre_clip(self) -> int:
        return self.num_clips // 2

    @property
    def centre_crop(self) -> int:
        return self.num_crops // 2

    def one_view(self) -> list[int]:
        """Centre clip, centre crop."""
        return [self.centre_clip * self.num_crops + self.centre_crop]

    def crops_of_centre_clip(self) -> list[int]:
        """The `3-view` subset: every crop of the centre clip."""
        return [self.centre_clip * self.num_crops + k for k in range(self.num_crops)]

    def clips_at_centre_crop(self) -> list[int]:
        """The `10-view` subset: every clip, centre crop."""
        return [c * self.num_crops + self.centre_crop for c in range(self.num_clips)]


@dataclass
class VideoRecord:
    """What one video contributes to the metrics (small, so gathering is cheap)."""

    index: int
    video_id: str
    label: int
    top5: list[int] = field(default_factory=list)  # logit-averaged fusion
    top5_scores: list[float] = field(default_factory=list)  # softmax of the fused logits
    top5_softmax: list[int] = field(default_factory=list)  # softmax-averaged fusion
    pred_1view: int = -1
    pred_3view: int = -1
    pred_10view: int = -1
    loss: float = float("nan")
    error: str | None = None


class _Safe(Dataset):
    """Turns an unreadable item into an error record instead of killing the whole run."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            item = dict(self.base[i])
        except ShardCorruptError:
            raise  # a damaged shard is not one bad video: the whole evaluation would be wrong
        except Exception as exc:  # noqa: BLE001 - reported per video, counted in `failed`
            vid = _video_id(self.base, i)
            return {"index": i, "video_id": vid, "label": _label(self.base, i), "error": f"{type(exc).__name__}: {exc}"}
        item["index"] = i
        item["error"] = None
        return item


def _video_id(ds: Any, i: int) -> str:
    ids = getattr(ds, "video_ids", None)
    try:
        return str(ids[i]) if ids is not None else f"#{i}"
    except Exception:  # noqa: BLE001
        return f"#{i}"


def _label(ds: Any, i: int) -> int:
    labels = getattr(ds, "labels", None)
    try:
        return int(labels[i]) if labels is not None else -1
    except Exception:  # noqa: BLE001
        return -1


def _identity(x: Any) -> Any:
    return x


class _Stopped(Exception):
    """Raised on every rank together when a stop signal ended the pass before some rank's share was done."""


def normalize_on_device(views: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 views -> normalised float on `device` (transfer the small uint8 tensor first)."""
    from tokshift.data.transforms import normalize

    return normalize(views.to(device, non_blocking=True))


@torch.no_grad()
def view_logits(
    model: nn.Module, views: torch.Tensor, device: torch.device, view_batch: int, amp_dtype: torch.dtype | None
) -> torch.Tensor:
    """(V, T, 3, H, W) uint8 views -> (V, C) float32 logits, `view_batch` views per forward."""
    out = []
    for lo in range(0, views.shape[0], max(1, view_batch)):
        x = normalize_on_device(views[lo : lo + view_batch], device)
        with autocast(device, amp_dtype):
            out.append(model(x).float().cpu())
    return torch.cat(out)


def record_from_logits(index: int, video_id: str, label: int, logits: torch.Tensor, layout: ViewLayout) -> VideoRecord:
    """Fuse one video's (V, C) logits into its record."""
    if logits.shape[0] != layout.views:
        raise ValueError(f"video {video_id}: got {logits.shape[0]} views, expected {layout.views}")
    fused = fuse_logits(logits)
    top, _ = topk(fused, 5)
    _, scores = topk(fused.softmax(-1), 5)
    top_sm, _ = topk(fuse_softmax(logits), 5)
    loss = float(F.cross_entropy(fused[None], torch.tensor([label]))) if label >= 0 else float("nan")
    return VideoRecord(
        index=index,
        video_id=video_id,
        label=label,
        top5=top,
        top5_scores=scores,
        top5_softmax=top_sm,
        pred_1view=int(fuse_logits(logits[layout.one_view()]).argmax()),
        pred_3view=int(fuse_logits(logits[layout.crops_of_centre_clip()]).argmax()),
        pred_10view=int(fuse_logits(logits[layout.clips_at_centre_crop()]).argmax()),
        loss=loss,
    )


def evaluate_dataset(
    model: nn.Module,
    dataset: Any,
    ctx: D.DistContext,
    layout: ViewLayout,
    *,
    view_batch: int = default("evaluate", "view_batch"),
    amp_dtype: torch.dtype | None = None,
    workers: int | str = default("evaluate", "workers"),
    pack_videos: bool = False,
    progress: bool | None = False,
    desc: str = "eval",
    keeper: eval_resume.RecordKeeper | None = None,
    early_check: Callable[[list[VideoRecord]], None] | None = None,
    early_videos: int = 0,
) -> list[VideoRecord]:
    """Records of every video of `dataset`, each computed once on one rank, gathered on all ranks.

    `early_check` is called once on rank 0 with its records when `early_videos` of them are scored (or
    when its share ends first): a check that should not wait for hours of evaluation.

    `pack_videos` lets several videos share one forward pass (faster for 1-view
    validation); exact N-process = 1-process equality needs it off, because the
    floating-point result of a matmul may depend on the batch it is part of.
    `progress` on rank 0: True a bar, False nothing, None a bar on a terminal and else a
    log line a minute. `workers` may be "auto" (tokshift.engine.runtime.loader_workers).

    With `keeper`, this rank's videos the keeper already holds are taken from it instead of
    scored, each finished video is handed to it, and a stop signal ends the pass early: every
    rank then raises _Stopped once its finished videos are written.
    """
    workers = loader_workers(workers, ctx.launch.local_processes)
    was_training = model.training
    model.eval()
    n = len(dataset)
    share = range(ctx.rank, n, ctx.world_size)
    done = keeper.kept if keeper is not None else {}
    mine = [i for i in share if i not in done]
    loader = DataLoader(
        Subset(_Safe(dataset), mine),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_identity,
        pin_memory=ctx.device.type == "cuda",
        worker_init_fn=ignore_stop_signals if workers else None,
        prefetch_factor=2 if workers else None,
    )
    per_forward = max(1, view_batch // layout.views) if pack_videos else 1
    records: list[VideoRecord] = [VideoRecord(**done[i]) for i in share if i in done]

    early_pending = early_check is not None and ctx.is_main

    def finished(record: VideoRecord) -> None:
        nonlocal early_pending
        records.append(record)
        if keeper is not None:
            keeper.add(asdict(record))
        if early_pending and early_check is not None and len(records) >= early_videos:
            early_pending = False
            early_check(records)

    report = ctx.is_main and progress is not False
    bar = _progress_bar(len(mine), desc) if report and (progress or sys.stderr.isatty()) else None
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        views = torch.cat([p["views"] for p in pending]) if len(pending) > 1 else pending[0]["views"]
        logits = view_logits(model, views, ctx.device, view_batch, amp_dtype)
        for j, p in enumerate(pending):
            part = logits[j * layout.views : (j + 1) * layout.views]
            finished(record_from_logits(p["index"], str(p["video_id"]), int(p["label"]), part, layout))
        pending.clear()

    t0 = time.perf_counter()
    t_log = t0
    early = False  # stopped by a signal before this rank's share was done
    for count, item in enumerate(loader, start=1):
        if keeper is not None and keeper.stopped():
            early = True
            break
        if item.get("error"):
            log.warning("video %s could not be evaluated: %s", item["video_id"], item["error"])
            finished(
                VideoRecord(
                    index=item["index"],
                    video_id=str(item["video_id"]),
                    label=int(item["label"]),
                    error=str(item["error"]),
                )
            )
        else:
            views = item["views"]
            if views.shape[0] != layout.views:
                raise ValueError(
                    f"dataset gave {views.shape[0]} views for video {item['video_id']}, "
                    f"expected {layout.num_clips} clips x {layout.num_crops} crops"
                )
            pending.append(item)
            if len(pending) >= per_forward:
                flush()
        if bar is not None:
            bar.update(1)
        elif report and time.perf_counter() - t_log >= 60:
            t_log = time.perf_counter()
            log.info("%s: %d/%d videos on rank 0 (%.1f videos/s)", desc, count, len(mine), count / (t_log - t0))
    flush()
    if early_pending and early_check is not None and records:
        early_check(records)
    if bar is not None:
        bar.close()
    log.debug("rank %d evaluated %d videos in %.1fs", ctx.rank, len(records), time.perf_counter() - t0)
    if keeper is not None:
        keeper.flush()
        flag = torch.tensor([float(early)], device=ctx.device)
        if D.all_reduce(ctx, flag, "max").item() > 0:  # every rank learns that some rank stopped early
            model.train(was_training)
            raise _Stopped
    # Reached only by ranks that evaluated their share: a rank that raised (a damaged shard) has left
    # the process, which its launcher (torchrun, srun --kill-on-bad-exit) turns into the job's end.
    with D.long_wait(ctx):  # the slowest rank's share
        gathered = [r for part in D.all_gather_objects(ctx, [asdict(r) for r in records]) for r in part]
    out = sorted((VideoRecord(**r) for r in gathered), key=lambda r: r.index)
    if [r.index for r in out] != list(range(n)):
        raise RuntimeError(f"evaluation gathered {len(out)} records for {n} videos (lost or duplicated videos)")
    model.train(was_training)
    return out


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="video", dynamic_ncols=True)


def summarize(records: Sequence[VideoRecord], layout: ViewLayout) -> dict[str, Any]:
    """metrics.json numbers (percent) over the videos that could be evaluated."""
    ok = [r for r in records if r.error is None]
    labels = [r.label for r in ok]
    losses = [r.loss for r in ok if not math.isnan(r.loss)]
    return {
        "top1": percent([r.top5[0] == r.label for r in ok]),
        "top5": percent([r.label in r.top5 for r in ok]),
        "top1_softmax": percent([r.top5_softmax[0] == r.label for r in ok]),
        "top5_softmax": percent([r.label in r.top5_softmax for r in ok]),
        "top1_1view": percent([r.pred_1view == r.label for r in ok]),
        "top1_3view": percent([r.pred_3view == r.label for r in ok]),
        "top1_10view": percent([r.pred_10view == r.label for r in ok]),
        "mean_class_acc": mean_class_accuracy(labels, [r.top5[0] for r in ok]),
        "loss": float(sum(losses) / len(losses)) if losses else float("nan"),
        "videos": len(ok),
        "failed": len(records) - len(ok),
        "views": layout.views,
        "clips": layout.num_clips,
        "crops": layout.num_crops,
    }


def _early_check(model: str, paper_top1: float | None, records: Sequence[VideoRecord]) -> None:
    """Log the top-1 of the first videos against the paper's, loudly when it looks like another model."""
    from tokshift.engine.class_order import early_verdict

    ok = [r for r in records if r.error is None]
    if not ok:
        return
    top1 = 100.0 * sum(r.top5[0] == r.label for r in ok) / len(ok)
    wrong, line = early_verdict(model, top1, len(ok), paper_top1)
    (log.warning if wrong else log.info)("%s", line)


def _class_order_check(records: Sequence[VideoRecord], classes: Sequence[str]) -> list[Any]:
    """Pairs of classes predicted as each other more than as themselves, each named in a warning:
    the head's rows are then most likely in another class order than the dataset's."""
    from tokshift.engine.class_order import suspect_swaps

    ok = [r for r in records if r.error is None]
    swaps = suspect_swaps([r.label for r in ok], [r.top5[0] for r in ok], classes)
    for swap in swaps:
        log.warning(
            "CLASS ORDER? the checkpoint's scores for %s look swapped; a checkpoint whose head rows follow another "
            "class order than this dataset's (sorted class names) scores like this: check the class list it was "
            "trained with (docs/reference.md, 'Class order')",
            swap.describe(),
        )
    return swaps


def failure_report(records: Sequence[VideoRecord], max_failed_share: float, shown: int = 5) -> tuple[str, str | None]:
    """The "N of M videos failed" line, and an error message when too many failed to give a metric.

    Too many: more than `max_failed_share` of the videos, or all of them (no accuracy
    can be computed from zero videos, whatever the share allowed).
    """
    failed = [r for r in records if r.error]
    n, m = len(failed), len(records)
    line = f"{n} of {m} videos failed to load"
    if m == 0:
        return line, "the shards hold no videos to evaluate; check the packing logs (tokshift pack)"
    if n < m and n / m <= max_failed_share:
        return line, None
    listed = "; ".join(f"{r.video_id}: {r.error}" for r in failed[:shown])
    more = f"; and {n - shown} more (predictions.csv, column error)" if n > shown else ""
    return line, (
        f"{n} of {m} videos could not be read ({100 * n / m:.1f}%, more than --max-failed-share "
        f"{max_failed_share:g}), so the accuracy would not describe the dataset. First failures: {listed}{more}. "
        "Repack the shards that hold them (tokshift pack), or raise --max-failed-share to accept the loss"
    )


def predictions_csv(records: Iterable[VideoRecord], classes: Sequence[str]) -> str:
    """One row per video: id, true label, top-5 class names and scores (softmax of fused logits)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id", "label", *[f"pred{i}" for i in range(1, 6)], *[f"score{i}" for i in range(1, 6)], "error"])

    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else str(i)

    for r in records:
        preds = [name(i) for i in r.top5] + [""] * (5 - len(r.top5))
        scores = [f"{s:.6f}" for s in r.top5_scores] + [""] * (5 - len(r.top5_scores))
        w.writerow([r.video_id, name(r.label), *preds, *scores, r.error or ""])
    return buf.getvalue()


@dataclass
class EvalOptions:
    """Everything `tokshift evaluate` takes from its command line."""

    checkpoint: Path
    shards: list[str]
    out_dir: Path
    clips: int = default("evaluate", "clips")
    crops: int = default("evaluate", "crops")
    resize: str = default("evaluate", "resize")  # one of tokshift.data.transforms.RESIZE_METHODS
    view_batch: int = default("evaluate", "view_batch")
    workers: int | str = default("evaluate", "workers")  # a count, or "auto" (resolved when the run starts)
    device: str = "auto"
    amp: str = "auto"
    fused_attn: bool = True
    progress: bool | None = None  # True a bar, False none, None a bar on a terminal (else a log line a minute)
    max_failed_share: float = default("evaluate", "max_failed_share")
    model: str | None = None  # zoo entry; needed for an original .pth
    classes: list[str] | None = None  # an original .pth's class names when not Kinetics-400's
    stage_to: str | None = default("frames", "stage_to")  # node-local folder to copy the shards to first
    keep_every: int = eval_resume.KEEP_EVERY  # write finished videos to OUT_DIR/partial/ after this many per process
    faithful: bool = default("evaluate", "faithful")  # the original's decode, clip starts, portrait crops, fp32


def run_evaluation(opts: EvalOptions) -> int:
    """Evaluate a trained model on packed shards and write metrics.json and predictions.csv.

    Returns 0, or 75 (RETRY_LATER) on rank 0 when SIGTERM/SIGUSR1 stopped it with the finished videos
    kept in OUT_DIR/partial/, or raises on rank 0: DataDamaged when more than `max_failed_share` of the
    videos could not be read (the files are written all the same, for inspection), FolderBusy (exit 75)
    when another run holds the output folder; the other ranks then return 0, so a launcher that ends
    the job when a task fails (srun --kill-on-bad-exit) leaves rank 0 to report. A rank that fails on
    its own raises.
    """
    from tokshift.data.transforms import check_resize
    from tokshift.engine.staging import staged_shards
    from tokshift.engine.startup import run_in_group, start_process

    if opts.clips < 1 or opts.crops < 1:
        raise BadInput(f"--clips {opts.clips} --crops {opts.crops}: both must be >= 1")
    check_resize(opts.resize)  # here, once: a bad method would otherwise fail every video as unreadable
    if not 0 <= opts.max_failed_share <= 1:
        raise BadInput(f"--max-failed-share {opts.max_failed_share:g}: expected a share between 0 and 1")
    if opts.keep_every < 1:
        raise BadInput(f"--keep-every {opts.keep_every}: expected a number of videos >= 1")
    for s in opts.shards:
        if not Path(s).exists():
            raise InputMissing(f"shard {s} does not exist; pack it first (tokshift pack)")
    if opts.faithful and opts.resize != "bicubic":
        raise BadInput(f"--faithful with --resize {opts.resize}: the original resizes bicubic; add --resize bicubic")
    if opts.faithful and opts.amp == "auto":
        opts = dataclasses.replace(opts, amp="off")  # the original scores in fp32
    started = start_process(opts.device, opts.amp, opts.workers, tf32=not opts.faithful)
    launch = started.launch
    opts = dataclasses.replace(opts, workers=started.workers)
    stop = StopFlag(scheduled_signal(), keeps="the scored videos")  # then exit RETRY_LATER
    with stop.installed():
        # Staging comes before the process group: a long copy never counts against a collective's timeout.
        with staged_shards(
            {"val": opts.shards}, opts.stage_to, launch, opts.out_dir, stopped=lambda: stop.raised
        ) as staged:

            def body(ctx: D.DistContext) -> int:
                # Every collective of an evaluation waits for the slowest rank's share, or for rank 0's writes.
                with D.long_wait(ctx):
                    return _evaluate(dataclasses.replace(opts, shards=staged.shards["val"]), ctx, stop)

            def failed_alone(exc: BaseException, ctx: D.DistContext) -> bool:
                # Rank 0's report of too many unreadable videos comes after the final barrier; a damaged
                # shard (ShardCorruptError) is met by one rank alone.
                return not isinstance(exc, DataDamaged) or isinstance(exc, ShardCorruptError) or not ctx.is_main

            code, ctx = run_in_group(started, opts.out_dir, "evaluate", body, failed_alone)
            staged.keep = code == ExitCode.RETRY_LATER  # the rerun may land on this node again
    if code in (ExitCode.DATA_DAMAGED, ExitCode.RETRY_LATER) and not ctx.is_main:
        # Rank 0 reports and its code is the job's; exiting 0 here means srun --kill-on-bad-exit never
        # cuts rank 0 short while it writes.
        return ExitCode.OK
    return code


def _evaluation_identity(
    opts: EvalOptions, cfg: Any, checkpoint_sha256: str, videos: int, amp: str, device: torch.device
) -> dict[str, Any]:
    """Everything a video's record depends on: kept records of another identity are not reused.

    The checkpoint by content (its path may change), the shards by their seals (staged copies carry
    their source's), the views, resize, precision and the hardware that computes them: another GPU
    model, thread count or library version may round differently. Not the number of processes: a
    video's record does not depend on which process scores it.
    """
    import tokshift
    from tokshift.data.store import read_seal

    return {
        "format": 1,
        "checkpoint_sha256": checkpoint_sha256,
        "model": cfg.name,
        "num_frames": cfg.num_frames,
        "frame_stride": cfg.frame_stride,
        "img_size": cfg.img_size,
        "shards": [read_seal(s) for s in opts.shards],
        "videos": videos,
        "clips": opts.clips,
        "crops": opts.crops,
        "resize": opts.resize,
        "faithful": opts.faithful,
        "view_batch": opts.view_batch,
        "fused_attn": opts.fused_attn,
        "amp": amp,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads() if device.type != "cuda" else None,
        "torch": torch.__version__,
        "tokshift": tokshift.__version__,
    }


def _evaluate(opts: EvalOptions, ctx: D.DistContext, stop: StopFlag | None = None) -> int:
    import json

    from tokshift.data.datasets import EvalViewDataset
    from tokshift.engine.loading import load_trained_model
    from tokshift.engine.oom import evaluation_oom_message, inject_oom, reported
    from tokshift.engine.runtime import resolve_amp, set_fused_attention
    from tokshift.fileio import atomic_write_text, sha256_file

    trained = load_trained_model(opts.checkpoint, ctx.device, model_name=opts.model, classes=opts.classes)
    set_fused_attention(trained.model, opts.fused_attn)
    inject_oom(trained.model, inference=True)  # only with TOKSHIFT_OOM_ABOVE_BATCH set (tests)
    cfg = trained.config
    amp_dtype = resolve_amp(opts.amp, ctx.device)
    ds = EvalViewDataset(
        list(opts.shards),
        cfg.num_frames,
        cfg.frame_stride,
        cfg.img_size,
        num_clips=opts.clips,
        num_crops=opts.crops,
        resize=opts.resize,
        faithful=opts.faithful,
    )
    classes = [str(c) for c in ds.classes]
    if classes != trained.classes:
        raise BadInput(
            f"the shards' classes ({len(classes)}) differ from those the checkpoint "
            f"{opts.checkpoint} was trained on ({len(trained.classes)}); "
            "evaluate on the same dataset's validation split"
        )
    coverage = evaluation_coverage(trained.checkpoint, classes, ds.labels)
    if ctx.is_main and coverage is None:
        log.info(
            "%s records no training videos per class: classes it was not trained on are not named", opts.checkpoint
        )
    for line in coverage.warnings() if coverage is not None and ctx.is_main else []:
        log.warning("%s", line)
    layout = ViewLayout(opts.clips, opts.crops)
    amp_name = str(amp_dtype or "off").replace("torch.", "")
    log.info(
        "evaluating %s on %d videos x %d views (%d clips x %d crops), %d process(es)",
        cfg.name,
        len(ds),
        layout.views,
        opts.clips,
        opts.crops,
        ctx.world_size,
    )
    folder = Path(opts.out_dir) / eval_resume.PARTIAL
    identity: dict[str, Any] | None = None
    if ctx.is_main:  # one read of the checkpoint, reused for metrics.json
        block = provenance.collect("evaluate", devices=ctx.devices, nodes=ctx.nodes)
        identity = _evaluation_identity(opts, cfg, sha256_file(opts.checkpoint), len(ds), amp_name, ctx.device)
        eval_resume.prepare_folder(folder, identity)
    identity = D.broadcast_object(ctx, identity)
    tag = eval_resume.identity_tag(identity)
    fields = [f.name for f in dataclasses.fields(VideoRecord)]
    kept = eval_resume.load_kept(folder, tag, ds.video_ids, fields, warn=ctx.is_main)
    D.barrier(ctx)  # every rank has read the kept records before any writes new ones
    if kept:
        log.info("resuming: %d of %d videos already scored (%s)", len(kept), len(ds), folder)
    log.info(
        "keeping finished videos in %s every %d videos per process or %.0f minutes",
        folder,
        opts.keep_every,
        eval_resume.KEEP_SECONDS / 60,
    )
    keeper = eval_resume.RecordKeeper(
        folder,
        tag,
        kept,
        opts.keep_every,
        stopped=lambda: stop is not None and stop.raised,
        after_chunk=stop.after_step if stop is not None else lambda n: None,
    )
    t0 = time.perf_counter()
    try:
        with reported(lambda: evaluation_oom_message(cfg.name, opts.view_batch, ctx.device)):
            records = evaluate_dataset(
                trained.model,
                ds,
                ctx,
                layout,
                view_batch=opts.view_batch,
                amp_dtype=amp_dtype,
                workers=opts.workers,
                progress=opts.progress,
                desc="evaluate",
                keeper=keeper,
                early_check=lambda done: _early_check(cfg.name, cfg.paper_top1, done),
                early_videos=EARLY_VIDEOS,
            )
    except _Stopped:  # every rank has written its finished videos
        if ctx.is_main:
            log.warning(
                "stopped on a signal: %d of %d videos are scored and kept in %s; exit %d, rerun the same "
                "command to score the rest",
                len(eval_resume.load_kept(folder, tag, ds.video_ids, fields, warn=False)),
                len(ds),
                folder,
                ExitCode.RETRY_LATER,
            )
        return ExitCode.RETRY_LATER
    # Not in metrics.json, which a resumed run writes as an uninterrupted one does (but for its provenance).
    log.info("scored %d videos in this run in %.1f s", len(ds) - len(kept), time.perf_counter() - t0)
    failed_line, too_many = failure_report(records, opts.max_failed_share)
    if ctx.is_main:
        metrics = summarize(records, layout)
        if not metrics["videos"]:  # no accuracy from zero videos: null, not 0
            metrics.update({k: float("nan") for k in metrics if k.startswith(("top", "mean_class"))})
        metrics.update(
            model=cfg.name,
            checkpoint=str(opts.checkpoint),
            checkpoint_sha256=identity["checkpoint_sha256"],
            world_size=ctx.world_size,
            device=ctx.device.type,
            amp=amp_name,
            resize=opts.resize,
            # faithful: scored as the original's test script (decode, clip starts, portrait crops, fp32).
            mode="faithful" if opts.faithful else "fast",
            view_sets={
                "1view": "centre clip, centre crop",
                "3view": "centre clip, every crop",
                "10view": "every clip, centre crop",
            },
            failed_videos=[r.video_id for r in records if r.error],
            failed_share=metrics["failed"] / len(records) if records else None,
            max_failed_share=opts.max_failed_share,
            # Which code, software, devices and SLURM job scored it; videos an earlier attempt kept count too.
            provenance={**provenance.finish(block), "videos_from_earlier_attempts": len(kept)},
        )
        swaps = _class_order_check(records, classes)
        metrics["suspect_class_swaps"] = [[s.first, s.second, s.first_as_second, s.second_as_first] for s in swaps]
        ok = [r for r in records if r.error is None]  # the one-split classes, and the accuracy without them
        metrics["class_coverage"] = (
            coverage_block(coverage, classes, [r.label for r in ok], [r.top5 for r in ok]) if coverage else None
        )
        out = Path(opts.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "predictions.csv", predictions_csv(records, classes))
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        atomic_write_text(out / "metrics.json", json.dumps(clean, indent=2) + "\n")
        log.info(
            "top-1 %.2f%% top-5 %.2f%% (%d views, logit averaging) on %d videos, %d failed; wrote %s",
            metrics["top1"],
            metrics["top5"],
            layout.views,
            metrics["videos"],
            metrics["failed"],
            out,
        )
        (log.warning if metrics["failed"] else log.info)("%s", failed_line)
        trained_only = metrics["class_coverage"] if coverage is not None and coverage.val_only else None
        if trained_only and trained_only["top1_trained_classes"] is not None:
            log.warning(
                "over the %d videos of the classes with training videos: top-1 %.2f%% top-5 %.2f%%",
                trained_only["videos_trained_classes"],
                trained_only["top1_trained_classes"],
                trained_only["top5_trained_classes"],
            )
        if too_many:  # a rerun with a larger --max-failed-share need not score them again
            log.info("the scored videos stay in %s", folder)
        else:
            eval_resume.remove_kept(folder)
    D.barrier(ctx)
    if too_many and ctx.is_main:  # the files are written all the same, for inspection
        raise DataDamaged(too_many)
    return ExitCode.DATA_DAMAGED if too_many else ExitCode.OK
