"""Out of GPU memory: the per-GPU batch that fits is found before training, or the run says what fits.

No GPU here: TOKSHIFT_OOM_ABOVE_BATCH makes the real model's training forward raise torch's own
OutOfMemoryError above a batch size, which is what a card too small for the batch does.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from tests.engine_helpers import PackedDemo, run_cli_inprocess, train_args
from tokshift.engine import distributed as D
from tokshift.engine import oom
from tokshift.engine.loading import build_model
from tokshift.errors import ExitCode
from tokshift.zoo import get_config


@pytest.mark.parametrize(
    ("batch", "accum", "expected"),
    [(16, 1, (8, 2)), (21, 10, (10, 21)), (1, 10, None), (3, 1, (1, 3)), (2, 5, (1, 10))],
)
def test_a_smaller_layout_keeps_the_clips_per_step(batch: int, accum: int, expected: tuple[int, int] | None) -> None:
    got = oom.smaller_layout(batch, accum)
    assert got == expected
    if got:
        assert got[0] * got[1] == batch * accum and got[0] <= batch // 2


def _demo_model(cfg):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    return build_model(cfg.model_dict())


def test_the_probe_finds_the_batch_that_fits_and_leaves_rng_and_weights_alone(monkeypatch) -> None:
    monkeypatch.setenv(oom.INJECT_VAR, "2")
    cfg = get_config("demo_tokshift").replace(batch_size=8, accum_steps=1)
    model = _demo_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = oom.inject_oom(model)
    ctx = D.DistContext(D.LaunchEnv(), torch.device("cpu"), None)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    fitted = oom.fit_batch(model, cfg, ctx, contextlib.nullcontext, fallback=True)
    assert (fitted.batch_size, fitted.accum_steps) == (2, 4)  # 8 -> 4 (too big) -> 2
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    handle.remove()


def test_without_the_fallback_the_message_names_what_fits(monkeypatch) -> None:
    monkeypatch.setenv(oom.INJECT_VAR, "3")
    cfg = get_config("demo_tokshift").replace(batch_size=8, accum_steps=1)
    model = _demo_model(cfg)
    oom.inject_oom(model)
    ctx = D.DistContext(D.LaunchEnv(), torch.device("cpu"), None)
    with pytest.raises(oom.OutOfMemory) as err:
        oom.fit_batch(model, cfg, ctx, contextlib.nullcontext, fallback=False)
    text = str(err.value)
    assert "demo_tokshift" in text and "8 clip(s) per GPU" in text and "global batch 8" in text
    assert "--override batch_size=4 accum_steps=2" in text and "oom_fallback" in text
    assert err.value.exit_code == ExitCode.NOT_RETRYABLE


def test_on_a_cpu_without_injection_nothing_is_probed(monkeypatch) -> None:
    monkeypatch.delenv(oom.INJECT_VAR, raising=False)
    cfg = get_config("demo_tokshift")
    ctx = D.DistContext(D.LaunchEnv(), torch.device("cpu"), None)

    def never(*args, **kwargs) -> bool:  # noqa: ANN002, ANN003
        raise AssertionError("probed on a CPU")

    assert oom.fit_batch(_demo_model(cfg), cfg, ctx, contextlib.nullcontext, fallback=True, probe=never) is cfg


def _train(packed_demo: PackedDemo, out: Path, *extra: str, layout: tuple[int, int] = (8, 1)):  # noqa: ANN202
    overrides = ("epochs=1", f"batch_size={layout[0]}", f"accum_steps={layout[1]}")
    return run_cli_inprocess(*train_args(packed_demo, out, "--workers", "0", *extra, overrides=overrides))


def test_training_out_of_memory_stops_with_the_override_or_falls_back(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(oom.INJECT_VAR, "4")
    stopped = _train(packed_demo, tmp_path / "stopped")
    assert stopped.returncode == ExitCode.NOT_RETRYABLE, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--override batch_size=4 accum_steps=2" in errors[0], stopped.stderr
    assert not (tmp_path / "stopped" / "model.pt").exists()

    fell_back = _train(packed_demo, tmp_path / "fallback", "--oom-fallback")
    assert fell_back.returncode == 0, fell_back.stderr
    summary = json.loads((tmp_path / "fallback" / "train_summary.json").read_text())
    assert (summary["batch_size"], summary["accum_steps"], summary["global_batch"]) == (4, 2, 8)

    monkeypatch.delenv(oom.INJECT_VAR)
    direct = _train(packed_demo, tmp_path / "direct", layout=(4, 2))
    assert direct.returncode == 0, direct.stderr
    reference = json.loads((tmp_path / "direct" / "train_summary.json").read_text())
    # The fallback trains what the same layout given by hand trains.
    assert summary["optimizer_steps"] == reference["optimizer_steps"]
    assert summary["final_train_loss"] == pytest.approx(reference["final_train_loss"], rel=1e-6)


def test_evaluation_out_of_memory_names_the_view_batch_to_lower(
    trained_demo, packed_demo: PackedDemo, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(oom.INJECT_VAR, "3")
    args = ("evaluate", "--checkpoint", str(trained_demo.checkpoint), "--shards", str(packed_demo.val_odd))
    views = ("--clips", "2", "--crops", "3", "--workers", "0")
    failed = run_cli_inprocess(*args, "--out-dir", str(tmp_path / "big"), *views, "--view-batch", "6")
    assert failed.returncode == ExitCode.NOT_RETRYABLE, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "at 6 views per forward pass" in errors[0] and "--view-batch" in errors[0]
    small = run_cli_inprocess(*args, "--out-dir", str(tmp_path / "small"), *views, "--view-batch", "3")
    assert small.returncode == 0, small.stderr
    assert json.loads((tmp_path / "small" / "metrics.json").read_text())["videos"] == packed_demo.val_odd_count
