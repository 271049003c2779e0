"""`tokshift train`: the original recipe under DDP, resumable and preemption-safe.

The same code runs alone on a CPU (gloo is not even started), under torchrun on
one GPU node, and under srun over several nodes. Progress lives in
`OUT/resume/` (checkpoints and the live logs) so a killed job leaves it in place;
the declared outputs (`model.pt`, `metrics.jsonl`, `events/`, `train_summary.json`)
are written only when training has finished. A checkpoint is continued by a run of the same
identity (the config without its batch layout, the global batch, seed, training clips and start
weights) on any number of processes that keeps its global batch; another run's checkpoints are
moved to `OUT/resume/stale-<time>/`, never deleted (docs/resume.md).

One run at a time per folder: rank 0 holds an OS lock on `OUT/.tokshift.lock` for the
whole run (tokshift.engine.folder_lock), so a second run, e.g. one started while an orphan
of a killed Snakemake still trains, exits at once (code 75: rerun later) naming the holder's PID and host.

A finished model is never thrown away before its replacement exists: the end of a
successful run hard-links `model.pt`, `metrics.jsonl` and `train_summary.json` into
`OUT/final/<sha256[:12]>/` (tokshift.engine.final_copy), which Snakemake does not know and so
never deletes when it reruns the job. A retrain (`--forcerun train`) starts from scratch,
writes its `model.pt` atomically at its end, and removes the older `final/` copy only after
its own is in place.

Fine-tuning is `--init-from` given a tokshift `model.pt` or an original `.pth` instead of
an ImageNet-21k `.npz`; `model.pt` and `train_summary.json` record the file (`init_from`)
and its sha256 (`init_from_sha256`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from tokshift import provenance
from tokshift.data.coverage import training_warnings, videos_per_class
from tokshift.engine import distributed as D
from tokshift.engine.checkpoint import (
    CheckpointError,
    list_resume,
    load_resume,
    resume_identity,
    save_resume,
    set_aside,
    verify_seal,
    warn_skipped,
)
from tokshift.engine.evaluate import ViewLayout, evaluate_dataset, summarize
from tokshift.engine.final_copy import final_copy_path, keep_final_copy, kept_copies
from tokshift.engine.logbook import Logbook, RunInfo, read_jsonl, require_loggers
from tokshift.engine.oom import fit_batch, inject_oom, reported, training_oom_message
from tokshift.engine.resume_plan import (
    Found,
    ResumePlan,
    continued_layout,
    describe_layout,
    fingerprint,
    identity_diff,
    identity_tag,
    layout_suggestion,
    run_identity,
    split_fingerprint,
)
from tokshift.engine.runtime import (
    StopFlag,
    autocast,
    ignore_stop_signals,
    resolve_amp,
    rng_state,
    scheduled_signal,
    seed_everything,
    set_fused_attention,
    set_rng_state,
)
from tokshift.engine.sampler import ResumableBatchSampler
from tokshift.engine.schedule import LRSchedule, scaled_lr
from tokshift.engine.staging import staged_shards
from tokshift.errors import BadInput, ExitCode, InputMissing, NotRetryable
from tokshift.fileio import atomic_folder, atomic_torch_save, atomic_write_text, sha256_file
from tokshift.settings import default
from tokshift.zoo import ZooConfig, get_config

log = logging.getLogger(__name__)


class TrainingDiverged(NotRetryable):
    """The loss or the gradient became NaN/inf; the message names the step."""

    def __str__(self) -> str:
        return f"training diverged: {super().__str__()}"


@dataclass
class TrainOptions:
    """Everything `tokshift train` takes from its command line."""

    model: str
    train_shards: list[str]
    val_shards: list[str]
    out_dir: Path
    init_from: str | None = default("train", "init_from")  # the file the weights start from; None: the zoo's
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: int | str = default("train", "workers")  # a count, or "auto" (tokshift.engine.runtime.loader_workers)
    seed: int = default("train", "seed")
    device: str = "auto"
    amp: str = default("train", "amp")
    compile: bool = default("train", "compile")
    grad_checkpointing: bool = default("train", "grad_checkpointing")  # recompute activations in backward
    oom_fallback: bool = default("train", "oom_fallback")  # halve the batch, double accumulation on OOM
    fused_attn: bool = True
    checkpoint_minutes: float = default("train", "checkpoint_minutes")
    loggers: tuple[str, ...] = tuple(default("train", "loggers"))  # besides metrics.jsonl (tokshift.engine.logbook)
    log_every: int = 10
    max_epochs: int | None = None
    val_view_batch: int = 64
    keep_resume: int = 2
    progress: bool | None = None  # a bar beside the log lines: None on interactive terminals only, False never
    stage_to: str | None = default("frames", "stage_to")  # node-local folder to copy the shards to first

    def __post_init__(self) -> None:
        # A path as text (model.pt and train_summary.json record it); '' means none, as on the command line.
        self.init_from = str(self.init_from) if self.init_from else None


def resolve_config(opts: TrainOptions, check_files: bool = True) -> ZooConfig:
    """The zoo entry with --override applied, checked against the file it starts from."""
    cfg = get_config(opts.model)
    if opts.overrides:
        cfg = cfg.replace(**opts.overrides)
    if cfg.imagenet_weights and not opts.init_from:
        raise BadInput(
            f"model {cfg.name!r} starts from the {cfg.imagenet_weights} ImageNet-21k weights: pass "
            f"--init-from resources/weights/{cfg.imagenet_weights}.npz (tokshift download), "
            "or --override imagenet_weights=null to train from scratch"
        )
    if opts.init_from and not Path(opts.init_from).is_file():
        raise InputMissing(f"--init-from {opts.init_from}: no such file (run tokshift download first)")
    if check_files:
        if not opts.train_shards:
            raise BadInput("no --train-shards given")
        for s in [*opts.train_shards, *opts.val_shards]:
            if not Path(s).exists():
                raise InputMissing(f"shard {s} does not exist; pack it first (tokshift pack)")
    return cfg


def initial_model(cfg: ZooConfig, init_from: str | None) -> nn.Module:
    """The model before step 0: `cfg`'s architecture with the weights of `init_from` (or random).

    `init_from` may be an ImageNet-21k .npz, a tokshift model.pt or an original .pth (found from
    the content); a head whose class count differs from `cfg.num_classes` starts at zero.
    """
    from tokshift.engine.loading import build_model

    return build_model(cfg.model_dict(), init_from=init_from)


def make_optimizer(model: nn.Module, cfg: ZooConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (the original) or AdamW; no weight decay on norms, biases and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise BadInput(f"optimizer={cfg.optimizer!r}: expected 'sgd' or 'adamw'")


def _requested(opts: TrainOptions) -> dict[str, int]:
    """The per-process batch and the accumulation the command asks for (zoo entry and --override)."""
    cfg = get_config(opts.model)
    cfg = cfg.replace(**opts.overrides) if opts.overrides else cfg
    return {"batch_size": cfg.batch_size, "accum_steps": cfg.accum_steps}


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DDP) else model


def train(opts: TrainOptions, datasets: tuple[Any, Any] | None = None) -> int:
    """Run (or resume) training; returns the process exit code.

    `datasets` = (train, val) replaces the packed shards (for library use); the
    items must look like TrainClipDataset's and EvalViewDataset's (1 clip, 1 crop).
    """
    from tokshift.engine.startup import run_in_group, start_process

    started = start_process(opts.device, opts.amp, opts.workers)
    launch = started.launch
    opts = dataclasses.replace(opts, workers=started.workers)
    stop = StopFlag(scheduled_signal())
    with stop.installed():
        groups = {"train": opts.train_shards, "val": opts.val_shards} if datasets is None else {}
        # Staging comes before the process group: a long copy never counts against a collective's timeout.
        with staged_shards(groups, opts.stage_to, launch, opts.out_dir, stopped=lambda: stop.raised) as staged:
            if datasets is None:
                opts = dataclasses.replace(opts, train_shards=staged.shards["train"], val_shards=staged.shards["val"])
            code, ctx = run_in_group(
                started, opts.out_dir, "train", lambda ctx: _Trainer(opts, ctx, stop, datasets).run()
            )
            staged.keep = code == ExitCode.RETRY_LATER  # it will be resumed, maybe on this node
    if code == ExitCode.RETRY_LATER and not ctx.is_main:
        # After a signal rank 0 exits 75 once the checkpoint is on disk; the others exit 0, so that
        # `srun --kill-on-bad-exit` never takes rank 0 down while it still writes.
        return ExitCode.OK
    return code


class _RefusedOnRankZero(Exception):
    """Rank 0 refused to continue the run and reports why; the other ranks stop quietly."""


@dataclass
class _Agreed:
    """What every rank learns before an optimizer step (see `_Trainer._agree_on_step`)."""

    stats: torch.Tensor  # the step's loss sum, correct and clips over all ranks (float64, CPU)
    stop: bool  # some rank got SIGTERM/SIGUSR1: checkpoint and stop after this step
    save: bool  # rank 0's timed checkpoint is due after this step
    finite: bool = True  # the loss is finite on every rank


class _LogWindow:
    """The optimizer steps since the last step record: their summed statistics and when they began."""

    def __init__(self) -> None:
        self.stats = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, clips
        self.skipped = 0  # steps the fp16 loss scaler skipped (their statistics are not in `stats`)
        self.t0 = time.perf_counter()

    def reset(self) -> None:
        self.stats.zero_()
        self.skipped = 0
        self.t0 = time.perf_counter()


def _logging_beside(bar: Any) -> contextlib.AbstractContextManager[Any]:
    """While `bar` is drawn, log lines print above it instead of through it."""
    if bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logging.getLogger("tokshift")])


class _Trainer:
    def __init__(
        self, opts: TrainOptions, ctx: D.DistContext, stop: StopFlag, datasets: tuple[Any, Any] | None = None
    ) -> None:
        self.opts, self.ctx, self.stop, self.datasets = opts, ctx, stop, datasets
        self.out_dir = Path(opts.out_dir)
        self.resume_dir = self.out_dir / "resume"
        # Provenance (tokshift.provenance): this attempt's block, and the attempts a resume continues.
        # Rank 0 alone writes it, so only rank 0 asks git (many ranks on a shared file system would wait).
        self.provenance = provenance.collect("train", devices=ctx.devices, nodes=ctx.nodes) if ctx.is_main else {}
        self.past_attempts: list[dict[str, Any]] = []
        self.first_step = 0

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        opts, ctx = self.opts, self.ctx
        cfg = resolve_config(opts, check_files=self.datasets is None)
        require_loggers(opts.loggers)  # every rank, before any collective: a missing package stops them all
        seed_everything(opts.seed)
        if self.datasets is not None:
            self.train_ds, self.val_ds = self.datasets
        else:
            from tokshift.data.datasets import EvalViewDataset, TrainClipDataset

            self.train_ds = TrainClipDataset(
                list(opts.train_shards),
                cfg.num_frames,
                cfg.frame_stride,
                cfg.img_size,
                tuple(cfg.train_short_side),
                seed=opts.seed,
            )
            self.val_ds = (
                EvalViewDataset(
                    list(opts.val_shards), cfg.num_frames, cfg.frame_stride, cfg.img_size, num_clips=1, num_crops=1
                )
                if opts.val_shards
                else None
            )
        self.classes = [str(c) for c in self.train_ds.classes]
        if self.val_ds is not None and [str(c) for c in self.val_ds.classes] != self.classes:
            raise BadInput(
                "the validation shards list other classes than the training shards; "
                "index both splits of the same dataset"
            )
        # Videos per class in the training shards: model.pt keeps them, so an evaluation can tell untrained
        # classes. Datasets given by a library user may not list their labels: then nothing is recorded.
        train_labels, val_labels = getattr(self.train_ds, "labels", None), getattr(self.val_ds, "labels", None)
        self.train_class_videos = videos_per_class(self.classes, train_labels) if train_labels is not None else None
        if ctx.is_main and self.train_class_videos is not None:
            val_counts = videos_per_class(self.classes, val_labels) if val_labels is not None else None
            for line in training_warnings(self.classes, self.train_class_videos, val_counts):
                log.warning("%s", line)
        if len(self.classes) != cfg.num_classes:
            log.info(
                "dataset has %d classes; setting num_classes=%d (zoo default %d)",
                len(self.classes),
                len(self.classes),
                cfg.num_classes,
            )
            cfg = cfg.replace(num_classes=len(self.classes))
        self.cfg = cfg
        self.device = ctx.device
        self.amp_dtype = resolve_amp(opts.amp, self.device)

        torch.manual_seed(opts.seed)
        model = initial_model(cfg, opts.init_from)
        self.init_from_sha256 = sha256_file(opts.init_from) if opts.init_from else None
        set_fused_attention(model, opts.fused_attn)
        if opts.grad_checkpointing:  # activations recomputed in backward: memory for compute
            model.set_grad_checkpointing(True)
        self.raw = model.to(self.device)
        self.params = [p for p in self.raw.parameters() if p.requires_grad]  # what the gradient clip sees
        # Out of GPU memory shows at the first step: probe it now, before any state depends on the batch.
        inject_oom(self.raw)
        cfg = fit_batch(self.raw, cfg, ctx, lambda: autocast(self.device, self.amp_dtype), fallback=opts.oom_fallback)
        # The checkpoint to continue decides the accumulation (its global batch) and the epoch's clips.
        cfg = self._plan_resume(cfg)
        self.cfg = cfg

        self.sampler = ResumableBatchSampler(
            len(self.train_ds),
            cfg.batch_size,
            ctx.world_size,
            ctx.rank,
            seed=opts.seed,
            epoch_clips=self._plan.epoch_clips,
        )
        self.epoch_clips = self._plan.epoch_clips or self.sampler.clips_per_epoch  # the run's, whatever its layout
        self.batches_per_epoch = self.sampler.batches_per_epoch
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accum_steps)
        self.schedule = LRSchedule.from_config(cfg, self.steps_per_epoch)
        # The LR (zoo or overridden) is for the zoo entry's reference global batch.
        self.reference_batch = get_config(opts.model).reference_global_batch
        self.base_lr = scaled_lr(cfg, ctx.world_size, self.reference_batch)
        self.global_batch = cfg.batch_size * ctx.world_size * cfg.accum_steps
        self.optimizer = make_optimizer(self.raw, cfg, self.base_lr)
        self.scaler = self._grad_scaler()
        self._skipped_in_row = 0  # optimizer steps the loss scaler skipped since the last one it took
        self.end_epoch = min(cfg.epochs, opts.max_epochs) if opts.max_epochs else cfg.epochs
        self.fingerprint = fingerprint(
            cfg, opts.seed, ctx.world_size, len(self.train_ds), self.init_from_sha256, _requested(opts)
        )
        self.identity_tag = identity_tag(self.fingerprint["identity"])
        assert self._plan.tag in (None, self.identity_tag), "the resumed run's identity must be this run's"
        self.loader = DataLoader(
            self.train_ds,
            batch_sampler=self.sampler,
            num_workers=opts.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ignore_stop_signals if opts.workers else None,
            prefetch_factor=4 if opts.workers else None,
        )

        # state that a resume restores
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.epoch_stats = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, clips
        self.train_seconds = 0.0
        self.last_epoch_record: dict[str, Any] = {}
        self._resume()

        model_for_train: nn.Module = self.raw
        self.ddp: DDP | None = None
        if ctx.distributed:
            # Gradients as views into the all-reduce buckets: no second copy of them (GBs for large models).
            self.ddp = DDP(
                self.raw,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
            model_for_train = self.ddp
        if opts.compile:
            model_for_train = torch.compile(model_for_train)
        self.model = model_for_train
        self.logbook = Logbook(
            self.resume_dir,
            resume_step=self.step,
            enabled=ctx.is_main,
            loggers=self.opts.loggers,
            run=self._logger_run() if ctx.is_main else None,
        )
        log.info(
            "model %s: %d clips/epoch, global batch %d (%d x %d proc x %d accum), lr %.4g "
            "(%.4g at the reference global batch %d), "
            "%d optimizer steps/epoch, %d epochs, device %s, amp %s",
            cfg.name,
            len(self.train_ds),
            self.global_batch,
            cfg.batch_size,
            ctx.world_size,
            cfg.accum_steps,
            self.base_lr,
            cfg.lr,
            self.reference_batch,
            self.steps_per_epoch,
            self.end_epoch,
            self.device,
            self.amp_dtype or "off",
        )

    def _grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling: on with fp16 autocast only (bf16 and fp32 do not underflow like fp16)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _plan_resume(self, cfg: ZooConfig) -> ZooConfig:
        """Rank 0 chooses the checkpoint to continue (`_choose_resume`); every rank learns the plan.

        Returns `cfg` with the accumulation that keeps the checkpoint's global batch. A run that
        cannot continue is refused here, before training: rank 0 raises the error, the other ranks
        stop with `_RefusedOnRankZero` (their exit code is OK, so a launcher that stops a job
        step at the first non-zero exit never kills rank 0 while it reports).
        """
        plan: ResumePlan | str | None = None
        self._resume_state: dict[str, Any] | None = None
        with D.long_wait(self.ctx):  # the other ranks wait while rank 0 reads and hashes a checkpoint
            if self.ctx.is_main:
                try:
                    plan = self._choose_resume(cfg)
                except NotRetryable as exc:
                    D.broadcast_object(self.ctx, str(exc))
                    raise
            plan = D.broadcast_object(self.ctx, plan)
        if isinstance(plan, str):
            raise _RefusedOnRankZero(plan)
        assert isinstance(plan, ResumePlan)
        self._plan = plan
        return cfg.replace(accum_steps=plan.accum_steps) if plan.accum_steps != cfg.accum_steps else cfg

    def _choose_resume(self, cfg: ZooConfig) -> ResumePlan:
        """Rank 0: the newest checkpoint in resume/ that this run continues, verified against its seal.

        A checkpoint is this run's when its identity matches, or when only its global batch differs
        and the command asks for the batch and accumulation it asked for (then the processes
        changed, and the checkpoint's global batch is kept: `continued_layout`). Checkpoints of any other
        identity are moved, never deleted, into resume/stale-<time>/ (with the live logs when
        nothing is resumed), so that this run's pruning cannot touch them and they cannot be
        mistaken for this run's later. Only the fingerprints are read (memory-mapped) before the
        chosen file is hashed; its state is then used as it is (no second load).
        """
        world, batch = self.ctx.world_size, cfg.batch_size
        n = len(self.train_ds)
        mine = run_identity(cfg, self.opts.seed, n, self.init_from_sha256, batch * world * cfg.accum_steps)
        base = {k: v for k, v in mine.items() if k != "global_batch"}
        requested = _requested(self.opts)
        found: list[Found] = []
        for path in list_resume(self.resume_dir):
            try:
                state = load_resume(path)  # memory-mapped: the fingerprint costs no full read
            except CheckpointError as exc:
                warn_skipped(exc)
                found.append(Found(path, None, None, None, resume_identity(path)))
                continue
            split = split_fingerprint(state.get("fingerprint"))
            if split is None:
                found.append(Found(path, None, None, None, resume_identity(path)))
                continue
            identity, layout, asked = split
            tag = resume_identity(path) or identity_tag(identity)
            found.append(Found(path, state, identity, layout, tag, asked))
        chosen = None
        for f in found:
            if f.identity is None or f.layout is None:
                continue
            same_run = {k: v for k, v in f.identity.items() if k != "global_batch"} == base and (
                f.identity == mine or f.requested == requested
            )
            if not same_run:
                continue
            try:
                verify_seal(f.path)
            except CheckpointError as exc:
                warn_skipped(exc)
                continue
            chosen = f
            break
        plan = ResumePlan(None, cfg.accum_steps, None, 0, None)
        if chosen is not None:
            plan = self._continue(chosen, cfg)
        run_tag = identity_tag(chosen.identity if chosen is not None and chosen.identity else mine)
        stale = [f for f in found if f.tag is not None and f.tag != run_tag]
        if stale:
            self._set_aside(stale, chosen, mine if chosen is None else chosen.identity)
        self._resume_state = chosen.state if chosen is not None else None
        return plan

    def _continue(self, chosen: Found, cfg: ZooConfig) -> ResumePlan:
        """The plan that continues `chosen` with this run's processes and per-process batch."""
        assert chosen.state is not None and chosen.layout is not None and chosen.identity is not None
        state, old = chosen.state, chosen.layout
        world, batch = self.ctx.world_size, cfg.batch_size
        sampler = state.get("sampler") or {}
        m0 = old["world_size"] * old["batch_size"]
        epoch_clips = int(sampler.get("epoch_clips") or (len(self.train_ds) // m0) * m0)
        b0 = int(state["batch_in_epoch"])
        fit = continued_layout(old, epoch_clips, b0, world, batch)
        if isinstance(fit, str):
            raise NotRetryable(
                f"cannot continue {chosen.path}: it was written with {describe_layout(old)} (global batch "
                f"{chosen.identity['global_batch']}), and {fit}. "
                f"{layout_suggestion(old, epoch_clips, b0, world, batch)}; to start over instead, move "
                f"{self.resume_dir} away (e.g. mv {self.resume_dir} {self.resume_dir}.old)"
            )
        accum, start = fit
        new = {"world_size": world, "batch_size": batch, "accum_steps": accum}
        if new != old:
            used = (epoch_clips // (world * batch)) * world * batch
            log.warning(
                "continuing %s with another layout: %s -> %s; the global batch %d is kept%s",
                chosen.path.name,
                describe_layout(old),
                describe_layout(new),
                chosen.identity["global_batch"],
                f" (each epoch's last step leaves out {epoch_clips - used} of its clips)" if used < epoch_clips else "",
            )
        return ResumePlan(str(chosen.path), accum, epoch_clips, start, identity_tag(chosen.identity))

    def _set_aside(self, stale: list[Found], chosen: Found | None, identity: dict[str, Any]) -> None:
        """Move checkpoints of other runs into resume/stale-<time>/ and say what differs and how to go back."""
        dest = set_aside(self.resume_dir, [f.path for f in stale], with_logs=chosen is None)
        known = next((f for f in stale if f.identity is not None), None)
        differs = identity_diff(known.identity, identity) if known and known.identity else "unknown (unreadable)"
        newest = stale[0]
        log.warning(
            "%s held %d checkpoint(s) of another run (newest %s), which differs from this one in: %s. "
            "Moved them%s to %s%s. To continue that run instead, stop this one, run "
            "`mv %s %s.new && mv %s.new/%s %s` and rerun with that run's settings",
            self.resume_dir,
            len(stale),
            newest.path.name,
            differs,
            " and the live logs" if chosen is None else "",
            dest,
            "; this run starts from scratch" if chosen is None else "",
            self.resume_dir,
            self.resume_dir,
            self.resume_dir,
            dest.name,
            self.resume_dir,
        )

    def _resume(self) -> None:
        """Load the planned checkpoint: rank 0 has its verified state, the other ranks map the file."""
        path = self._plan.path
        if path is None:
            if self.ctx.is_main:
                for kept in kept_copies(self.out_dir):
                    log.info("training from scratch; the finished model in %s stays until this run ends", kept)
            return
        # Rank 0 checked the seal; memory-mapped, the processes of a node share one copy in the page cache.
        state = self._resume_state if self.ctx.is_main else load_resume(path)
        self._resume_state = None
        assert state is not None
        self.raw.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        elif self.ctx.is_main:  # written without fp16 (--amp bf16 or off): nothing to restore
            log.info(
                "fp16 loss scaling starts at scale %g: the checkpoint was written without it", self.scaler.get_scale()
            )
        self.epoch, self.step = state["epoch"], state["step"]
        self.batch_in_epoch = self._plan.start_batch  # the same clip of the epoch in this run's micro-batches
        self.epoch_stats = state["epoch_stats"].double()
        self.train_seconds = float(state["train_seconds"])
        self.last_epoch_record = state.get("last_epoch_record", {})
        self.past_attempts = list(state.get("attempts") or [])
        self.first_step = self.step
        self._warn_other_code()
        set_rng_state(state["rng"][min(self.ctx.rank, len(state["rng"]) - 1)])
        log.info(
            "resumed from %s: epoch %d, micro-batch %d, optimizer step %d",
            path,
            self.epoch,
            self.batch_in_epoch,
            self.step,
        )

    # ------------------------------------------------------------- checkpoints
    def _save_resume(self) -> None:
        """All ranks call this (RNG states are gathered); rank 0 writes."""
        rngs = D.all_gather_objects(self.ctx, rng_state())
        with D.long_wait(self.ctx):  # a large checkpoint on a slow file system takes minutes
            if self.ctx.is_main:
                self._write_resume(rngs)
            # No rank leaves before the checkpoint is on disk: a launcher (torchrun) stops the
            # others as soon as one rank exits after a signal.
            D.barrier(self.ctx)

    def _logger_run(self) -> RunInfo:
        """What an experiment tracker shows for this training: its name, its settings and provenance, and an
        id that a resumed attempt shares (the run identity), so that W&B continues one run."""
        return RunInfo(
            name=self.cfg.name,
            run_id=f"{self.cfg.name}-{self.identity_tag}",
            folder=self.out_dir,
            config={
                "model": self.cfg.to_dict(),
                "global_batch": self.global_batch,
                "lr": self.base_lr,
                "seed": self.opts.seed,
                "init_from": self.opts.init_from,
                "init_from_sha256": self.init_from_sha256,
                "world_size": self.ctx.world_size,
                "provenance": self.provenance,
            },
        )

    def _attempts(self) -> list[dict[str, Any]]:
        """Every attempt of this training so far, this one last (ended: now, its progress so far)."""
        this = provenance.attempt_record(
            provenance.finish(self.provenance), first_step=self.first_step, last_step=self.step, epoch=self.epoch
        )
        return [*self.past_attempts, this]

    def _warn_other_code(self) -> None:
        """A resumed training whose earlier attempts ran other code or another torch says so (once, rank 0)."""
        if not self.ctx.is_main or not self.past_attempts:
            return
        now = provenance.attempt_record(self.provenance)
        for key in ("commit", "dirty", "torch"):
            before = {a.get(key) for a in self.past_attempts}
            if before != {now[key]}:
                log.warning(
                    "resuming a training whose earlier attempts ran %s %s; this attempt runs %s: "
                    "train_summary.json lists every attempt",
                    key,
                    ", ".join(sorted(map(str, before))),
                    now[key],
                )

    def _write_resume(self, rngs: list) -> None:
        state = {
            "attempts": self._attempts(),
            "model": self.raw.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": {"step": self.step, **self.schedule.__dict__},
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "epoch_stats": self.epoch_stats.cpu(),
            "rng": rngs,
            "train_seconds": self.train_seconds + time.perf_counter() - self._t_start,
            "last_epoch_record": self.last_epoch_record,
            "fingerprint": self.fingerprint,
            "sampler": {
                "epoch": self.epoch,
                "start_batch": self.batch_in_epoch,
                "seed": self.opts.seed,
                "epoch_clips": self.epoch_clips,
            },
        }
        path = save_resume(
            state, self.resume_dir, self.epoch, self.step, keep=self.opts.keep_resume, identity=self.identity_tag
        )
        log.info("saved resume checkpoint %s", path)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        with reported(lambda: training_oom_message(self.cfg, self.ctx.world_size, self.device, fallback=False)):
            return self._run()

    def _run(self) -> int:
        try:
            self._setup()
        except _RefusedOnRankZero:  # rank 0 reports it and exits with its code
            return ExitCode.OK
        self._t_start = time.perf_counter()
        self._last_save = time.monotonic()
        try:
            while self.epoch < self.end_epoch:
                code = self._train_epoch()
                if code is not None:
                    return code
                self._end_of_epoch()
                self.epoch += 1
                self.batch_in_epoch = 0
                self.epoch_stats.zero_()
                self._save_resume()
                self._last_save = time.monotonic()
                if self._agree(self.stop.raised):
                    log.warning("stopping after epoch %d on signal; rerun the same command to continue", self.epoch)
                    return ExitCode.RETRY_LATER
            self.train_seconds += time.perf_counter() - self._t_start
            with D.long_wait(self.ctx):
                if self.ctx.is_main:
                    self._write_final_outputs()
                D.barrier(self.ctx)
            return ExitCode.OK
        finally:
            if hasattr(self, "logbook"):
                self.logbook.close()

    def _agree(self, flag: bool) -> bool:
        t = torch.tensor([float(flag)], device=self.device)
        return bool(D.all_reduce(self.ctx, t, "max").item() > 0)

    def _train_epoch(self) -> int | None:
        """The rest of the current epoch, from micro-batch `batch_in_epoch`; an exit code when stopped early.

        Micro-batches accumulate gradients until their group of `accum_steps` is complete; then all
        ranks agree (one all-reduce) on the group's statistics, a stop signal and a due timed
        checkpoint, and take the optimizer step together.
        """
        self.train_ds.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.model.train()
        nb, accum = self.batches_per_epoch, self.cfg.accum_steps
        group = torch.zeros(3, dtype=torch.float64, device=self.device)  # this rank's loss sum, correct, clips
        window = _LogWindow()
        bar = self._progress_bar()
        self.optimizer.zero_grad(set_to_none=True)
        with _logging_beside(bar):
            try:
                for i, (clips, labels) in enumerate(self.loader, start=self.batch_in_epoch):
                    group_start = (i // accum) * accum
                    group_size = min(group_start + accum, nb) - group_start
                    last_in_group = i == group_start + group_size - 1
                    self._micro_batch(clips, labels, group_size, last_in_group, group)
                    if bar is not None:
                        bar.update(1)
                    if not last_in_group:
                        continue
                    agreed = self._agree_on_step(group, i)
                    lr, grad_norm, skipped = self._optimizer_step(agreed.finite)
                    self.batch_in_epoch = i + 1
                    if agreed.finite:  # a skipped step's NaN/inf would hide every other step's loss
                        self.epoch_stats += agreed.stats
                        window.stats += agreed.stats
                    window.skipped += skipped
                    if self.step % max(1, self.opts.log_every) == 0 or self.batch_in_epoch == nb:
                        self._log_step(window, lr, grad_norm, bar)
                    self.stop.after_step(self.step)  # TOKSHIFT_SIGNAL_AT_STEP, once the step is logged
                    if agreed.stop:
                        self._save_resume()
                        log.warning(
                            "stopped on signal at epoch %d, step %d; exit %d, rerun the same command to continue",
                            self.epoch + 1,
                            self.step,
                            ExitCode.RETRY_LATER,
                        )
                        return ExitCode.RETRY_LATER
                    if agreed.save:
                        self._save_resume()
                        self._last_save = time.monotonic()
            finally:
                if bar is not None:
                    bar.close()
        return None

    def _micro_batch(
        self, clips: torch.Tensor, labels: torch.Tensor, group_size: int, last_in_group: bool, group: torch.Tensor
    ) -> None:
        """Forward and backward of one micro-batch, adding its loss sum, correct and clips to `group`.

        Gradients are synchronised across ranks only with the last micro-batch of a group; the
        loss is divided by the group's size so the accumulated gradient is the group's mean.
        """
        from tokshift.data.transforms import normalize

        x = normalize(clips.to(self.device, non_blocking=True))
        y = labels.to(self.device, non_blocking=True).long()
        sync = contextlib.nullcontext() if last_in_group or self.ddp is None else self.ddp.no_sync()
        with sync:
            with autocast(self.device, self.amp_dtype):
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
            self.scaler.scale(loss / group_size).backward()
        with torch.no_grad():
            group[0] += loss.detach().double() * y.numel()
            group[1] += (logits.detach().argmax(-1) == y).sum()
            group[2] += y.numel()

    def _agree_on_step(self, group: torch.Tensor, batch: int) -> _Agreed:
        """One all-reduce before an optimizer step: the group's statistics over all ranks, whether
        any rank was signalled to stop, and whether rank 0's timed checkpoint is due. Zeroes `group`.

        A NaN/inf loss on any rank stops every rank here, before the step can spoil the weights;
        with the fp16 loss scaler every rank skips the step instead (`_optimizer_step`).
        """
        due = self.ctx.is_main and (time.monotonic() - self._last_save) >= self.opts.checkpoint_minutes * 60
        flags = torch.tensor([float(self.stop.raised), float(due)], dtype=torch.float64, device=self.device)
        sync_t = torch.cat([group, flags])
        D.all_reduce(self.ctx, sync_t)
        group.zero_()
        stats = sync_t[:3].cpu()
        finite = math.isfinite(float(stats[0]))
        if not finite and not self.scaler.is_enabled():
            raise TrainingDiverged(
                f"loss is {float(stats[0] / stats[2])} at epoch {self.epoch + 1}, optimizer step "
                f"{self.step + 1} (micro-batch {batch + 1} of {self.batches_per_epoch}); training stopped and "
                f"the last good resume checkpoint in {self.resume_dir} is kept. Lower the learning rate "
                "(--override lr=...) or check the input data"
            )
        return _Agreed(stats, stop=bool(sync_t[3] > 0), save=bool(sync_t[4] > 0), finite=finite)

    #: fp16: this many optimizer steps skipped in a row (the loss scale has fallen by 2**this) is divergence.
    max_skipped_steps = 20

    def _optimizer_step(self, loss_finite: bool = True) -> tuple[float, torch.Tensor, bool]:
        """Clip the accumulated gradient, set the scheduled LR and step; returns (lr, gradient norm, skipped).

        With the fp16 loss scaler a non-finite loss or gradient skips the step and lowers the scale
        (what fp16 training relies on: the scale starts too high and finds its level that way); the
        step still counts, so the schedule and the step numbers stay those of the epoch.
        """
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        # With fp16 the scaler skips a step whose gradient overflowed; without it, inf/NaN is divergence.
        if not self.scaler.is_enabled() and not math.isfinite(float(grad_norm)):
            raise TrainingDiverged(
                f"gradient norm is {float(grad_norm)} at epoch {self.epoch + 1}, optimizer step "
                f"{self.step + 1}; the last good resume checkpoint in {self.resume_dir} is kept"
            )
        lr = self.base_lr * self.schedule.factor(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        if loss_finite:
            self.scaler.step(self.optimizer)  # skipped by the scaler when the gradient is not finite
            self.scaler.update()
        else:  # a non-finite loss with a finite gradient is skipped all the same
            self.scaler.update(scale * self.scaler.get_backoff_factor())
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        skipped = self.scaler.is_enabled() and self.scaler.get_scale() < scale
        if skipped:
            self._skipped(loss_finite)
        else:
            self._skipped_in_row = 0
        return lr, grad_norm, skipped

    def _skipped(self, loss_finite: bool) -> None:
        """Count a step the loss scaler skipped; too many in a row is divergence."""
        self._skipped_in_row += 1
        scale = self.scaler.get_scale()
        if self.ctx.is_main:
            log.warning(
                "fp16: optimizer step %d skipped (%s not finite); loss scale lowered to %g (%d skipped in a row)",
                self.step,
                "gradient" if loss_finite else "loss",
                scale,
                self._skipped_in_row,
            )
        if self._skipped_in_row >= self.max_skipped_steps:
            raise TrainingDiverged(
                f"{self._skipped_in_row} optimizer steps in a row skipped for a non-finite loss or gradient "
                f"under fp16, the last at epoch {self.epoch + 1}, optimizer step {self.step} (loss scale now "
                f"{scale:g}); the last good resume checkpoint in {self.resume_dir} is kept. Lower the learning "
                "rate (--override lr=...), train with --amp bf16, or check the input data"
            )

    def _log_step(self, window: _LogWindow, lr: float, grad_norm: torch.Tensor, bar: Any) -> None:
        """The step record of the steps since the last one: to the logbook, the log and the bar."""
        dt = time.perf_counter() - window.t0
        s = window.stats
        rec = {
            "kind": "step",
            "epoch": self.epoch + 1,
            "step": self.step,
            "loss": float(s[0] / s[2]),
            "top1": float(100 * s[1] / s[2]),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "clips_per_s": float(s[2]) / max(dt, 1e-9),
            "time": time.time(),
        }
        if self.scaler.is_enabled():
            rec.update(loss_scale=self.scaler.get_scale(), skipped_steps=window.skipped)
        self.logbook.write(rec, self.step)
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.3g}")
        log.info(
            "epoch %d/%d batch %d/%d step %d loss %.4f lr %.4g %.1f clips/s",
            self.epoch + 1,
            self.end_epoch,
            self.batch_in_epoch,
            self.batches_per_epoch,
            self.step,
            rec["loss"],
            lr,
            rec["clips_per_s"],
        )
        window.reset()

    def _progress_bar(self) -> Any:
        """The epoch's bar on rank 0 (`progress`: None draws one when stderr is a terminal), else None."""
        show = self.opts.progress if self.opts.progress is not None else sys.stderr.isatty()
        if not (show and self.ctx.is_main):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.batches_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.end_epoch}",
            unit="batch",
            dynamic_ncols=True,
        )

    def _end_of_epoch(self) -> None:
        s = self.epoch_stats
        rec: dict[str, Any] = {
            "kind": "epoch",
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": float(s[0] / s[2]) if s[2] else float("nan"),
            "train_top1": float(100 * s[1] / s[2]) if s[2] else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": time.time(),
        }
        if self.val_ds is not None and len(self.val_ds):
            records = evaluate_dataset(
                self.raw,
                self.val_ds,
                self.ctx,
                ViewLayout(1, 1),
                view_batch=self.opts.val_view_batch,
                amp_dtype=self.amp_dtype,
                workers=self.opts.workers,
                pack_videos=True,
                desc="validate",
            )
            m = summarize(records, ViewLayout(1, 1))
            rec.update(
                val_top1_1view=m["top1"],
                val_top5_1view=m["top5"],
                val_loss=m["loss"],
                val_videos=m["videos"],
                val_failed=m["failed"],
            )
            if m["failed"]:
                log.warning(
                    "validation: %d of %d videos failed to load; the 1-view accuracy counts the others",
                    m["failed"],
                    len(records),
                )
        self.last_epoch_record = rec
        self.logbook.write(rec, self.step)
        log.info(
            "epoch %d/%d: train loss %.4f, train top-1 %.2f%%%s",
            self.epoch + 1,
            self.end_epoch,
            rec["train_loss"],
            rec["train_top1"],
            f", val top-1 (1 view) {rec['val_top1_1view']:.2f}%" if "val_top1_1view" in rec else "",
        )

    # ------------------------------------------------------------ final outputs
    def _write_final_outputs(self) -> None:
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        self.logbook.close()
        live_log = self.resume_dir / "metrics.jsonl"
        atomic_write_text(out / "metrics.jsonl", live_log.read_text() if live_log.exists() else "")
        events_src = self.resume_dir / "events"
        with atomic_folder(out / "events") as tmp:  # the previous events stay until the new ones are whole
            if events_src.is_dir():
                shutil.copytree(events_src, tmp, dirs_exist_ok=True)

        cfg = self.cfg
        final = {
            "model": {k: v.detach().cpu() for k, v in self.raw.state_dict().items()},
            "config": cfg.to_dict(),
            "classes": self.classes,
            "train_class_videos": self.train_class_videos,
            "epoch": self.epoch,
            "optimizer_steps": self.step,
            "metrics": self.last_epoch_record,
            "world_size": self.ctx.world_size,
            "global_batch": self.global_batch,
            "lr": self.base_lr,
            "seed": self.opts.seed,
            "init_from": self.opts.init_from,
            "init_from_sha256": self.init_from_sha256,
            "provenance": {**provenance.finish(self.provenance), "attempts": self._attempts()},
        }
        ckpt = out / "model.pt"
        digest = atomic_torch_save(final, ckpt)
        records = read_jsonl(out / "metrics.jsonl")
        steps = [r for r in records if r.get("kind") == "step"]
        summary = {
            "model": cfg.name,
            "epochs": self.epoch,
            "optimizer_steps": self.step,
            "world_size": self.ctx.world_size,
            # Where the (last) attempt ran: the node of every rank, in rank order.
            "nodes": list(self.ctx.nodes),
            "gpus": self.ctx.world_size if self.device.type == "cuda" else 0,
            "device": str(self.device.type),
            "amp": str(self.amp_dtype or "off").replace("torch.", ""),
            "global_batch": self.global_batch,
            "batch_size": cfg.batch_size,
            "accum_steps": cfg.accum_steps,
            "lr": self.base_lr,
            "lr_reference": cfg.lr,
            "reference_global_batch": self.reference_batch,
            "train_hours": self.train_seconds / 3600,
            "final_train_loss": self.last_epoch_record.get("train_loss", steps[-1]["loss"] if steps else None),
            "final_train_top1": self.last_epoch_record.get("train_top1"),
            "final_val_top1_1view": self.last_epoch_record.get("val_top1_1view"),
            "train_clips": len(self.train_ds),
            "classes": len(self.classes),
            "classes_without_training_videos": (
                None
                if self.train_class_videos is None
                else [c for c, n in zip(self.classes, self.train_class_videos) if not n]
            ),
            "seed": self.opts.seed,
            "init_from": self.opts.init_from,
            "init_from_sha256": self.init_from_sha256,
            "checkpoint": str(ckpt),
            "checkpoint_sha256": digest,
            "final_copy": str(final_copy_path(out, digest)),
            # Which code, software, devices and SLURM jobs made it: every attempt of a resumed run.
            "provenance": final["provenance"],
        }
        atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
        kept = keep_final_copy(out, digest)  # before the resume checkpoints go: one copy always exists
        for old in list_resume(self.resume_dir):  # the run is complete: free the disk
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        log.info(
            "wrote %s (sha256 %s, kept in %s), train_summary.json, metrics.jsonl, events/", ckpt, digest[:12], kept
        )
