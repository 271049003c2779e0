"""The demo pipeline through the real local SLURM cluster with the project's `slurm` profile.

The workflow runs exactly as a user runs it (`snakemake --profile slurm` in the repository),
the partition given through TOKSHIFT_SLURM_PARTITION and the job sizes through a config file,
never by editing the profile. What each job asked for is read back from sacct, and the table
must match a run of the same workflow on this machine without SLURM.

Then one model is trained again on two nodes (one rank per node) with a time limit shorter
than its training needs: SLURM signals both ranks ahead of the limit, they save a resume
checkpoint and exit non-zero, Snakemake resubmits the job, and it finishes with the optimizer
steps of an uninterrupted training.

Last, one model is trained and evaluated through the workflow with two ranks on two nodes and
with two ranks on one node: sacct shows where each ran, and both give the same model.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.slurm.cluster import Cluster, SacctJob, sacct_steps, snakemake_slurm, unique_prefix, wait_until_recorded
from tests.workflow_helpers import copy_workflow, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EPOCHS = 1
# Job sizes for the test (fake GPUs: the jobs ask SLURM for them, the code runs on the CPU).
JOB_SIZES = {
    "pack": {"cpus": 1, "mem_mb": 1500, "runtime": 10},
    "train": {"gpus": 1, "cpus_per_gpu": 2, "mem_mb": 3000, "runtime": 20, "signal_seconds": 120},
    "evaluate": {"gpus": 1, "cpus_per_gpu": 2, "mem_mb": 2500, "runtime": 10},
}
# The preempted training: two ranks on two nodes (CPU, one core each), a 2-minute limit with
# SIGUSR1 45 s ahead of it. SLURM checks time limits every 30 s, so the signal comes 45-75 s
# into the job (after the training has started) and the limit itself is never reached. The
# training is sized to need about PREEMPT_WORK_S.
PREEMPTED_MODEL = "demo_tokshift"
SHORT_TRAIN = {"runtime": 2, "signal_seconds": 45, "gpus": 0, "nodes": 2, "cpus": 1}
PREEMPT_WORK_S = 100
MIN_PREEMPT_EPOCHS = 24
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


def _run_slurm(wf: Path, cfg: Path, cluster: Cluster, *extra: str, partition: str = "") -> tuple[str, float]:
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
        env={"TOKSHIFT_SLURM_PARTITION": partition or cluster.partition},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
    return prefix, time.monotonic() - t0


def _two_node_cluster(cluster: Cluster) -> Cluster:
    if len(cluster.multi_nodes) < 2:
        pytest.fail(f"the test cluster has no partition with two nodes (sinfo: {cluster})", pytrace=False)
    return cluster


def _rank_nodes(log_text: str) -> dict[int, str]:
    """{rank: node} from the 'ranks on nodes: 0=vm 1=vm-2' line of one attempt's log."""
    m = re.search(r"ranks on nodes: (.*)$", log_text, flags=re.M)
    return {int(r): n for r, n in (item.split("=", 1) for item in m.group(1).split())} if m else {}


