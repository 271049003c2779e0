"""Resume that cannot lose a run: identity and layout, another number of processes, runs set aside,
pruning that touches only the run's own files, and fp16 steps that are skipped instead of stopping.

Real parts: the demo model on the packed demo shards, real gloo process groups under torchrun,
real checkpoint files; runs are interrupted at a chosen optimizer step (TOKSHIFT_SIGNAL_AT_STEP).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.engine_helpers import REPO, PackedDemo, cli_env, run_cli_inprocess, torchrun_cmd
from tokshift.engine.logbook import read_jsonl
from tokshift.errors import ExitCode
from tokshift.fileio import sha256_file
from tokshift.zoo import get_config


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _resume_files(folder: Path) -> list[Path]:
    from tokshift.engine.checkpoint import list_resume

    return list_resume(folder)


def _steps(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "step"]


# ------------------------------------------------------------------------------------------ pruning


def test_pruning_never_removes_the_file_just_written_nor_another_runs(tmp_path: Path) -> None:
    from tokshift.engine.checkpoint import list_resume, resume_identity, save_resume

    # another run's checkpoints at higher steps (what a run of other settings left behind)
    theirs = [save_resume({"s": s}, tmp_path, epoch=3, step=s, keep=2, identity="a" * 12) for s in (50, 60)]
    untagged = save_resume({"s": 70}, tmp_path, epoch=3, step=70, keep=2)  # a name from before tags
    # this run's broken file at a later step (skipped on resume): not counted, not deleted
    later = save_resume({"s": 90}, tmp_path, epoch=4, step=90, keep=2, identity="b" * 12)
    mine = []
    for s in range(1, 6):
        path = save_resume({"s": s}, tmp_path, epoch=0, step=s, keep=2, identity="b" * 12)
        assert path.is_file() and path.with_name(path.name + ".sha256").is_file()
        mine.append(path)
        assert all(p.is_file() for p in [*theirs, untagged, later])
    left = [p for p in list_resume(tmp_path) if resume_identity(p) == "b" * 12]
    assert left == [later, mine[-1], mine[-2]]
    assert not any(p.with_name(p.name + ".sha256").exists() for p in mine[:-2])  # seals go with their files


# ------------------------------------------------------------------------- fingerprint and layout


def test_a_fingerprint_from_before_the_split_gives_the_same_identity_and_its_layout() -> None:
    from tokshift.engine.resume_plan import fingerprint, identity_tag, split_fingerprint

    cfg = get_config("demo_tokshift").replace(batch_size=4, accum_steps=2)
    new = fingerprint(cfg, 0, 2, 32, "a" * 64)
    old = {"config": cfg.to_dict(), "seed": 0, "world_size": 2, "train_clips": 32, "init_from_sha256": "a" * 64}
    identity, layout, requested = split_fingerprint(old)
    assert identity == new["identity"] and identity["global_batch"] == 16
    assert layout == new["layout"] == {"world_size": 2, "batch_size": 4, "accum_steps": 2}
    assert requested == new["requested"] == {"batch_size": 4, "accum_steps": 2}
    # the same run on 4 processes of 2 clips, no accumulation: another layout, the same identity
    other = fingerprint(cfg.replace(batch_size=2, accum_steps=2), 0, 4, 32, "a" * 64)
    assert identity_tag(other["identity"]) == identity_tag(identity)
    # written before init_from was named so: the same identity still
    older = {k: v for k, v in old.items() if k != "init_from_sha256"} | {"pretrained_sha256": "a" * 64}
    older["config"] = {("pretrained" if k == "imagenet_weights" else k): v for k, v in old["config"].items()}
    assert split_fingerprint(older)[0] == identity
    older["pretrained_sha256"] = "b" * 64
    assert split_fingerprint(older)[0]["init_from_sha256"] == "b" * 64


@pytest.mark.parametrize(
    "old, clips, at, world, batch, expect",
    [
        # 8 -> 4 processes: the accumulation doubles, the position (in clips) is kept
        ({"world_size": 8, "batch_size": 4, "accum_steps": 1}, 320, 3, 4, 4, (2, 6)),
        # the epoch's end stays the epoch's end
        ({"world_size": 8, "batch_size": 4, "accum_steps": 1}, 320, 10, 4, 4, (2, 20)),
        # half the batch on as many processes (an out-of-memory fallback)
        ({"world_size": 2, "batch_size": 8, "accum_steps": 1}, 32, 1, 2, 4, (2, 2)),
        # 2 -> 4 processes: half the accumulation; the epoch's last, partial step (64 clips) stays whole
        ({"world_size": 2, "batch_size": 4, "accum_steps": 12}, 256, 12, 4, 4, (6, 6)),
    ],
)
def test_continued_layout_keeps_the_global_batch_and_the_clip(old, clips, at, world, batch, expect) -> None:
    from tokshift.engine.resume_plan import continued_layout

    assert continued_layout(old, clips, at, world, batch) == expect


def test_a_layout_that_cannot_keep_the_global_batch_is_refused_with_one_that_can() -> None:
    from tokshift.engine.resume_plan import continued_layout, layout_suggestion

    old = {"world_size": 4, "batch_size": 2, "accum_steps": 1}  # global batch 8
    assert "no whole accum_steps" in continued_layout(old, 32, 1, 1, 3)
    assert layout_suggestion(old, 32, 1, 1, 3) == (
        "To continue it, run on 4 processes again or pass --override batch_size=2 accum_steps=4 "
        "(the same global batch 8)"
    )
    assert "no batch_size and accum_steps keep the global batch 8 on 3 processes" in layout_suggestion(old, 32, 1, 3, 2)
    # 1 -> 2 processes where the epoch ends in a step of 8 clips: 2 x 8 would drop that step
    one = {"world_size": 1, "batch_size": 8, "accum_steps": 2}
    assert "lose an optimizer step" in continued_layout(one, 40, 2, 2, 8)
    assert "batch_size=4 accum_steps=2" in layout_suggestion(one, 40, 2, 2, 8)


# ------------------------------------------------------------------- another number of processes


def _torchrun(nproc: int, args: list[str], signal_at: int | None = None) -> subprocess.CompletedProcess[str]:
    env = cli_env(1)
    if signal_at is not None:
        env["TOKSHIFT_SIGNAL_AT_STEP"] = str(signal_at)
    return subprocess.run(torchrun_cmd(nproc, *args), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def _assert_stopped_on_signal(res: subprocess.CompletedProcess[str]) -> None:
    """Rank 0 saved and exited RETRY_LATER (torchrun itself exits 1 when a worker exits non-zero)."""
    assert res.returncode != 0, res.stderr[-3000:]
    assert f"exit {int(ExitCode.RETRY_LATER)}, rerun the same command to continue" in res.stderr, res.stderr[-3000:]


@pytest.mark.slow  # 8 processes start for ~30 s on 2 cores; the in-process layout tests stay in the default tier
@pytest.mark.parametrize(("before", "after"), [(8, 4)])
def test_a_run_preempted_on_n_processes_continues_on_half_of_them_with_the_same_global_batch(
    packed_demo: PackedDemo, tmp_path: Path, before: int, after: int
) -> None:
    """Stopped after step 2 on `before` gloo processes, continued on `after` with twice the accumulation.

    The continued run is stopped once more after its step 5 to look into resume/ mid-run: the newest
    checkpoints are its own (nothing of the new run was pruned), with the run's one identity tag.
    Then it finishes and matches one uninterrupted process with the same global batch: the same
    clips in the same order and the same LR at every step. Tolerance as in the 1-vs-2-process test
    of test_engine_train.py (the sums are added in another order).
    """
    import torch

    global_batch = 8
    batch = global_batch // before
    common = ["--model", "demo_tokshift", "--train-shards", str(packed_demo.train), "--workers", "0"]
    common += ["--log-every", "1", "--checkpoint-minutes", "0"]
    args = ["train", *common, "--out-dir", str(tmp_path / "run"), "--override", f"batch_size={batch}", "epochs=2"]
    resume = tmp_path / "run" / "resume"

    first = _torchrun(before, args, signal_at=2)
    _assert_stopped_on_signal(first)
    saved = _resume_files(resume)
    assert [_load(p)["step"] for p in saved] == [3, 2]
    tag = saved[0].stem.rsplit("-", 1)[1]

    second = _torchrun(after, args, signal_at=5)
    _assert_stopped_on_signal(second)
    err = second.stderr
    assert f"resumed from {saved[0]}: epoch 0, micro-batch {3 * before // after}, optimizer step 3" in err, err[-3000:]
    assert (
        f"with another layout: {before} processes x batch {batch} x accum 1 -> {after} processes x batch {batch} "
        f"x accum 2; the global batch {global_batch} is kept"
    ) in err
    now = _resume_files(resume)
    assert [_load(p)["step"] for p in now] == [6, 5] and all(p.stem.endswith(tag) for p in now)
    assert _load(now[0])["fingerprint"]["layout"] == {"world_size": after, "batch_size": batch, "accum_steps": 2}
    assert not list(resume.glob("stale-*"))

    third = _torchrun(after, args)
    assert third.returncode == 0, third.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["global_batch"] == global_batch and summary["accum_steps"] == 2
    assert summary["world_size"] == after and summary["optimizer_steps"] == 8
    steps = _steps(tmp_path / "run")
    assert [r["step"] for r in steps] == list(range(1, 9))

    ref = run_cli_inprocess(
        "train", *common, "--out-dir", str(tmp_path / "ref"), "--override", f"batch_size={global_batch}", "epochs=2"
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    expect = _steps(tmp_path / "ref")
    assert [r["lr"] for r in steps] == pytest.approx([r["lr"] for r in expect], rel=1e-12)
    assert [r["loss"] for r in steps] == pytest.approx([r["loss"] for r in expect], rel=1e-5)
    a, b = _load(tmp_path / "ref" / "model.pt"), _load(tmp_path / "run" / "model.pt")
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], rtol=0, atol=1e-5), k


def _rewrite(ckpt: Path, change) -> None:
    """Change a checkpoint's content in place and seal it again (a file as an older version wrote it)."""
    import torch

    from tokshift.fileio import atomic_torch_save, atomic_write_text

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    change(state)
    digest = atomic_torch_save(state, ckpt)
    atomic_write_text(ckpt.with_name(ckpt.name + ".sha256"), f"{digest}  {ckpt.name}\n")


