"""The demo pipeline through the real local SLURM cluster with the project's `slurm` profile.

The workflow runs exactly as a user runs it (`snakemake --profile slurm` in the repository),
the partition given through TOKSHIFT_SLURM_PARTITION and the job sizes through a config file,
never by editing the profile. What each job asked for is read back from sacct, and the table
must match the demo run of the same workflow on this machine without SLURM (conftest's
`demo_run`). Meanwhile a stand-in program runs on the other node under a real 2-minute limit
(tests/slurm/signal_standin.py): SLURM's own early warning, `--signal=USR1@N`, reaches it in its
job step, it saves its state and exits 75, and the resubmitted job resumes.

Then three retrainings start at once, each in its own copy of the finished tree:
- one model on two nodes (one rank per node), signalled with SIGUSR1 once its first epoch is
  logged, as SLURM signals a job ahead of its time limit: both ranks save a resume checkpoint
  and exit non-zero, Snakemake resubmits the job, and it finishes with the optimizer steps of
  an uninterrupted training. The signal comes at a chosen epoch, so the outcome does not depend
  on how fast the machine is;
- one model with two ranks on two nodes and with two ranks on one node: sacct shows where
  each ran, and both give the same model.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.slurm.cluster import Cluster, SacctJob, sacct_steps, snakemake_slurm, unique_prefix, wait_until_recorded
from tests.slurm.signal_standin import run_standin
from tests.workflow_helpers import DemoRun, copy_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Job sizes for the test (fake GPUs: the jobs ask SLURM for them, the code runs on the CPU).
JOB_SIZES = {
    "pack": {"cpus": 1, "mem_mb": 1500, "runtime": 10},
    # A GPU job asks for mem_mb + mem_mb_per_gpu per GPU: 3000 and 2500 MB here.
    "train": {
        "gpus": 1,
        "cpus_per_gpu": 2,
        "mem_mb": 1000,
        "mem_mb_per_gpu": 2000,
        "runtime": 20,
        "signal_seconds": 120,
        "slurm_extra": "--mail-type=NONE",
    },
    "evaluate": {"gpus": 1, "cpus_per_gpu": 2, "mem_mb": 500, "mem_mb_per_gpu": 2000, "runtime": 10},
}
# The preempted training: two ranks on two nodes (CPU, one core each), signalled once its first
# epoch is logged. PREEMPT_EPOCHS leave it many epochs of work (two optimizer steps each) after
# the signal is sent, so it is still training when the signal arrives, however fast the machine.
PREEMPTED_MODEL = "demo_tokshift"
PREEMPT_LAYOUT = {"gpus": 0, "nodes": 2, "cpus": 1, "mem_mb": 2000, "runtime": 20}
PREEMPT_EPOCHS = 12
SIGNAL_AFTER_EPOCH = 1
# Two ranks of one model through the workflow (CPU, gloo, one core each): on two nodes, one
# rank per node, and on one node; both train and evaluate the same model.
SPREAD_MODEL = "demo_vit"
SPREAD_EPOCHS = 1
# The retrainings evaluate 2 views per video (what they check does not need 30), and rebuild only
# the deleted model: the other's recorded evaluation settings differ from theirs.
RETRAIN_VIEWS = {"clips": 2, "crops": 1}
KEEP_THE_OTHER = ("--rerun-triggers", "mtime")
RANK_LAYOUTS = {
    "two_nodes": {"gpus": 0, "nodes": 2, "tasks_per_node": 1, "cpus": 1},
    "one_node": {"gpus": 0, "nodes": 1, "tasks_per_node": 2, "cpus": 1},
}


# A site's own sbatch flag given the way the SLURM plugin documents it: it joins the config's.
CLI_SLURM_EXTRA = ("--set-resources", "train:slurm_extra='--no-requeue'")


def _write_config(path: Path, resources: dict, train: dict | None = None, evaluate: dict | None = None) -> Path:
    # The cluster's GPUs are stand-ins: the jobs ask SLURM for them, the code runs on the CPU, which
    # device `auto` (cuda in a GPU job) would refuse.
    cpu = {"device": "cpu"}
    sections = {"resources": resources, "train": {**cpu, **(train or {})}, "evaluate": {**cpu, **(evaluate or {})}}
    cfg = {name: section for name, section in sections.items() if section}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _by_rule(jobs: list[SacctJob]) -> dict[str, list[SacctJob]]:
    out: dict[str, list[SacctJob]] = {}
    for j in sorted(jobs, key=lambda j: int(j.job_id)):
        out.setdefault(j.rule, []).append(j)
    return out


def _summary(wf: Path, model: str) -> dict:
    return json.loads((wf / "results/demo/train" / model / "train_summary.json").read_text())


def _run_slurm(
    wf: Path, cfg: Path, cluster: Cluster, *extra: str, partition: str = "", prefix: str = ""
) -> tuple[str, float]:
    prefix = prefix or unique_prefix("e2e")
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
    """The model's training attempts, from logs/train/demo/<model>.attempts.log (split at each start line)."""
    log_path = wf / "logs/train/demo" / f"{model}.attempts.log"
    starts = r"^=== \S+ tokshift train starts .*$"
    return [part for part in re.split(starts, log_path.read_text(), flags=re.M) if part.strip()]


