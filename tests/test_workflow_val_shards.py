"""A changed validation shard re-evaluates but never plans a retrain (which would delete model.pt).

Dry runs only: every output of the demo workflow is created empty and marked up to date with
`snakemake --touch`, then a shard's content is changed and `snakemake -n` shows the plan.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.workflow_helpers import copy_workflow, planned_jobs, snakemake, touch_whole_plan


@pytest.fixture(scope="module")
def _finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wf = copy_workflow(tmp_path_factory.mktemp("finished") / "wf")
    outputs = touch_whole_plan(wf)
    assert any(p.endswith("/model.pt") for p in outputs), outputs
    assert planned_jobs(snakemake(wf, "-n", "--cores", "1", check=True).stdout) == {}
    return wf


@pytest.fixture()
def finished_workflow(_finished: Path, tmp_path: Path) -> Path:
    """A copy of the workflow whose every output exists and is up to date (as after a full run).

    Each test changes its own copy; copytree keeps the modification times Snakemake compares.
    """
    return Path(shutil.copytree(_finished, tmp_path / "wf", symlinks=True))


def _damage(path: Path) -> None:
    with open(path, "ab") as f:  # new content and a new mtime
        f.write(b"damaged")


def test_changed_val_shard_reevaluates_without_retraining(finished_workflow: Path) -> None:
    wf = finished_workflow
    _damage(wf / "results/demo/frames/val/shard-0.lmdb")
    out = snakemake(wf, "-n", "--cores", "1", check=True).stdout
    jobs = planned_jobs(out)
    assert "train" not in jobs, out[-3000:]
    assert jobs.get("evaluate") == 2, out[-3000:]  # evaluation reads every val shard as it is


def test_changed_train_shard_still_retrains(finished_workflow: Path) -> None:
    wf = finished_workflow
    _damage(wf / "results/demo/frames/train/shard-0.lmdb")
    out = snakemake(wf, "-n", "--cores", "1", check=True).stdout
    assert planned_jobs(out).get("train") == 2, out[-3000:]
