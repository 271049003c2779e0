"""Shards copied to node-local storage first (`--stage-to`, config frames.stage_to).

Staging must change where the bytes are read from and nothing else: the same metrics, the
same losses; the job log says what was copied and how long it took; the copies are gone
when the job ends; without the space the job reads the shards in place and says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from tests.engine_helpers import PackedDemo, TrainedDemo, quick_eval_args, run_cli_inprocess, torchrun_cmd, train_args
from tokshift.data.store import seal_path

COPIED = r"staging: copied (\d+) shards \(([\d.]+) MB\) from .* to .* in ([\d.]+) s"


def _metrics(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("provenance")  # this run's times
    return metrics


def test_evaluation_with_staging_gives_the_same_metrics(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["evaluate", "--checkpoint", str(trained_demo.checkpoint), "--shards", str(packed_demo.val_odd)]
    plain = run_cli_inprocess(*common, "--out-dir", str(tmp_path / "plain"), "--workers", "0")
    assert plain.returncode == 0, plain.stderr[-2000:]
    # $VARS are expanded by the job itself (on the node), as the rules pass them quoted.
    monkeypatch.setenv("STAGE_ROOT", str(tmp_path / "node-local"))
    staged = run_cli_inprocess(
        *common, "--out-dir", str(tmp_path / "staged"), "--workers", "0", "--stage-to", "$STAGE_ROOT/x"
    )
    assert staged.returncode == 0, staged.stderr[-2000:]
    assert _metrics(tmp_path / "staged") == _metrics(tmp_path / "plain")
    assert (tmp_path / "staged/predictions.csv").read_text() == (tmp_path / "plain/predictions.csv").read_text()
    m = re.search(COPIED, staged.stderr)
    assert m, staged.stderr[-2000:]
    size = packed_demo.val_odd.stat().st_size + seal_path(packed_demo.val_odd).stat().st_size
    assert int(m.group(1)) == 1 and float(m.group(2)) == pytest.approx(size / 1e6, abs=0.06)
    assert "removed" in staged.stderr
    assert list((tmp_path / "node-local/x").iterdir()) == [], "the staged copies outlived the job"


def test_training_with_staging_takes_the_same_steps(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    out = tmp_path / "staged"
    res = run_cli_inprocess(
        *train_args(packed_demo, out, "--max-epochs", "1", "--stage-to", str(tmp_path / "stage")), threads=2
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "staging: copied 2 shards" in res.stderr, res.stderr[-3000:]

    def steps(folder: Path, epochs: int) -> list[tuple[int, float]]:
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in records if r.get("kind") == "step" and r["epoch"] <= epochs]

    staged, reference = steps(out, 1), steps(trained_demo.out_dir, 1)
    assert staged and [s for s, _ in staged] == [s for s, _ in reference]
    for (_, a), (_, b) in zip(staged, reference):
        assert a == pytest.approx(b, rel=1e-6)
    assert list((tmp_path / "stage").iterdir()) == []


def test_without_space_the_shards_are_read_in_place(
    packed_demo: PackedDemo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tokshift.engine.staging import COMPLETE, copy_shards, staging_plan

    plan = staging_plan({"val": [str(packed_demo.val)]}, tmp_path / "dest")
    pairs = plan["val"]
    with caplog.at_level(logging.WARNING, logger="tokshift.engine"):
        assert copy_shards(pairs, tmp_path / "dest", free_bytes=lambda _: 1000) is False
    assert "GB free" in caplog.text and "reading the shards in place" in caplog.text
    assert not (tmp_path / "dest").exists()
    # With the space: copied under the group's folder, checked, marked complete.
    assert copy_shards(pairs, tmp_path / "dest") is True
    copy = pairs[0][1]
    assert copy.read_bytes() == packed_demo.val.read_bytes() and seal_path(copy).exists()
    assert (tmp_path / "dest" / COMPLETE).exists()


def test_a_damaged_copy_is_not_used(packed_demo: PackedDemo, tmp_path: Path, monkeypatch, caplog) -> None:
    """A copy whose size disagrees with its seal (a short write) falls back to the originals."""
    import shutil

    from tokshift.engine import distributed as D
    from tokshift.engine.staging import staged_shards

    real_copy = shutil.copyfile

    def short_copy(src, dst, *a, **k):
        out = real_copy(src, dst, *a, **k)
        if str(dst).endswith(".lmdb"):
            with open(dst, "r+b") as fh:
                fh.truncate(os.path.getsize(dst) // 2)
        return out

    monkeypatch.setattr("tokshift.engine.staging.shutil.copyfile", short_copy)
    alone = D.detect_launch({})
    with caplog.at_level(logging.WARNING, logger="tokshift.engine"):
        with staged_shards({"val": [str(packed_demo.val)]}, str(tmp_path / "stage"), alone, tmp_path) as staged:
            assert staged.shards == {"val": [str(packed_demo.val)]} and not staged.staged
    assert "copying to" in caplog.text and "failed" in caplog.text
    assert list((tmp_path / "stage").iterdir()) == []


def test_an_unset_variable_reads_in_place(packed_demo: PackedDemo, monkeypatch, caplog) -> None:
    from tokshift.engine import distributed as D
    from tokshift.engine.staging import staged_shards

    monkeypatch.delenv("TOKSHIFT_NO_SUCH_DIR", raising=False)
    alone = D.detect_launch({})
    with caplog.at_level(logging.WARNING, logger="tokshift.engine"):
        with staged_shards({"val": [str(packed_demo.val)]}, "$TOKSHIFT_NO_SUCH_DIR/x", alone, "out") as staged:
            assert staged.shards == {"val": [str(packed_demo.val)]}
    assert "unset variable" in caplog.text


def _stage_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith("tokshift-stage-")) if root.exists() else []


@pytest.mark.slow  # two torchrun workers, a copy held at 3 s: ~11 s
def test_staging_before_the_process_group_outlasts_a_short_collective_timeout(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    """Two gloo processes (torchrun): local rank 0 copies for 3 s while rank 1 waits on its ready
    marker, not in a collective; the collective timeout is 1 s. The evaluation goes on."""
    import subprocess

    from tests.engine_helpers import REPO, cli_env

    args = quick_eval_args(trained_demo.checkpoint, packed_demo.val_odd, tmp_path / "out")
    cmd = torchrun_cmd(2, *args, "--stage-to", str(tmp_path / "node-local"))
    env = cli_env(1) | {"TOKSHIFT_STAGE_DELAY_SECONDS": "3", "TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES": str(1 / 60)}
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    m = re.search(COPIED, res.stderr)
    assert m and float(m.group(3)) >= 3, res.stderr[-4000:]
    # Rank 0 staged before the process group existed, and said so before the group's first line.
    assert res.stderr.index("staging: copied") < res.stderr.index("2 processes (torchrun, gloo)")
    assert json.loads((tmp_path / "out/metrics.json").read_text())["videos"] == packed_demo.val_odd_count
    assert list((tmp_path / "node-local").iterdir()) == [], "copies or ready markers outlived the job"


def test_copies_are_kept_after_exit_75_and_reused_by_the_next_attempt(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, stage = tmp_path / "run", tmp_path / "stage"
    args = train_args(packed_demo, out, "--max-epochs", "1", "--workers", "0", "--stage-to", str(stage))
    monkeypatch.setenv("TOKSHIFT_SIGNAL_AT_STEP", "1")  # a preemption after the first optimizer step
    first = run_cli_inprocess(*args)
    assert first.returncode == 75, first.stderr[-3000:]
    assert "staging: copied 2 shards" in first.stderr and "staging: kept" in first.stderr
    (kept,) = _stage_folders(stage)
    monkeypatch.delenv("TOKSHIFT_SIGNAL_AT_STEP")
    second = run_cli_inprocess(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"staging: reusing staged copy of 2 of 2 shards in {kept}" in second.stderr, second.stderr[-3000:]
    assert "staging: copied" not in second.stderr  # nothing copied again
    assert "resumed from" in second.stderr
    assert _stage_folders(stage) == [], "a run that ended (not 75) leaves no copies"


def test_a_copy_that_differs_from_its_source_is_copied_again(packed_demo: PackedDemo, tmp_path: Path, caplog) -> None:
    from tokshift.engine.staging import copy_shards, staging_plan

    pairs = staging_plan({"val": [str(packed_demo.val), str(packed_demo.val_odd)]}, tmp_path / "dest")["val"]
    assert copy_shards(pairs, tmp_path / "dest") is True
    stale = pairs[1][1]
    stale.write_bytes(packed_demo.val.read_bytes())  # another shard under this name, its seal kept
    with caplog.at_level(logging.INFO, logger="tokshift.engine"):
        assert copy_shards(pairs, tmp_path / "dest") is True
    assert "reusing staged copy of 1 of 2 shards" in caplog.text and "copied 1 shards" in caplog.text
    assert stale.read_bytes() == packed_demo.val_odd.read_bytes()


def test_a_folder_another_run_holds_is_read_in_place(packed_demo: PackedDemo, tmp_path: Path, caplog) -> None:
    """An orphan of the same run (same output folder, shards and node) holds the staged folder's lock."""
    import fcntl

    from tokshift.engine import distributed as D
    from tokshift.engine.staging import folder_name, staged_shards

    groups = {"val": [str(packed_demo.val)]}
    held = tmp_path / "stage" / folder_name(groups, tmp_path / "out", D.node_name())
    held.mkdir(parents=True)
    fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with caplog.at_level(logging.WARNING, logger="tokshift.engine"):
            with staged_shards(groups, str(tmp_path / "stage"), D.detect_launch({}), tmp_path / "out") as staged:
                assert staged.shards == groups and not staged.staged
        assert "in use by another run on this node" in caplog.text
        assert held.is_dir(), "the holder's folder must stay"
    finally:
        os.close(fd)


