"""The launch path of a cluster job: the device it was given, its first log lines, the
collective timeouts, and a rank that fails ending the whole job at once.

Real parts only: the CLI in this process, real gloo process groups of two processes (torchrun,
or two processes started with the launcher variables), real damaged shards.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.engine_helpers import (
    REPO,
    PackedDemo,
    TrainedDemo,
    cli_env,
    quick_eval_args,
    run_cli_inprocess,
    torchrun_cmd,
    train_args,
)
from tokshift.errors import ExitCode

#: What the first lines of a job's log hold, in this order (tokshift.engine.gpu_env.describe_environment).
FIRST_LINES = ("host ", "GPUs visible: ", "NVIDIA driver: ", "torch ", "CPU: ", "device cpu: ", "precision: ")


def _log_messages(stderr: str) -> list[str]:
    """The messages of the `tokshift` log lines (`HH:MM:SS [rank N] LEVEL name: message`)."""
    pattern = r"^\d\d:\d\d:\d\d (?:\[rank \d+\] )?[A-Z]+ tokshift[\w.]*: (.*)$"
    return [m.group(1) for m in re.finditer(pattern, stderr, flags=re.M)]


def test_a_gpu_job_whose_cuda_is_unusable_exits_3_and_device_cpu_still_trains(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokshift.engine.gpu_env import torch_facts

    if torch_facts().available:
        pytest.skip("CUDA works on this machine: a job given its GPUs runs on them")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what SLURM sets for a job given one GPU
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "1")
    out = tmp_path / "gpu"
    res = run_cli_inprocess(*train_args(packed_demo, out, "--max-epochs", "1", "--workers", "0"))
    assert res.returncode == ExitCode.NOT_RETRYABLE, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("tokshift train: error: this job was given GPUs ("), errors
    assert "CUDA_VISIBLE_DEVICES=0, SLURM_GPUS_ON_NODE=1" in errors[0]
    assert "CPU-only build" in errors[0] or "finds no usable GPU" in errors[0]  # the cause, by name
    assert "--device cpu" in errors[0]
    assert not out.exists(), "a job that cannot use its GPUs must fail before it touches anything"

    res = run_cli_inprocess(*train_args(packed_demo, out, "--max-epochs", "1", "--workers", "0", "--device", "cpu"))
    assert res.returncode == 0, res.stderr[-3000:]
    messages = _log_messages(res.stderr)
    first = messages[: len(FIRST_LINES)]
    assert [m.startswith(p) for m, p in zip(first, FIRST_LINES)] == [True] * len(FIRST_LINES), first
    assert "the job's GPUs stay unused: CUDA_VISIBLE_DEVICES=0, SLURM_GPUS_ON_NODE=1" in first[5]
    assert first[6] == "precision: fp32 (--amp auto on the CPU)"
    assert (out / "model.pt").is_file()


@pytest.mark.slow  # two gloo processes that wait out a timeout twice: ~9 s
def test_collectives_wait_long_only_inside_long_wait(tmp_path: Path) -> None:
    """Two gloo processes with a 1-second collective timeout: a 3-second wait passes inside
    `long_wait` and aborts the collective outside it (so the short timeout is really in force)."""
    script = tmp_path / "ranks.py"
    script.write_text(
        textwrap.dedent("""
            import sys, time
            from tokshift.engine import distributed as D

            ctx = D.init_distributed("cpu")
            D.set_collective_timeout(ctx)  # TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES: 1 s
            with D.long_wait(ctx, minutes=1):
                if ctx.rank == 1:
                    time.sleep(3)
                D.barrier(ctx)
            print("long wait passed", ctx.timeout.total_seconds(), flush=True)
            t0 = time.monotonic()
            try:
                if ctx.rank == 1:
                    time.sleep(3)
                D.barrier(ctx)
                print("short wait passed", flush=True)
            except Exception as exc:
                print(f"short wait failed after {time.monotonic() - t0:.1f} s: {exc}", flush=True)
        """)
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = cli_env(1) | {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES": str(1 / 60),
        }
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=REPO, text=True, **_PIPES))
    outs = [p.communicate(timeout=120) for p in procs]
    rank0 = outs[0][0]
    assert "long wait passed 1.0" in rank0, outs  # and the short timeout is back after the block
    # Rank 1 arrives after 3 s, so only a timeout shorter than that can fail this barrier.
    assert re.search(r"short wait failed after ([\d.]+) s", rank0), outs


_PIPES = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}


def test_collective_timeout_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokshift.engine.distributed import COLLECTIVE_TIMEOUT_MINUTES, collective_timeout_minutes
    from tokshift.errors import BadInput

    assert collective_timeout_minutes({}) == COLLECTIVE_TIMEOUT_MINUTES == 10
    assert collective_timeout_minutes({"TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES": "2.5"}) == 2.5
    for bad in ("0", "-1", "ten"):
        with pytest.raises(BadInput, match="TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES"):
            collective_timeout_minutes({"TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES": bad})


def _damage_video(shard: Path, video: str) -> None:
    """Flip bits inside one frame of `video` (and its stale copies): same size, the frame's CRC fails."""
    from tokshift.data.store import ShardReader

    reader = ShardReader(shard)
    frame = reader.read_frames(video, [reader.meta(video)["nframes"] // 2])[0]
    reader.close()
    blob = bytearray(shard.read_bytes())
    needle = frame[-60:-20]
    at = blob.find(needle)
    assert at >= 0
    while at >= 0:
        blob[at] ^= 0x40
        at = blob.find(needle, at + 1)
    shard.write_bytes(bytes(blob))


@pytest.mark.slow  # two torchrun workers evaluating: ~12 s
def test_a_rank_that_meets_a_damaged_shard_ends_the_evaluation_at_once(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    """Rank 1 alone meets the damaged video; rank 0 is done and waits in the final gather, whose
    timeout is long. The job must still end within seconds, non-zero, with rank 1's message."""
    from tokshift.data.store import ShardReader, seal_path

    shard = tmp_path / "val.lmdb"
    shutil.copy2(packed_demo.val_odd, shard)
    shutil.copy2(seal_path(packed_demo.val_odd), seal_path(shard))
    reader = ShardReader(shard)
    video = reader.video_ids[5]  # video 5 of 7: rank 1 takes 1, 3, 5; rank 0 takes 0, 2, 4, 6
    reader.close()
    _damage_video(shard, video)
    cmd = torchrun_cmd(2, *quick_eval_args(trained_demo.checkpoint, shard, tmp_path / "out"))
    env = cli_env(1) | {"TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES": "10"}
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    assert res.returncode != 0, res.stderr[-3000:]
    # Far below any collective timeout (10 minutes here, 60 for the final gather): nobody waited for one.
    assert took < 120, f"the job took {took:.0f} s to end"
    assert f"tokshift evaluate: error: frame shard {shard} is damaged" in res.stderr, res.stderr[-3000:]
    assert f"video {video!r}" in res.stderr
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", res.stderr), res.stderr[-3000:]  # torchrun's summary
    assert re.search(r"exitcode\s*:\s*5 ", res.stderr), res.stderr[-3000:]  # DATA_DAMAGED, from rank 1
    assert not (tmp_path / "out" / "metrics.json").exists()
