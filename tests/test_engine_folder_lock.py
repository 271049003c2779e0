"""One writer per output folder: real processes holding and losing the lock, real training runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engine_helpers import REPO, PackedDemo, TrainedDemo, cli_env, run_cli, run_cli_inprocess, tokshift_cmd
from tokshift.engine.folder_lock import LOCK_NAME, FolderBusy, FolderLock
from tokshift.engine.logbook import read_jsonl
from tokshift.errors import ExitCode

HOLD = """
import sys, time
from tokshift.engine.folder_lock import FolderLock
FolderLock(sys.argv[1], sys.argv[2]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _holder(folder: Path, command: str = "train") -> subprocess.Popen:
    """Another live process that holds `folder`'s lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), command], env=cli_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _train_args(data: PackedDemo, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "demo_tokshift",
        "--train-shards",
        str(data.train),
        "--out-dir",
        str(out),
        "--workers",
        "0",
        "--log-every",
        "1",
        *extra,
        "--override",
        "batch_size=8",
        "epochs=1",
    ]


def test_lock_records_its_holder_and_a_second_lock_names_it(tmp_path: Path) -> None:
    with FolderLock(tmp_path / "out", "evaluate") as held:
        holder = json.loads(held.path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["command"] == "evaluate"
        with pytest.raises(FolderBusy) as err:
            FolderLock(tmp_path / "out", "evaluate").acquire()
        msg = str(err.value)
        assert str(tmp_path / "out") in msg and f"PID {os.getpid()} on this host" in msg
        assert f"kill {os.getpid()}" in msg and "Wait for it to finish" in msg
    assert held.path.read_text() == ""  # released: no holder recorded
    FolderLock(tmp_path / "out", "train").acquire().release()  # free again


def test_second_train_fails_at_once_naming_the_holder_and_runs_once_the_holder_is_killed(
    packed_demo: PackedDemo, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    holder = _holder(out)
    earlier = "=== an earlier attempt's lines\n"
    (out / "train.log").write_text(earlier)
    try:
        t0 = time.monotonic()
        res = run_cli(*_train_args(packed_demo, out))
        took = time.monotonic() - t0
        assert res.returncode == ExitCode.RETRY_LATER, res.stderr[-2000:]
        assert str(out) in res.stderr and f"PID {holder.pid} on this host" in res.stderr
        assert f"kill {holder.pid}" in res.stderr and "`tokshift train`" in res.stderr
        assert res.stderr.count("tokshift train: error: ") == 1, res.stderr[-2000:]
        assert took < 60, f"refused only after {took:.0f} s"
        assert not (out / "resume").exists()  # it touched nothing
        assert (out / "train.log").read_text() == earlier  # not even the holder's log, which it names
        assert f"Its log: {out / 'train.log'}" in res.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the lock with its holder: no stale lock to remove by hand
    res = run_cli_inprocess(*_train_args(packed_demo, out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "model.pt").is_file()
    # The run appended itself to the folder's log: a header, its records (those from before the lock
    # too), the end with its exit code; the same records as its stderr.
    log = (out / "train.log").read_text()
    assert log.startswith(earlier)
    attempt = log[len(earlier) :].splitlines()
    assert re.fullmatch(r"=== \S+ tokshift train attempt starts \(host \S+, pid \d+\)", attempt[0]), attempt[0]
    assert attempt[1].startswith("tokshift 0.")
    assert attempt[4] == "command: " + shlex.join(["tokshift", *_train_args(packed_demo, out)])
    assert re.fullmatch(r"=== \S+ tokshift train attempt ends: exit 0 OK after [\d.]+ s", attempt[-1]), attempt[-1]
    records = [line.split(" INFO ", 1)[1] for line in attempt if " INFO " in line]
    shown = [line.split(" INFO ", 1)[1] for line in res.stderr.splitlines() if " INFO " in line]
    assert any(r.startswith("tokshift.engine: device cpu") for r in records)  # logged before the lock
    assert any("wrote " in r and "model.pt" in r for r in records)
    assert records == shown


def test_evaluate_refuses_a_folder_another_evaluation_holds(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    with FolderLock(out, "evaluate"):
        res = run_cli(
            "evaluate",
            "--checkpoint",
            str(trained_demo.checkpoint),
            "--shards",
            str(packed_demo.val),
            "--out-dir",
            str(out),
        )
    assert res.returncode == ExitCode.RETRY_LATER, res.stderr[-2000:]
    assert str(out) in res.stderr and f"PID {os.getpid()}" in res.stderr and "`tokshift evaluate`" in res.stderr
    assert res.stderr.count("tokshift evaluate: error: ") == 1, res.stderr[-2000:]
    assert not (out / "metrics.json").exists()
    assert not (out / "evaluate.log").exists() and f"Its log: {out / 'evaluate.log'}" in res.stderr


@pytest.mark.slow  # a trainer process with loader workers, killed: the end-to-end tier
def test_a_killed_trainer_with_loader_workers_frees_the_folder_at_once(packed_demo: PackedDemo, tmp_path: Path) -> None:
    """The orphan case: SIGKILL a real training whose forked DataLoader worker outlives it for a while.

    The worker closes its copy of the lock's descriptor when it is forked, so the lock goes
    with the trainer; the next run resumes from the trainer's checkpoints and logs each step once.
    """
    out = tmp_path / "model"
    args = [
        "train",
        "--model",
        "demo_tokshift",
        "--train-shards",
        str(packed_demo.train),
        "--out-dir",
        str(out),
        "--workers",
        "1",
        "--log-every",
        "1",
        "--checkpoint-minutes",
        "0",
        "--override",
        "batch_size=4",
        "epochs=2",
    ]
    proc = subprocess.Popen(
        tokshift_cmd(*args), env=cli_env(1), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    live = out / "resume" / "metrics.jsonl"
    t0 = time.time()
    while not any(r.get("kind") == "step" and r["step"] >= 3 for r in read_jsonl(live)):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < 300, "training made no progress"
        time.sleep(0.05)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    FolderLock(out, "check").acquire().release()  # free at once, though the worker may still run
    res = run_cli_inprocess(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == list(range(1, 17))
