"""CLI sub-commands ``tokshift provenance`` (what made an output) and ``tokshift env`` (what runs here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tokshift.argtypes import add_command


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``provenance`` and ``env`` parsers."""
    p = add_command(
        subparsers,
        "provenance",
        help="print which code, software, devices, hosts and SLURM jobs made an output",
        description="Print the provenance block an output records: tokshift version, git commit and whether "
        "the tree was modified, Python/torch/timm/CUDA/cuDNN/NCCL versions, devices, nodes, SLURM job and "
        "times (a training: every attempt). PATH: model.pt, train_summary.json, metrics.json, a shard "
        "(shard-<k>.lmdb), model_zoo.csv (read from model_zoo.sources.json) or a model's folder.",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="the output to explain (a file or a model's folder)")
    p.add_argument("--json", action="store_true", help="print the block as JSON (default: YAML)")
    p.set_defaults(func=_provenance)

    e = add_command(
        subparsers,
        "env",
        help="print this environment's versions and devices, and check it is the one the workflow expects",
        description="Print the provenance block of this environment (the code that runs, its commit, the "
        "library versions, devices, host, SLURM job) and the checks: the pip-installed tokshift against the "
        "running code, a workflow job's code against the checkout it was planned with, the installed "
        "libraries against envs/requirements.lock, and the GPUs this process was given. Exit 0 when every "
        "check passes, 3 (NOT_RETRYABLE) otherwise.",
    )
    e.add_argument(
        "--lock",
        type=Path,
        default=None,
        metavar="FILE",
        help="compare the installed libraries with this requirements lock (default: envs/requirements.lock of "
        "the checkout the running package is in; not compared outside a checkout)",
    )
    e.add_argument("--json", action="store_true", help="print the block and the checks as JSON (default: YAML)")
    e.set_defaults(func=_env)


def _dump(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    import yaml

    print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120), end="")


def _provenance(args: argparse.Namespace) -> int:
    from tokshift.provenance import read_block

    path, block = read_block(args.path)
    if not args.json:
        print(f"# provenance recorded in {path}")
    _dump(block, args.json)
    return 0


def _env(args: argparse.Namespace) -> int:
    import torch  # loaded first, so that the block has the CUDA, cuDNN and NCCL versions

    from tokshift import provenance
    from tokshift.engine.gpu_env import real_choose_device  # noqa: F401  (fails early if the engine is broken)
    from tokshift.errors import ExitCode
    from tokshift.provenance import environment

    checks = {
        "installed package": environment.install_check(),
        "workflow job": environment.workflow_check(),
        "lock": environment.lock_check(args.lock),
        "devices": environment.device_check(),
    }
    devices = [provenance.device_label(torch.device("cuda", i)) for i in range(torch.cuda.device_count())]
    block = provenance.collect("env", devices=devices or [provenance.device_label("cpu")])
    report = {**block, "checks": {name: ("ok: " if ok else "FAILED: ") + what for name, (ok, what) in checks.items()}}
    _dump(report, args.json)
    failed = [name for name, (ok, _) in checks.items() if not ok]
    if failed:
        print(f"tokshift env: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return ExitCode.NOT_RETRYABLE
    return 0
