"""The workflow parses, lints clean, and rejects bad configs before any job starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.workflow_helpers import copy_workflow, snakemake


@pytest.fixture()
def wf(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


def write_config(wf: Path, edit) -> None:
    cfg = yaml.safe_load((wf / "config.yaml").read_text())
    edit(cfg)
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_dry_run_plans_the_whole_demo(wf: Path) -> None:
    out = snakemake(wf, "-n", "--cores", "2", check=True).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["demo_videos"] == 1 and counts["index_dataset"] == 2
    assert counts["pack_shard"] == 4  # 2 splits x 2 demo shards
    assert counts["train"] == 2 and counts["evaluate"] == 2 and counts["collect_results"] == 1
    assert "download_weights" not in counts  # demo models train from scratch


def test_lint_is_clean(wf: Path) -> None:
    proc = snakemake(wf, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_kinetics_plan_downloads_weights(wf: Path, tmp_path: Path) -> None:
    ann = tmp_path / "ann.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\n")

    def edit(cfg):
        cfg["dataset"] = "k400"
        cfg["datasets"]["k400"] = {
            "kind": "kinetics",
            "zoo": "k400",
            "root": str(tmp_path),
            "annotations": {"train": str(ann), "val": str(ann)},
        }
        cfg["models"] = ["k400_tokshift_div4_8x32_large_384", "k400_vit_8x32_224"]
        cfg["resources"]["train"]["gpus"] = "zoo"

    write_config(wf, edit)
    out = snakemake(wf, "-n", "-p", "--cores", "2", check=True).stdout
    assert "resources/weights/ViT-L_16.npz" in out and "resources/weights/ViT-B_16.npz" in out
    # gpus: zoo -> the reference GPU count, started with torchrun inside the job.
    assert "--nproc-per-node=8" in out and "--nproc-per-node=2" in out


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda c: c.update(colour="blue"), "colour"),
        (lambda c: c["frames"].update(shards="many"), "shards"),
        (lambda c: c["train"].update(epocs=3), "epocs"),
        (lambda c: c.update(models=["demo_tokshift", "k400_tokshift_huge"]), "k400_tokshift_huge"),
        (lambda c: c["train"].update(overrides={"learning_rate": 0.1}), "learning_rate"),
        (
            lambda c: (
                c["datasets"].update(
                    mine={"kind": "csv", "zoo": "demo", "splits": {"train": "/nope/train.csv", "val": "/nope/val.csv"}}
                )
                or c.update(dataset="mine")
            ),
            "datasets.mine.splits.train",
        ),
        (lambda c: c.update(dataset="kinetics400"), "kinetics400"),
    ],
    ids=[
        "unknown-top-key",
        "wrong-type",
        "unknown-train-key",
        "unknown-model",
        "bad-override",
        "missing-path",
        "unknown-dataset",
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(wf: Path, edit, expect: str) -> None:
    write_config(wf, edit)
    proc = snakemake(wf, "--cores", "2")
    assert proc.returncode != 0
    assert expect in proc.stdout + proc.stderr
    assert not (wf / "results").exists() and not (wf / "resources").exists()
