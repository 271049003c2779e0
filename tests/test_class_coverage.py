"""Classes with videos in one split only are named, never scored in silence.

A small `csv` dataset made of the demo clips gives `disc_shrink` validation videos but no training
video and `brighten` training videos but no validation video. The index, the split summary, the
training log, the evaluation log and metrics.json, the results table and the per-class table
must each name them; the fully covered demo dataset must give no such warning.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine_helpers import PackedDemo, TrainedDemo, quick_eval_args, run_cli_inprocess

VAL_ONLY, TRAIN_ONLY = "disc_shrink", "brighten"


@dataclass(frozen=True)
class Uneven:
    spec: dict
    index: Path  # folder holding train.csv and val.csv, as the workflow names them
    train: Path
    val: Path
    model: Path  # folder of the model trained on it
    train_log: str


def _split_csv(videos: Path, split: str, drop: str, per_class: int, out: Path) -> Path:
    """`path,label` rows of the first `per_class` demo clips of each class of `split` but `drop`."""
    rows: dict[str, list[Path]] = {}
    for clip in sorted((videos / split).glob("*.mp4")):
        label = clip.stem.rsplit("_", 1)[0]
        if label != drop:
            rows.setdefault(label, []).append(clip)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "label"])
        for label, clips in rows.items():
            w.writerows([str(c), label] for c in clips[:per_class])
    return out


@pytest.fixture(scope="module")
def uneven(packed_demo: PackedDemo, tmp_path_factory: pytest.TempPathFactory) -> Uneven:
    """The uneven dataset indexed, packed, and a demo model trained on it for one short epoch."""
    from tokshift.data.pack import pack_shard
    from tokshift.data.sources import build_index, write_index

    root = tmp_path_factory.mktemp("uneven")
    spec = {
        "kind": "csv",
        "splits": {
            "train": str(_split_csv(packed_demo.videos, "train", VAL_ONLY, 1, root / "train_list.csv")),
            "val": str(_split_csv(packed_demo.videos, "val", TRAIN_ONLY, 1, root / "val_list.csv")),
        },
    }
    shards = {}
    for split in ("train", "val"):
        index = write_index(build_index(spec, split, 1), root / "index" / f"{split}.csv")[0]
        shards[split] = root / "frames" / split / "shard-0.lmdb"
        shards[split].parent.mkdir(parents=True)
        pack_shard(
            index,
            0,
            shards[split],
            shards[split].with_suffix(".failures.csv"),
            short_side=64,
            workers=1,
            progress=False,
        )
    model = root / "model"
    res = run_cli_inprocess(
        "train",
        "--model",
        "demo_tokshift",
        "--train-shards",
        str(shards["train"]),
        "--val-shards",
        str(shards["val"]),
        "--out-dir",
        str(model),
        "--workers",
        "0",
        "--override",
        "batch_size=3",
        "epochs=1",
        threads=2,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return Uneven(spec, root / "index", shards["train"], shards["val"], model, res.stderr)


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and "video" in line and "classes" in line]


def test_index_and_summary_name_the_classes_of_one_split(uneven: Uneven, tmp_path: Path) -> None:
    res = run_cli_inprocess(
        "index", "--spec-json", json.dumps(uneven.spec), "--split", "train", "--out", str(tmp_path / "train.csv")
    )
    assert res.returncode == 0, res.stderr
    assert [line.split("WARNING", 1)[1] for line in _warnings(res.stderr)] == [
        f" tokshift.data: 1 of 4 classes has no training video in {tmp_path / 'train.csv'}: {VAL_ONLY!r}; the "
        "model cannot learn them, so any validation video of theirs counts as an error"
    ]

    out = tmp_path / "summary.json"
    # The train index beside index/val.csv is found without being named.
    res = run_cli_inprocess(
        "summarize", "--index", str(uneven.index / "val.csv"), "--shards", str(uneven.val), "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    block = json.loads(out.read_text())["class_coverage"]
    assert block == {
        "classes": 4,
        "without_videos": [TRAIN_ONLY],
        "other_index": str(uneven.index / "train.csv"),
        "val_only": [VAL_ONLY],
        "train_only": [TRAIN_ONLY],
    }
    assert json.loads(res.stdout)["class_coverage"] == block  # what the command prints
    warned = _warnings(res.stderr)
    assert len(warned) == 2
    assert f"1 of 4 classes has validation videos but no training video: {VAL_ONLY!r}" in warned[0]
    assert f"1 of 4 classes has training videos but no validation video: {TRAIN_ONLY!r}" in warned[1]


def test_a_fully_covered_dataset_summarises_without_a_warning(packed_demo: PackedDemo) -> None:
    index = packed_demo.root / "val.index.csv"
    other = packed_demo.root / "train.index.csv"
    res = run_cli_inprocess(
        "summarize", "--index", str(index), "--shards", str(packed_demo.val), "--other-index", str(other)
    )
    assert res.returncode == 0, res.stderr
    block = json.loads(res.stdout)["class_coverage"]
    assert (block["without_videos"], block["val_only"], block["train_only"]) == ([], [], [])
    assert "WARNING" not in res.stderr


def test_summary_refuses_an_index_of_another_dataset(uneven: Uneven, packed_demo: PackedDemo) -> None:
    res = run_cli_inprocess(
        "summarize",
        "--index",
        str(uneven.index / "val.csv"),
        "--shards",
        str(uneven.val),
        "--other-index",
        str(packed_demo.root / "val.index.csv"),
    )
    assert res.returncode == 2
    assert "holds split(s) ['val'], not 'train'" in res.stderr


def test_training_warns_and_records_the_training_videos_per_class(uneven: Uneven) -> None:
    import torch

    warned = _warnings(uneven.train_log)
    assert len(warned) == 2 and "tokshift.engine.train" in warned[0]
    assert f"validation videos but no training video: {VAL_ONLY!r}" in warned[0]
    assert f"training videos but no validation video: {TRAIN_ONLY!r}" in warned[1]
    ckpt = torch.load(uneven.model / "model.pt", map_location="cpu", weights_only=False)
    assert ckpt["classes"] == ["brighten", "darken", "disc_grow", "disc_shrink"]
    assert ckpt["train_class_videos"] == [1, 1, 1, 0]
    summary = json.loads((uneven.model / "train_summary.json").read_text())
    assert summary["classes_without_training_videos"] == [VAL_ONLY]


def test_evaluation_reports_the_accuracy_without_untrained_classes(uneven: Uneven, tmp_path: Path) -> None:
    """The evaluation log warns, metrics.json carries the classes and the accuracy over the trained ones,
    and the results table and the per-class table (run on these files) show them."""
    import pandas as pd

    from tokshift.results import collect, write_outputs

    out = tmp_path / "eval"
    res = run_cli_inprocess(*quick_eval_args(uneven.model / "model.pt", uneven.val, out, clips=1), threads=2)
    assert res.returncode == 0, res.stderr[-3000:]
    warned = _warnings(res.stderr)
    assert len(warned) == 3 and "tokshift.engine.evaluate" in warned[0] and repr(VAL_ONLY) in warned[0]
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    trained = [r for r in rows if r["label"] != VAL_ONLY]
    assert len(rows) == 3 and len(trained) == 2
    block = metrics["class_coverage"]
    assert (block["val_only"], block["train_only"], block["videos_trained_classes"]) == ([VAL_ONLY], [TRAIN_ONLY], 2)
    assert block["top1_trained_classes"] == pytest.approx(100 * sum(r["pred1"] == r["label"] for r in trained) / 2)
    assert metrics["top1"] == pytest.approx(100 * sum(r["pred1"] == r["label"] for r in rows) / 3)
    assert (
        f"over the 2 videos of the classes with training videos: top-1 {block['top1_trained_classes']:.2f}%"
        in (warned[2])
    )

    table = tmp_path / "table"
    df = collect("uneven", [out / "metrics.json"], [uneven.model / "train_summary.json"])
    write_outputs(df, table / "model_zoo.csv", table / "model_zoo.md", table / "plot.png")
    row = pd.read_csv(table / "model_zoo.csv").iloc[0]
    assert (row["val_only_classes"], row["train_only_classes"]) == (1, 1)
    assert row["top1_trained_classes"] == round(block["top1_trained_classes"], 2)
    md_row = (table / "model_zoo.md").read_text().splitlines()[-1]
    assert md_row.endswith(f"| 1 / 1 | {block['top1_trained_classes']:.2f} |")
    # A checkpoint that records no training videos per class (a released one): empty cells, not zeros.
    unknown = tmp_path / "unknown" / "metrics.json"
    unknown.parent.mkdir()
    unknown.write_text(json.dumps({**metrics, "class_coverage": None}))
    df = collect("uneven", [unknown], [uneven.model / "train_summary.json"])
    write_outputs(df, table / "model_zoo.csv", table / "model_zoo.md", table / "plot.png")
    row = pd.read_csv(table / "model_zoo.csv", keep_default_na=False).iloc[0]
    assert (row["val_only_classes"], row["train_only_classes"], row["top1_trained_classes"]) == ("", "", "")
    assert (table / "model_zoo.md").read_text().splitlines()[-1].endswith("| — | — |")

    # The per-class table takes the classes from the metrics.json beside the predictions.
    res = run_cli_inprocess(
        "per-class",
        "--predictions",
        str(out / "predictions.csv"),
        "--classes",
        str(uneven.index / "val.classes.txt"),
        "--csv",
        str(tmp_path / "per_class.csv"),
        "--plot",
        str(tmp_path / "confusions.png"),
    )
    assert res.returncode == 0, res.stderr
    per_class = pd.read_csv(tmp_path / "per_class.csv", keep_default_na=False).set_index("class")
    assert per_class["trained"].to_dict() == {"brighten": True, "darken": True, "disc_grow": True, "disc_shrink": False}
    assert f"marked (untrained): {VAL_ONLY}" in res.stdout


def test_the_figure_marks_untrained_classes_in_red() -> None:
    import pandas as pd

    from tokshift.viz.per_class import UNTRAINED_MARK, render_confusions

    pred = pd.DataFrame(
        [
            {"video_id": "1", "label": "a", "pred1": "b"},
            {"video_id": "2", "label": "c", "pred1": "a"},
            {"video_id": "3", "label": "b", "pred1": "b"},
        ]
    )
    fig = render_confusions(pred, ["a", "b", "c"], "t", val_only=["c"])
    matrix, pairs = fig.axes
    rows = {t.get_text(): t.get_color() for t in matrix.get_yticklabels()}
    assert rows == {"a": "black", "b": "black", "c" + UNTRAINED_MARK: "tab:red"}
    bars = {t.get_text(): t.get_color() for t in pairs.get_yticklabels()}
    assert bars == {"a → b": "black", f"c{UNTRAINED_MARK} → a": "tab:red"}
    assert "1 class marked (untrained) has validation videos" in fig.texts[0].get_text()


def test_full_coverage_gives_no_warning_and_the_same_accuracy(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    assert not _warnings(trained_demo.result.stderr)
    res = run_cli_inprocess(
        *quick_eval_args(trained_demo.checkpoint, packed_demo.val_odd, tmp_path, clips=1), threads=2
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert not _warnings(res.stderr)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    block = metrics["class_coverage"]
    assert (block["val_only"], block["train_only"], block["videos_trained_classes"]) == ([], [], metrics["videos"])
    assert block["top1_trained_classes"] == pytest.approx(metrics["top1"])


def test_many_classes_are_counted_after_the_first_few() -> None:
    from tokshift.data.coverage import class_coverage

    classes = [f"c{i:02d}" for i in range(12)]
    coverage = class_coverage(classes, [0] * 9 + [3] * 3, [1] * 12)
    (line,) = coverage.warnings()
    assert line.startswith("9 of 12 classes have validation videos but no training video: 'c00', 'c01', 'c02', ")
    assert "'c04' and 4 more;" in line
    assert not class_coverage(classes, [1] * 12, [1] * 12).warnings()
