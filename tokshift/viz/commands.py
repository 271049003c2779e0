"""CLI sub-commands `explain`, `per-class` and `curves`: figures from checkpoints, predictions and training logs.

torch, pandas and matplotlib load inside the handlers only, so `tokshift --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tokshift.argtypes import add_command, file_path, nonnegative_int
from tokshift.errors import BadInput, ExitCode
from tokshift.settings import choices, default


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``explain``, ``per-class`` and ``curves`` parsers."""
    _register_explain(subparsers)
    _register_per_class(subparsers)
    _register_curves(subparsers)


def _register_explain(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = add_command(
        subparsers,
        "explain",
        help="figure of what a model sees in a video: frames, attention, per-frame logits, top-5",
        exit_codes=(ExitCode.DATA_DAMAGED,),
        description="One figure per video: the centre clip's frames (centre crop) with the [CLS] token's "
        "attention to the patches over each, under each frame its logit for the predicted class (their mean "
        "is the video logit), and the top-5 classes. A TokShift model is shown a second time with its shift "
        "switched off (a per-frame ViT). Videos are files (decoded with ffmpeg) or, with --shards, video ids "
        "of packed shards; --pick-from chooses ids from an evaluation's predictions.csv.",
    )
    e.add_argument(
        "videos",
        nargs="*",
        metavar="VIDEO",
        help="video files, or video ids with --shards (default: none; then --pick-from chooses them)",
    )
    e.add_argument(
        "--checkpoint",
        required=True,
        type=file_path,
        help="model.pt written by tokshift train or import-original, or a .pth released by the original "
        "TokShift (a .pth needs --model)",
    )
    e.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="zoo entry an original .pth was trained as (default: the one recorded in model.pt)",
    )
    e.add_argument(
        "--classes",
        type=file_path,
        default=None,
        metavar="FILE",
        help="class names, one per line, for an original .pth whose head is not Kinetics-400's "
        "(default: those the checkpoint records, or Kinetics-400's for a 400-class head)",
    )
    e.add_argument(
        "--shards",
        nargs="+",
        type=file_path,
        default=None,
        metavar="LMDB",
        help="read the videos from these packed shards, VIDEO being video ids (default: VIDEO are files)",
    )
    e.add_argument(
        "--pick-from",
        type=file_path,
        default=None,
        metavar="CSV",
        help="with --shards: explain the most and least confident correct videos and the most confident "
        "errors of this predictions.csv, as ROLE.png in --out-dir (correct_most_confident, correct_least_confident, "
        "error_1, ...; a role without a video gets a placeholder) (default: explain VIDEO)",
    )
    e.add_argument(
        "--errors",
        type=nonnegative_int,
        default=2,
        help="with --pick-from: how many of the most confident errors to explain",
    )
    e.add_argument(
        "--out",
        type=file_path,
        default=None,
        metavar="PNG",
        help="figure file for a single video (default: <video name>.png in --out-dir)",
    )
    e.add_argument("--out-dir", type=Path, default=Path("."), metavar="DIR", help="folder for the figures")
    e.add_argument(
        "--attention",
        choices=["rollout", "last"],
        default="rollout",
        help="rollout: attention rollout through all blocks; last: the last block's heads averaged",
    )
    e.add_argument(
        "--resize",
        choices=choices("evaluate", "resize"),
        default=default("evaluate", "resize"),
        help="short-side resize of video files to the crop size, as tokshift predict --resize",
    )
    e.add_argument(
        "--device", default="cpu", choices=["auto", "cpu", "cuda"], help="auto: the GPU if CUDA works, else CPU"
    )
    e.set_defaults(func=_explain)


