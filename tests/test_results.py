"""The model-zoo table from realistic per-model output files, named one by one as the rule does."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from tests.results_helpers import check_model_index, model_index_schema
from tokshift.cli import main
from tokshift.errors import ExitCode
from tokshift.results import COLUMNS, MissingResultError, ResultsError, collect, write_outputs
from tokshift.results import commands as results_commands

K400 = "k400_tokshift_div4_8x32_base_224"


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _metrics(model: str, top1: float, videos: int, failed: int, sha: str) -> dict:
    return {
        "model": model,
        "checkpoint": f"results/x/train/{model}/model.pt",
        "checkpoint_sha256": sha,
        "top1": top1,
        "top5": 100.0,
        "top1_softmax": top1 - 0.004,
        "top5_softmax": 100.0,
        "top1_1view": top1 - 12.3456,
        "top1_3view": top1 - 5.0,
        "top1_10view": top1 - 1.0,
        "mean_class_acc": top1 - 0.111,
        "videos": videos,
        "views": 30,
        "clips": 10,
        "crops": 3,
        "failed": failed,
    }


def _summary(model: str, device: str, world_size: int, hours: float, sha: str, init_from: str | None = None) -> dict:
    return {
        "model": model,
        "init_from": init_from,
        "epochs": 8,
        "optimizer_steps": 256,
        "world_size": world_size,
        "device": device,
        "global_batch": 16,
        "lr": 1e-3,
        "train_hours": hours,
        "final_train_loss": 0.0123,
        "checkpoint": f"results/x/train/{model}/model.pt",
        "checkpoint_sha256": sha,
    }


def _block(commit: str, dirty: bool, torch: str, devices: list[str]) -> dict:
    """The parts of a provenance block the table reads."""
    return {
        "tokshift": {"version": "0.1.0", "commit": commit, "dirty": dirty},
        "software": {"torch": torch},
        "devices": devices,
    }


def _checkpoint(path: Path, content: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def _populate(root: Path, dataset: str, pack: bool = True) -> dict[str, list[Path]]:
    """The files the collect rule passes, in its layout; returns them by option."""
    runs = {"demo_vit": (50.0, "cpu", 1, 0.0213), "demo_tokshift": (98.387, "cuda:0", 2, 0.01849)}
    files: dict[str, list[Path]] = {"metrics": [], "summaries": [], "checkpoints": [], "val_summary": []}
    for model, (top1, device, world, hours) in runs.items():
        ckpt = root / dataset / "train" / model / "model.pt"
        sha = _checkpoint(ckpt, f"weights of {model}".encode())
        m = root / dataset / "eval" / model / "metrics.json"
        t = root / dataset / "train" / model / "train_summary.json"
        metrics, summary = _metrics(model, top1, 62, 1, sha), _summary(model, device, world, hours, sha)
        if model == "demo_tokshift":  # demo_vit's files come from before the provenance block
            summary["provenance"] = _block("a" * 40, False, "2.5.1", ["NVIDIA A100-SXM4-80GB"] * world)
            metrics["provenance"] = _block("b" * 40, True, "2.14.1", ["NVIDIA H100 80GB HBM3"])
        _write(m, metrics)
        _write(t, summary)
        files["metrics"].append(m)
        files["summaries"].append(t)
        files["checkpoints"].append(ckpt)
    if pack:
        v = root / dataset / "frames" / "val" / "summary.json"
        _write(v, {"annotated": 66, "packed": 63, "missing": 2, "failed": 1})
        files["val_summary"].append(v)
    return files


def _collect(files: dict[str, list[Path]], dataset: str = "demo"):
    val = files["val_summary"][0] if files["val_summary"] else None
    return collect(dataset, files["metrics"], files["summaries"], files["checkpoints"], val)


def test_collect_values_and_outputs(tmp_path: Path) -> None:
    import pandas as pd

    from tokshift.flops import zoo_row

    files = _populate(tmp_path, "demo")
    files["summaries"].reverse()  # matched by the model name inside, not by position
    files["checkpoints"].reverse()
    df = _collect(files)
    assert tuple(df.columns) == COLUMNS
    assert list(df["model"]) == ["demo_vit", "demo_tokshift"]  # the order of the metrics files
    tok = df.set_index("model").loc["demo_tokshift"]
    assert tok["arch"] == "tokshift" and tok["backbone"] == "demo-tiny" and tok["init_from"] == "none"
    assert tok["top1"] == 98.39  # rounded to 2 decimals
    assert tok["top1_1view"] == round(98.387 - 12.3456, 2)
    assert tok["views"] == 30 and tok["val_videos"] == 62
    assert tok["val_failed"] == 2 + 1 + 1  # missing + failed to pack + failed at evaluation
    assert tok["gpus"] == 2 and df.set_index("model").loc["demo_vit", "gpus"] == 0  # cpu run
    assert tok["train_hours"] == 0.018
    assert tok["checkpoint_sha256"] == hashlib.sha256(b"weights of demo_tokshift").hexdigest()
    assert math.isnan(tok["paper_top1"]) and math.isnan(tok["delta_top1"])
    assert tok["trained_on"] == "2× NVIDIA A100-SXM4-80GB"
    assert (tok["train_commit"], tok["train_torch"]) == ("a" * 12, "2.5.1")
    assert (tok["eval_commit"], tok["eval_torch"]) == ("b" * 12 + "+dirty", "2.14.1")
    vit_row = df.set_index("model").loc["demo_vit"]
    assert {vit_row[c] for c in ("trained_on", "train_commit", "train_torch", "eval_commit", "eval_torch")} == {
        "unknown"
    }
    row = zoo_row("demo_tokshift")
    assert tok["gflops_per_view"] == row["gflops_per_view"] and tok["params_m"] == row["params_m"]

    out = tmp_path / "out"
    paths = write_outputs(df, out / "model_zoo.csv", out / "model_zoo.md", out / "accuracy_vs_gflops.png")
    assert [p.name for p in paths] == [
        "model_zoo.csv",
        "model_zoo.md",
        "accuracy_vs_gflops.png",
        "model_zoo.sources.json",
        "model-index.yml",
    ]
    csv_text = (out / "model_zoo.csv").read_text()
    assert csv_text.splitlines()[0] == ",".join(COLUMNS)
    back = pd.read_csv(out / "model_zoo.csv")
    assert back["top1"].tolist() == [50.0, 98.39]
    assert back["paper_top1"].isna().all()

    md = (out / "model_zoo.md").read_text()
    assert md.startswith("# Model zoo: demo")
    assert "`demo_tokshift`" in md and "98.39" in md and "62 (4)" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 and len({line.count("|") for line in table}) == 1

    with Image.open(out / "accuracy_vs_gflops.png") as im:
        im.verify()
    with Image.open(out / "accuracy_vs_gflops.png") as im:
        assert im.format == "PNG" and im.size[0] > 400

    sources = json.loads((out / "model_zoo.sources.json").read_text())
    assert sources["dataset"] == "demo"
    assert sources["provenance"]["command"] == "collect" and sources["provenance"]["ended"]
    assert sources["models"]["demo_tokshift"]["train_provenance"]["tokshift"]["commit"] == "a" * 40
    vit = sources["models"]["demo_vit"]
    assert vit["metrics"] == str(tmp_path / "demo/eval/demo_vit/metrics.json")
    assert vit["train_summary"] == str(tmp_path / "demo/train/demo_vit/train_summary.json")
    assert vit["checkpoint"] == str(tmp_path / "demo/train/demo_vit/model.pt")
    assert vit["pack_summary"] == str(tmp_path / "demo/frames/val/summary.json")
    assert set(sources["columns"]) == set(COLUMNS)
    assert back["global_batch"].tolist() == [16, 16]  # train_summary:global_batch


def test_model_index_says_what_the_table_says(tmp_path: Path) -> None:
    """model-index.yml validates against its schema and agrees with model_zoo.csv cell by cell; a cell
    the table lacks is left out of the index; the check fails on an index that disagrees."""
    import jsonschema
    import pandas as pd
    import yaml

    files = _populate(tmp_path, "demo")
    out = tmp_path / "out"
    write_outputs(_collect(files), out / "model_zoo.csv", out / "model_zoo.md", out / "accuracy_vs_gflops.png")
    index = check_model_index(out / "model-index.yml", out / "model_zoo.csv", "demo")
    (collection,) = index["Collections"]
    assert collection["Paper"]["URL"] == "https://arxiv.org/abs/2108.02432" and collection["README"] == "model_zoo.md"
    entries = {m["Name"]: m for m in index["Models"]}
    tok, vit = entries["demo_tokshift"], entries["demo_vit"]
    assert tok["Metadata"]["Training Resources"] == "2 GPUs (2× NVIDIA A100-SXM4-80GB)"
    assert vit["Metadata"]["Training Resources"] == "CPU"  # trained on cpu: no GPU count, whatever the device
    assert tok["Results"][0]["Metrics"] == {"Top 1 Accuracy": 98.39, "Top 5 Accuracy": 100.0}
    assert tok["Weights"] == "results/x/train/demo_tokshift/model.pt"
    assert tok["Training Log"] == "results/x/train/demo_tokshift/metrics.jsonl"
    assert tok["Metadata"]["Batch Size"] == 16 and tok["Metadata"]["Epochs"] == 8

    # A summary from before global_batch was recorded: an empty cell, and no Batch Size in the index.
    summary = json.loads(files["summaries"][1].read_text())
    del summary["global_batch"]
    _write(files["summaries"][1], summary)
    old = tmp_path / "old"
    write_outputs(_collect(files), old / "model_zoo.csv", old / "model_zoo.md", old / "accuracy_vs_gflops.png")
    assert pd.read_csv(old / "model_zoo.csv").set_index("model")["global_batch"].isna().tolist() == [False, True]
    entries = {m["Name"]: m for m in yaml.safe_load((old / "model-index.yml").read_text())["Models"]}
    assert "Batch Size" not in entries["demo_tokshift"]["Metadata"]
    assert entries["demo_vit"]["Metadata"]["Batch Size"] == 16

    # The schema and the comparison both catch an index that lost a key or disagrees with the table.
    del index["Models"][0]["Metadata"]["FLOPs"]
    with pytest.raises(jsonschema.ValidationError, match="FLOPs"):
        jsonschema.validate(index, model_index_schema(released=False))
    table = pd.read_csv(out / "model_zoo.csv")
    table.loc[1, "top5"] = 99.0
    table.to_csv(out / "model_zoo.csv", index=False)
    with pytest.raises(AssertionError):
        check_model_index(out / "model-index.yml", out / "model_zoo.csv", "demo")
    assert (
        yaml.safe_load((out / "model-index.yml").read_text())["Models"][1]["Results"][0]["Metrics"]["Top 5 Accuracy"]
        == 100.0
    )


def test_released_model_index_names_each_source(tmp_path: Path) -> None:
    """A released table's index: the URL each checkpoint came from as its weights, the epoch its model.pt
    records, and nothing about a training this project did not run (batch, resources, log)."""
    from tests.original_model import original_net, save_original
    from tokshift.engine.loading import import_original
    from tokshift.results import collect_released

    pth = save_original(original_net("tokshift", classes=4), tmp_path / "best.pth")
    done = import_original(pth, "demo_tokshift", tmp_path / "released/demo_tokshift/model.pt", classes=list("abcd"))
    metrics = {
        "model": "demo_tokshift",
        "checkpoint_sha256": done.sha256,
        **dict.fromkeys(("top1", "top1_softmax", "top1_1view", "top1_3view", "mean_class_acc"), 62.5),
        "top5": 100.0,
        "videos": 8,
        "views": 30,
        "failed": 0,
    }
    _write(tmp_path / "released/eval/demo_tokshift/metrics.json", metrics)
    url = "https://example.org/tokshift/best.pth"
    df = collect_released(
        "demo", [tmp_path / "released/eval/demo_tokshift/metrics.json"], [done.out], sources={"demo_tokshift": url}
    )
    out = tmp_path / "released"
    written = write_outputs(df, out / "model_zoo.csv", out / "model_zoo.md", out / "accuracy_vs_gflops.png")
    assert written[-1] == out / "model-index.yml"
    (entry,) = check_model_index(out / "model-index.yml", out / "model_zoo.csv", "demo", released=True)["Models"]
    assert entry["Weights"] == url and entry["Metadata"]["Epochs"] == 18
    assert not {"Batch Size", "Training Resources", "Training Data", "Pretrained"} & set(entry["Metadata"])


def test_paper_delta_for_k400_model(tmp_path: Path) -> None:
    import pandas as pd

    sha = "ab" * 32
    m, t = tmp_path / "m.json", tmp_path / "t.json"
    _write(m, _metrics(K400, 76.905, 19790, 6, sha))
    _write(t, _summary(K400, "cuda", 8, 51.25, sha, init_from="resources/weights/ViT-B_16.npz"))
    df = collect("k400", [m], [t])  # no checkpoints, no val summary
    r = df.iloc[0]
    assert r["paper_top1"] == 77.28
    assert r["delta_top1"] == round(76.91 - 77.28, 2) == -0.37
    assert r["val_failed"] == 6  # no pack summary: evaluation failures only
    assert r["init_from"] == "ViT-B_16" and r["gpus"] == 8 and r["epochs"] == 8
    assert r["gflops_per_view"] == pytest.approx(134.7, abs=0.15)
    out = tmp_path / "out"
    write_outputs(df, out / "t.csv", out / "t.md", out / "t.png")
    assert "-0.37" in (out / "t.md").read_text()
    # Fine-tuned from another checkpoint: the table names that file, not the backbone.
    _write(t, _summary(K400, "cuda", 8, 51.25, sha, init_from="released/base_224.pth"))
    assert collect("k400", [m], [t]).iloc[0]["init_from"] == "released/base_224.pth"
    # A summary written before the key was named init_from still reads.
    legacy = {k: v for k, v in _summary(K400, "cuda", 8, 51.25, sha).items() if k != "init_from"}
    _write(t, {**legacy, "pretrained": "released/base_224.pth"})
    assert collect("k400", [m], [t]).iloc[0]["init_from"] == "released/base_224.pth"
    assert pd.read_csv(out / "t.csv")["delta_top1"].tolist() == [-0.37]
    src = json.loads((out / "t.sources.json").read_text())["models"][K400]
    assert src["pack_summary"] is None and src["checkpoint"] is None and src["metrics"] == str(m)


def test_missing_files_name_file_and_rule(tmp_path: Path) -> None:
    files = _populate(tmp_path, "demo")
    files["metrics"][0].unlink()
    with pytest.raises(MissingResultError) as info:
        _collect(files)
    assert str(files["metrics"][0]) in str(info.value) and "`evaluate`" in str(info.value)

    files = _populate(tmp_path, "demo")
    files["summaries"][1].unlink()
    with pytest.raises(MissingResultError, match=r"train_summary\.json.*`train`"):
        _collect(files)

    files = _populate(tmp_path, "demo")
    files["val_summary"][0].unlink()
    with pytest.raises(MissingResultError, match="summarize_frames"):
        _collect(files)


def test_every_model_needs_each_kind_of_file(tmp_path: Path) -> None:
    files = _populate(tmp_path, "demo")
    with pytest.raises(ResultsError, match=r"no train summary for \['demo_tokshift'\]"):
        collect("demo", files["metrics"], files["summaries"][:1])
    with pytest.raises(ResultsError, match=r"no metrics file for \['demo_vit'\]"):
        collect("demo", files["metrics"][1:], files["summaries"])
    with pytest.raises(ResultsError, match="both hold model 'demo_vit'"):
        collect("demo", [files["metrics"][0], files["metrics"][0]], files["summaries"])
    with pytest.raises(ResultsError, match="no metrics files"):
        collect("demo", [], files["summaries"])


def test_checkpoints_are_checked_against_the_recorded_sha256(tmp_path: Path) -> None:
    files = _populate(tmp_path, "demo")
    files["checkpoints"][1].write_bytes(b"retrained by hand")
    with pytest.raises(ResultsError, match=r"'demo_tokshift'.*rerun the `train` rule"):
        _collect(files)
    with pytest.raises(ResultsError, match=r"is a directory"):
        collect("demo", files["metrics"], files["summaries"], [tmp_path / "demo" / "train"])

    files = _populate(tmp_path, "demo")
    data = json.loads(files["metrics"][0].read_text())
    data["checkpoint_sha256"] = "cd" * 32
    files["metrics"][0].write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"metrics are stale; rerun the `evaluate` rule for 'demo_vit'"):
        _collect(files)


def test_bad_inputs_are_explained(tmp_path: Path) -> None:
    files = _populate(tmp_path, "demo")
    metrics = files["metrics"][0]
    one = {"metrics": [metrics], "summaries": files["summaries"][:1], "checkpoints": [], "val_summary": []}
    data = json.loads(metrics.read_text())
    del data["top5"]
    metrics.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"lacks key\(s\) \['top5'\]"):
        _collect(one)
    metrics.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        _collect(one)
    with pytest.raises(ResultsError, match="is a directory"):
        collect("demo", [metrics.parent], files["summaries"][:1])
    _write(metrics, _metrics("nope", 1.0, 1, 0, "ab" * 32))
    _write(files["summaries"][0], _summary("nope", "cpu", 1, 0.1, "ab" * 32))
    with pytest.raises(ResultsError, match="unknown zoo model 'nope'"):
        _collect(one)


def _collect_args(files: dict[str, list[Path]], out: Path) -> list[str]:
    return [
        "collect",
        "--dataset",
        "demo",
        "--metrics",
        *map(str, files["metrics"]),
        "--train-summaries",
        *map(str, files["summaries"]),
        "--checkpoints",
        *map(str, files["checkpoints"]),
        "--csv",
        str(out / "model_zoo.csv"),
        "--md",
        str(out / "model_zoo.md"),
        "--plot",
        str(out / "accuracy_vs_gflops.png"),
    ]


def test_cli_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    files = _populate(tmp_path, "demo", pack=False)
    parser = argparse.ArgumentParser()
    results_commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "table"
    args = parser.parse_args(_collect_args(files, out))
    assert args.func(args) == 0
    for name in (
        "model_zoo.csv",
        "model_zoo.md",
        "accuracy_vs_gflops.png",
        "model_zoo.sources.json",
        "model-index.yml",
    ):
        assert (out / name).is_file()
    assert pd.read_csv(out / "model_zoo.csv")["val_failed"].tolist() == [1, 1]
    files["metrics"][0].unlink()
    assert main(_collect_args(files, out)) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert str(files["metrics"][0]) in err and "evaluate" in err
