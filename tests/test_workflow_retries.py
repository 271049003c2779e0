"""Retries that learn, in a real Snakemake run: what a resubmitted job asks for follows how its
last attempt ended (its attempts log), and a failure that would repeat is not run again.

Two packing jobs of the real workflow, with Snakemake's own retries: one reads an index that is
not an index (bad input, exit 2), the other a video that never ends (a FIFO nobody writes to),
whose process the test kills as the scheduler's out-of-memory killer or time limit would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.workflow_helpers import NO_SLURM, copy_workflow
from tokshift.data.sources import INDEX_COLUMNS

DEADLINE = 300  # seconds; generous: each wait ends as soon as its event happens
PID = re.compile(r"^=== \S+ tokshift pack starts \(host \S+, pid (\d+)", re.M)


def _prepared_workflow(tmp_path: Path) -> tuple[Path, Path]:
    """A workflow copy whose demo dataset is indexed by hand: val's index is garbage, train's names a FIFO."""
    wf = copy_workflow(tmp_path / "wf")
    demo = wf / "resources" / "demo"
    demo.mkdir(parents=True)
    for split in ("train", "val"):
        (demo / f"{split}.csv").write_text("path,label\n")
    fifo = tmp_path / "never_ends.mp4"
    os.mkfifo(fifo)
    index = wf / "results" / "demo" / "index"
    index.mkdir(parents=True)
    (index / "train.csv").write_text(",".join(INDEX_COLUMNS) + f"\nv0,{fifo},a,0,train,0,\n")
    (index / "val.csv").write_text("this is not,an index\n")
    for split in ("train", "val"):
        (index / f"{split}.missing.csv").write_text("video_id,path,label,split,reason\n")
        (index / f"{split}.classes.txt").write_text("a\n")
    later = time.time() + 5  # the index is newer than what it is built from: Snakemake keeps it
    for path in index.iterdir():
        os.utime(path, (later, later))
    return wf, fifo


def _wait_for(predicate, what: str, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, f"snakemake ended before {what}"
        assert time.monotonic() - t0 < DEADLINE, f"no {what} within {DEADLINE} s"
        time.sleep(0.2)


def _release(fifo: Path) -> None:
    """Let whatever still waits on the FIFO go (each reader gets end of file)."""
    for _ in range(20):
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader left
            return
        os.close(fd)
        time.sleep(0.1)


def _job_resources(output: str, wildcards: str) -> list[str]:
    """The `resources:` line of each attempt of the job with these wildcards, in order."""
    found = []
    for block in output.split("\n\n"):
        if "rule pack_shard:" in block and f"wildcards: {wildcards}" in block:
            found += re.findall(r"^\s*resources: (.*)$", block, re.M)
    return found


def test_a_refused_job_is_not_rerun_and_a_killed_one_gets_more(tmp_path: Path) -> None:
    wf, fifo = _prepared_workflow(tmp_path)
    logs = wf / "logs" / "pack_shard" / "demo"
    train_log, val_log = logs / "train-0.attempts.log", logs / "val-0.attempts.log"
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--retries", "1", "--keep-going"]
    cmd += ["results/demo/frames/train/shard-0.lmdb", "results/demo/frames/val/shard-0.lmdb"]
    out = tmp_path / "snakemake.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=wf, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **NO_SLURM})
    try:
        for attempt in (1, 2):
            _wait_for(lambda n=attempt: len(PID.findall(_text(train_log))) >= n, f"packing attempt {attempt}", proc)
            os.kill(int(PID.findall(_text(train_log))[attempt - 1]), signal.SIGKILL)
        assert proc.wait(timeout=DEADLINE) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _release(fifo)
    output = out.read_text()
    # Bad input: the retry asks for almost nothing and does not run the packing again.
    val = _job_resources(output, "split=val, shard=0")
    assert len(val) == 2 and "mem_mb=4000" in val[0] and "runtime=120" in val[0], val
    assert "mem_mb=1000" in val[1] and "runtime=5" in val[1] and "cpus_per_task=1" in val[1], val
    record = val_log.read_text()
    assert record.count(" starts ") == 2 and "exit 2 BAD_INPUT" in record
    assert "not run again: the previous attempt" in record and "not a tokshift index" in record
    # Killed (no end line): the retry gets twice the memory and time.
    train = _job_resources(output, "split=train, shard=0")
    assert len(train) == 2, train
    assert "mem_mb=4000" in train[0] and "runtime=120" in train[0], train
    assert "mem_mb=8000" in train[1] and "runtime=240" in train[1], train


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
