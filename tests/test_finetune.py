"""Fine-tuning: a trained demo model.pt starts a 3-class csv dataset, by the engine and by the workflow."""

from __future__ import annotations

import csv
import glob
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.engine_helpers import PackedDemo, TrainedDemo, cli_env, pack_split, run_cli_inprocess, tokshift_cmd
from tests.workflow_helpers import REPO, DemoRun, copy_workflow, snakemake
from tokshift.errors import ExitCode
from tokshift.fileio import sha256_file

HEAD = ("head.weight", "head.bias")


def three_class_csvs(demo_root: Path, out: Path, per_class: dict[str, int]) -> dict[str, Path]:
    """CSV splits of the generated demo videos under `demo_root` with only 3 of its 4 classes
    (absolute paths, the first few of each class)."""
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n in per_class.items():
        with open(demo_root / f"{split}.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        keep = sorted({r["label"] for r in rows})[:3]
        chosen = [r for c in keep for r in [r for r in rows if r["label"] == c][:n]]
        path = out / f"{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["path", "label"])
            w.writerows((str((demo_root / r["path"]).resolve()), r["label"]) for r in chosen)
        splits[split] = path
    return splits


@pytest.fixture(scope="module")
def three_classes(packed_demo: PackedDemo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return three_class_csvs(packed_demo.videos.parent, tmp_path_factory.mktemp("three"), {"train": 4, "val": 2})


@pytest.fixture(scope="module")
def three_class_shard(three_classes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("three_shard") / "train.lmdb"
    return pack_split({"kind": "csv", "splits": {"train": str(three_classes["train"])}}, "train", out)


def finetune_args(shard: Path, out: Path, start: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "demo_tokshift",
        "--train-shards",
        str(shard),
        "--out-dir",
        str(out),
        "--workers",
        "0",
        "--init-from",
        str(start),
        *extra,
        "--override",
        "epochs=1",
        "batch_size=4",
    ]


def test_backbone_starts_from_the_checkpoint_and_the_head_is_new(trained_demo: TrainedDemo) -> None:
    import torch

    from tokshift.engine.train import initial_model
    from tokshift.zoo import get_config

    saved = torch.load(trained_demo.checkpoint, map_location="cpu", weights_only=False)["model"]
    model = initial_model(get_config("demo_tokshift").replace(num_classes=3), str(trained_demo.checkpoint))
    state = model.state_dict()
    assert set(state) == set(saved)
    assert state["head.weight"].shape[0] == 3 and saved["head.weight"].shape[0] == 4
    for k in HEAD:
        assert torch.count_nonzero(state[k]) == 0, k
    body = [k for k in state if k not in HEAD]
    assert len(body) > 10
    for k in body:
        assert torch.equal(state[k], saved[k]), k


def test_train_cli_fine_tunes_and_records_the_start(
    trained_demo: TrainedDemo,
    three_class_shard: Path,
    tmp_path: Path,
) -> None:
    import torch

    out = tmp_path / "ft"
    res = run_cli_inprocess(*finetune_args(three_class_shard, out, trained_demo.checkpoint), threads=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "head re-initialised" in res.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs"] == 1 and summary["classes"] == 3
    assert summary["init_from"] == str(trained_demo.checkpoint)
    assert summary["init_from_sha256"] == sha256_file(trained_demo.checkpoint)
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert (ckpt["init_from"], ckpt["init_from_sha256"]) == (summary["init_from"], summary["init_from_sha256"])
    assert ckpt["model"]["head.weight"].shape[0] == 3 and len(ckpt["classes"]) == 3
    assert torch.count_nonzero(ckpt["model"]["head.weight"]) > 0  # the new head was trained


def test_resume_from_another_start_is_not_continued(
    trained_demo: TrainedDemo,
    three_class_shard: Path,
    tmp_path: Path,
) -> None:
    """A run preempted while fine-tuning from A does not continue when restarted from B.

    The preempted run is a real process that receives the signal; the restart runs in this one.
    """
    import torch

    out = tmp_path / "ft"
    extra = ("--log-every", "1", "--checkpoint-minutes", "1000")
    # SIGUSR1 right after optimizer step 1 of 3 (TOKSHIFT_SIGNAL_AT_STEP): preempted mid-epoch.
    proc = subprocess.run(
        tokshift_cmd(*finetune_args(three_class_shard, out, trained_demo.checkpoint, *extra)),
        env={**cli_env(1), "TOKSHIFT_SIGNAL_AT_STEP": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == ExitCode.RETRY_LATER, proc.stderr[-3000:]  # preempted, resume checkpoint written
    assert "received SIGUSR1" in proc.stderr
    assert list((out / "resume").glob("*.pt")), "no resume checkpoint"

    other = tmp_path / "other.pt"
    state = torch.load(trained_demo.checkpoint, map_location="cpu", weights_only=False)
    state["model"]["pos_embed"] = state["model"]["pos_embed"] + 0.01
    torch.save(state, other)
    again = run_cli_inprocess(*finetune_args(three_class_shard, out, other, *extra))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "of another run" in again.stderr and "init_from_sha256" in again.stderr
    assert list((out / "resume").glob("stale-*/*.pt")), "the other run's checkpoint was not set aside"
    assert "resumed from" not in again.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["init_from_sha256"] == sha256_file(other)


def finetune_config(wf: Path, splits: dict[str, Path], init_from: str, recipe: dict) -> None:
    cfg = yaml.safe_load((wf / "config.yaml").read_text())
    cfg["dataset"] = "mine"
    cfg["models"] = ["demo_tokshift"]
    cfg["datasets"]["mine"] = {
        "kind": "csv",
        "zoo": "demo",
        "splits": {k: str(v) for k, v in splits.items()},
        "frames": {"short_side": 64, "shards": 1},
        "train": recipe,
    }
    cfg["train"]["init_from"] = init_from
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_dry_run_takes_the_init_checkpoint_and_the_recipe_order(
    trained_demo: TrainedDemo,
    three_classes: dict[str, Path],
    tmp_path: Path,
) -> None:
    wf = copy_workflow(tmp_path / "wf")
    (wf / "start").mkdir()
    (wf / "start/model.pt").write_bytes(trained_demo.checkpoint.read_bytes())
    finetune_config(wf, three_classes, "start/model.pt", {"epochs": 5, "lr": 0.01, "batch_size": 8})
    out = snakemake(
        wf,
        "-n",
        "-p",
        "--cores",
        "2",
        "--config",
        "train={overrides: {lr: 0.02}, per_model: {demo_tokshift: {batch_size: 4}}}",
        check=True,
    ).stdout
    assert "--init-from=start/model.pt" in out
    # zoo < dataset recipe (epochs 5) < train.overrides (lr) < train.per_model (batch_size)
    assert "--override batch_size=4 epochs=5 lr=0.02" in out
    assert "download_weights" not in out


@pytest.mark.parametrize("per_model", [False, True], ids=["init_from", "init_from_per_model"])
def test_missing_init_checkpoint_fails_before_any_job_naming_the_key(
    three_classes: dict[str, Path], tmp_path: Path, per_model: bool
) -> None:
    wf = copy_workflow(tmp_path / "wf")
    finetune_config(wf, three_classes, None if per_model else "nope/model.pt", {})
    extra = ["--config", "train={init_from_per_model: {demo_tokshift: nope/model.pt}}"] if per_model else []
    proc = snakemake(wf, "--cores", "2", *extra)
    assert proc.returncode != 0
    key = "train.init_from_per_model.demo_tokshift" if per_model else "train.init_from"
    assert f"config key '{key}'" in proc.stdout + proc.stderr and "nope/model.pt" in proc.stdout + proc.stderr
    assert not (wf / "results").exists()


def test_bad_dataset_recipe_is_rejected_naming_the_key(three_classes: dict[str, Path], tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    finetune_config(wf, three_classes, None, {"epoch": 2})
    proc = snakemake(wf, "-n", "--cores", "2")
    assert proc.returncode != 0
    assert "datasets.mine.train" in proc.stdout + proc.stderr and "epoch" in proc.stdout + proc.stderr


def readme_section() -> tuple[dict, list[list[str]]]:
    """The config fragment and the shell commands of the README's fine-tuning section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Fine-tune on your own videos", 1)[1].split("\n## ", 1)[0]
    fragment = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        commands += [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return fragment, commands


def test_readme_fine_tuning_config_and_commands_plan_the_run(three_classes: dict[str, Path], tmp_path: Path) -> None:
    fragment, commands = readme_section()
    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((wf / "config.yaml").read_text())
    ((name, entry),) = fragment["datasets"].items()
    entry["splits"] = {k: str(v) for k, v in three_classes.items()}  # the README's paths, made real
    cfg["datasets"][name] = entry
    cfg["train"].update(fragment["train"])
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg))
    start = wf / fragment["train"]["init_from"]
    start.parent.mkdir(parents=True)
    start.write_bytes(b"a dry run reads no weights")
    dry, run, train = commands
    assert dry[:2] == ["snakemake", "-n"] and run[0] == "snakemake" and dry[2:] == run[1:]
    out = snakemake(wf, *dry[1:], "-p", check=True).stdout
    assert f"--init-from={fragment['train']['init_from']}" in out
    assert "--override batch_size=8 epochs=5 lr=0.01" in out
    assert "download_weights" not in out
    # The plain CLI command parses with this version's options.
    from tokshift.cli import build_parser

    assert train[0] == "tokshift"
    args = build_parser().parse_args(["x.lmdb" if glob.has_magic(a) else a for a in train[1:]])
    assert args.init_from and args.override == ["epochs=5", "lr=0.01", "batch_size=8"]


@pytest.mark.slow
def test_snakemake_fine_tunes_into_the_results_table(demo_run: DemoRun, tmp_path: Path) -> None:
    """The demo pipeline's trained TokShift starts a 3-class dataset; the workflow fine-tunes it into a table."""
    import pandas as pd

    start = demo_run.wf / "results/demo/train/demo_tokshift/model.pt"
    three = three_class_csvs(demo_run.wf / "resources/demo", tmp_path / "three", {"train": 4, "val": 2})
    wf = copy_workflow(tmp_path / "wf")
    finetune_config(wf, three, str(start), {"epochs": 1, "batch_size": 4})
    snakemake(wf, "--cores", "2", "--config", "evaluate={clips: 2, crops: 1}", check=True, timeout=1200)
    df = pd.read_csv(wf / "results/mine/model_zoo.csv").set_index("model")
    assert list(df.index) == ["demo_tokshift"]
    assert df.loc["demo_tokshift", "val_videos"] == 6 and 0 <= df.loc["demo_tokshift", "top1"] <= 100
    summary = json.loads((wf / "results/mine/train/demo_tokshift/train_summary.json").read_text())
    assert summary["epochs"] == 1 and summary["classes"] == 3
    assert summary["init_from_sha256"] == sha256_file(start)
    assert df.loc["demo_tokshift", "init_from"] == summary["init_from"]  # the file it started from
