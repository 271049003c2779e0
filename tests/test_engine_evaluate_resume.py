"""An interrupted `tokshift evaluate` keeps its finished videos, and a rerun scores only the rest and
writes byte for byte the predictions.csv of an uninterrupted run, and its metrics.json but for the
provenance block (this attempt's times, and how many videos earlier attempts kept).

Interruptions are real: SIGTERM or SIGKILL sent to a running `tokshift evaluate` process once a chunk
of finished videos is on disk, or the scheduled-signal hook (TOKSHIFT_SIGNAL_AT_STEP) counting chunks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine_helpers import (
    REPO,
    PackedDemo,
    TrainedDemo,
    cli_env,
    quick_eval_args,
    run_cli_inprocess,
    tokshift_cmd,
    torchrun_cmd,
)
from tokshift.engine.eval_resume import CHUNK_DELAY_VAR, IDENTITY, PARTIAL
from tokshift.errors import ExitCode

VIDEOS = 16  # the demo validation shard
OUTPUTS = ("metrics.json", "predictions.csv")


def _args(checkpoint: Path, shard: Path, out: Path, *extra: str) -> list[str]:
    """Quick evaluation keeping every 2 finished videos, with a progress bar that counts the scored ones."""
    return quick_eval_args(checkpoint, shard, out, "--keep-every", "2", "--progress", "bar", *extra)


@pytest.fixture(scope="module")
def reference(trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outputs of an uninterrupted run."""
    out = tmp_path_factory.mktemp("eval_reference")
    res = run_cli_inprocess(*_args(trained_demo.checkpoint, packed_demo.val, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (out / PARTIAL).exists()  # a finished run keeps no records
    assert "resuming:" not in res.stderr and _scored(res.stderr) == VIDEOS
    return out


def _scored(stderr: str) -> int:
    """Videos the run's progress bar counted (it counts only those scored by this run)."""
    bars = re.findall(r"evaluate: +\d+%\|[^|]*\| *(\d+)/(\d+)", stderr)
    assert bars, stderr[-2000:]
    done, total = map(int, bars[-1])
    assert done == total, bars[-1]
    return done


def _kept_on_disk(out: Path) -> int:
    """Records in the chunk files (one JSON line each after the header line)."""
    return sum(len(p.read_text().splitlines()) - 1 for p in (out / PARTIAL).glob("chunk-*.jsonl"))


def _metrics(out: Path) -> dict:
    """metrics.json without its provenance block, which names this attempt."""
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("provenance")
    return metrics


def _assert_same_outputs(out: Path, reference: Path) -> None:
    assert (out / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()
    assert _metrics(out) == _metrics(reference)
    earlier = json.loads((out / "metrics.json").read_text())["provenance"]["videos_from_earlier_attempts"]
    assert 0 < earlier < VIDEOS


def _stop_after_chunks(
    monkeypatch: pytest.MonkeyPatch, checkpoint: Path, shard: Path, out: Path, chunks: int
) -> subprocess.CompletedProcess[str]:
    """An evaluation that SIGTERMs itself once it has kept `chunks` chunks (2 videos each)."""
    monkeypatch.setenv("TOKSHIFT_SIGNAL_AT_STEP", f"{chunks}:SIGTERM")
    res = run_cli_inprocess(*_args(checkpoint, shard, out))
    monkeypatch.delenv("TOKSHIFT_SIGNAL_AT_STEP")
    assert res.returncode == ExitCode.RETRY_LATER, res.stderr[-3000:]
    assert f"stopped on a signal: {2 * chunks} of {VIDEOS} videos are scored and kept in {out / PARTIAL}" in res.stderr
    assert not any((out / name).exists() for name in OUTPUTS)
    assert _kept_on_disk(out) == 2 * chunks
    return res


@pytest.mark.slow  # two interpreters started and stopped by real signals: the end-to-end tier
def test_interrupted_processes_are_resumed_to_the_uninterrupted_outputs(
    reference: Path, trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    """One process stopped by SIGTERM (a time limit), one killed by SIGKILL (memory, node failure);
    both started at once, so that the two interpreters start side by side."""
    env = cli_env(1)
    env[CHUNK_DELAY_VAR] = "10"  # after each chunk; a signal ends the wait, so it never runs out here
    runs = {}
    for signum in (signal.SIGTERM, signal.SIGKILL):
        out, log = tmp_path / signum.name, tmp_path / f"{signum.name}.log"
        args = _args(trained_demo.checkpoint, packed_demo.val, out)
        with open(log, "w") as err:
            proc = subprocess.Popen(tokshift_cmd(*args), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        runs[signum] = (proc, out, log, args)
    try:
        deadline = time.monotonic() + 300  # generous: the interpreter and torch start first
        waiting = dict(runs)
        while waiting:
            for signum, (proc, out, log, _) in list(waiting.items()):
                if list((out / PARTIAL).glob("chunk-*.jsonl")):
                    assert not (out / "metrics.json").exists()
                    proc.send_signal(signum)
                    del waiting[signum]
                else:
                    assert proc.poll() is None, f"{signum.name}: ended {proc.returncode} too soon:\n{log.read_text()}"
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for _, _, log, _ in waiting.values()]
            time.sleep(0.02)
        codes = {signum: proc.wait(timeout=300) for signum, (proc, *_) in runs.items()}
    finally:
        for proc, *_ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    for signum, (_, out, log, args) in runs.items():
        text, kept = log.read_text(), _kept_on_disk(out)
        assert 2 <= kept < VIDEOS and not any((out / name).exists() for name in OUTPUTS), text[-3000:]
        if signum == signal.SIGTERM:
            assert codes[signum] == ExitCode.RETRY_LATER, text[-3000:]
            assert f"stopped on a signal: {kept} of {VIDEOS} videos are scored and kept" in text
        else:
            assert codes[signum] == -signal.SIGKILL
        res = run_cli_inprocess(*args)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"resuming: {kept} of {VIDEOS} videos already scored ({out / PARTIAL})" in res.stderr
        assert _scored(res.stderr) == VIDEOS - kept
        _assert_same_outputs(out, reference)
        assert not (out / PARTIAL).exists()


def test_a_damaged_chunk_is_ignored_and_its_videos_scored_again(
    monkeypatch: pytest.MonkeyPatch, reference: Path, trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    _stop_after_chunks(monkeypatch, trained_demo.checkpoint, packed_demo.val, out, chunks=2)
    first, second = sorted((out / PARTIAL).glob("chunk-*.jsonl"))
    data = first.read_bytes()
    first.write_bytes(data[: len(data) * 2 // 3])  # what a full disk under a non-atomic copy leaves
    res = run_cli_inprocess(*_args(trained_demo.checkpoint, packed_demo.val, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"ignoring kept chunk {first}: its content does not match its checksum" in res.stderr
    assert f"resuming: 2 of {VIDEOS} videos already scored" in res.stderr
    assert _scored(res.stderr) == VIDEOS - 2
    _assert_same_outputs(out, reference)


def _changed_checkpoint(checkpoint: Path, dest: Path) -> Path:
    """The same model with its classifier's bias moved: another model to evaluate."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    (bias,) = [k for k in state["model"] if k.endswith("head.bias")]
    state["model"][bias] = state["model"][bias] + 0.5
    torch.save(state, dest)
    return dest


@pytest.mark.parametrize("change", ["clips", "checkpoint"])
def test_other_views_or_another_checkpoint_discard_the_kept_records(
    change: str,
    monkeypatch: pytest.MonkeyPatch,
    trained_demo: TrainedDemo,
    packed_demo: PackedDemo,
    tmp_path: Path,
) -> None:
    out = tmp_path / "eval"
    _stop_after_chunks(monkeypatch, trained_demo.checkpoint, packed_demo.val, out, chunks=1)
    before = json.loads((out / PARTIAL / IDENTITY).read_text())
    if change == "clips":
        args, why = _args(trained_demo.checkpoint, packed_demo.val, out, "--clips", "3"), "clips 2 -> 3"
    else:
        other = _changed_checkpoint(trained_demo.checkpoint, tmp_path / "other.pt")
        args, why = _args(other, packed_demo.val, out), f"checkpoint_sha256 '{before['checkpoint_sha256'][:19]}…'"
    res = run_cli_inprocess(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"discarding the 1 kept chunk(s) of finished videos in {out / PARTIAL}" in res.stderr
    assert why in res.stderr and "resuming:" not in res.stderr
    assert _scored(res.stderr) == VIDEOS  # every video again
    (stale,) = (out / PARTIAL).iterdir()  # the set-aside records stay, the run's own are gone
    assert stale.name.startswith("stale-") and json.loads((stale / IDENTITY).read_text()) == before
    assert len(list(stale.glob("chunk-*.jsonl"))) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["videos"] == VIDEOS and metrics["clips"] == (3 if change == "clips" else 2)


def test_a_moved_checkpoint_of_the_same_content_keeps_the_records(
    monkeypatch: pytest.MonkeyPatch, reference: Path, trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    """The checkpoint is known by its content: a copy elsewhere (a staged or re-downloaded model) resumes."""
    out = tmp_path / "eval"
    _stop_after_chunks(monkeypatch, trained_demo.checkpoint, packed_demo.val, out, chunks=1)
    copy = tmp_path / "copy" / "model.pt"
    copy.parent.mkdir()
    copy.write_bytes(trained_demo.checkpoint.read_bytes())
    res = run_cli_inprocess(*_args(copy, packed_demo.val, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming: 2 of {VIDEOS} videos already scored" in res.stderr and _scored(res.stderr) == VIDEOS - 2
    assert (out / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()
    got, want = (_metrics(d) for d in (out, reference))
    assert got.pop("checkpoint") == str(copy) and want.pop("checkpoint") == str(trained_demo.checkpoint)
    assert got == want


def test_evaluate_help_lists_its_exit_codes_and_where_it_keeps_finished_videos() -> None:
    res = run_cli_inprocess("evaluate", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    table = text[text.index("exit codes:") :]
    assert table.endswith(ExitCode.RETRY_LATER.meaning)  # the table ends the help
    for code in ExitCode:  # NOT_RETRYABLE too: GPUs given but unusable, or the views do not fit in memory
        assert f"{int(code)} {code.name} {code.meaning}" in table
    assert f"--keep-every VIDEOS write the finished videos to OUT_DIR/{PARTIAL}/" in text


@pytest.mark.slow
def test_two_processes_stopped_by_sigterm_are_resumed_by_one(
    reference: Path, trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    """Each rank keeps its own videos; a rerun on another number of processes takes them by video index."""
    out = tmp_path / "eval"
    args = _args(trained_demo.checkpoint, packed_demo.val, out)
    env = cli_env(1)
    env[CHUNK_DELAY_VAR] = "10"
    log = tmp_path / "two.log"
    with open(log, "w") as err:
        # Its own session: the signal goes to torchrun and both ranks, as SLURM signals a job step.
        proc = subprocess.Popen(
            torchrun_cmd(2, *args), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 300
            while len(list((out / PARTIAL).glob("chunk-*.jsonl"))) < 2:  # a chunk from each rank
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text()
    kept = _kept_on_disk(out)
    assert 4 <= kept < VIDEOS and "stopped on a signal:" in text, text[-3000:]
    indices = sorted(
        json.loads(line)["index"]
        for p in (out / PARTIAL).glob("chunk-*.jsonl")
        for line in p.read_text().splitlines()[1:]
    )
    assert len(indices) == len(set(indices)) == kept and {i % 2 for i in indices} == {0, 1}
    res = run_cli_inprocess(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming: {kept} of {VIDEOS} videos already scored" in res.stderr
    assert _scored(res.stderr) == VIDEOS - kept
    _assert_same_outputs(out, reference)
