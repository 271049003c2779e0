"""Engine building blocks: launch detection, checkpoints, sampler, LR rules, loss, fusion."""

from __future__ import annotations

import math
import os

import pytest

from tokshift.engine.schedule import LRSchedule, scaled_lr
from tokshift.fileio import sha256_file
from tokshift.zoo import get_config

# ----------------------------------------------------------------------------- launch environment


def test_single_process_without_launcher_variables() -> None:
    from tokshift.engine.distributed import detect_launch

    env = detect_launch({"PATH": "/bin"})
    assert (env.rank, env.world_size, env.source) == (0, 1, "single")


def test_torchrun_variables_win_over_slurm() -> None:
    from tokshift.engine.distributed import detect_launch

    env = detect_launch(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "node7",
            "MASTER_PORT": "1234",
            "LOCAL_WORLD_SIZE": "4",
            "SLURM_PROCID": "0",
            "SLURM_STEP_NUM_TASKS": "2",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.source) == (
        3,
        8,
        1,
        "node7",
        1234,
        "torchrun",
    )
    assert env.local_processes == 4  # torchrun's processes of a node share its CPU affinity


def test_srun_step_gives_ranks_and_a_port_from_the_job_id() -> None:
    from tokshift.engine.distributed import detect_launch

    env = detect_launch(
        {
            "SLURM_PROCID": "5",
            "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.4",
            "SLURM_JOB_ID": "123456",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.source) == (5, 8, 1, "10.0.0.4", "slurm")
    assert env.local_processes == 1  # srun gives each task cores of its own
    assert env.master_port == 15000 + 123456 % 20000


def test_two_steps_of_one_job_get_different_ports_and_master_port_wins() -> None:
    from tokshift.engine.distributed import detect_launch

    step = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.4"}
    ports = {
        detect_launch({**step, "SLURM_JOB_ID": job, "SLURM_STEP_ID": s}).master_port
        for job in ("123456", "123457")
        for s in ("0", "1", "2")
    }
    assert len(ports) == 6 and all(15000 <= p < 35000 for p in ports)
    env = {**step, "SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "1", "MASTER_PORT": "29999"}
    assert detect_launch(env).master_port == 29999


def test_srun_without_launch_address_takes_first_host_of_nodelist() -> None:
    from tokshift.engine.distributed import detect_launch

    env = detect_launch(
        {
            "SLURM_PROCID": "0",
            "SLURM_STEP_NUM_TASKS": "4",
            "SLURM_JOB_NODELIST": "gpu[07-09],cpu1",
            "SLURM_JOB_ID": "7",
            "PATH": "/nonexistent",
        }
    )
    assert env.master_addr == "gpu07"


def test_batch_script_of_a_multi_task_job_is_a_single_process() -> None:
    from tokshift.engine.distributed import detect_launch

    # sbatch --ntasks=4 sets SLURM_NTASKS in the batch script, which is no srun step: do not wait for peers.
    env = detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "9"})
    assert env.world_size == 1


# ------------------------------------------------------------------------------------ checkpoints


def test_a_flipped_byte_fails_the_seal_and_the_older_checkpoint_still_verifies(tmp_path) -> None:
    import torch

    from tokshift.engine.checkpoint import CheckpointError, list_resume, load_verified, save_resume

    older = save_resume({"v": torch.tensor([1.0])}, tmp_path, epoch=1, step=10, keep=5)
    newest = save_resume({"v": torch.tensor([2.0])}, tmp_path, epoch=2, step=20, keep=5)
    assert list_resume(tmp_path) == [newest, older]
    assert float(load_verified(newest)["v"]) == 2.0
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in the middle: never loaded
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its seal"):
        load_verified(newest)
    assert float(load_verified(older)["v"]) == 1.0


def test_unsealed_or_truncated_checkpoints_are_refused(tmp_path) -> None:
    from tokshift.engine.checkpoint import CheckpointError, load_verified, save_resume

    good = save_resume({"v": 1}, tmp_path, epoch=1, step=1, keep=5)
    partial = save_resume({"v": 2}, tmp_path, epoch=1, step=2, keep=5)
    partial.with_name(partial.name + ".sha256").unlink()  # crash between the file and its seal
    with pytest.raises(CheckpointError, match="seal"):
        load_verified(partial)
    truncated = tmp_path / "ckpt-e0001-s000000003.pt"
    truncated.write_bytes(good.read_bytes()[:50])
    (tmp_path / (truncated.name + ".sha256")).write_text(sha256_file(truncated) + "\n")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_verified(truncated)
    assert load_verified(good)["v"] == 1


