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

from tests.engine_helpers import PackedDemo, TrainedDemo, run_cli_inprocess, train_args
from tokshift.data.store import seal_path

COPIED = r"staging: copied (\d+) shards \(([\d.]+) MB\) from .* to .* in ([\d.]+) s"


def _metrics(folder: Path) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    m.pop("eval_seconds")
    return m


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
    ctx = D.init_distributed("cpu")
    with caplog.at_level(logging.WARNING, logger="tokshift.engine"):
        with staged_shards({"val": [str(packed_demo.val)]}, str(tmp_path / "stage"), ctx) as shards:
            assert shards == {"val": [str(packed_demo.val)]}
    assert "copying to" in caplog.text and "failed" in caplog.text
    assert list((tmp_path / "stage").iterdir()) == []


def test_an_unset_variable_reads_in_place(packed_demo: PackedDemo, monkeypatch, caplog) -> None:
    from tokshift.engine import distributed as D
    from tokshift.engine.staging import staged_shards

    monkeypatch.delenv("TOKSHIFT_NO_SUCH_DIR", raising=False)
    ctx = D.init_distributed("cpu")
    with caplog.at_level(logging.WARNING, logger="tokshift.engine"):
        with staged_shards({"val": [str(packed_demo.val)]}, "$TOKSHIFT_NO_SUCH_DIR/x", ctx) as shards:
            assert shards == {"val": [str(packed_demo.val)]}
    assert "unset variable" in caplog.text
