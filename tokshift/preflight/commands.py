"""CLI sub-commands ``tokshift preflight-probe`` (one job shape, inside its job) and ``tokshift preflight-report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokshift.argtypes import add_command, optional_text, positive_int, workers_setting
from tokshift.errors import BadInput, ExitCode


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = add_command(
        subparsers,
        "preflight-probe",
        help="measure one train or evaluate job shape in its own job (devices, all-reduce, step time, memory)",
        description="Run inside a job with the resources of a model's train or evaluate job: check CUDA on every "
        "GPU, all-reduce across every rank, time a few optimizer steps of the real model on synthetic clips at its "
        "configured batch and accumulation (train) or one 30-view video (evaluate), read the packed shards where "
        "they exist and check the room at --stage-to. Rank 0 writes --out (JSON). A failed check is written, "
        "not raised: the exit code is 0 unless the probe itself fails.",
    )
    p.add_argument("--model", required=True, help="zoo entry")
    p.add_argument("--step", choices=("train", "evaluate"), required=True, help="the job shape to measure")
    p.add_argument("--out", type=Path, required=True, help="JSON report of this probe")
    p.add_argument(
        "--override", nargs="*", default=[], metavar="KEY=VALUE", help="zoo fields, as for train (default: none)"
    )
    p.add_argument(
        "--shards", nargs="*", default=[], help="the job's packed shards, read when they exist (default: none)"
    )
    p.add_argument(
        "--stage-to", type=optional_text, default=None, help="frames.stage_to of the job ('' or default: none)"
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="as for train (default: auto)")
    p.add_argument(
        "--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="as for train (default: auto)"
    )
    p.add_argument("--workers", type=workers_setting, default="auto", help="loader workers per process (default: auto)")
    p.add_argument("--steps", type=positive_int, default=3, help="optimizer steps timed after one warm-up (default: 3)")
    p.set_defaults(func=_probe)

    r = add_command(
        subparsers,
        "preflight-report",
        help="check the cluster for every job shape and price each model from its probes",
        description="Check each job shape of --jobs against sinfo and sacctmgr (partition, time limit, GRES, "
        "constraint, account and QoS; skipped where they are not installed) and the free disk, then price each "
        "model from its --probes. Writes --json and --md. With --static-only, only the cluster checks: a failed "
        "one exits 2 (BAD_INPUT) after writing the report, so no probe job is submitted.",
    )
    r.add_argument("--dataset", required=True, help="the config's dataset entry, named in the report")
    r.add_argument("--jobs", required=True, help="JSON: each job shape's model, rule, GPUs and SLURM settings")
    r.add_argument("--probes", nargs="*", type=Path, default=[], help="preflight-probe JSON files (default: none)")
    r.add_argument(
        "--index-dir",
        type=Path,
        default=None,
        help="the dataset's index/ (clip counts) when it exists (default: documented sizes)",
    )
    r.add_argument(
        "--disk", nargs="*", default=[], metavar="PATH", help="folders whose free space is reported (default: none)"
    )
    r.add_argument(
        "--shards-dir",
        default=None,
        help="where the shards go (results/NAME/frames): its free space is checked against the dataset's size "
        "until they are packed (Kinetics-400's documented size at the default frames settings; default: not)",
    )
    r.add_argument(
        "--urls",
        nargs="*",
        default=[],
        metavar="KEY=URL",
        help="downloads the run needs, by config key: each must answer here, where the download rules run "
        "(default: none)",
    )
    r.add_argument(
        "--static-only",
        action="store_true",
        help="cluster checks only; exit 2 when one fails (default: the whole report)",
    )
    r.add_argument(
        "--executor",
        default="slurm",
        help="Snakemake's executor for the run: the cluster is checked under slurm only (default: slurm)",
    )
    r.add_argument("--json", type=Path, required=True, dest="json_out", help="the report as JSON, e.g. preflight.json")
    r.add_argument("--md", type=Path, required=True, help="the report as markdown, e.g. preflight.md")
    r.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="JSON",
        help="with --static-only: also write JSON and its .md twin when a check fails (the final report's "
        "place: Snakemake removes a failed job's own outputs; default: not)",
    )
    r.set_defaults(func=_report)


def _probe(args: argparse.Namespace) -> int:
    from tokshift.engine.runtime import parse_overrides
    from tokshift.fileio import refuse_output_over_input
    from tokshift.preflight.probe import ProbeOptions, run_probe
    from tokshift.zoo import get_config

    try:
        get_config(args.model)
    except ValueError as err:
        raise BadInput(f"--model {args.model}: {err}") from None
    refuse_output_over_input(args.out, args.shards, name="--out")

    opts = ProbeOptions(
        model=args.model,
        step=args.step,
        out=args.out,
        overrides=parse_overrides(args.override),
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        steps=args.steps,
        shards=list(args.shards),
        stage_to=args.stage_to,
    )
    return run_probe(opts)


def _count_rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def _counts(index_dir: Path | None, zoo: str) -> tuple[int, int, str]:
    """(training clips per epoch, validation videos, where from): the index when it exists, else the
    documented sizes of Kinetics-400 or the demo generator."""
    from tokshift.zoo.jobs import K400_TRAIN_CLIPS, K400_VAL_VIDEOS

    if index_dir is not None:
        train, val = _count_rows(index_dir / "train.csv"), _count_rows(index_dir / "val.csv")
        if train is not None and val is not None:
            return train, val, f"counted in {index_dir}"
    if zoo == "k400":
        return K400_TRAIN_CLIPS, K400_VAL_VIDEOS, "Kinetics-400's documented split sizes (not indexed yet)"
    if zoo == "demo":
        from tokshift.data.demo import CLASSES, DemoConfig

        demo = DemoConfig()
        return len(CLASSES) * demo.train_per_class, len(CLASSES) * demo.val_per_class, "the demo generator's sizes"
    raise BadInput(f"no index in {index_dir}: index the dataset first (snakemake ... index) to price it")


def _cluster_checks(jobs: dict[str, dict[str, Any]]) -> list[Any]:
    """The static checks of a run that submits to SLURM: a controller that does not answer fails them."""
    from tokshift.preflight import cluster
    from tokshift.preflight.probe import Check

    try:
        parts = cluster.partitions()
    except cluster.SlurmUnreachable as exc:
        detail = f"sinfo failed ({exc})"
        return [Check("slurm", False, detail, "run the preflight on a login node of the cluster")]
    return cluster.job_checks(jobs, parts, cluster.associations())


def _shards_budget(shards_dir: str, jobs: dict[str, dict[str, Any]]) -> Any:
    """Free space for the shards: Kinetics-400's documented size until packed, else what is there."""
    from tokshift.preflight import cluster
    from tokshift.zoo import get_config
    from tokshift.zoo.jobs import K400_FRAMES, SHARD_BYTES_PER_FRAME

    packed = Path(shards_dir).is_dir() and any(Path(shards_dir).rglob("*.lmdb"))
    k400 = any(get_config(job["model"]).dataset == "k400" for job in jobs.values())
    if k400 and not packed:
        need = K400_FRAMES * SHARD_BYTES_PER_FRAME
        return cluster.disk_check(shards_dir, need, "Kinetics-400 shards at the default frames settings, 16:9")
    return cluster.disk_check(shards_dir, None, "shards packed already" if packed else "the dataset's shards")


