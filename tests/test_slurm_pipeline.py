"""The demo pipeline through the real local SLURM cluster with the project's `slurm` profile.

The workflow runs exactly as a user runs it (`snakemake --profile slurm` in the repository),
the partition given through TOKSHIFT_SLURM_PARTITION and the job sizes through a config file,
never by editing the profile. What each job asked for is read back from sacct, and the table
must match a run of the same workflow on this machine without SLURM.

Then one model is trained again with a time limit shorter than its training needs: SLURM
signals it ahead of the limit, it saves a resume checkpoint and exits non-zero, Snakemake
resubmits it, and it finishes with the optimizer steps of an uninterrupted training.
"""

from __future__ import annotations

import json
import math
import shutil
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.slurm.cluster import (  # noqa: F401
    PROFILE,
    Cluster,
    SacctJob,
    sacct_steps,
    slurm_cluster,
    snakemake_slurm,
    unique_prefix,
    wait_until_recorded,
)
from tests.workflow_helpers import copy_workflow, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EPOCHS = 1
# Job sizes for the test (fake GPUs: the jobs ask SLURM for them, the code runs on the CPU).
JOB_SIZES = {
    "pack": {"cpus": 1, "mem_mb": 1500, "runtime": 10},
    "train": {"gpus": 1, "cpus_per_gpu": 2, "mem_mb": 3000, "runtime": 20, "signal_seconds": 120},
    "evaluate": {"gpus": 1, "cpus_per_gpu": 2, "mem_mb": 2500, "runtime": 10},
}
# The preempted training: a 2-minute limit with SIGUSR1 45 s ahead of it. SLURM checks time
# limits every 30 s, so the signal comes 45-75 s into the job (after the training has started)
# and the limit itself is never reached. The training is sized to need about PREEMPT_WORK_S.
PREEMPTED_MODEL = "demo_tokshift"
SHORT_TRAIN = {"runtime": 2, "signal_seconds": 45}
PREEMPT_WORK_S = 150
MIN_PREEMPT_EPOCHS = 40
# Enough attempts for a slow machine; `--retries` on the command line is how users raise them.
RETRIES = 10


def _write_config(path: Path, resources: dict, train: dict | None = None) -> Path:
    cfg = {"train": {"overrides": {"epochs": EPOCHS}, **(train or {})}, "resources": resources}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _by_rule(jobs: list[SacctJob]) -> dict[str, list[SacctJob]]:
    out: dict[str, list[SacctJob]] = {}
    for j in sorted(jobs, key=lambda j: int(j.job_id)):
        out.setdefault(j.rule, []).append(j)
    return out


def _summary(wf: Path, model: str) -> dict:
    return json.loads((wf / "results/demo/train" / model / "train_summary.json").read_text())


