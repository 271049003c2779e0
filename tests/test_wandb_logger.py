"""`train.loggers: [tensorboard, wandb]`: a real offline W&B run gets the same scalars as metrics.jsonl.

The optional `wandb` package (pip install 'tokshift[wandb]') is not part of the test environment's
lock: where it is not installed, the logging test is skipped with that reason and the refusal test
runs instead. W&B writes an offline run as one `.wandb` file: a 7-byte header, then LevelDB-log
records (32 KiB blocks; each chunk: CRC32C, length, type) of W&B's own protobuf `Record`, which
wandb ships (`wandb.proto.wandb_internal_pb2`); `_records` reads them.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine_helpers import PackedDemo, run_cli_inprocess, train_args
from tokshift.engine.logbook import read_jsonl

HAS_WANDB = importlib.util.find_spec("wandb") is not None
BLOCK = 32 * 1024
HEADER = 7  # b":W&B", a 2-byte magic, a version byte


def _records(path: Path) -> Iterator[bytes]:
    """The payloads of a `.wandb` file's LevelDB-log records (chunk types: 1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending
            pending = b""


def _history(run_file: Path) -> dict[int, dict[str, float]]:
    """step -> {key: value} of every history record in an offline run."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[int, dict[str, float]] = {}
    for payload in _records(run_file):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
        step = int(items.pop("_step", record.history.step.num))
        out.setdefault(step, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return out


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'tokshift[wandb]')")
def test_an_offline_wandb_run_logs_the_losses_of_metrics_jsonl(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    (tmp_path / "wandb-home").mkdir()
    out = tmp_path / "run"
    res = run_cli_inprocess(*train_args(packed_demo, out, "--loggers", "tensorboard", "wandb"))
    assert res.returncode == 0, res.stderr[-3000:]
    (run_file,) = (tmp_path / "wandb-home").glob("wandb/offline-run-*/run-*.wandb")
    logged = _history(run_file)
    steps = {r["step"]: r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "step"}
    assert steps and set(steps) <= set(logged)
    for step, record in steps.items():
        assert logged[step]["step/loss"] == pytest.approx(record["loss"], rel=1e-12), step
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert logged[epochs[-1]["step"]]["epoch/train_loss"] == pytest.approx(epochs[-1]["train_loss"], rel=1e-12)
    assert (out / "events").is_dir()  # TensorBoard too


@pytest.mark.skipif(HAS_WANDB, reason="wandb is installed: the logging test runs instead")
def test_wandb_without_its_package_is_refused_before_training(packed_demo: PackedDemo, tmp_path: Path) -> None:
    res = run_cli_inprocess(*train_args(packed_demo, tmp_path / "run", "--loggers", "wandb"))
    assert res.returncode == 2
    assert "the wandb package is not installed" in res.stderr and "pip install 'tokshift[wandb]'" in res.stderr
    assert not (tmp_path / "run" / "model.pt").exists()
