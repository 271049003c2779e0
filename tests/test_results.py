"""The model-zoo table from realistic per-model output files."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tokshift import report_commands
from tokshift.flops import zoo_row
from tokshift.results import COLUMNS, MissingResultError, ResultsError, collect, write_outputs

K400 = "k400_tokshift_div4_8x32_base_224"


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _metrics(model: str, top1: float, videos: int, failed: int) -> dict:
    return {
        "model": model,
        "checkpoint": f"results/x/train/{model}/model.pt",
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


def _summary(model: str, device: str, world_size: int, hours: float) -> dict:
    return {
        "model": model,
        "epochs": 8,
        "optimizer_steps": 256,
        "world_size": world_size,
        "device": device,
        "global_batch": 16,
        "lr": 1e-3,
        "train_hours": hours,
        "final_train_loss": 0.0123,
        "checkpoint": f"results/x/train/{model}/model.pt",
        "checkpoint_sha256": "ab" * 32,
    }


def _populate(root: Path, dataset: str, pack: bool = True) -> None:
    _write(root / dataset / "eval" / "demo_vit" / "metrics.json", _metrics("demo_vit", 50.0, 62, 1))
    _write(root / dataset / "eval" / "demo_tokshift" / "metrics.json", _metrics("demo_tokshift", 98.387, 62, 1))
    _write(root / dataset / "train" / "demo_vit" / "train_summary.json", _summary("demo_vit", "cpu", 1, 0.0213))
    _write(
        root / dataset / "train" / "demo_tokshift" / "train_summary.json",
        _summary("demo_tokshift", "cuda:0", 2, 0.01849),
    )
    if pack:
        _write(
            root / dataset / "frames" / "val" / "summary.json",
            {"annotated": 66, "packed": 63, "missing": 2, "failed": 1},
        )


def test_collect_values_and_outputs(tmp_path: Path) -> None:
    _populate(tmp_path, "demo")
    df = collect("demo", ["demo_vit", "demo_tokshift"], results_dir=tmp_path)
    assert tuple(df.columns) == COLUMNS
    assert list(df["model"]) == ["demo_vit", "demo_tokshift"]
    tok = df.set_index("model").loc["demo_tokshift"]
    assert tok["arch"] == "tokshift" and tok["backbone"] == "demo-tiny" and tok["pretrained"] == "none"
    assert tok["top1"] == 98.39  # rounded to 2 decimals
    assert tok["top1_1view"] == round(98.387 - 12.3456, 2)
    assert tok["views"] == 30 and tok["val_videos"] == 62
    assert tok["val_failed"] == 2 + 1 + 1  # missing + failed to pack + failed at evaluation
    assert tok["gpus"] == 2 and df.set_index("model").loc["demo_vit", "gpus"] == 0  # cpu run
    assert tok["train_hours"] == 0.018
    assert math.isnan(tok["paper_top1"]) and math.isnan(tok["delta_top1"])
    row = zoo_row("demo_tokshift")
    assert tok["gflops_per_view"] == row["gflops_per_view"] and tok["params_m"] == row["params_m"]

    out = tmp_path / "out"
    paths = write_outputs(df, out / "model_zoo.csv", out / "model_zoo.md", out / "accuracy_vs_gflops.png")
    assert [p.name for p in paths] == [
        "model_zoo.csv",
        "model_zoo.md",
        "accuracy_vs_gflops.png",
        "model_zoo.sources.json",
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
    assert sources["models"]["demo_vit"]["metrics"] == str(tmp_path / "demo/eval/demo_vit/metrics.json")
    assert sources["models"]["demo_vit"]["pack_summary"].endswith("frames/val/summary.json")
    assert set(sources["columns"]) == set(COLUMNS)


def test_paper_delta_for_k400_model(tmp_path: Path) -> None:
    _write(tmp_path / "k400" / "eval" / K400 / "metrics.json", _metrics(K400, 76.905, 19790, 6))
    _write(tmp_path / "k400" / "train" / K400 / "train_summary.json", _summary(K400, "cuda", 8, 51.25))
    df = collect("k400", [K400], results_dir=tmp_path)
    r = df.iloc[0]
    assert r["paper_top1"] == 77.28
    assert r["delta_top1"] == round(76.91 - 77.28, 2) == -0.37
    assert r["val_failed"] == 6  # no pack summary: evaluation failures only
    assert r["pretrained"] == "ViT-B_16" and r["gpus"] == 8 and r["epochs"] == 8
    assert r["gflops_per_view"] == pytest.approx(134.7, abs=0.15)
    out = tmp_path / "out"
    write_outputs(df, out / "t.csv", out / "t.md", out / "t.png")
    assert "-0.37" in (out / "t.md").read_text()
    assert pd.read_csv(out / "t.csv")["delta_top1"].tolist() == [-0.37]
    assert json.loads((out / "t.sources.json").read_text())["models"][K400]["pack_summary"] is None


def test_missing_files_name_file_and_rule(tmp_path: Path) -> None:
    _populate(tmp_path, "demo")
    metrics = tmp_path / "demo" / "eval" / "demo_vit" / "metrics.json"
    metrics.unlink()
    with pytest.raises(MissingResultError) as info:
        collect("demo", ["demo_vit", "demo_tokshift"], results_dir=tmp_path)
    assert str(metrics) in str(info.value) and "`evaluate`" in str(info.value)

    _populate(tmp_path, "demo")
    summary = tmp_path / "demo" / "train" / "demo_tokshift" / "train_summary.json"
    summary.unlink()
    with pytest.raises(MissingResultError, match=r"train_summary\.json.*`train`"):
        collect("demo", ["demo_vit", "demo_tokshift"], results_dir=tmp_path)


def test_bad_inputs_are_explained(tmp_path: Path) -> None:
    _populate(tmp_path, "demo")
    metrics = tmp_path / "demo" / "eval" / "demo_vit" / "metrics.json"
    data = json.loads(metrics.read_text())
    del data["top5"]
    metrics.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"lacks key\(s\) \['top5'\]"):
        collect("demo", ["demo_vit"], results_dir=tmp_path)
    metrics.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        collect("demo", ["demo_vit"], results_dir=tmp_path)
    _write(metrics, _metrics("demo_tokshift", 50.0, 62, 1))
    with pytest.raises(ResultsError, match="belongs to model 'demo_tokshift'"):
        collect("demo", ["demo_vit"], results_dir=tmp_path)
    with pytest.raises(ResultsError, match="unknown zoo model 'nope'"):
        collect("demo", ["nope"], results_dir=tmp_path)


def test_cli_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _populate(tmp_path, "demo", pack=False)
    parser = argparse.ArgumentParser()
    report_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["collect", "--dataset", "demo", "--models", "demo_vit", "demo_tokshift", "--results-dir", str(tmp_path)]
    )
    assert args.func(args) == 0
    for name in ("model_zoo.csv", "model_zoo.md", "accuracy_vs_gflops.png", "model_zoo.sources.json"):
        assert (tmp_path / "demo" / name).is_file()
    assert pd.read_csv(tmp_path / "demo" / "model_zoo.csv")["val_failed"].tolist() == [1, 1]
    (tmp_path / "demo" / "eval" / "demo_vit" / "metrics.json").unlink()
    assert args.func(args) == 1
    assert "evaluate" in capsys.readouterr().err