@pytest.mark.slow  # a training, then two torchrun processes refused: ~8 s
def test_a_layout_that_cannot_keep_the_global_batch_stops_before_training_and_moves_nothing(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 process x batch 8 x accum 3 (24 clips a step), continued on 2 processes: 16 does not divide 24.

    Refused before training with the command-line change that works; only rank 0 reports it (the
    other rank exits OK, so a launcher that stops at the first failing task never cuts it short).
    """
    out = tmp_path / "run"
    args = ["train", "--model", "demo_tokshift", "--train-shards", str(packed_demo.train), "--workers", "0"]
    args += ["--out-dir", str(out), "--override", "batch_size=8", "accum_steps=3", "epochs=2"]
    monkeypatch.setenv("TOKSHIFT_SIGNAL_AT_STEP", "1")
    first = run_cli_inprocess(*args)
    monkeypatch.delenv("TOKSHIFT_SIGNAL_AT_STEP")
    assert first.returncode == ExitCode.RETRY_LATER, first.stderr[-2000:]
    (ckpt,) = _resume_files(out / "resume")
    files = {p.name: sha256_file(p) for p in (out / "resume").rglob("*") if p.is_file()}

    res = _torchrun(2, args)
    assert res.returncode != 0
    assert f"tokshift train: error: cannot continue {ckpt}: it was written with 1 process x batch 8 x accum 3" in (
        res.stderr
    ), res.stderr[-3000:]
    assert res.stderr.count("cannot continue") == 1
    assert (
        "To continue it, run on 1 process again or pass --override batch_size=4 accum_steps=3 "
        f"(the same global batch 24); to start over instead, move {out / 'resume'} away"
    ) in res.stderr
    assert "[rank 1] ERROR" not in res.stderr and "Traceback" not in res.stderr.split("tokshift train: error")[0]
    assert {p.name: sha256_file(p) for p in (out / "resume").rglob("*") if p.is_file()} == files


# -------------------------------------------------------------------------- runs of other settings


def test_a_run_of_other_settings_is_set_aside_and_can_be_continued_later(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A stops at step 3; run B (another seed) moves A's files into resume/stale-*/ instead of
    starting over beside them, keeps its own checkpoints through its next saves, and A continues
    later as the warning says."""
    out = tmp_path / "run"
    resume = out / "resume"
    base = ["train", "--model", "demo_tokshift", "--train-shards", str(packed_demo.train), "--workers", "0"]
    base += ["--log-every", "1", "--out-dir", str(out), "--override", "batch_size=8", "epochs=2"]
    monkeypatch.setenv("TOKSHIFT_SIGNAL_AT_STEP", "2")
    a = run_cli_inprocess(*base, "--checkpoint-minutes", "1000")
    assert a.returncode == ExitCode.RETRY_LATER, a.stderr[-2000:]
    (old,) = _resume_files(resume)

    b = run_cli_inprocess(*base, "--seed", "1", "--checkpoint-minutes", "0")
    monkeypatch.delenv("TOKSHIFT_SIGNAL_AT_STEP")
    assert b.returncode == ExitCode.RETRY_LATER, b.stderr[-2000:]
    (stale,) = resume.glob("stale-*")
    assert f"{resume} held 1 checkpoint(s) of another run (newest {old.name}), which differs from this one in: " in (
        b.stderr
    )
    assert "differs from this one in: seed 0 -> 1. " in b.stderr
    assert f"Moved them and the live logs to {stale}; this run starts from scratch" in b.stderr
    assert f"`mv {resume} {resume}.new && mv {resume}.new/{stale.name} {resume}`" in b.stderr
    assert sorted(p.name for p in stale.iterdir()) == sorted(
        [old.name, f"{old.name}.sha256", "events", "metrics.jsonl"]
    )
    assert [r["step"] for r in _steps(stale)] == [1, 2, 3]
    from tokshift.engine.checkpoint import verify_seal

    verify_seal(stale / old.name)  # moved whole, seal and all
    saved = [line.rsplit(" ", 1)[1] for line in b.stderr.splitlines() if "saved resume checkpoint" in line]
    assert [Path(p).name.split("-")[2] for p in saved] == ["s000000001", "s000000002", "s000000003"]
    # B's checkpoint of step 2 was written after the set-aside and is still there after the next save
    assert _resume_files(resume) == [Path(saved[2]), Path(saved[1])]
    assert [r["step"] for r in _steps(resume)] == [1, 2, 3]  # B's own live log

    # continue A: what the warning says to run, then A's command again
    shutil.move(resume, f"{resume}.new")
    shutil.move(Path(f"{resume}.new") / stale.name, resume)
    again = run_cli_inprocess(*base, "--checkpoint-minutes", "1000")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {resume / old.name}: epoch 0, micro-batch 3, optimizer step 3" in again.stderr
    assert "another run" not in again.stderr
    assert [r["step"] for r in _steps(out)] == list(range(1, 9))
    assert _load(out / "model.pt")["seed"] == 0


def test_a_checkpoint_written_before_the_split_continues_on_another_layout(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run preempted on 2 processes x batch 4 before checkpoints had an identity and a layout
    (the whole config with world_size beside it, an untagged name) continues on 1 process x batch 4
    with twice the accumulation. The file is a real checkpoint rewritten as that version wrote it."""
    out = tmp_path / "run"
    base = ["train", "--model", "demo_tokshift", "--train-shards", str(packed_demo.train), "--workers", "0"]
    base += ["--log-every", "1", "--out-dir", str(out), "--checkpoint-minutes", "1000", "--override", "epochs=2"]
    monkeypatch.setenv("TOKSHIFT_SIGNAL_AT_STEP", "2")
    first = run_cli_inprocess(*base, "batch_size=8")
    monkeypatch.delenv("TOKSHIFT_SIGNAL_AT_STEP")
    assert first.returncode == ExitCode.RETRY_LATER, first.stderr[-2000:]
    (ckpt,) = _resume_files(out / "resume")
    zoo = get_config("demo_tokshift")

    def as_before(state: dict) -> None:
        identity = state["fingerprint"]["identity"]
        config = {**identity["config"], "batch_size": 4, "accum_steps": 1, "gpus": zoo.gpus}
        state["fingerprint"] = {
            "config": config,
            "seed": 0,
            "world_size": 2,
            "train_clips": 32,
            "init_from_sha256": None,
        }
        del state["sampler"]["epoch_clips"]

    _rewrite(ckpt, as_before)
    untagged = ckpt.with_name("ckpt-e0000-s000000003.pt")
    ckpt.rename(untagged)
    ckpt.with_name(ckpt.name + ".sha256").rename(untagged.with_name(untagged.name + ".sha256"))
    _rewrite(untagged, lambda state: None)  # the seal names the file

    res = run_cli_inprocess(*base, "batch_size=4")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {untagged}: epoch 0, micro-batch 6, optimizer step 3" in res.stderr
    assert "2 processes x batch 4 x accum 1 -> 1 process x batch 4 x accum 2; the global batch 8 is kept" in res.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["global_batch"], summary["accum_steps"], summary["optimizer_steps"]) == (8, 2, 8)
    assert [r["step"] for r in _steps(out)] == list(range(1, 9))
    assert not _resume_files(out / "resume")


# ------------------------------------------------------------------------------ fp16 loss scaling


class _NanClips:
    """The training clips as float, NaN where `bad(epoch, index)`: a non-finite loss on those steps."""

    def __init__(self, ds, bad) -> None:
        self.ds, self.bad, self.epoch = ds, bad, 0
        self.classes = ds.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.ds.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        clip, label = self.ds[i]
        clip = clip.float()
        if self.bad(self.epoch, i):
            clip[0, 0, 0, 0] = float("nan")
        return clip, label


def _train_loss_scaled(out: Path, data: PackedDemo, bad, max_skipped: int = 20, stop_after: int | None = None, **kw):
    """Train the demo model with the fp16 loss scaler on, on the CPU; returns the exit code.

    fp16 autocast needs a GPU, but the scaler (scale the loss, unscale and check the gradient,
    skip the step and lower the scale) runs on the CPU as on a GPU, here on fp32 values.
    """
    import torch

    from tokshift.data.datasets import TrainClipDataset
    from tokshift.engine import distributed as D
    from tokshift.engine.runtime import StopFlag
    from tokshift.engine.train import TrainOptions, _Trainer

    class LossScaled(_Trainer):
        max_skipped_steps = max_skipped

        def _grad_scaler(self) -> torch.amp.GradScaler:
            return torch.amp.GradScaler("cpu", enabled=True)

    cfg = get_config("demo_tokshift")
    ds = TrainClipDataset([data.train], cfg.num_frames, cfg.frame_stride, cfg.img_size, cfg.train_short_side, seed=0)
    opts = TrainOptions(
        "demo_tokshift", [], [], out, overrides={"batch_size": 8, "epochs": 2}, workers=0, log_every=1, progress=False
    )
    opts = TrainOptions(**{**opts.__dict__, **kw})
    ctx = D.init_distributed("cpu")
    stop = StopFlag((stop_after, signal.SIGUSR1) if stop_after else None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI tests run: no thread contention on a shared machine
    try:
        with stop.installed():
            return LossScaled(opts, ctx, stop, (_NanClips(ds, bad), None)).run()
    finally:
        torch.set_num_threads(threads)
        D.shutdown(ctx)


def test_fp16_skips_a_step_with_a_non_finite_loss_lowers_the_scale_and_trains_on(
    packed_demo: PackedDemo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One NaN clip in optimizer step 2: that step changes no weight, the scale halves, training goes on."""
    import torch

    from tokshift.engine.sampler import epoch_permutation

    nan_clip = int(epoch_permutation(32, 0, 0)[9])  # the second clip of step 2 (batch 8)
    bad = lambda epoch, i: epoch == 0 and i == nan_clip  # noqa: E731
    # stopped after step 3 with a checkpoint after every step, to look at the weights of each
    rc = _train_loss_scaled(tmp_path, packed_demo, bad, stop_after=2, checkpoint_minutes=0, keep_resume=10)
    assert rc == ExitCode.RETRY_LATER
    assert "fp16: optimizer step 2 skipped (loss not finite); loss scale lowered to 32768 (1 skipped in a row)" in (
        caplog.text
    )
    states = {s["step"]: s for s in map(_load, _resume_files(tmp_path / "resume"))}
    assert sorted(states) == [1, 2, 3]
    for k, v in states[1]["model"].items():
        assert torch.equal(v, states[2]["model"][k]), k  # step 2 was skipped
    assert any(not torch.equal(v, states[3]["model"][k]) for k, v in states[2]["model"].items())
    assert [states[s]["scaler"]["scale"] for s in (1, 2, 3)] == [65536.0, 32768.0, 32768.0]
    assert torch.isfinite(states[2]["epoch_stats"]).all()  # the skipped group's NaN is not in the epoch's loss

    assert _train_loss_scaled(tmp_path, packed_demo, bad) == 0
    records = read_jsonl(tmp_path / "metrics.jsonl")
    step2 = next(r for r in records if r["kind"] == "step" and r["step"] == 2)
    assert step2["skipped_steps"] == 1 and step2["loss_scale"] == 32768.0
    assert all(r["skipped_steps"] == 0 for r in records if r["kind"] == "step" and r["step"] != 2)
    assert all(math.isfinite(r["train_loss"]) for r in records if r["kind"] == "epoch")
    model = _load(tmp_path / "model.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values())


def test_fp16_stops_after_many_skipped_steps_in_a_row(
    packed_demo: PackedDemo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every clip NaN from epoch 2 on: steps 5, 6, 7 are skipped, then the run stops as diverged."""
    from tokshift.engine.train import TrainingDiverged

    with pytest.raises(TrainingDiverged) as caught:
        _train_loss_scaled(tmp_path, packed_demo, lambda epoch, i: epoch >= 1, max_skipped=3)
    message = str(caught.value)
    assert "3 optimizer steps in a row skipped for a non-finite loss or gradient under fp16" in message
    assert "epoch 2, optimizer step 7 (loss scale now 8192)" in message
    assert f"the last good resume checkpoint in {tmp_path / 'resume'} is kept" in message
    assert [p.name.rsplit("-", 1)[0] for p in _resume_files(tmp_path / "resume")] == ["ckpt-e0001-s000000004"]
    assert "(2 skipped in a row)" in caplog.text


def test_fp16_continues_a_run_checkpointed_without_loss_scaling(
    packed_demo: PackedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Precision is no part of a run's identity: a run stopped under fp32 continues with the scaler on."""
    monkeypatch.setenv("TOKSHIFT_SIGNAL_AT_STEP", "2")
    args = ["train", "--model", "demo_tokshift", "--train-shards", str(packed_demo.train), "--workers", "0"]
    first = run_cli_inprocess(*args, "--out-dir", str(tmp_path), "--override", "batch_size=8", "epochs=2")
    monkeypatch.delenv("TOKSHIFT_SIGNAL_AT_STEP")
    assert first.returncode == ExitCode.RETRY_LATER, first.stderr[-2000:]
    assert _load(_resume_files(tmp_path / "resume")[0])["scaler"] == {}  # what a disabled scaler saves

    caplog.set_level(logging.INFO, logger="tokshift")
    assert _train_loss_scaled(tmp_path, packed_demo, lambda epoch, i: False) == 0
    assert "fp16 loss scaling starts at scale 65536: the checkpoint was written without it" in caplog.text
    assert "resumed from" in caplog.text and "optimizer step 3" in caplog.text
