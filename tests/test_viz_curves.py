"""`tokshift curves` on a small metrics.jsonl in the logbook's format: the series read back, the
figures written, and a file that is no training log named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tokshift.cli import main
from tokshift.engine.logbook import Logbook
from tokshift.viz.curves import read_curves


def _log(folder: Path, val: bool = True) -> Path:
    """Two epochs of two logging steps each, written by the training logbook itself."""
    book = Logbook(folder, loggers=())
    step = 0
    for epoch in (1, 2):
        for k in (1, 2):
            step += 5
            book.write({"kind": "step", "epoch": epoch, "step": step, "loss": 2.0 / step, "lr": 0.1 * k}, step)
        record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": 1.0 / epoch, "train_top1": 40.0 * epoch}
        if val:
            record.update(val_top1_1view=50.0 + epoch, val_loss=float("nan") if epoch == 1 else 0.5)
        book.write(record, step)
    book.close()
    with open(book.path, "a", encoding="utf-8") as f:
        f.write('{"kind": "step", "ep')  # a torn last line, as a killed job leaves
    return book.path


def test_read_curves_returns_the_logged_series(tmp_path: Path) -> None:
    c = read_curves(_log(tmp_path / "demo_vit"))
    assert c.name == "demo_vit"
    assert c.steps == [5, 10, 15, 20]
    assert c.step_loss == pytest.approx([0.4, 0.2, 2 / 15, 0.1])
    assert c.step_lr == pytest.approx([0.1, 0.2, 0.1, 0.2])
    assert (c.epochs, c.epoch_steps) == ([1, 2], [10, 20])
    assert c.train_top1 == [40.0, 80.0] and c.val_top1 == [51.0, 52.0]
    assert math.isnan(c.val_loss[0]) and c.val_loss[1] == 0.5  # NaN was logged as the string "nan"
    no_val = read_curves(_log(tmp_path / "other", val=False), name="renamed")
    assert no_val.name == "renamed" and all(math.isnan(v) for v in no_val.val_top1)


def test_curves_command_writes_one_figure_per_run_and_the_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _log(tmp_path / "runs" / "demo_vit")
    b = _log(tmp_path / "runs" / "x", val=False)
    out, compared = tmp_path / "figs", tmp_path / "compared.png"
    argv = ["curves", "--metrics", str(a), f"demo_tokshift={b}", "--out-dir", str(out), "--comparison", str(compared)]
    assert main(argv) == 0
    for png in (out / "demo_vit.png", out / "demo_tokshift.png", compared):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    capsys.readouterr()
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"something": 1}) + "\n")
    assert main(["curves", "--metrics", str(empty), "--out-dir", str(out)]) == 2
    assert "empty.jsonl holds no step or epoch records" in capsys.readouterr().err
    assert main(["curves", "--metrics", str(tmp_path / "none.jsonl"), "--out-dir", str(out)]) == 2
    assert "none.jsonl does not exist" in capsys.readouterr().err
