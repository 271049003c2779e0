"""CLI sub-commands `train`, `evaluate`, `predict`, `import-original` and `export`.

torch loads inside the handlers only, so `tokshift --help` stays fast. Options that mirror a
config setting take their default from the config schema.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tokshift.argtypes import (
    add_boolean,
    add_command,
    add_progress,
    file_path,
    fraction,
    nonnegative_float,
    nonnegative_int,
    optional_text,
    options_from_args,
    positive_int,
    progress_bar,
    workers_setting,
)
from tokshift.engine.class_order import CLASS_ORDERS
from tokshift.engine.eval_resume import KEEP_EVERY, KEEP_SECONDS, PARTIAL
from tokshift.errors import ExitCode
from tokshift.export import FORMATS
from tokshift.settings import choices, default

log = logging.getLogger("tokshift.engine")


def _common(p: argparse.ArgumentParser, workers: str | None = None) -> None:
    """--device, --amp and, with `workers` naming the config section to default from, --workers."""
    p.add_argument(
        "--device",
        default=default("train", "device"),
        choices=choices("train", "device"),
        help="cuda: this rank's GPU; auto: the GPU when the job was given GPUs or CUDA works, else the CPU "
        "(a job given GPUs whose CUDA is unusable stops at once, exit NOT_RETRYABLE); cpu: the CPU",
    )
    p.add_argument(
        "--amp",
        # The config's one autocast setting; evaluation and prediction autocast alike by default.
        default=default("train", "amp"),
        choices=choices("train", "amp"),
        help="autocast dtype; auto = bf16 on GPU, fp32 on CPU",
    )
    if workers:
        p.add_argument(
            "--workers",
            type=workers_setting,
            default=default(workers, "workers"),
            metavar="N|auto",
            help="data-loading processes per rank (0: in the main process; auto: from the CPU cores this "
            "process may use)",
        )


def checkpoint_path(text: str) -> Path:
    """A checkpoint file, or an export folder (`tokshift export`) as its weights file: a command
    records the sha256 of the file it read, and the weights are what identifies an export."""
    from tokshift.export import export_weights_file

    path = Path(text)
    if not path.is_dir():
        return path
    try:
        weights = export_weights_file(path)
    except ValueError as exc:  # BadInput: an export of a newer format
        raise argparse.ArgumentTypeError(str(exc)) from None
    if weights is None:
        raise argparse.ArgumentTypeError(
            f"{text} is a directory, not a file nor a folder written by tokshift export (no config.json of one "
            "in it); give the checkpoint file inside it, or an export folder"
        )
    return weights


def optional_checkpoint(text: str) -> Path | None:
    """A checkpoint as :func:`checkpoint_path`, or '' for none."""
    return checkpoint_path(text) if text else None


def _checkpoint(p: argparse.ArgumentParser) -> None:
    """--checkpoint and what a checkpoint of the original TokShift needs besides (--model, --classes)."""
    p.add_argument(
        "--checkpoint",
        required=True,
        type=checkpoint_path,
        help="model.pt written by tokshift train or import-original, a folder written by tokshift export, or "
        "a .pth released by the original TokShift (told apart by content; a .pth needs --model)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="zoo entry the checkpoint was trained as (`tokshift zoo`); required for an original .pth, "
        "checked against a model.pt (default: the one recorded in model.pt)",
    )
    p.add_argument(
        "--classes",
        type=file_path,
        default=None,
        metavar="FILE",
        help="class names, one per line in label order, for an original .pth whose head is not "
        "Kinetics-400's (default: Kinetics-400's sorted labels for a 400-class head)",
    )


def _read_classes(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _import_original(args: argparse.Namespace) -> int:
    from tokshift.engine.loading import import_original
    from tokshift.fileio import refuse_output_over_input

    refuse_output_over_input(args.out, [args.source, args.classes], name="--out")
    done = import_original(
        args.source, args.model, args.out, classes=_read_classes(args.classes), class_order=args.class_order
    )
    print(
        f"wrote {done.out} (sha256 {done.sha256}): {done.model}, {done.num_classes} classes, "
        f"from {done.source} (sha256 {done.source_sha256})"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from tokshift.engine.export import export_model

    done = export_model(args.checkpoint, args.out_dir, args.format, args.results)
    if done.no_results is not None:
        print(f"warning: the model card has no results: {done.no_results}", file=sys.stderr)
    print(
        f"wrote {done.out_dir}/ ({', '.join(done.files)}): {done.model}, weights sha256 {done.weights_sha256}, "
        f"from a checkpoint of sha256 {done.checkpoint_sha256}"
        + (f", results from {done.table}" if done.table is not None and done.no_results is None else "")
    )
    return 0


def _views(p: argparse.ArgumentParser) -> None:
    """--clips, --crops, --resize and --view-batch, defaulting to the config's `evaluate` settings."""
    p.add_argument("--clips", type=positive_int, default=default("evaluate", "clips"), help="clips per video")
    p.add_argument(
        "--crops",
        type=int,
        choices=choices("evaluate", "crops"),
        default=default("evaluate", "crops"),
        help="spatial crops per clip",
    )
    p.add_argument(
        "--resize",
        choices=choices("evaluate", "resize"),
        default=default("evaluate", "resize"),
        help="short-side resize to the crop size: linear (OpenCV bilinear, fast) or bicubic "
        "(antialiased, as the original TokShift's Pillow BICUBIC)",
    )
    p.add_argument(
        "--view-batch", type=positive_int, default=default("evaluate", "view_batch"), help="views per forward pass"
    )


