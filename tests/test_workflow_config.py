"""The workflow parses, lints clean, and rejects bad configs before any job starts."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from tests.workflow_helpers import REPO, copy_workflow, planned_jobs, repo_config, snakemake, touch_whole_plan
from tokshift.settings import SCHEMA_PATH, default
from tokshift.workflow.cli_values import coerce_command_line
from tokshift.workflow.config import shadowed_settings


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
    proc = snakemake(
        wf,
        "-n",
        "-p",
        "--cores",
        "2",
        "--config",
        "datasets={demo: {frames: {shards: 3}}}",
        "frames={timeout: 90.5, stage_to: null, shards: 4}",
        "resources={train: {cpus: 4, signal_seconds: 0}}",
        "train={workers: 1, amp: off, compile: true, init_from: null, overrides: {imagenet_weights: ~}}",
        "evaluate={crops: 1, clips: 2}",
        check=True,
    )
    out = proc.stdout
    assert planned_jobs(out)["pack_shard"] == 6  # 2 splits x 3 shards
    # frames.shards=4 is the weaker setting: the plan says so before anything else.
    assert proc.stderr.splitlines()[0] == (
        "config: frames.shards=4 from the command line is overridden by the more specific "
        "datasets.demo.frames.shards=3; set that key instead"
    ), proc.stderr[:2000]
    assert "--timeout 90.5" in out
    assert out.count("--cpus-per-task 4 -- python -m tokshift --attempts-log") == 2
    assert "--amp off" in out and "--compile true" in out and "--workers 1" in out
    assert "--clips 2 --crops 1" in out
    # `null` means null, as in config.yaml: nothing to start from, nothing to stage to (no folder `null/`);
    # the options stay on the line with an empty value.
    assert out.count("--init-from= --override imagenet_weights=null ") == 2, out[-3000:]
    assert "--stage-to= " in out and "--stage-to=null" not in out


def test_command_line_values_read_as_yaml_where_the_schema_allows() -> None:
    """null, ~, true, false and numbers given nested on the command line mean what they mean in YAML."""
    cfg = repo_config()
    given = {
        "frames": {"stage_to": "null", "shards": "4", "timeout": "1e3"},
        "train": {"init_from": "~", "amp": "off", "compile": "True", "workers": "auto", "loggers": ["tensorboard"]},
        "released": {"m": {"source": "zoo/m.pth", "sha256": "null"}},
        "dataset": "null",  # a name the schema takes as a string, kept as written
    }
    given["train"]["overrides"] = {"epochs": "6", "imagenet_weights": "null", "lr": "1e-3", "name": "x"}
    _merge(cfg, given)
    coerce_command_line(cfg, given)
    assert cfg["frames"]["stage_to"] is None and cfg["frames"]["shards"] == 4 and cfg["frames"]["timeout"] == 1000
    assert cfg["train"]["init_from"] is None and cfg["train"]["compile"] is True
    assert cfg["train"]["amp"] == "off" and cfg["train"]["workers"] == "auto"  # the schema's words stay words
    assert cfg["released"]["m"] == {"source": "zoo/m.pth", "sha256": None}
    assert cfg["train"]["overrides"] == {"epochs": 6, "imagenet_weights": None, "lr": 0.001, "name": "x"}
    assert cfg["dataset"] == "null"


def _merge(config: dict, given: dict) -> None:
    """What Snakemake does with --config: the given values over config.yaml's."""
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value


def test_a_command_line_setting_a_more_specific_one_overrides_is_named() -> None:
    cfg = repo_config()
    given = {
        "frames": {"shards": 4, "jpeg_quality": 80},  # the demo's entry sets its own shards, not its quality
        "train": {"overrides": {"epochs": 3, "lr": 0.1}, "init_from": "a.pt"},
        "resources": {"train": {"mem_mb": 100}},
    }
    _merge(cfg, given)
    cfg["train"]["per_model"] = {"demo_vit": {"epochs": 2}, "demo_tokshift": {"epochs": 3}}  # the same: no news
    cfg["train"]["init_from_per_model"] = {"demo_tokshift": "b.pt"}
    cfg["resources"]["per_model"] = {"demo_vit": {"train": {"mem_mb": 200}}}
    validate(cfg, str(SCHEMA_PATH))
    assert shadowed_settings(cfg, given) == [
        "config: frames.shards=4 from the command line is overridden by the more specific "
        "datasets.demo.frames.shards=2; set that key instead",
        "config: train.overrides.epochs=3 from the command line is overridden by the more specific "
        "train.per_model.demo_vit.epochs=2; set that key instead",
        "config: resources.train.mem_mb=100 from the command line is overridden by the more specific "
        "resources.per_model.demo_vit.train.mem_mb=200; set that key instead",
        "config: train.init_from='a.pt' from the command line is overridden by the more specific "
        "train.init_from_per_model.demo_tokshift='b.pt'; set that key instead",
    ]
    assert shadowed_settings(cfg, {}) == []  # config.yaml's own layering is documented there, not news


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