def _register_per_class(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = add_command(
        subparsers,
        "per-class",
        help="per-class accuracy table and confusion figure from an evaluation's predictions.csv",
        description="Recompute, from predictions.csv, each class's videos, top-1, top-5 and the class its "
        "videos are most often mistaken for; draw the most confused class pairs (and the full confusion "
        "matrix up to 30 classes).",
    )
    p.add_argument("--predictions", required=True, type=file_path, help="predictions.csv of tokshift evaluate")
    p.add_argument(
        "--classes",
        type=file_path,
        default=None,
        metavar="FILE",
        help="class names, one per line, to list every class in this order (default: the true labels "
        "that occur, sorted)",
    )
    p.add_argument(
        "--metrics",
        type=file_path,
        default=None,
        metavar="FILE",
        help="metrics.json of the evaluation, whose class_coverage marks the classes without training videos "
        "(default: metrics.json beside --predictions, when it exists)",
    )
    p.add_argument("--csv", required=True, type=file_path, help="per-class table to write, e.g. per_class.csv")
    p.add_argument("--plot", required=True, type=file_path, help="confusion figure (PNG) to write")
    p.add_argument("--title", default="per class", help="figure title (e.g. the model's name)")
    p.set_defaults(func=_per_class)


def _register_curves(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = add_command(
        subparsers,
        "curves",
        help="training curves (loss, learning rate, validation accuracy) from metrics.jsonl files",
        description="One figure per training run (loss and learning rate per optimizer step, 1-view validation "
        "top-1 per epoch) written as NAME.png in --out-dir, and with --comparison one figure of all runs.",
    )
    c.add_argument(
        "--metrics",
        nargs="+",
        required=True,
        type=_named_path,
        metavar="[NAME=]JSONL",
        help="metrics.jsonl of each run, optionally named (a bare path is named by its folder)",
    )
    c.add_argument("--out-dir", required=True, type=Path, metavar="DIR", help="folder for the per-run figures")
    c.add_argument(
        "--comparison",
        type=file_path,
        default=None,
        metavar="PNG",
        help="figure comparing all runs (default: not drawn)",
    )
    c.add_argument("--title", default="all models", help="title of the comparison figure")
    c.set_defaults(func=_curves)


def _named_path(text: str) -> tuple[str | None, Path]:
    name, sep, path = text.partition("=")
    if sep and name and path:
        return name, Path(path)
    return None, Path(text)


def _read_lines(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _unique_name(stem: str, taken: set[str]) -> str:
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name)
    return name


def _explain(args: argparse.Namespace) -> int:
    from tokshift.engine.distributed import pick_device
    from tokshift.engine.loading import load_trained_model
    from tokshift.viz.explain import explain, explain_shard_videos
    from tokshift.viz.explain_figure import save_explanation, save_placeholder

    if args.pick_from is not None and args.shards is None:
        raise BadInput("--pick-from chooses videos of packed shards: give the shards too (--shards)")
    if args.pick_from is not None and args.videos:
        raise BadInput("give either VIDEO or --pick-from, not both")
    if args.pick_from is None and not args.videos:
        raise BadInput("no video to explain: give VIDEO (files, or ids with --shards) or --pick-from")
    if args.out is not None and len(args.videos) != 1:
        raise BadInput("--out names the figure of a single VIDEO; for several use --out-dir")
    _refuse_figures_over_inputs(args)
    trained = load_trained_model(args.checkpoint, pick_device(args.device), args.model, _read_lines(args.classes))
    taken: set[str] = set()
    if args.pick_from is not None:
        from tokshift.viz.per_class import read_predictions
        from tokshift.viz.pick import pick_roles, pick_videos

        picks = pick_videos(read_predictions(args.pick_from), errors=args.errors)
        names = [role for role, _ in picks]
        explanations = explain_shard_videos(trained, args.shards, [v for _, v in picks], args.attention)
        for role in pick_roles(args.errors):  # every role gets its file, so a workflow can name them
            if role not in names:
                out = save_placeholder(
                    f"{trained.config.name}: no video to show as {role.replace('_', ' ')}",
                    Path(args.out_dir) / f"{role}.png",
                )
                print(f"no video for {role} -> {out}")
    elif args.shards is not None:
        explanations = explain_shard_videos(trained, args.shards, args.videos, args.attention)
        names = [Path(v).stem for v in args.videos]
    else:
        explanations = [_explain_file(explain, trained, v, args) for v in args.videos]
        names = [Path(v).stem for v in args.videos]
    for e, name in zip(explanations, names):
        out = args.out if args.out is not None else Path(args.out_dir) / f"{_unique_name(name, taken)}.png"
        save_explanation(e, out)
        on = e.shift_on
        line = f"{e.video}: {e.classes[on.predicted]} ({on.probs[on.predicted]:.3f})"
        if e.shift_off is not None:
            off = e.shift_off
            line += f", shift off: {e.classes[off.predicted]} ({off.probs[off.predicted]:.3f})"
        print(f"{line} -> {out}")
    return 0


def _refuse_figures_over_inputs(args: argparse.Namespace) -> None:
    """No figure of `explain` replaces one of its inputs (a video, the checkpoint, shards, predictions)."""
    from tokshift.fileio import refuse_output_over_input
    from tokshift.viz.pick import pick_roles

    inputs = [args.checkpoint, args.classes, args.pick_from, *(args.shards or [])]
    inputs += args.videos if args.shards is None else []
    if args.out is not None:
        refuse_output_over_input(args.out, inputs, name="--out")
        return
    taken: set[str] = set()
    stems = pick_roles(args.errors) if args.pick_from is not None else [Path(v).stem for v in args.videos]
    for stem in stems:
        figure = Path(args.out_dir) / f"{_unique_name(stem, taken)}.png"
        refuse_output_over_input(figure, inputs, name="the figure", fix="choose another --out-dir, or --out")


def _explain_file(explain: Any, trained: Any, video: str, args: argparse.Namespace) -> Any:
    """`explain` of a video file; one that ffmpeg cannot decode is bad input naming the file."""
    from tokshift.data.decode import VideoDecodeError

    try:
        return explain(trained, video, args.attention, args.resize)
    except VideoDecodeError as err:
        raise BadInput(
            f"{video} is not a video ffmpeg can decode ({err.reason}); give video files (mp4, webm, avi, ...), "
            "or video ids with --shards"
        ) from None


def _refuse_tables_over_inputs(args: argparse.Namespace) -> None:
    """`per-class` writes --csv and --plot: never over its inputs, nor both to one file."""
    from tokshift.fileio import refuse_output_over_input, refuse_shared_outputs

    beside = Path(args.predictions).with_name("metrics.json")
    inputs = [args.predictions, args.classes, args.metrics, beside if beside.is_file() else None]
    refuse_shared_outputs({"--csv": args.csv, "--plot": args.plot})
    refuse_output_over_input(args.csv, inputs, name="--csv")
    refuse_output_over_input(args.plot, inputs, name="--plot")


def _per_class(args: argparse.Namespace) -> int:
    from tokshift.data.coverage import read_val_only
    from tokshift.fileio import atomic_savefig, atomic_write_text
    from tokshift.viz.per_class import per_class_table, read_predictions, render_confusions

    _refuse_tables_over_inputs(args)
    pred = read_predictions(args.predictions)
    if pred.empty:
        raise BadInput(
            f"{args.predictions} holds no evaluated video (no row, or every row has an error); give the "
            "predictions.csv of a `tokshift evaluate` that scored videos"
        )
    classes = _read_lines(args.classes)
    if classes is not None:
        unknown = sorted(set(pred["label"]) - set(classes))
        if unknown:
            raise BadInput(f"{args.predictions} has labels {unknown[:5]} that are not in --classes {args.classes}")
    beside = Path(args.predictions).with_name("metrics.json")
    metrics = args.metrics or (beside if beside.is_file() else None)
    val_only = read_val_only(metrics) if metrics is not None else None
    table = per_class_table(pred, classes, val_only)
    atomic_write_text(args.csv, table.to_csv(index=False, float_format="%.4f"))
    figure = render_confusions(pred, list(table["class"]), args.title, val_only or ())
    atomic_savefig(figure, args.plot, format="png", bbox_inches="tight")
    print(args.csv)
    print(args.plot)
    if val_only is None:
        print("classes without training videos: not known (no class_coverage in the evaluation's metrics.json)")
    elif val_only:
        print(f"classes without training videos, marked (untrained): {', '.join(val_only)}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    from tokshift.fileio import atomic_savefig, refuse_output_over_input, refuse_shared_outputs
    from tokshift.viz.curves import read_curves, render_comparison, render_curves

    runs = [read_curves(path, name) for name, path in args.metrics]
    taken: set[str] = set()
    out_dir = Path(args.out_dir)
    figures = [out_dir / f"{_unique_name(c.name, taken)}.png" for c in runs]
    inputs = [path for _, path in args.metrics]
    for figure in figures:
        refuse_output_over_input(figure, inputs, name="the figure", fix="choose another --out-dir")
    if args.comparison is not None:
        refuse_output_over_input(args.comparison, inputs, name="--comparison")
        refuse_shared_outputs(
            {**{f"the figure of {c.name}": f for c, f in zip(runs, figures)}, "--comparison": args.comparison}
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for c, out in zip(runs, figures):
        atomic_savefig(render_curves(c), out, format="png", bbox_inches="tight")
        print(out)
    if args.comparison is not None:
        atomic_savefig(render_comparison(runs, args.title), args.comparison, format="png", bbox_inches="tight")
        print(args.comparison)
    return 0