def test_save_keeps_only_the_newest(tmp_path) -> None:
    from tokshift.engine.checkpoint import list_resume, save_resume

    for s in range(1, 5):
        save_resume({"s": s}, tmp_path, epoch=0, step=s, keep=2)
    assert [p.name for p in list_resume(tmp_path)] == ["ckpt-e0000-s000000004.pt", "ckpt-e0000-s000000003.pt"]
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_of_a_run_fingerprinted_before_the_init_from_rename_continues() -> None:
    from tokshift.engine.resume_plan import fingerprint, split_fingerprint

    cfg = get_config("demo_tokshift")
    fp = fingerprint(cfg, 0, 1, 32, "a" * 64)
    # the format of that time: the whole config, world_size beside it, pretrained names
    old = {"config": {("pretrained" if k == "imagenet_weights" else k): v for k, v in cfg.to_dict().items()}}
    old.update(seed=0, world_size=1, train_clips=32, pretrained_sha256="a" * 64)
    assert split_fingerprint(old)[0] == fp["identity"]
    old["pretrained_sha256"] = "b" * 64
    assert split_fingerprint(old)[0]["init_from_sha256"] == "b" * 64 != fp["identity"]["init_from_sha256"]


# ------------------------------------------------------------------------------------ loader workers


@pytest.mark.parametrize(
    "cores, local_processes, expect",
    [(1, 1, 0), (2, 1, 0), (3, 1, 2), (4, 2, 0), (6, 2, 2), (12, 1, 8), (16, 2, 7)],
)
def test_auto_loader_workers_keep_a_core_for_each_process(cores: int, local_processes: int, expect: int) -> None:
    from tokshift.engine.runtime import loader_workers

    assert loader_workers("auto", local_processes, cores=cores) == expect