def _copy_without(slurm_run: dict, dest: Path, model: str) -> Path:
    """A copy of the finished SLURM tree with `model`'s training and evaluation deleted."""
    wf = dest / "wf"
    shutil.copytree(slurm_run["wf"], wf, symlinks=True)
    for stage in ("train", "eval"):
        shutil.rmtree(wf / "results/demo" / stage / model)
    (wf / "logs/train/demo" / f"{model}.attempts.log").unlink()
    return wf


class EpochSignaller(threading.Thread):
    """Sends SIGUSR1 to the job steps of a run's training job once it has logged an epoch.

    `scancel --signal=USR1` without `--batch` signals the job's steps, as `--signal=USR1@N`
    does ahead of a time limit; the batch script (and Snakemake in it) is left alone.
    """

    def __init__(self, live_log: Path, prefix: str, after_epoch: int) -> None:
        super().__init__(daemon=True)
        self.live_log, self.prefix, self.after_epoch = live_log, prefix, after_epoch
        self.signalled: tuple[str, int] | None = None  # (job id, epochs logged when it was sent)
        self.stop = threading.Event()

    def _train_job(self) -> str | None:
        out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%j|%k"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            job, name, comment = line.split("|", 2)
            if name.startswith(self.prefix) and comment.startswith("rule_train_"):
                return job
        return None

    def _epochs_logged(self) -> int:
        from tokshift.engine.logbook import read_jsonl  # skips a line still being written

        return max((r["epoch"] for r in read_jsonl(self.live_log) if r.get("kind") == "epoch"), default=0)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            epochs = self._epochs_logged()
            job = self._train_job() if epochs >= self.after_epoch else None
            if job:
                subprocess.run(["scancel", "--signal=USR1", job], check=True, capture_output=True)
                self.signalled = (job, epochs)
                return


def _preempted_run(slurm_run: dict, dest: Path) -> dict:
    """PREEMPTED_MODEL trained again on two nodes, signalled after its first epoch, resubmitted."""
    wf, cluster = _copy_without(slurm_run, dest, PREEMPTED_MODEL), slurm_run["cluster"]
    done = _summary(slurm_run["wf"], PREEMPTED_MODEL)
    # Two ranks of the per-rank batch: half the optimizer steps of the one-process run per epoch.
    steps_per_epoch = done["train_clips"] // (done["batch_size"] * PREEMPT_LAYOUT["nodes"]) // done["accum_steps"]
    sizes = {**JOB_SIZES, "per_model": {PREEMPTED_MODEL: {"train": {**JOB_SIZES["train"], **PREEMPT_LAYOUT}}}}
    train = {"per_model": {PREEMPTED_MODEL: {"epochs": PREEMPT_EPOCHS}}}
    cfg = _write_config(wf / "test-preempt.yaml", sizes, train, RETRAIN_VIEWS)
    prefix = unique_prefix("pre")
    live_log = wf / "results/demo/train" / PREEMPTED_MODEL / "resume/metrics.jsonl"
    signaller = EpochSignaller(live_log, prefix, SIGNAL_AFTER_EPOCH)
    signaller.start()
    try:
        _, seconds = _run_slurm(wf, cfg, cluster, *KEEP_THE_OTHER, prefix=prefix, partition=cluster.multi_partition)
    finally:
        signaller.stop.set()
        signaller.join()
    print(f"{PREEMPTED_MODEL}: {PREEMPT_EPOCHS} epochs on 2 nodes, signalled {signaller.signalled}: {seconds:.0f} s")
    return {
        "wf": wf,
        "cluster": cluster,
        "signalled": signaller.signalled,
        "steps": PREEMPT_EPOCHS * steps_per_epoch,
        "jobs": _by_rule(wait_until_recorded(prefix, 1)),
    }


