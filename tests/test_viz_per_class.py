"""`tokshift per-class` on a hand-made predictions.csv: every number checked against a hand count,
failed videos left out, the confusion figure written, and bad inputs named."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tokshift.cli import main
from tokshift.viz.per_class import confusion_pairs, per_class_table, read_predictions
from tokshift.viz.pick import pick_roles, pick_videos

HEADER = ["video_id", "label", *[f"pred{i}" for i in range(1, 6)], *[f"score{i}" for i in range(1, 6)], "error"]
# (video, true, top-5 predictions, top-1 score, error)
ROWS = [
    ("a1", "a", "a b c d e", 0.90, ""),
    ("a2", "a", "b a c d e", 0.60, ""),
    ("a3", "a", "b c d e f", 0.70, ""),
    ("a4", "a", "c a b d e", 0.50, ""),
    ("b1", "b", "b a c d e", 0.95, ""),
    ("b2", "b", "b c a d e", 0.40, ""),
    ("c1", "c", "a b d e f", 0.80, ""),
    ("c2", "c", "", 0.0, "OSError: unreadable"),  # failed: counted nowhere
    ("d1", "d", "c b a e f", 0.30, ""),
]
CLASSES = ["a", "b", "c", "d", "e", "f", "g"]


def _write(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(HEADER)
        for vid, label, preds, score, error in ROWS:
            p = preds.split() or [""] * 5
            scores = [f"{score:.6f}"] + ["0.010000"] * 4 if not error else [""] * 5
            w.writerow([vid, label, *p, *scores, error])
    return path


def test_per_class_numbers_match_a_hand_count(tmp_path: Path) -> None:
    import pandas as pd

    pred = read_predictions(_write(tmp_path / "predictions.csv"))
    assert len(pred) == 8  # c2 failed
    table = per_class_table(pred, CLASSES).set_index("class")
    assert list(table.index) == CLASSES
    # a: 4 videos, top-1 only a1, top-5 a1 a2 a4; mistaken for b twice (a2, a3), c once.
    assert table.loc["a", ["videos", "top1", "top5"]].tolist() == [4, 25.0, 75.0]
    assert (table.loc["a", "confused_with"], table.loc["a", "confused_count"]) == ("b", 2)
    assert table.loc["b", ["videos", "top1", "top5"]].tolist() == [2, 100.0, 100.0]
    assert (table.loc["b", "confused_with"], table.loc["b", "confused_count"]) == ("", 0)
    assert table.loc["c", ["videos", "top1", "top5"]].tolist() == [1, 0.0, 0.0]
    assert (table.loc["c", "confused_with"], table.loc["c", "confused_count"]) == ("a", 1)
    assert table.loc["d", ["videos", "top1", "top5"]].tolist() == [1, 0.0, 0.0]
    assert table.loc["e", "videos"] == 0 and pd.isna(table.loc["e", "top1"])
    pairs = confusion_pairs(pred)
    assert list(zip(pairs["true"], pairs["predicted"], pairs["count"])) == [
        ("a", "b", 2),
        ("a", "c", 1),
        ("c", "a", 1),
        ("d", "c", 1),
    ]


def test_pick_takes_the_extremes_of_the_right_and_the_most_confident_errors(tmp_path: Path) -> None:
    pred = read_predictions(_write(tmp_path / "predictions.csv"))
    assert pick_videos(pred, errors=2) == [
        ("correct_most_confident", "b1"),
        ("correct_least_confident", "b2"),
        ("error_1", "c1"),
        ("error_2", "a3"),
    ]
    assert [role for role, _ in pick_videos(pred, errors=3)] == pick_roles(3)
    no_errors = pred[pred["pred1"] == pred["label"]]
    assert [role for role, _ in pick_videos(no_errors)] == ["correct_most_confident", "correct_least_confident"]


def test_per_class_command_writes_table_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    predictions = _write(tmp_path / "predictions.csv")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    out_csv, plot = tmp_path / "out" / "per_class.csv", tmp_path / "out" / "confusions.png"
    argv = ["per-class", "--predictions", str(predictions), "--csv", str(out_csv), "--plot", str(plot)]
    assert main([*argv, "--classes", str(classes)]) == 0
    written = pd.read_csv(out_csv, keep_default_na=False)
    assert list(written.columns) == ["class", "videos", "top1", "top5", "confused_with", "confused_count", "trained"]
    assert set(written["trained"]) == {""}  # no metrics.json beside the predictions: not known
    assert written["class"].tolist() == CLASSES
    assert float(written.loc[0, "top5"]) == 75.0 and written.loc[4, "top1"] == ""  # class e: no videos
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    classes.write_text("a\nb\n")
    assert main([*argv, "--classes", str(classes)]) == 2
    assert "labels ['c', 'd'] that are not in --classes" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("video,label\nx,a\n")
    assert main([*argv[:1], "--predictions", str(tmp_path / "bad.csv"), *argv[3:]]) == 2
    assert "lacks column(s)" in capsys.readouterr().err


def test_many_classes_get_only_the_top_pairs(tmp_path: Path) -> None:
    from tokshift.viz.per_class import render_confusions

    pred = read_predictions(_write(tmp_path / "predictions.csv"))
    many = [f"class_{i}" for i in range(40)] + CLASSES
    assert len(render_confusions(pred, many, "many").axes) == 1
    assert len(render_confusions(pred, CLASSES, "few").axes) == 2
