"""CLI sub-commands `train`, `evaluate` and `predict`.

torch loads inside the handlers only, so `tokshift --help` stays fast. Options that mirror a
config setting take their default from the config schema.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokshift.argtypes import (
    add_command,
    file_path,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_int,
)
from tokshift.engine.exitcodes import EXIT_DIVERGED, EXIT_PREEMPTED, EXIT_USAGE
from tokshift.settings import default

log = logging.getLogger("tokshift.engine")


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn input errors into one clear line and exit code 2; divergence into exit code 3."""

    def run(args: argparse.Namespace) -> int:
        from tokshift.engine.checkpoint import CheckpointError
        from tokshift.engine.train import TrainingDiverged

        try:
            return fn(args)
        except TrainingDiverged as exc:
            print(f"error: training diverged: {exc}", file=sys.stderr)
            return EXIT_DIVERGED
        except (ValueError, FileNotFoundError, CheckpointError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _common(p: argparse.ArgumentParser, workers: bool = True, amp: str = "auto") -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: this rank's GPU if CUDA works, else CPU",
    )
    p.add_argument(
        "--amp",
        default=amp,
        choices=["auto", "bf16", "fp16", "off"],
        help="autocast dtype; auto = bf16 on GPU, fp32 on CPU",
    )
    if workers:
        p.add_argument(
            "--workers",
            type=nonnegative_int,
            default=2,
            help="data-loading processes per rank (0: in the main process)",
        )