def _train(args: argparse.Namespace) -> int:
    from tokshift.engine.final_copy import FINAL_DIR
    from tokshift.engine.runtime import parse_overrides
    from tokshift.engine.train import TrainOptions, train
    from tokshift.fileio import refuse_folder_over_input

    # What a training replaces in its folder (and resume/, final/, events/, which it empties).
    refuse_folder_over_input(
        args.out_dir,
        [args.init_from, *args.train_shards, *args.val_shards],
        name="--out-dir",
        files=("model.pt", "train_summary.json", "metrics.jsonl"),
        subfolders=("resume", FINAL_DIR, "events"),
    )
    opts = options_from_args(
        TrainOptions,
        args,
        overrides=parse_overrides(args.override),
        progress=progress_bar(args.progress),
        loggers=tuple(args.loggers),
    )
    return train(opts)


def _evaluate(args: argparse.Namespace) -> int:
    from tokshift.engine.evaluate import EvalOptions, run_evaluation
    from tokshift.fileio import refuse_folder_over_input

    # What an evaluation replaces in its folder (and partial/, whose records it moves and removes).
    refuse_folder_over_input(
        args.out_dir,
        [args.checkpoint, *args.shards, args.classes],
        name="--out-dir",
        files=("metrics.json", "predictions.csv"),
        subfolders=(PARTIAL,),
    )
    return run_evaluation(
        options_from_args(EvalOptions, args, classes=_read_classes(args.classes), progress=progress_bar(args.progress))
    )


def _predict(args: argparse.Namespace) -> int:
    from tokshift.engine.predict import PredictOptions, predict_videos

    return predict_videos(options_from_args(PredictOptions, args, classes=_read_classes(args.classes)))


def _stage_to(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stage-to",
        type=optional_text,
        default=default("frames", "stage_to"),
        metavar="DIR",
        help="copy the shards to this node-local folder first ($VARS expanded here), reading them in place "
        "when it lacks the space; '' reads them in place (default: read in place)",
    )


def _fused_attn(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-fused-attn", dest="fused_attn", action="store_false", help="eager attention instead of SDPA kernels"
    )


