"""The user's first five minutes: the whole demo pipeline through Snakemake on 2 CPU cores."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.workflow_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.slow


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts from the 'Job stats' table of `snakemake -n`."""
    counts: dict[str, int] = {}
    in_table = False
    for line in dry_run_output.splitlines():
        if line.startswith("Job stats"):
            in_table = True
            continue
        parts = line.split()
        if in_table and parts[:1] == ["total"]:
            in_table = False
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    wf = copy_workflow(tmp_path_factory.mktemp("demo") / "wf")
    t0 = time.monotonic()
    snakemake(wf, "--cores", "2", check=True, timeout=1800)
    return wf, time.monotonic() - t0


def test_demo_results_table(demo_run: tuple[Path, float]) -> None:
    wf, seconds = demo_run
    print(f"demo pipeline wall time: {seconds:.0f} s")
    df = pd.read_csv(wf / "results/demo/model_zoo.csv").set_index("model")
    assert set(df.index) == {"demo_vit", "demo_tokshift"}
    for col in ("top1", "top5", "top1_softmax", "top1_1view", "top1_3view", "mean_class_acc"):
        assert df[col].between(0, 100).all(), col
    assert (df["params_m"] > 0).all() and (df["gflops_per_view"] > 0).all()
    assert (df["views"] == 30).all()
    assert (df["val_failed"] == 0).all() and (df["val_videos"] > 0).all()
    margin = df.loc["demo_tokshift", "top1"] - df.loc["demo_vit", "top1"]
    print(f"30-view top-1: tokshift {df.loc['demo_tokshift', 'top1']:.2f}, vit {df.loc['demo_vit', 'top1']:.2f}")
    assert margin >= 15, f"TokShift beats ViT by only {margin:.1f} points"
    for model in df.index:
        assert (wf / df.loc[model, "checkpoint"]).exists() or Path(df.loc[model, "checkpoint"]).exists()
    assert (wf / "results/demo/model_zoo.md").read_text().count("demo_") >= 2
    assert (wf / "results/demo/accuracy_vs_gflops.png").stat().st_size > 1000
    for rule in ("demo_videos", "index_dataset", "pack_shard", "train", "evaluate", "collect_results"):
        assert any((wf / "logs" / rule).rglob("*.log")), f"no log for {rule}"


def test_second_run_is_a_no_op(demo_run: tuple[Path, float]) -> None:
    wf, _ = demo_run
    out = snakemake(wf, "-n", "--cores", "2", check=True).stdout
    assert planned_jobs(out) == {}, out[-3000:]


def test_moved_copy_of_the_finished_project_plans_nothing(demo_run: tuple[Path, float], tmp_path: Path) -> None:
    """`cp -a project elsewhere`: the results stay valid there (no job recorded the old path)."""
    wf, _ = demo_run
    moved = tmp_path / "moved" / "project"
    shutil.copytree(wf, moved, symlinks=True)  # keeps modification times, as cp -a
    out = snakemake(moved, "-n", "--cores", "2", check=True).stdout
    assert planned_jobs(out) == {}, out[-3000:]


def test_deleting_one_checkpoint_reruns_only_that_model(demo_run: tuple[Path, float]) -> None:
    wf, _ = demo_run
    (wf / "results/demo/train/demo_vit/model.pt").unlink()
    out = snakemake(wf, "-n", "--cores", "2", check=True).stdout
    assert planned_jobs(out) == {"train": 1, "evaluate": 1, "collect_results": 1, "all": 1}, out[-3000:]
    assert "model=demo_vit" in out and "model=demo_tokshift" not in out


def test_damaged_val_shard_fails_evaluation_by_name_and_keeps_the_models(
    demo_run: tuple[Path, float], tmp_path: Path
) -> None:
    """A truncated val shard: no retraining, evaluation stops naming the shard, model.pt untouched."""
    from tokshift.fileio import sha256_file

    wf, _ = demo_run
    project = tmp_path / "project"
    shutil.copytree(wf, project, symlinks=True)
    models = {m: project / f"results/demo/train/{m}/model.pt" for m in ("demo_vit", "demo_tokshift")}
    before = {m: sha256_file(p) for m, p in models.items()}
    shard = project / "results/demo/frames/val/shard-0.lmdb"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    plan = snakemake(project, "-n", "--cores", "2", check=True).stdout
    assert "train" not in planned_jobs(plan) and planned_jobs(plan).get("evaluate") == 2, plan[-3000:]
    run = snakemake(project, "--cores", "2")
    assert run.returncode != 0
    logs = "".join(p.read_text() for p in (project / "logs/evaluate").rglob("*.log"))
    assert "shard-0.lmdb" in logs and "re-pack" in logs.lower() and "Bus error" not in logs, logs[-3000:]
    assert {m: sha256_file(p) for m, p in models.items()} == before