def _checkpoint(p: argparse.ArgumentParser) -> None:
    """--checkpoint and what a checkpoint of the original TokShift needs besides (--model, --classes)."""
    p.add_argument(
        "--checkpoint",
        required=True,
        type=file_path,
        help="model.pt written by tokshift train or import-original, or a .pth released by the original "
        "TokShift (told apart by content; a .pth needs --model)",
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

    done = import_original(args.source, args.model, args.out, classes=_read_classes(args.classes))
    print(
        f"wrote {done.out} (sha256 {done.sha256}): {done.model}, {done.num_classes} classes, "
        f"from {done.source} (sha256 {done.source_sha256})"
    )
    return 0


def _views(p: argparse.ArgumentParser) -> None:
    """--clips, --crops, --resize and --view-batch, defaulting to the config's `evaluate` settings."""
    p.add_argument("--clips", type=positive_int, default=default("evaluate", "clips"), help="clips per video")
    p.add_argument(
        "--crops", type=int, choices=[1, 3], default=default("evaluate", "crops"), help="spatial crops per clip"
    )
    p.add_argument(
        "--resize",
        choices=["linear", "bicubic"],
        default=default("evaluate", "resize"),
        help="short-side resize to the crop size: linear (OpenCV bilinear, fast) or bicubic "
        "(antialiased, as the original TokShift's Pillow BICUBIC)",
    )
    p.add_argument(
        "--view-batch", type=positive_int, default=default("evaluate", "view_batch"), help="views per forward pass"
    )


def _train(args: argparse.Namespace) -> int:
    from tokshift.engine.runtime import parse_overrides
    from tokshift.engine.train import TrainOptions, train

    opts = TrainOptions(
        model=args.model,
        train_shards=args.train_shards,
        val_shards=args.val_shards or [],
        out_dir=Path(args.out_dir),
        pretrained=str(args.pretrained) if args.pretrained else None,
        overrides=parse_overrides(args.override),
        workers=args.workers,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        fused_attn=not args.no_fused_attn,
        checkpoint_minutes=args.checkpoint_minutes,
        log_every=args.log_every,
        max_epochs=args.max_epochs,
        progress={"auto": None, "bar": True, "lines": False}[args.progress],
        stage_to=args.stage_to,
    )
    return train(opts)


def _evaluate(args: argparse.Namespace) -> int:
    from tokshift.engine.evaluate import EvalOptions, run_evaluation

    return run_evaluation(
        EvalOptions(
            checkpoint=Path(args.checkpoint),
            shards=args.shards,
            out_dir=Path(args.out_dir),
            clips=args.clips,
            crops=args.crops,
            resize=args.resize,
            view_batch=args.view_batch,
            workers=args.workers,
            device=args.device,
            amp=args.amp,
            fused_attn=not args.no_fused_attn,
            max_failed_share=args.max_failed_share,
            model=args.model,
            classes=_read_classes(args.classes),
            stage_to=args.stage_to,
        )
    )


def _predict(args: argparse.Namespace) -> int:
    from tokshift.engine.predict import PredictOptions, predict_videos

    return predict_videos(
        PredictOptions(
            videos=args.videos,
            checkpoint=Path(args.checkpoint),
            model=args.model,
            classes=_read_classes(args.classes),
            format=args.format,
            clips=args.clips,
            crops=args.crops,
            resize=args.resize,
            view_batch=args.view_batch,
            device=args.device,
            amp=args.amp,
            top=args.top,
        )
    )


def _stage_to(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stage-to",
        default=default("frames", "stage_to"),
        metavar="DIR",
        help="copy the shards to this node-local folder first ($VARS expanded here), reading them in place "
        "when it lacks the space (default: read in place)",
    )


def register(subparsers: Any) -> None:
    t = add_command(
        subparsers,
        "train",
        help="train a zoo model (resumable; DDP under torchrun or srun)",
        description="Train a zoo model on packed shards. Resumes automatically from OUT_DIR/resume/. "
        f"Exit codes: 0 done, 2 bad input, {EXIT_DIVERGED} loss diverged, "
        f"{EXIT_PREEMPTED} stopped by SIGTERM/SIGUSR1 after checkpointing (rerun to continue).",
    )
    t.add_argument("--model", required=True, help="zoo name (tokshift zoo)")
    t.add_argument("--train-shards", nargs="+", required=True, metavar="LMDB", help="packed training shards")
    t.add_argument(
        "--val-shards", nargs="*", default=[], metavar="LMDB", help="packed validation shards (default: none)"
    )
    t.add_argument("--out-dir", required=True, help="folder for model.pt, train_summary.json, logs and resume/")
    t.add_argument(
        "--pretrained",
        type=file_path,
        default=None,
        help="weights to start from, detected from content: an ImageNet-21k ViT .npz (tokshift download), "
        "a model.pt of tokshift train or an original TokShift .pth (fine-tuning; the head is kept when "
        "its class count matches, else re-initialised) (default: random init)",
    )
    t.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="zoo fields to change, values as YAML scalars, e.g. epochs=2 lr=0.01 (default: none)",
    )
    t.add_argument("--seed", type=nonnegative_int, default=default("train", "seed"), help="random seed")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-fused-attn", action="store_true", help="eager attention instead of SDPA kernels")
    t.add_argument(
        "--checkpoint-minutes",
        type=nonnegative_float,
        default=default("train", "checkpoint_minutes"),
        help="also save a resume checkpoint this often (minutes; 0: after every optimizer step)",
    )
    t.add_argument("--log-every", type=positive_int, default=10, help="optimizer steps per log record")
    t.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        help="stop after this many epochs; the LR schedule still spans the zoo's epochs (default: all)",
    )
    t.add_argument(
        "--progress",
        default="auto",
        choices=["auto", "bar", "lines"],
        help="auto: a progress bar on terminals, log lines otherwise",
    )
    _stage_to(t)
    _common(t, amp=default("train", "amp"))
    t.set_defaults(func=_guard(_train))

    e = add_command(subparsers, "evaluate", help="exact multi-view evaluation (10 clips x 3 crops)")
    _checkpoint(e)
    e.add_argument("--shards", nargs="+", required=True, metavar="LMDB", help="packed validation shards")
    e.add_argument("--out-dir", required=True, help="folder for metrics.json and predictions.csv")
    _views(e)
    e.add_argument("--no-fused-attn", action="store_true", help="eager attention instead of SDPA kernels")
    e.add_argument(
        "--max-failed-share",
        type=fraction,
        default=default("evaluate", "max_failed_share"),
        metavar="SHARE",
        help="fail (exit 5, listing the first errors) when more than this share of the videos cannot be read",
    )
    _stage_to(e)
    _common(e)
    e.set_defaults(func=_guard(_evaluate))

    p = add_command(subparsers, "predict", help="classify video files with a trained model")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (anything ffmpeg decodes)")
    _checkpoint(p)
    p.add_argument("--format", default="text", choices=["text", "json"], help="output format on stdout")
    _views(p)
    p.add_argument("--top", type=positive_int, default=5, help="classes listed per video")
    _common(p, workers=False)
    p.set_defaults(func=_guard(_predict))

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
    i.set_defaults(func=_guard(_import_original))
