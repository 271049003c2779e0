"""The tiny packed demo dataset of the engine tests, and how tests run the `tokshift` CLI.

Real pipeline parts only: the demo generator renders and encodes H.264 clips
with ffmpeg, the index is built from its CSVs and the shards are real LMDB files.
The session fixtures built from these live in conftest.py.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PackedDemo:
    root: Path
    train: Path  # shard with every training clip
    val: Path  # shard with every validation clip
    val_odd: Path  # shard with an odd number of validation clips (for exact distributed eval)
    val_odd_count: int
    classes: list[str]
    videos: Path  # folder of the rendered .mp4 files
    train_static: Path  # 17-frame clips: an 8x2 clip has one possible start, so no temporal jitter


def pack_split(spec: dict, split: str, out: Path) -> Path:
    from tokshift.data.pack import pack_shard
    from tokshift.data.sources import build_index, write_index

    index = out.parent / f"{out.stem}.index.csv"
    write_index(build_index(spec, split, 1), index)
    pack_shard(index, 0, out, out.with_suffix(".failures.csv"), short_side=64, workers=2, progress=False)
    return out


def build_packed_demo(root: Path, train_per_class: int = 8, val_per_class: int = 4, odd: int = 7) -> PackedDemo:
    from tokshift.data.demo import DemoConfig, generate_demo

    demo = root / "demo"
    generate_demo(
        demo, DemoConfig(train_per_class=train_per_class, val_per_class=val_per_class), workers=2, progress=False
    )
    spec = {"kind": "demo", "root": str(demo)}
    train = pack_split(spec, "train", root / "train.lmdb")
    val = pack_split(spec, "val", root / "val.lmdb")
    # An odd subset of the validation clips that still holds every class.
    with open(demo / "val.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: (r["path"].rsplit("_", 1)[-1], r["label"]))  # round-robin over classes
    odd_csv = demo / "val_odd.csv"
    with open(odd_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"], lineterminator="\n")
        w.writeheader()
        w.writerows({"path": r["path"], "label": r["label"]} for r in rows[:odd])
    val_odd = pack_split({"kind": "csv", "splits": {"val": str(odd_csv)}}, "val", root / "val_odd.lmdb")
    classes = sorted({r["label"] for r in rows})
    static = root / "static"
    generate_demo(
        static,
        DemoConfig(seed=1, train_per_class=train_per_class, val_per_class=1, frames=17),
        workers=2,
        progress=False,
    )
    train_static = pack_split({"kind": "demo", "root": str(static)}, "train", root / "train_static.lmdb")
    return PackedDemo(root, train, val, val_odd, odd, classes, demo / "videos", train_static)


def tokshift_cmd(*args: str) -> list[str]:
    """Run the CLI of this checkout with the current interpreter."""
    return [sys.executable, "-m", "tokshift.cli", *args]


_DIST_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
)


def cli_env(threads: int = 1) -> dict[str, str]:
    """Environment for CLI subprocesses: this checkout importable, fixed thread count."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    for k in _DIST_VARS:
        env.pop(k, None)
    return env


def run_cli(*args: str, threads: int = 1, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tokshift_cmd(*args), env=cli_env(threads), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _print_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """`warnings.showwarning` that writes to the sys.stderr of the moment."""
    import warnings

    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    """`tokshift ARGS` as `nproc` processes of one gloo group, started by torchrun on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "tokshift.cli",
        *args,
    ]


def run_cli_inprocess(*args: str, threads: int = 1) -> subprocess.CompletedProcess[str]:
    """`tokshift ARGS` in this process, answered like `run_cli`: exit code, stdout, stderr.

    For tests whose subject is not a process boundary: no interpreter start and no library
    imports per run. Log lines land in the returned stderr as in a fresh process: the "tokshift"
    logger gets its handler from the command itself, bound to the redirected stderr; records
    that reach the root logger go to what `logging.basicConfig` or the last-resort handler
    write to, also stderr; so do Python warnings. Afterwards the loggers, torch's thread count
    and random states, signal handlers, environment, working directory and faulthandler are as
    they were, and the frame shards the command opened are closed.
    """
    import contextlib
    import faulthandler
    import io
    import logging
    import random
    import signal
    import traceback
    import warnings

    import numpy as np
    import torch

    from tokshift.cli import main
    from tokshift.data import store

    out, err = io.StringIO(), io.StringIO()
    loggers = [logging.getLogger(), logging.getLogger("tokshift")]
    saved_loggers = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_threads = torch.get_num_threads()
    saved_rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    saved_signals = {s: signal.getsignal(s) for s in signal.valid_signals()}
    saved_signals = {s: h for s, h in saved_signals.items() if h is not None}
    had_faulthandler = faulthandler.is_enabled()
    saved_shards = set(store._ENVS)
    code: int
    try:
        for lg in loggers:
            lg.handlers.clear()
        for k in _DIST_VARS:
            os.environ.pop(k, None)
        os.chdir(REPO)
        torch.set_num_threads(threads)
        if not had_faulthandler:  # the command enables it on sys.stderr, which has no descriptor here
            faulthandler.enable(file=sys.__stderr__, all_threads=True)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # Python's own warning filters, and warnings printed on stderr, as in a fresh interpreter.
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _print_warning
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors, --help, --version
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
            finally:
                for lg in loggers:
                    for h in lg.handlers:
                        h.flush()
    finally:
        # Shards the command opened stay mapped until its process ends: close them as that would.
        with store._ENVS_LOCK:
            for key in set(store._ENVS) - saved_shards:
                store._ENVS.pop(key)[1].close()
        if not had_faulthandler:
            faulthandler.disable()
        for lg, handlers, level, propagate in saved_loggers:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
        for s, h in saved_signals.items():
            if signal.getsignal(s) != h:
                signal.signal(s, h)
                if s == getattr(signal, "SIGCHLD", None):  # DataLoader installs its handler once per process
                    from torch.utils.data._utils import signal_handling

                    signal_handling._SIGCHLD_handler_set = False
        torch.set_num_threads(saved_threads)
        random.setstate(saved_rng[0])
        np.random.set_state(saved_rng[1])
        torch.set_rng_state(saved_rng[2])
        os.chdir(saved_cwd)
        for k in set(os.environ) - set(saved_env):
            del os.environ[k]
        for k, v in saved_env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
    return subprocess.CompletedProcess(["tokshift", *args], code, out.getvalue(), err.getvalue())


@dataclass(frozen=True)
class TrainedDemo:
    out_dir: Path
    checkpoint: Path
    result: subprocess.CompletedProcess


def quick_eval_args(checkpoint: Path, shard: Path, out_dir: Path, *extra: str, clips: int = 2) -> list[str]:
    """`tokshift evaluate` arguments for a quick run: `clips` clips x 1 crop per video, no loader workers."""
    return [
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--shards",
        str(shard),
        "--out-dir",
        str(out_dir),
        "--workers",
        "0",
        "--clips",
        str(clips),
        "--crops",
        "1",
        *extra,
    ]


def train_args(data: PackedDemo, out_dir: Path, *extra: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """`tokshift train` arguments for the demo model on the tiny packed dataset."""
    return [
        "train",
        "--model",
        "demo_tokshift",
        "--train-shards",
        str(data.train),
        "--val-shards",
        str(data.val),
        "--out-dir",
        str(out_dir),
        "--workers",
        "1",
        "--log-every",
        "2",
        "--override",
        "batch_size=8",
        "epochs=3",
        *overrides,
        *extra,
    ]