def _attempts(wf: Path, model: str) -> list[str]:
    """The model's training attempts, from logs/train/demo/<model>.attempts.log (split at each header)."""
    log_path = wf / "logs/train/demo" / f"{model}.attempts.log"
    return [part for part in re.split(r"^=== .* training starts .*$", log_path.read_text(), flags=re.M) if part.strip()]


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
def slurm_run(slurm_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
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
    # Two ranks of the per-rank batch: half the optimizer steps of the one-process run per epoch.
    ranks = SHORT_TRAIN["nodes"]
    steps_per_epoch = done["train_clips"] // (done["batch_size"] * ranks) // done["accum_steps"]
    seconds_per_epoch = max(_fastest_epoch_seconds(wf, PREEMPTED_MODEL), 0.2)
    # Step timestamps of a short, shared run are a rough guide only: never fewer than
    # MIN_PREEMPT_EPOCHS, which alone need well over the signal's lead time on this machine.
    epochs = min(max(math.ceil(PREEMPT_WORK_S / seconds_per_epoch), MIN_PREEMPT_EPOCHS), 200)
    shutil.rmtree(wf / "results/demo/train" / PREEMPTED_MODEL)
    shutil.rmtree(wf / "results/demo/eval" / PREEMPTED_MODEL)
    (wf / "logs/train/demo" / f"{PREEMPTED_MODEL}.attempts.log").unlink()

    sizes = {**JOB_SIZES, "per_model": {PREEMPTED_MODEL: {"train": {**JOB_SIZES["train"], **SHORT_TRAIN}}}}
    cfg = _write_config(wf / "test-preempt.yaml", sizes, {"per_model": {PREEMPTED_MODEL: {"epochs": epochs}}})
    prefix, seconds = _run_slurm(
        wf, cfg, _two_node_cluster(cluster), "--retries", str(RETRIES), partition=cluster.multi_partition
    )
    print(
        f"{PREEMPTED_MODEL}: {epochs} epochs on 2 nodes under a {SHORT_TRAIN['runtime']}-minute limit, "
        f"resubmitted until done, then evaluated and tabled: {seconds:.0f} s"
    )
    return {
        "wf": wf,
        "cluster": cluster,
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

    # Only the heavy steps were submitted; demo videos, index, summary, table and curves ran on this host.
    assert set(rules) == {"pack_shard", "train", "evaluate", "explain_examples"}, sorted(rules)
    assert (wf / "logs/collect_results/demo.log").exists() and (wf / "results/demo/frames/val/summary.json").exists()
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
    nodes = list(preempted_run["cluster"].multi_nodes)
    for j in attempts:
        assert j.timelimit_minutes == SHORT_TRAIN["runtime"], j
        assert j.nnodes == 2 and sorted(j.nodes) == nodes, j
    # The log holds every attempt: in each interrupted one, both ranks (one per node) got the
    # early signal and stopped at the same step after the checkpoint; the last one resumed.
    logs = _attempts(wf, PREEMPTED_MODEL)
    assert len(logs) == len(attempts), [log[:200] for log in logs]
    for text in logs:
        assert sorted(_rank_nodes(text).values()) == nodes, text[-3000:]
    for text in logs[:-1]:
        for rank in (0, 1):
            assert re.search(rf"\[rank {rank}\].*received SIGUSR1", text), text[-3000:]
        # Mid-epoch ("stopped on signal at epoch E, step S") or at an epoch's end ("stopping after epoch E").
        assert re.search(r"stopped on signal at epoch|stopping after epoch \d+ on signal", text), text[-3000:]
    for text in logs[1:]:
        assert re.search(r"resumed from .* optimizer step [1-9]", text), text[-3000:]
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


# Two ranks of one model through the workflow (CPU, gloo, one core each): on two nodes, one
# rank per node, and on one node; both train and evaluate the same model.
SPREAD_MODEL = "demo_vit"
RANK_LAYOUTS = {
    "two_nodes": {"gpus": 0, "nodes": 2, "tasks_per_node": 1, "cpus": 1},
    "one_node": {"gpus": 0, "nodes": 1, "tasks_per_node": 2, "cpus": 1},
}


def _retrain_in_copy(slurm_run: dict, dest: Path, layout: dict) -> dict:
    """SPREAD_MODEL trained and evaluated again with `layout` in a copy of the finished demo tree."""
    wf = dest / "wf"
    shutil.copytree(slurm_run["wf"], wf, symlinks=True)
    for stage in ("train", "eval"):
        shutil.rmtree(wf / "results/demo" / stage / SPREAD_MODEL)
    (wf / "logs/train/demo" / f"{SPREAD_MODEL}.attempts.log").unlink()
    mem = {"mem_mb": 2000, "runtime": 20}
    sizes = {**JOB_SIZES, "per_model": {SPREAD_MODEL: {"train": {**layout, **mem}, "evaluate": {**layout, **mem}}}}
    cfg = _write_config(wf / "test-ranks.yaml", sizes)
    cluster = _two_node_cluster(slurm_run["cluster"])
    # Only the deleted model is rebuilt: the other's recorded launch command (from the preempted run,
    # if it came first) differs from this config's, which must not count as a reason to retrain it.
    prefix, seconds = _run_slurm(wf, cfg, cluster, "--rerun-triggers", "mtime", partition=cluster.multi_partition)
    print(f"{SPREAD_MODEL} with {layout}: trained and evaluated through SLURM in {seconds:.0f} s")
    return {"wf": wf, "jobs": _by_rule(wait_until_recorded(prefix, 1)), "cluster": cluster}


@pytest.fixture(scope="module")
def spread_runs(slurm_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {
        name: _retrain_in_copy(slurm_run, tmp_path_factory.mktemp(name), layout)
        for name, layout in RANK_LAYOUTS.items()
    }


def test_two_node_training_and_evaluation_run_one_rank_per_node(spread_runs: dict) -> None:
    run = spread_runs["two_nodes"]
    nodes = list(run["cluster"].multi_nodes)
    for rule in ("train", "evaluate"):
        (job,) = run["jobs"][rule]
        assert job.wildcards == SPREAD_MODEL and job.state == "COMPLETED", job
        assert job.nnodes == 2 and sorted(job.nodes) == nodes, job
        # The rule's program ran as one srun step of 2 tasks across both nodes.
        srun_steps = [s for s in sacct_steps(job.job_id) if not s.step_id.endswith((".batch", ".extern"))]
        assert [(s.ntasks, s.state) for s in srun_steps] == [(2, "COMPLETED")], srun_steps
    assert set(run["jobs"]) == {"train", "evaluate", "explain_examples"}, sorted(run["jobs"])
    assert {j.wildcards for jobs in run["jobs"].values() for j in jobs} == {SPREAD_MODEL}, "only the deleted model"
    (text,) = _attempts(run["wf"], SPREAD_MODEL)
    ranks = _rank_nodes(text)
    assert sorted(ranks) == [0, 1] and sorted(ranks.values()) == nodes, text[-3000:]
    assert _summary(run["wf"], SPREAD_MODEL)["nodes"] == [ranks[0], ranks[1]]
    eval_log = (run["wf"] / "logs/evaluate/demo" / f"{SPREAD_MODEL}.log").read_text()
    assert sorted(_rank_nodes(eval_log).values()) == nodes, eval_log[-3000:]

    one = spread_runs["one_node"]
    (job,) = one["jobs"]["train"]
    assert job.nnodes == 1 and len(job.nodes) == 1 and job.cpus == 2, job
    (text,) = _attempts(one["wf"], SPREAD_MODEL)
    assert set(_rank_nodes(text).values()) == set(job.nodes), text[-3000:]


def test_two_nodes_train_the_same_model_as_two_ranks_on_one_node(spread_runs: dict) -> None:
    def steps(wf: Path) -> list[dict]:
        path = wf / "results/demo/train" / SPREAD_MODEL / "metrics.jsonl"
        return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == "step"]

    two, one = (spread_runs[k]["wf"] for k in ("two_nodes", "one_node"))
    a, b = steps(two), steps(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    worst = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b))
    print(f"{SPREAD_MODEL}: {len(a)} logged steps, largest relative loss difference 2 nodes vs 1 node: {worst:.2e}")
    assert worst <= 1e-6
    for key in ("optimizer_steps", "world_size", "global_batch", "epochs"):
        assert _summary(two, SPREAD_MODEL)[key] == _summary(one, SPREAD_MODEL)[key], key

    def metrics(wf: Path) -> dict:
        m = json.loads((wf / "results/demo/eval" / SPREAD_MODEL / "metrics.json").read_text())
        return {k: v for k, v in m.items() if k not in ("eval_seconds", "checkpoint_sha256")}

    assert metrics(two) == metrics(one)
    assert metrics(two)["world_size"] == 2
    pred = "results/demo/eval/" + SPREAD_MODEL + "/predictions.csv"
    assert (two / pred).read_text() == (one / pred).read_text()
