"""`tokshift export` of the trained demo model: the safetensors hold model.pt's tensors bit for bit,
everything that reads a model.pt reads the export to the same numbers, the model card's numbers
are the results table's row of this checkpoint (or it says there is none), and a folder that is
not the export's own is refused before anything is written."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.engine_helpers import PackedDemo, TrainedDemo, quick_eval_args, run_cli_inprocess
from tokshift.errors import BadInput, DataDamaged, ExitCode
from tokshift.fileio import sha256_file

DEMO = "demo_tokshift"


def _export(checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`tokshift export CHECKPOINT --out-dir OUT EXTRA...`, which must succeed."""
    res = run_cli_inprocess("export", str(checkpoint), "--out-dir", str(out), *extra)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.fixture(scope="module")
def exported(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model exported in the safetensors format (read-only for its users)."""
    out = tmp_path_factory.mktemp("export") / DEMO
    _export(trained_demo.checkpoint, out)
    return out


def _card_cells(card: str) -> dict[str, str]:
    """The `| label | value |` rows of a model card."""
    cells = {}
    for line in card.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(parts) == 2 and parts[0]:
            cells[parts[0]] = parts[1]
    return cells


def _write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    """A model_zoo.csv with the table's columns (cells not given stay empty)."""
    from tokshift.results import COLUMNS

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return path


def test_safetensors_hold_the_model_pt_tensors_and_config_json_what_it_records(
    trained_demo: TrainedDemo, exported: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tokshift.data.transforms import normalize

    saved = torch.load(trained_demo.checkpoint, map_location="cpu", weights_only=True)
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.safetensors"]
    weights = load_file(exported / "model.safetensors")
    assert weights.keys() == saved["model"].keys()
    for key, tensor in saved["model"].items():
        assert weights[key].dtype == tensor.dtype and torch.equal(weights[key], tensor), key
    with safe_open(exported / "model.safetensors", "pt") as fh:
        meta = fh.metadata()
    assert meta["model"] == DEMO and meta["tokshift_format_version"] == "1" and meta["format"] == "pt"

    config = json.loads((exported / "config.json").read_text())
    summary = json.loads((trained_demo.out_dir / "train_summary.json").read_text())
    assert config["config"] == saved["config"] and config["label_names"] == saved["classes"]
    assert config["checkpoint_sha256"] == sha256_file(trained_demo.checkpoint) == summary["checkpoint_sha256"]
    assert config["weights"]["sha256"] == sha256_file(exported / "model.safetensors")
    recipe = ("epoch", "lr", "global_batch", "seed", "init_from", "init_from_sha256", "optimizer_steps")
    assert {k: config["training"][k] for k in recipe} == {k: saved[k] for k in recipe}
    assert config["provenance"] == json.loads(json.dumps(saved["provenance"]))
    assert (config["num_frames"], config["frame_stride"], config["img_size"]) == (8, 2, 64)
    assert config["input"]["shape"] == [None, 8, 3, 64, 64] and config["input"]["layout"] == "B,T,3,H,W"
    pixels = torch.tensor([0, 77, 255], dtype=torch.uint8)
    mean, std = config["input"]["mean"][0], config["input"]["std"][0]
    assert torch.equal((pixels.float() / 255 - mean) / std, normalize(pixels))

    # Exporting again replaces the folder with the same bytes (the safetensors header is ordered).
    again = tmp_path / "again"
    _export(trained_demo.checkpoint, again)
    _export(trained_demo.checkpoint, again)
    for name in ("model.safetensors", "config.json"):
        assert sha256_file(again / name) == sha256_file(exported / name), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temporary folder left


def test_the_export_loads_to_the_logits_of_the_model_pt(trained_demo: TrainedDemo, exported: Path) -> None:
    import tokshift
    from tokshift.cli import build_parser
    from tokshift.engine.loading import build_model, load_trained_model

    clip = torch.randn(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = tokshift.load(trained_demo.checkpoint, device="cpu")
    with torch.no_grad():
        want = reference.model(clip)
        for path in (exported, exported / "config.json", exported / "model.safetensors"):
            trained = tokshift.load(path, device="cpu")
            assert trained.classes == reference.classes and trained.config == reference.config
            assert torch.equal(trained.model(clip), want), path
        assert torch.equal(load_trained_model(exported, torch.device("cpu")).model(clip), want)
        started = build_model(DEMO, init_from=exported).eval()
        assert torch.equal(started(clip), want)
    # Where a command takes a checkpoint file, an export folder stands for its weights file.
    train = ["train", "--model", DEMO, "--train-shards", "t.lmdb", "--out-dir", "o", "--init-from", str(exported)]
    assert build_parser().parse_args(train).init_from == exported / "model.safetensors"


def test_predict_through_the_export_gives_the_model_pt_top5(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, exported: Path
) -> None:
    video = str(sorted(packed_demo.videos.glob("val/*.mp4"))[0])
    tops = []
    for checkpoint in (trained_demo.checkpoint, exported):
        res = run_cli_inprocess(
            "predict", video, "--checkpoint", str(checkpoint), "--format", "json", "--clips", "2", "--crops", "1"
        )
        assert res.returncode == 0, res.stderr[-2000:]
        (prediction,) = json.loads(res.stdout)["predictions"]
        tops.append(prediction["top"])
    assert tops[0] == tops[1] and len(tops[0]) == 4  # the demo has 4 classes


def test_evaluate_through_the_export_scores_as_the_model_pt(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, exported: Path, tmp_path: Path
) -> None:
    runs = {}
    for name, checkpoint in (("pt", trained_demo.checkpoint), ("export", exported)):
        res = run_cli_inprocess(*quick_eval_args(checkpoint, packed_demo.val_odd, tmp_path / name, clips=1))
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert (tmp_path / "pt" / "predictions.csv").read_text() == (tmp_path / "export" / "predictions.csv").read_text()
    assert runs["export"]["top1"] == runs["pt"]["top1"] and runs["export"]["videos"] == packed_demo.val_odd_count
    # The file evaluated is the export's weights: its checksum identifies the evaluation.
    assert runs["export"]["checkpoint_sha256"] == sha256_file(exported / "model.safetensors")


def test_model_card_shows_the_table_row_of_this_checkpoint(trained_demo: TrainedDemo, tmp_path: Path) -> None:
    # The workflow's layout: results/<dataset>/train/<model>/model.pt with results/<dataset>/model_zoo.csv.
    results = tmp_path / "results" / "demo"
    model_pt = results / "train" / DEMO / "model.pt"
    model_pt.parent.mkdir(parents=True)
    shutil.copy2(trained_demo.checkpoint, model_pt)
    sha = sha256_file(model_pt)
    mine = {
        "model": DEMO,
        "views": "2",
        "top1": "61.25",
        "top5": "97.5",
        "top1_1view": "55.0",
        "gflops_per_view": "0.61",
        "params_m": "0.52",
        "val_videos": "16",
        "eval_mode": "fast",
        "checkpoint_sha256": sha,
    }
    other = {**mine, "model": "demo_vit", "top1": "12.5", "top5": "33.75", "checkpoint_sha256": "0" * 64}
    _write_table(results / "model_zoo.csv", [other, mine])
    out = results / "export" / DEMO
    out.mkdir(parents=True)  # Snakemake makes the folders of a rule's outputs before its job runs
    res = _export(model_pt, out, "--format", "hub")
    assert "warning" not in res.stderr
    card = (out / "README.md").read_text()
    cells = _card_cells(card)
    assert cells["top-1, 2 views"] == mine["top1"] and cells["top-5, 2 views"] == mine["top5"]
    assert cells["top-1, 1 view"] == mine["top1_1view"] and cells["GFLOPs per view"] == mine["gflops_per_view"]
    assert cells["parameters (M)"] == mine["params_m"] and cells["frames × stride"] == "8 × 2"
    assert cells["model.pt sha256"] == sha and cells["image size"] == "64"
    assert "12.5" not in card and "33.75" not in card
    assert f'tokshift.load("{out}")' in card and f'pretrained_cfg_overlay=dict(file="{out}/model.safetensors")' in card

    # A table whose row is of another checkpoint gives no numbers, and says so in the card and on stderr.
    stale = _write_table(tmp_path / "stale.csv", [{**mine, "checkpoint_sha256": "f" * 64}])
    res = _export(model_pt, out, "--format", "hub", "--results", str(stale))
    card = (out / "README.md").read_text()
    assert "No results:" in card and "is of another checkpoint" in card and "61.25" not in card
    assert "warning: the model card has no results" in res.stderr and "is of another checkpoint" in res.stderr
    assert "top-1, 2 views" not in _card_cells(card)


def test_model_card_without_a_row_says_so(exported: Path, tmp_path: Path) -> None:
    # An export is read and written again in the hub format: its model.pt's checksum carries over.
    table = _write_table(tmp_path / "model_zoo.csv", [{"model": "demo_vit", "views": "2", "top1": "40.0"}])
    out = tmp_path / "hub"
    res = _export(exported, out, "--format", "hub", "--results", str(table))
    card = (out / "README.md").read_text()
    assert f"No results: {table} has no row for {DEMO}" in card and "top-1" not in card
    assert f"has no row for {DEMO}" in res.stderr
    assert sha256_file(out / "model.safetensors") == sha256_file(exported / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    assert config["checkpoint_sha256"] == json.loads((exported / "config.json").read_text())["checkpoint_sha256"]


def test_refused_exports_write_nothing(trained_demo: TrainedDemo, exported: Path, tmp_path: Path) -> None:
    model_pt = tmp_path / "run" / "model.pt"
    model_pt.parent.mkdir()
    shutil.copy2(trained_demo.checkpoint, model_pt)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")
    bad_table = tmp_path / "bad.csv"
    bad_table.write_text("model,top1\ndemo_tokshift,50\n")
    cases = [
        (["--out-dir", str(model_pt.parent)], f"--out-dir {model_pt.parent} contains the input {model_pt}"),
        (["--out-dir", str(tmp_path)], "contains the input"),
        (["--out-dir", str(busy)], f"--out-dir {busy} already holds notes.txt and is no tokshift export"),
        (["--out-dir", str(model_pt)], "contains the input"),
        (["--out-dir", str(tmp_path / "new"), "--format", "hub", "--results", str(bad_table)], "lacks the column"),
    ]
    for args, message in cases:
        res = run_cli_inprocess("export", str(model_pt), *args)
        assert res.returncode == ExitCode.BAD_INPUT, res.stderr
        assert res.stderr.startswith("tokshift export: error: ") and message in res.stderr, res.stderr
    assert (busy / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "busy", "run"]
    res = run_cli_inprocess("export", str(exported), "--out-dir", str(exported / "sub"))
    assert res.returncode == ExitCode.BAD_INPUT and f"is inside the input export {exported}" in res.stderr
    assert not (exported / "sub").exists()
    res = run_cli_inprocess("export", str(busy), "--out-dir", str(tmp_path / "x"))
    assert (
        res.returncode == 2
        and f"{busy} is a directory, not a file nor a folder written by tokshift export" in res.stderr
    )


def test_weights_that_are_not_the_exports_own_are_refused(exported: Path, tmp_path: Path) -> None:
    import tokshift
    from tokshift.checkpoints import open_checkpoint

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one bit of the last weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(DataDamaged, match="the weights are not this export's"):
        tokshift.load(copy, device="cpu")
    (copy / "config.json").unlink()
    with pytest.raises(BadInput, match="without the config.json of a tokshift export beside it"):
        open_checkpoint(copy / "model.safetensors")
    with pytest.raises(BadInput, match="is a folder but no tokshift export"):
        open_checkpoint(copy)


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path: Path) -> None:
    from tokshift.fileio import atomic_folder

    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("first\n")
    with pytest.raises(RuntimeError, match="stopped"), atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("second\n")
        raise RuntimeError("stopped")
    assert (out / "a.txt").read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