def _spread_run(slurm_run: dict, dest: Path, layout: dict) -> dict:
    """SPREAD_MODEL trained and evaluated again with `layout` in a copy of the finished tree."""
    wf = _copy_without(slurm_run, dest, SPREAD_MODEL)
    mem = {"mem_mb": 2000, "mem_mb_per_gpu": 0, "runtime": 20}
    sizes = {**JOB_SIZES, "per_model": {SPREAD_MODEL: {"train": {**layout, **mem}, "evaluate": {**layout, **mem}}}}
    train = {"per_model": {SPREAD_MODEL: {"epochs": SPREAD_EPOCHS}}}
    cfg = _write_config(wf / "test-ranks.yaml", sizes, train, RETRAIN_VIEWS)
    cluster = slurm_run["cluster"]
    prefix, seconds = _run_slurm(wf, cfg, cluster, *KEEP_THE_OTHER, partition=cluster.multi_partition)
    print(f"{SPREAD_MODEL} with {layout}: trained and evaluated through SLURM in {seconds:.0f} s")
    return {"wf": wf, "jobs": _by_rule(wait_until_recorded(prefix, 1)), "cluster": cluster}


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo pipeline through SLURM, with the demo's own training recipe."""
    wf = copy_workflow(tmp_path_factory.mktemp("slurm") / "wf")
    cfg = _write_config(wf / "test-resources.yaml", JOB_SIZES)
    cluster = _two_node_cluster(slurm_cluster)
    with ThreadPoolExecutor(1) as pool:
        # The stand-in mostly waits for its time limit: it runs meanwhile, on the other node.
        standin = pool.submit(run_standin, tmp_path_factory.mktemp("standin"), cluster.multi_partition, cluster.node)
        # One job at a time: both test nodes share this machine's cores, and two trainings of two
        # threads each side by side run many times slower than one after the other (as locally).
        # Site flags from the config (JOB_SIZES) and the command line; --verbose logs each sbatch call.
        prefix, seconds = _run_slurm(wf, cfg, cluster, "--jobs", "1", "--verbose", *CLI_SLURM_EXTRA)
        print(f"demo pipeline through SLURM: {seconds:.0f} s")
        return {
            "wf": wf,
            "cluster": cluster,
            "jobs": _by_rule(wait_until_recorded(prefix, 1)),
            "standin": standin.result(),
        }