def test_auto_loader_workers_count_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a count, `auto` reads the CPU affinity (what SLURM or taskset gave the process)."""
    from tokshift.engine.runtime import loader_workers

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)  # the suite may itself run in a SLURM job

    allowed = sorted(os.sched_getaffinity(0))
    try:
        os.sched_setaffinity(0, allowed[:1])
        assert loader_workers("auto") == 0
        if len(allowed) >= 4:
            os.sched_setaffinity(0, allowed[:4])
            assert loader_workers("auto") == 3 and loader_workers("auto", local_processes=2) == 0
    finally:
        os.sched_setaffinity(0, allowed)


def test_usable_cores_stop_at_the_cpus_slurm_gave_each_task() -> None:
    """Where SLURM does not bind tasks to cores, each task still sees the node: the request counts."""
    from tokshift.engine.runtime import usable_cores

    affinity = len(os.sched_getaffinity(0))
    assert usable_cores({}) == affinity
    assert usable_cores({"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert usable_cores({"SLURM_CPUS_PER_TASK": str(affinity + 8)}) == affinity  # never above the affinity
    assert usable_cores({"SLURM_CPUS_PER_TASK": ""}) == affinity == usable_cores({"SLURM_CPUS_PER_TASK": "x"})


def test_a_worker_count_passes_through_and_a_bad_one_is_named() -> None:
    from tokshift.engine.runtime import loader_workers

    assert loader_workers(0) == 0 and loader_workers(5, local_processes=4) == 5 and loader_workers("3") == 3
    for bad in (-1, "many", 2.5, True):
        with pytest.raises(ValueError, match=r"--workers .*>= 0, or auto"):
            loader_workers(bad)


# ---------------------------------------------------------------------------------------- sampler


def test_two_ranks_split_exactly_the_batches_of_one_rank() -> None:
    from tokshift.engine.sampler import ResumableBatchSampler

    one = ResumableBatchSampler(50, batch_size=8, world_size=1, seed=3)
    r0 = ResumableBatchSampler(50, batch_size=4, world_size=2, rank=0, seed=3)
    r1 = ResumableBatchSampler(50, batch_size=4, world_size=2, rank=1, seed=3)
    for epoch in (0, 1):
        for s in (one, r0, r1):
            s.set_epoch(epoch)
        for b, b0, b1 in zip(one, r0, r1, strict=True):
            assert b == b0 + b1
    assert len(one) == 50 // 8


def test_epochs_differ_and_resume_skips_consumed_batches() -> None:
    from tokshift.engine.sampler import ResumableBatchSampler

    s = ResumableBatchSampler(40, batch_size=4, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(sum(e0, [])) == sorted(sum(e1, [])) == list(range(40))
    s.set_epoch(1, start_batch=3)
    assert list(s) == e1[3:] and len(s) == len(e1) - 3


def test_sampler_rejects_dataset_smaller_than_a_global_batch() -> None:
    from tokshift.engine.sampler import ResumableBatchSampler

    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(5, batch_size=4, world_size=2)


# ------------------------------------------------------------------------------------ LR schedule


def test_linear_scaling_rule_against_reference_global_batch() -> None:
    cfg = get_config("k400_tokshift_div4_8x32_base_224")  # 21 x 2 GPUs x 10 accum, lr 0.1
    assert scaled_lr(cfg, 2) == pytest.approx(0.1)
    assert scaled_lr(cfg, 4) == pytest.approx(0.2)
    small = cfg.replace(batch_size=8)
    assert scaled_lr(small, 4, cfg.reference_global_batch) == pytest.approx(0.1 * 8 * 4 / 42)


def test_step_schedule_drops_at_milestones() -> None:
    s = LRSchedule("step", steps_per_epoch=10, epochs=18, milestones=(10, 15), gamma=0.1)
    assert s.factor(0) == 1.0 and s.factor(99) == 1.0
    assert s.factor(100) == pytest.approx(0.1) and s.factor(149) == pytest.approx(0.1)
    assert s.factor(150) == pytest.approx(0.01)


def test_onecycle_warms_up_then_anneals_to_zero() -> None:
    s = LRSchedule("onecycle", steps_per_epoch=10, epochs=8, warmup_epochs=1.0)
    f = [s.factor(i) for i in range(s.total_steps)]
    assert f[0] == pytest.approx(1 / 25)
    assert max(f) == pytest.approx(1.0) and f.index(max(f)) == 10
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] < 0.01


# ------------------------------------------------------------------------------ loss and fusion


def test_cross_entropy_label_smoothing_equals_reference_formula() -> None:
    import torch
    import torch.nn.functional as F

    from tokshift.engine.metrics import label_smoothing_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 400, generator=g) * 3
    target = torch.randint(0, 400, (16,), generator=g)
    ours = F.cross_entropy(logits, target, label_smoothing=0.01)
    assert torch.allclose(ours, label_smoothing_loss(logits, target, 0.01), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(ours, F.cross_entropy(logits, target), rtol=1e-4)


def test_fusions_average_logits_and_probabilities() -> None:
    import torch

    from tokshift.engine.metrics import fuse_logits, fuse_softmax

    v = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.9]])
    assert torch.allclose(fuse_logits(v), torch.tensor([2.0, 0.5, 0.45]))
    assert torch.allclose(fuse_softmax(v), (v.softmax(-1)[0] + v.softmax(-1)[1]) / 2)


def test_view_subsets_follow_clip_major_layout() -> None:
    from tokshift.engine.evaluate import ViewLayout

    lay = ViewLayout(10, 3)
    assert lay.one_view() == [16]
    assert lay.crops_of_centre_clip() == [15, 16, 17]
    assert lay.clips_at_centre_crop() == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]


def test_records_and_summary_metrics() -> None:
    import torch

    from tokshift.engine.evaluate import ViewLayout, predictions_csv, record_from_logits, summarize

    lay = ViewLayout(2, 3)
    good = torch.zeros(6, 4)
    good[:, 1] = 5.0
    bad = torch.zeros(6, 4)
    bad[:, 2] = 5.0
    bad[lay.one_view(), 1] = 20.0  # only the 1-view guess is right
    recs = [record_from_logits(0, "a", 1, good, lay), record_from_logits(1, "b", 1, bad, lay)]
    m = summarize(recs, lay)
    assert (m["top1"], m["top1_1view"], m["top5"], m["videos"], m["failed"]) == (50.0, 100.0, 100.0, 2, 0)
    csv_text = predictions_csv(recs, ["w", "x", "y", "z"])
    assert csv_text.splitlines()[1].startswith("a,x,x,")
    assert len(csv_text.splitlines()) == 3


def test_mean_class_accuracy_weights_classes_equally() -> None:
    from tokshift.engine.metrics import mean_class_accuracy

    assert mean_class_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(50.0)


def test_overrides_parse_yaml_scalars_and_reject_garbage() -> None:
    from tokshift.engine.runtime import parse_overrides

    assert parse_overrides(["epochs=2", "lr=0.01", "imagenet_weights=null", "lr_milestones=[1, 2]"]) == {
        "epochs": 2,
        "lr": 0.01,
        "imagenet_weights": None,
        "lr_milestones": [1, 2],
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])
    assert math.isclose(parse_overrides(["x=1e-3"])["x"], 1e-3)


@pytest.mark.parametrize(
    "value, expect",
    [("", None), ("200", (200, "SIGUSR1")), ("3:term", (3, "SIGTERM")), ("2:SIGBUS", (2, "SIGBUS"))],
)
def test_signal_at_step_reads_the_step_and_the_signal(value: str, expect: tuple[int, str] | None) -> None:
    import signal

    from tokshift.engine.runtime import scheduled_signal

    got = scheduled_signal({"TOKSHIFT_SIGNAL_AT_STEP": value})
    assert (got and (got[0], signal.Signals(got[1]).name)) == expect


@pytest.mark.parametrize("value", ["x", "0", "-3", "3:NOPE", "3:SIG_DFL"])
def test_signal_at_step_rejects_a_bad_value_naming_the_variable(value: str) -> None:
    from tokshift.engine.runtime import scheduled_signal

    with pytest.raises(ValueError, match=r"TOKSHIFT_SIGNAL_AT_STEP=.*STEP\[:SIGNAL\].*unset it"):
        scheduled_signal({"TOKSHIFT_SIGNAL_AT_STEP": value})