def test_the_other_ranks_of_a_node_follow_their_copier_s_marker(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting rank reads the marker of its own launch: "failed: why" sends it to the originals at
    once; a marker of another launch (an earlier attempt) is not its."""
    import threading

    from tokshift.engine import distributed as D
    from tokshift.engine.staging import folder_name, launch_id, staged_shards

    groups = {"val": [str(packed_demo.val)]}
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    rank1 = D.LaunchEnv(rank=1, world_size=2, local_rank=1)
    stage = tmp_path / "stage"
    stage.mkdir()
    name = folder_name(groups, tmp_path / "out", D.node_name())
    assert launch_id({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}, 1) != launch_id(
        {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "1"}, 1
    )
    (
        stage / f"{name}.{launch_id({'SLURM_JOB_ID': '7', 'SLURM_STEP_ID': '0', 'SLURM_RESTART_COUNT': '1'})}.ready"
    ).write_text("ok")  # an earlier launch's marker: ignored
    answer: dict[str, dict] = {}

    def wait() -> None:
        with staged_shards(groups, str(stage), rank1, tmp_path / "out") as staged:
            answer["shards"] = staged.shards

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive(), "a marker of another launch was taken for this one's"
    (stage / f"{name}.{launch_id()}.ready").write_text("failed: no space")
    waiter.join(10)
    assert not waiter.is_alive() and answer["shards"] == groups