@pytest.fixture(scope="module")
def retrain_runs(slurm_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The preempted training and both rank layouts, submitted at once (each from its own copy)."""
    with ThreadPoolExecutor(3) as pool:
        preempted = pool.submit(_preempted_run, slurm_run, tmp_path_factory.mktemp("preempted"))
        spread = {
            name: pool.submit(_spread_run, slurm_run, tmp_path_factory.mktemp(name), layout)
            for name, layout in RANK_LAYOUTS.items()
        }
        return {
            "preempted": preempted.result(),
            **{name: f.result() for name, f in spread.items()},
        }


def test_zoo_table_matches_the_local_run(slurm_run: dict, demo_run: DemoRun) -> None:
    import pandas as pd

    local_run = demo_run.wf
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
    import pandas as pd

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
            mem_mb = want["mem_mb"] + want["mem_mb_per_gpu"] * want["gpus"]
            assert (j.mem_mb, j.timelimit_minutes, j.nnodes) == (mem_mb, want["runtime"], 1), j


def test_site_flags_from_config_and_command_line_reach_sbatch_next_to_the_signal(slurm_run: dict) -> None:
    """resources.train.slurm_extra and `--set-resources train:slurm_extra=...` are both in every
    training's sbatch call, after --signal (which neither replaced), and SLURM ran those jobs."""
    log = (slurm_run["wf"] / "snakemake-slurm.log").read_text()
    calls = [line for line in log.splitlines() if "sbatch call:" in line and "rule_train_wildcards" in line]
    assert len(calls) == len(slurm_run["jobs"]["train"]) >= 2, calls
    for call in calls:
        assert "--signal=USR1@120 --mail-type=NONE --no-requeue" in call, call


def test_signal_ahead_of_the_time_limit_then_resubmitted(slurm_run: dict) -> None:
    """SLURM's own early warning (`--signal=USR1@30` under a 2-minute limit) reaches a stand-in
    in its job step, which saves its state and exits 75; the resubmitted job resumes."""
    tmp_path, prefix, proc = slurm_run["standin"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    for name, ranks in (("plain", 1), ("torchrun", 2)):
        for r in range(ranks):
            st = json.loads((tmp_path / f"out/{name}.rank{r}.state.json").read_text())
            # SIGUSR1 came ahead of the 2-minute limit, inside a job step (not the batch script).
            assert st["signal"] == "SIGUSR1", (name, st)
            assert st["step"] not in (None, "batch"), (name, st)
            assert (tmp_path / f"out/{name}.rank{r}.done").read_text() == "resumed\n"

    jobs = wait_until_recorded(prefix, 4)
    for name in ("plain", "torchrun"):
        attempts = sorted((j for j in jobs if j.rule == name), key=lambda j: int(j.job_id))
        assert [j.state for j in attempts] == ["FAILED", "COMPLETED"], attempts
        first = attempts[0]
        assert first.timelimit_minutes == 2 and first.elapsed_seconds < 120, first
        step_codes = [s.exit_code for s in sacct_steps(first.job_id) if not s.step_id.endswith((".batch", ".extern"))]
        # The stand-in exits 75 after saving; torchrun reports its workers' failure as 1.
        assert step_codes == [75 if name == "plain" else 1], sacct_steps(first.job_id)


def test_training_signalled_ahead_of_its_limit_resumes_to_the_same_steps(retrain_runs: dict) -> None:
    import pandas as pd

    run = retrain_runs["preempted"]
    wf, rules = run["wf"], run["jobs"]
    assert run["signalled"], "the training never logged its first epoch while running"
    signalled_job, epochs_logged = run["signalled"]
    assert all(j.wildcards == PREEMPTED_MODEL for j in rules["train"]), "only the deleted model is retrained"
    interrupted, last = rules["train"]  # signalled once: one resubmission, no more
    assert interrupted.job_id == signalled_job, (signalled_job, rules["train"])
    assert last.state == "COMPLETED", rules["train"]
    nodes = list(run["cluster"].multi_nodes)
    for j in (interrupted, last):
        assert j.timelimit_minutes == PREEMPT_LAYOUT["runtime"], j
        assert j.nnodes == 2 and sorted(j.nodes) == nodes, j
    # The attempts log holds both attempts as rank 0 records them (only rank 0 writes it): in the
    # interrupted one the signal arrived and every rank stopped at the step they agreed on, after
    # the checkpoint; the second one resumed.
    first, second = _attempts(wf, PREEMPTED_MODEL)
    for text in (first, second):
        assert sorted(_rank_nodes(text).values()) == nodes, text[-3000:]
    assert re.search(r"\[rank 0\].*received SIGUSR1", first), first[-3000:]
    # Mid-epoch ("stopped on signal at epoch E, step S") or at an epoch's end ("stopping after epoch E").
    stop = re.search(r"stopped on signal at epoch (\d+)|stopping after epoch (\d+) on signal", first)
    assert stop, first[-3000:]
    stopped_in = int(stop.group(1) or stop.group(2))
    assert epochs_logged <= stopped_in < PREEMPT_EPOCHS, (epochs_logged, stop.group(0))
    assert re.search(r"resumed from .* optimizer step [1-9]", second), second[-3000:]
    steps = sacct_steps(interrupted.job_id)
    # Stopped by SIGUSR1 (the training step exits 75 after checkpointing), not killed.
    assert interrupted.state == "FAILED", (interrupted, steps)
    assert any(s.exit_code == 75 for s in steps), (
        f"{steps}: the training must run in its own srun step (slurm/job-step.sh) for the signal to reach it"
    )

    resumed = _summary(wf, PREEMPTED_MODEL)
    assert resumed["epochs"] == PREEMPT_EPOCHS
    assert resumed["optimizer_steps"] == run["steps"]
    # Provenance names both SLURM jobs, the nodes of each attempt and where the second one took over.
    attempts = resumed["provenance"]["attempts"]
    assert [a["slurm_job_id"] for a in attempts] == [interrupted.job_id, last.job_id], attempts
    assert all(sorted(a["nodes"]) == nodes for a in attempts), attempts
    assert 0 < attempts[0]["last_step"] == attempts[1]["first_step"] < attempts[1]["last_step"] == run["steps"]
    assert resumed["provenance"]["slurm"]["job_id"] == last.job_id
    zoo = pd.read_csv(wf / "results/demo/model_zoo.csv").set_index("model")
    assert pd.notna(zoo.loc[PREEMPTED_MODEL, "top1"]) and zoo.loc[PREEMPTED_MODEL, "epochs"] == PREEMPT_EPOCHS


def test_two_node_training_and_evaluation_run_one_rank_per_node(retrain_runs: dict) -> None:
    run = retrain_runs["two_nodes"]
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
    # A rank that fails ends the step at once: slurm/job-step.sh prints the srun line it runs.
    train_log = (run["wf"] / "logs/train/demo" / f"{SPREAD_MODEL}.log").read_text()
    assert re.search(r"job-step\.sh: srun --kill-on-bad-exit=1 --ntasks=2 --nodes=2 ", train_log), train_log[-3000:]

    one = retrain_runs["one_node"]
    (job,) = one["jobs"]["train"]
    assert job.nnodes == 1 and len(job.nodes) == 1 and job.cpus == 2, job
    (text,) = _attempts(one["wf"], SPREAD_MODEL)
    assert set(_rank_nodes(text).values()) == set(job.nodes), text[-3000:]


def test_two_nodes_train_the_same_model_as_two_ranks_on_one_node(retrain_runs: dict) -> None:
    def steps(wf: Path) -> list[dict]:
        path = wf / "results/demo/train" / SPREAD_MODEL / "metrics.jsonl"
        return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == "step"]

    two, one = (retrain_runs[k]["wf"] for k in ("two_nodes", "one_node"))
    a, b = steps(two), steps(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    worst = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b))
    print(f"{SPREAD_MODEL}: {len(a)} logged steps, largest relative loss difference 2 nodes vs 1 node: {worst:.2e}")
    assert worst <= 1e-6
    for key in ("optimizer_steps", "world_size", "global_batch", "epochs"):
        assert _summary(two, SPREAD_MODEL)[key] == _summary(one, SPREAD_MODEL)[key], key

    def metrics(wf: Path) -> dict:
        m = json.loads((wf / "results/demo/eval" / SPREAD_MODEL / "metrics.json").read_text())
        return {k: v for k, v in m.items() if k not in ("checkpoint_sha256", "provenance")}

    assert metrics(two) == metrics(one)
    # Where each evaluation ran differs, and provenance says so: two nodes, or one node twice.
    nodes = {
        k: json.loads((wf / f"results/demo/eval/{SPREAD_MODEL}/metrics.json").read_text())["provenance"]["nodes"]
        for k, wf in (("two", two), ("one", one))
    }
    assert len(set(nodes["two"])) == 2 and len(nodes["one"]) == 2 and len(set(nodes["one"])) == 1, nodes
    assert metrics(two)["world_size"] == 2
    pred = "results/demo/eval/" + SPREAD_MODEL + "/predictions.csv"
    assert (two / pred).read_text() == (one / pred).read_text()