def _fastest_epoch_seconds(wf: Path, model: str) -> float:
    """An epoch at the fastest step rate of the first run, from the step records' timestamps.

    Both models trained side by side then; alone a step may take up to half as long, so
    PREEMPT_WORK_S leaves a factor of two: the training then needs more than the signal's
    lead time however idle the machine is (a busier machine only means more resubmissions).
    """
    records = [
        json.loads(line) for line in (wf / "results/demo/train" / model / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [(r["step"], r["time"]) for r in records if r.get("kind") == "step"]
    per_step = min((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(steps, steps[1:]) if s1 > s0)
    summary = _summary(wf, model)
    return per_step * summary["optimizer_steps"] / summary["epochs"]


def _run_slurm(wf: Path, cfg: Path, cluster: Cluster, *extra: str) -> tuple[str, float]:
    prefix = unique_prefix("e2e")
    t0 = time.monotonic()
    proc = snakemake_slurm(
        wf,
        "--configfile",
        cfg.name,
        *extra,
        prefix=prefix,
        profile="slurm",
        timeout=2400,
        env={"TOKSHIFT_SLURM_PARTITION": cluster.partition},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
    return prefix, time.monotonic() - t0


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same demo run on this machine without SLURM: the reference."""
    wf = copy_workflow(tmp_path_factory.mktemp("local") / "wf")
    cfg = _write_config(wf / "test-resources.yaml", JOB_SIZES)
    t0 = time.monotonic()
    snakemake(wf, "--cores", "2", "--configfile", str(cfg), check=True, timeout=1800)
    print(f"demo pipeline, local: {time.monotonic() - t0:.0f} s")
    return wf


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    wf = copy_workflow(tmp_path_factory.mktemp("slurm") / "wf")
    cfg = _write_config(wf / "test-resources.yaml", JOB_SIZES)
    prefix, seconds = _run_slurm(wf, cfg, slurm_cluster)
    print(f"demo pipeline through SLURM: {seconds:.0f} s")
    return {"wf": wf, "cluster": slurm_cluster, "jobs": _by_rule(wait_until_recorded(prefix, 1))}


@pytest.fixture(scope="module")
def preempted_run(slurm_run: dict) -> dict:
    """PREEMPTED_MODEL trained again in the same tree, under a limit shorter than its training."""
    wf, cluster = slurm_run["wf"], slurm_run["cluster"]
    done = _summary(wf, PREEMPTED_MODEL)
    steps_per_epoch = done["optimizer_steps"] // done["epochs"]
    seconds_per_epoch = max(_fastest_epoch_seconds(wf, PREEMPTED_MODEL), 0.2)
    # Step timestamps of a short, shared run are a rough guide only: never fewer than
    # MIN_PREEMPT_EPOCHS, which alone need well over the signal's lead time on this machine.
    epochs = min(max(math.ceil(PREEMPT_WORK_S / seconds_per_epoch), MIN_PREEMPT_EPOCHS), 200)
    shutil.rmtree(wf / "results/demo/train" / PREEMPTED_MODEL)
    shutil.rmtree(wf / "results/demo/eval" / PREEMPTED_MODEL)

    sizes = {**JOB_SIZES, "per_model": {PREEMPTED_MODEL: {"train": {**JOB_SIZES["train"], **SHORT_TRAIN}}}}
    cfg = _write_config(wf / "test-preempt.yaml", sizes, {"per_model": {PREEMPTED_MODEL: {"epochs": epochs}}})
    prefix, seconds = _run_slurm(wf, cfg, cluster, "--retries", str(RETRIES))
    print(
        f"{PREEMPTED_MODEL}: {epochs} epochs under a {SHORT_TRAIN['runtime']}-minute limit, "
        f"resubmitted until done, then evaluated and tabled: {seconds:.0f} s"
    )
    return {
        "wf": wf,
        "epochs": epochs,
        "steps": epochs * steps_per_epoch,
        "jobs": _by_rule(wait_until_recorded(prefix, 1)),
    }


def test_zoo_table_matches_the_local_run(slurm_run: dict, local_run: Path) -> None:
    slurm_csv = pd.read_csv(slurm_run["wf"] / "results/demo/model_zoo.csv")
    local_csv = pd.read_csv(local_run / "results/demo/model_zoo.csv")
    assert list(slurm_csv.columns) == list(local_csv.columns)
    assert list(slurm_csv["model"]) == list(local_csv["model"])
    assert list(slurm_csv.dtypes) == list(local_csv.dtypes)
    same = [
        "arch",
        "backbone",
        "img_size",
        "num_frames",
        "frame_stride",
        "shift_div",
        "params_m",
        "gflops_per_view",
        "views",
        "val_videos",
        "val_failed",
        "epochs",
    ]
    pd.testing.assert_frame_equal(slurm_csv[same], local_csv[same])
    for model in ("demo_vit", "demo_tokshift"):
        assert _summary(slurm_run["wf"], model)["optimizer_steps"] == _summary(local_run, model)["optimizer_steps"]

    def margin(df: pd.DataFrame) -> float:
        top1 = df.set_index("model")["top1"]
        return float(top1["demo_tokshift"] - top1["demo_vit"])

    one_video = 100.0 / int(local_csv["val_videos"].iloc[0])
    print(f"TokShift over ViT, 30-view top-1: SLURM {margin(slurm_csv):.2f}, local {margin(local_csv):.2f} points")
    assert margin(slurm_csv) > 0
    # Same seeds, data and batches; allow one validation video of float noise per model.
    assert abs(margin(slurm_csv) - margin(local_csv)) <= 2 * one_video + 1e-6


def test_sacct_shows_the_jobs_with_the_resources_the_config_asked_for(slurm_run: dict) -> None:
    wf, cluster, rules = slurm_run["wf"], slurm_run["cluster"], slurm_run["jobs"]
    shards = yaml.safe_load((wf / "config.yaml").read_text())["datasets"]["demo"]["frames"]["shards"]
    models = sorted(pd.read_csv(wf / "results/demo/model_zoo.csv")["model"])

    # The plugin's job comment is rule_<rule>_wildcards_<wildcard values joined by _>.
    assert sorted(j.wildcards for j in rules["pack_shard"]) == sorted(
        f"{split}_{k}" for split in ("train", "val") for k in range(shards)
    )
    assert sorted(j.wildcards for j in rules["train"]) == models
    assert sorted(j.wildcards for j in rules["evaluate"]) == models
    for j in (job for jobs in rules.values() for job in jobs):
        assert j.state == "COMPLETED", j
        assert j.partition == cluster.partition, j
        assert Path(j.workdir).resolve() == wf.resolve(), j

    pack = JOB_SIZES["pack"]
    for j in rules["pack_shard"]:
        assert (j.gpus, j.cpus, j.mem_mb, j.timelimit_minutes) == (0, pack["cpus"], pack["mem_mb"], pack["runtime"]), j
    for rule in ("train", "evaluate"):
        want = JOB_SIZES[rule]
        for j in rules[rule]:
            assert (j.gpus, j.cpus) == (want["gpus"], want["gpus"] * want["cpus_per_gpu"]), j
            assert (j.mem_mb, j.timelimit_minutes, j.nnodes) == (want["mem_mb"], want["runtime"], 1), j


def test_training_cut_by_its_time_limit_resumes_to_the_same_steps(preempted_run: dict) -> None:
    wf, rules = preempted_run["wf"], preempted_run["jobs"]
    assert all(j.wildcards == PREEMPTED_MODEL for j in rules["train"]), "only the deleted model is retrained"
    attempts = rules["train"]
    assert len(attempts) >= 2, f"the training was never interrupted: {attempts}"
    *interrupted, last = attempts
    assert last.state == "COMPLETED", attempts
    for j in attempts:
        assert j.timelimit_minutes == SHORT_TRAIN["runtime"], j
    for j in interrupted:
        steps = sacct_steps(j.job_id)
        # Stopped by SIGUSR1 ahead of the limit (the training step exits 75 after checkpointing),
        # not killed at the limit (TIMEOUT).
        assert j.state == "FAILED" and j.elapsed_seconds < 60 * SHORT_TRAIN["runtime"], (
            f"{j} (steps {steps}): the training must run in its own srun step (slurm/job-step.sh) "
            "for --signal=USR1 to reach it"
        )
        assert any(s.exit_code == 75 for s in steps), steps

    resumed = _summary(wf, PREEMPTED_MODEL)
    assert resumed["epochs"] == preempted_run["epochs"]
    assert resumed["optimizer_steps"] == preempted_run["steps"]
    zoo = pd.read_csv(wf / "results/demo/model_zoo.csv").set_index("model")
    assert pd.notna(zoo.loc[PREEMPTED_MODEL, "top1"]) and zoo.loc[PREEMPTED_MODEL, "epochs"] == preempted_run["epochs"]


MULTI_TASK_SNAKEFILE = textwrap.dedent("""
    rule train_two_ranks:
        input: train={train}, val={val}
        output: "out/train_summary.json"
        log: "train.log"
        # A one-node training job with 2 tasks: one SLURM task per rank, started by srun.
        resources: nodes=1, tasks=2, mpi="srun", cpus_per_task=1, mem_mb=3000, runtime=10
        shell:
            "{job_step} --ntasks 2 --nodes 1 --cpus-per-task 1 --"
            " tokshift train --model demo_vit --train-shards {{input.train}} --val-shards {{input.val}}"
            " --out-dir out --override epochs=1 --workers 0 --device cpu > {{log}} 2>&1"
""")


def test_two_srun_tasks_train_one_model_together(slurm_run: dict, tmp_path: Path) -> None:
    """2 ranks started by srun from SLURM's environment join one gloo group and train one model."""
    frames = slurm_run["wf"] / "results/demo/frames"
    train = sorted(str(p) for p in (frames / "train").glob("shard-*.lmdb"))
    val = sorted(str(p) for p in (frames / "val").glob("shard-*.lmdb"))
    (tmp_path / "Snakefile").write_text(
        MULTI_TASK_SNAKEFILE.format(train=train, val=val, job_step=PROFILE / "job-step.sh")
    )
    prefix = unique_prefix("mtt")
    proc = snakemake_slurm(tmp_path, prefix=prefix, timeout=900)
    log = (tmp_path / "train.log").read_text() if (tmp_path / "train.log").exists() else ""
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:] + log[-4000:]

    summary = json.loads((tmp_path / "out/train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 1 and summary["optimizer_steps"] > 0
    assert "x 2 proc" in log and "[rank 0]" in log, log[-3000:]
    (job,) = wait_until_recorded(prefix, 1)
    assert job.state == "COMPLETED" and job.cpus == 2
    srun_steps = [s for s in sacct_steps(job.job_id) if not s.step_id.endswith((".batch", ".extern"))]
    assert [(s.ntasks, s.state) for s in srun_steps] == [(2, "COMPLETED")], srun_steps