def _report(args: argparse.Namespace) -> int:
    from tokshift.fileio import refuse_output_over_input
    from tokshift.preflight import cluster
    from tokshift.preflight.price import price_model
    from tokshift.preflight.probe import Check
    from tokshift.preflight.report import write_report
    from tokshift.zoo import get_config

    try:
        jobs: dict[str, dict[str, Any]] = json.loads(args.jobs)
    except json.JSONDecodeError as err:
        raise BadInput(f"--jobs is not JSON ({err})") from None
    for option, path in (("--json", args.json_out), ("--md", args.md), ("--report", args.report)):
        if path is not None:
            refuse_output_over_input(path, args.probes, name=option)
    if args.executor == "slurm":
        checks = _cluster_checks(jobs)
    else:
        checks = [Check("slurm", True, f"skipped: the {args.executor} executor submits no SLURM job")]
    checks += [cluster.disk_check(path, None, "free space") for path in args.disk]
    if args.shards_dir:
        checks.append(_shards_budget(args.shards_dir, jobs))
    for item in args.urls:
        key, _, url = item.partition("=")
        checks.append(cluster.url_check(key, url))
    if args.static_only:
        report = write_report(args.dataset, checks, [], args.json_out, args.md)
        if not report["ok"]:
            failed = [c for c in checks if not c.ok]
            md = args.md
            if args.report is not None:
                md = args.report.with_suffix(".md")
                write_report(args.dataset, checks, [], args.report, md)
            raise BadInput(
                f"{len(failed)} cluster check(s) failed, nothing submitted: "
                + "; ".join(f"{c.name}: {c.detail} (fix: {c.fix})" for c in failed)
                + f". Report: {md}"
            )
        return ExitCode.OK

    probes: dict[tuple[str, str], dict[str, Any]] = {}
    for path in args.probes:
        data = json.loads(path.read_text(encoding="utf-8"))
        probes[(data["model"], data["step"])] = data
        for c in data["checks"]:
            checks.append(Check(f"{data['step']} {data['model']}: {c['name']}", c["ok"], c["detail"], c["fix"]))
    prices = []
    sources: set[str] = set()
    measured_on = sorted({d for p in probes.values() for d in p.get("measured", {}).get("devices", [])})
    for _, job in sorted(jobs.items()):
        if job["rule"] != "train":
            continue
        model = job["model"]
        train = probes.get((model, "train"))
        if train is None or "step_seconds" not in train.get("measured", {}):
            continue  # its failed checks say why
        cfg = get_config(model).replace(**(job.get("overrides") or {}))
        clips, videos, source = _counts(args.index_dir, cfg.dataset)
        sources.add(source)
        evaluate = probes.get((model, "evaluate"))
        if evaluate is not None and "video_seconds" not in evaluate.get("measured", {}):
            evaluate = None
        prices.append(price_model(cfg, train, evaluate, clips, videos, int(job["gpus"])))
    note = "; ".join([f"measured on {', '.join(measured_on)}", *sorted(sources)])
    write_report(args.dataset, checks, prices, args.json_out, args.md, measured_on=note)
    return ExitCode.OK
