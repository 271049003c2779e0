"""The workflow parses, lints clean, and rejects bad configs before any job starts."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.workflow_helpers import REPO, copy_workflow, planned_jobs, snakemake, touch_whole_plan
from tokshift.settings import default


@pytest.fixture()
def wf(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


def write_config(wf: Path, edit) -> None:
    cfg = yaml.safe_load((wf / "config.yaml").read_text())
    edit(cfg)
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_dry_run_plans_the_whole_demo(wf: Path) -> None:
    counts = planned_jobs(snakemake(wf, "-n", "--cores", "2", check=True).stdout)
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
    assert "--init-from=resources/weights/ViT-L_16.npz" in out and "--progress off" in out


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


def test_nested_command_line_numbers_are_numbers(wf: Path) -> None:
    """`--config 'frames={shards: 4}'`: nested values arrive as strings and are converted per the schema."""
    out = snakemake(
        wf,
        "-n",
        "-p",
        "--cores",
        "2",
        "--config",
        "datasets={demo: {frames: {shards: 3}}}",
        "frames={timeout: 90.5}",
        "resources={train: {cpus: 4, signal_seconds: 0}}",
        "train={workers: 1, amp: off, compile: true}",
        "evaluate={crops: 1, clips: 2}",
        check=True,
    ).stdout
    assert planned_jobs(out)["pack_shard"] == 6  # 2 splits x 3 shards
    assert "--timeout 90.5" in out
    assert out.count("--cpus-per-task 4 -- python -m tokshift --attempts-log") == 2
    assert "--amp off" in out and "--compile true" in out and "--workers 1" in out
    assert "--clips 2 --crops 1" in out
    # Nothing to start from, nothing to stage to: the options stay on the line with an empty value.
    assert out.count("--init-from= --override ") == 2 and "--stage-to= " in out


@pytest.mark.parametrize(
    "value, expect",
    [
        ("frames={shards: many}", "shards"),
        ("resources={train: {gpus: lots}}", "gpus"),
        ("evaluate={crops: 2}", "crops"),
        ("train={amp: maybe}", "amp"),
    ],
)
def test_wrong_command_line_value_is_rejected_naming_the_key(wf: Path, value: str, expect: str) -> None:
    proc = snakemake(wf, "-n", "--cores", "2", "--config", value)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "ValidationError" in out
    assert f"['{expect}']" in out, out[-2000:]


def _job_records(wf: Path, rules: set[str]) -> dict[str, dict]:
    """Snakemake's metadata of each output of `rules`, keyed by the output path."""
    out = {}
    for f in (wf / ".snakemake" / "metadata").iterdir():
        record = json.loads(f.read_text())
        if record["rule"] in rules:
            out[base64.b64decode(f.name.replace("@", "/")).decode()] = record
    return out


def test_moved_project_keeps_its_results(tmp_path: Path) -> None:
    """`cp -a project elsewhere`: no job's params, input or output name the old location, nothing reruns."""
    first = copy_workflow(tmp_path / "first" / "project")
    touch_whole_plan(first)
    records = _job_records(first, {"train", "evaluate"})
    assert len(records) == 10  # 3 training and 2 evaluation outputs for each demo model
    for output, record in records.items():
        recorded = json.dumps([output, record["params"], record["input"]])
        assert str(tmp_path) not in recorded and "/slurm/" not in recorded, recorded

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, moved, symlinks=True)  # keeps modification times, as cp -a
    proc = snakemake(moved, "-n", "--cores", "1", check=True)
    assert "Nothing to be done" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    # The same params, rendered in the moved copy.
    assert {o: r["params"] for o, r in records.items()} == {
        o: r["params"] for o, r in _job_records(moved, {"train", "evaluate"}).items()
    }


def test_config_yaml_shows_the_schema_defaults() -> None:
    """Every setting config.yaml shows outside the dataset entries is the schema's default."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    shown = [(section, key) for section in ("frames", "train", "evaluate") for key in cfg[section]]
    shown += [("resources", key) for key, value in cfg["resources"].items() if not isinstance(value, dict)]
    shown += [("resources", rule, key) for rule in ("pack", "train", "evaluate") for key in cfg["resources"][rule]]
    assert len(shown) > 30
    for keys in shown:
        value = cfg
        for key in keys:
            value = value[key]
        assert value == default(*keys), f"config.yaml {'.'.join(keys)}: {value!r}, schema default {default(*keys)!r}"