def register(subparsers: Any) -> None:
    t = add_command(
        subparsers,
        "train",
        help="train a zoo model (resumable; DDP under torchrun or srun)",
        description="Train a zoo model on packed shards. Resumes automatically from OUT_DIR/resume/: stopped by "
        "SIGTERM/SIGUSR1, it saves a resume checkpoint and exits RETRY_LATER, and a rerun continues.",
        exit_codes=(ExitCode.NOT_RETRYABLE, ExitCode.DATA_DAMAGED, ExitCode.RETRY_LATER),
    )
    t.add_argument("--model", required=True, help="zoo name (tokshift zoo)")
    t.add_argument("--train-shards", nargs="+", required=True, metavar="LMDB", help="packed training shards")
    t.add_argument(
        "--val-shards", nargs="*", default=[], metavar="LMDB", help="packed validation shards (default: none)"
    )
    t.add_argument(
        "--out-dir", required=True, type=Path, help="folder for model.pt, train_summary.json, logs and resume/"
    )
    t.add_argument(
        "--init-from",
        type=optional_checkpoint,
        default=default("train", "init_from"),
        metavar="FILE",
        help="weights to start from, detected from content: an ImageNet-21k ViT .npz (tokshift download), "
        "a model.pt of tokshift train, an export folder or an original TokShift .pth (fine-tuning; the head "
        "is kept when its class count matches, else re-initialised); '' for none (default: random init)",
    )
    t.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="zoo fields to change, values as YAML scalars, e.g. epochs=2 lr=0.01 (default: none)",
    )
    t.add_argument("--seed", type=nonnegative_int, default=default("train", "seed"), help="random seed")
    add_boolean(t, "--compile", default("train", "compile"), "torch.compile the model (bare --compile: true)")
    add_boolean(
        t,
        "--grad-checkpointing",
        default("train", "grad_checkpointing"),
        "recompute activations in the backward pass: less GPU memory, about 30%% more compute (same gradients)",
    )
    add_boolean(
        t,
        "--oom-fallback",
        default("train", "oom_fallback"),
        "when the first training step runs out of GPU memory, halve the per-GPU batch and double the "
        "gradient accumulation (the global batch stays); without it the run stops with exit NOT_RETRYABLE "
        "and the override that does the same",
    )
    _fused_attn(t)
    t.add_argument(
        "--checkpoint-minutes",
        type=nonnegative_float,
        default=default("train", "checkpoint_minutes"),
        help="also save a resume checkpoint this often (minutes; 0: after every optimizer step)",
    )
    t.add_argument(
        "--loggers",
        nargs="*",
        choices=("tensorboard", "wandb"),
        default=list(default("train", "loggers")),
        metavar="LOGGER",
        help="where the training scalars go besides metrics.jsonl: tensorboard (events/), wandb (needs the "
        "wandb package: pip install 'tokshift[wandb]'; W&B's own WANDB_* variables choose project and mode, "
        "WANDB_MODE=offline included); none: metrics.jsonl only",
    )
    t.add_argument("--log-every", type=positive_int, default=10, help="optimizer steps per log record")
    t.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        help="stop after this many epochs; the LR schedule still spans the zoo's epochs (default: all)",
    )
    add_progress(t, off="none (the log lines are written in every mode)")
    _stage_to(t)
    _common(t, workers="train")
    t.set_defaults(func=_train)

    e = add_command(
        subparsers,
        "evaluate",
        help="exact multi-view evaluation (10 clips x 3 crops; resumable)",
        description="Exact multi-view evaluation (10 clips x 3 crops) of a trained model on packed shards. Keeps "
        "the finished videos in OUT_DIR/partial/ as it goes: stopped by SIGTERM/SIGUSR1 it exits RETRY_LATER, and "
        "a rerun with the same checkpoint, shards and view settings scores only the rest.",
        # NOT_RETRYABLE: the GPUs given are unusable, or the views do not fit in GPU memory.
        exit_codes=(ExitCode.NOT_RETRYABLE, ExitCode.DATA_DAMAGED, ExitCode.RETRY_LATER),
    )
    _checkpoint(e)
    e.add_argument("--shards", nargs="+", required=True, metavar="LMDB", help="packed validation shards")
    e.add_argument("--out-dir", required=True, type=Path, help="folder for metrics.json and predictions.csv")
    _views(e)
    add_boolean(
        e,
        "--faithful",
        default("evaluate", "faithful"),
        "score as the original's test script does (with --resize bicubic): frames decoded as Pillow does, its clip "
        "starts and portrait crops, and fp32 without TF32 unless --amp says otherwise (docs/reference.md, "
        "'Faithful evaluation')",
    )
    _fused_attn(e)
    e.add_argument(
        "--max-failed-share",
        type=fraction,
        default=default("evaluate", "max_failed_share"),
        metavar="SHARE",
        help="fail (exit DATA_DAMAGED, listing the first errors) when more than this share of the videos cannot "
        "be read",
    )
    e.add_argument(
        "--keep-every",
        type=positive_int,
        default=KEEP_EVERY,
        metavar="VIDEOS",
        help=f"write the finished videos to OUT_DIR/{PARTIAL}/ after this many per process, and at least every "
        f"{KEEP_SECONDS / 60:g} minutes; a rerun after an interruption scores only the others",
    )
    _stage_to(e)
    add_progress(e)
    _common(e, workers="evaluate")
    e.set_defaults(func=_evaluate)

    p = add_command(
        subparsers,
        "predict",
        help="classify video files with a trained model",
        exit_codes=(ExitCode.NOT_RETRYABLE, ExitCode.DATA_DAMAGED),
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (anything ffmpeg decodes)")
    _checkpoint(p)
    p.add_argument("--format", default="text", choices=["text", "json"], help="output format on stdout")
    _views(p)
    p.add_argument("--top", type=positive_int, default=5, help="classes listed per video")
    _common(p)
    p.set_defaults(func=_predict)

    i = add_command(
        subparsers,
        "import-original",
        help="convert a .pth released by the original TokShift into a tokshift model.pt",
    )
    i.add_argument("source", type=file_path, metavar="SRC.pth", help="the original's checkpoint")
    i.add_argument("--model", required=True, metavar="NAME", help="zoo entry it was trained as (`tokshift zoo`)")
    i.add_argument("--out", required=True, help="model.pt to write (with the source's path and sha256)")
    i.add_argument(
        "--classes",
        type=file_path,
        default=None,
        metavar="FILE",
        help="class names, one per line in label order (default: Kinetics-400's sorted labels for 400 classes)",
    )
    i.add_argument(
        "--class-order",
        choices=CLASS_ORDERS,
        default=CLASS_ORDERS[0],
        help="how the checkpoint's head rows are ordered: sorted class names, or sorted after spaces become _ "
        "and parentheses go (docs/reference.md, 'Class order')",
    )
    i.set_defaults(func=_import_original)

    x = add_command(
        subparsers,
        "export",
        help="write a trained model as safetensors weights, config.json and (hub) a model card",
        description="Write the weights of a model.pt as OUT_DIR/model.safetensors and what rebuilding and using "
        "the model needs as OUT_DIR/config.json; --format hub adds OUT_DIR/README.md, a model card with the "
        "model's row of the results table. evaluate, predict, tokshift.load and timm read the folder "
        "(docs/export.md). The folder is written whole or not at all; an earlier export there is replaced.",
        exit_codes=(ExitCode.DATA_DAMAGED,),  # an export given as input whose weights are not its own
    )
    x.add_argument(
        "checkpoint",
        type=checkpoint_path,
        metavar="MODEL.pt",
        help="model.pt of tokshift train or import-original, or an export folder (to write it in the other format)",
    )
    x.add_argument(
        "--format",
        choices=FORMATS,
        default="safetensors",
        help="safetensors: weights and config.json; hub: also README.md, the model card",
    )
    x.add_argument(
        "--out-dir",
        required=True,
        type=Path,
        help="folder to write: new, empty or an earlier export (never one that holds the input)",
    )
    x.add_argument(
        "--results",
        type=file_path,
        default=None,
        metavar="CSV",
        help="model_zoo.csv whose row of this checkpoint the model card shows (default: the workflow's table, "
        "model_zoo.csv two folders above train/<model>/model.pt, or beside released/<model>/)",
    )
    x.set_defaults(func=_export)
