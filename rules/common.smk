# Shared lookups for the rules (paths, the selected dataset and models, job resources).
# The checks and the logic live in the tokshift package (tokshift/workflow_config.py).

import json
import os
import shlex

from tokshift import workflow_config as wc
from tokshift.zoo import get_config

wc.check_config(config, base=Path(workflow.basedir))

DATASET = config["dataset"]
SPEC = wc.dataset_spec(config)
MODELS = wc.selected_models(config)
FRAMES = wc.frames_settings(config)
SHARDS = list(range(int(FRAMES["shards"])))
SPLITS = ["train", "val"]
RESULTS = f"results/{DATASET}"


def shard_paths(split):
    return expand(f"{RESULTS}/frames/{split}/shard-{{shard}}.lmdb", shard=SHARDS)


def zoo_table_outputs():
    return [f"{RESULTS}/model_zoo.csv", f"{RESULTS}/model_zoo.md", f"{RESULTS}/accuracy_vs_gflops.png"]


def pretrained_weights(wildcards):
    backbone = get_config(wildcards.model).pretrained
    return [f"resources/weights/{backbone}.npz"] if backbone else []


def slurm_account_settings():
    """Partition, account and QoS from config.yaml, else TOKSHIFT_SLURM_* variables; only those set.

    An empty value must not reach sbatch: `--qos=''` is rejected where QoS is enforced.
    """
    res = config.get("resources") or {}
    out = {}
    for key, conf_key, env in (
        ("slurm_partition", "slurm_partition", "TOKSHIFT_SLURM_PARTITION"),
        ("slurm_account", "slurm_account", "TOKSHIFT_SLURM_ACCOUNT"),
        ("qos", "slurm_qos", "TOKSHIFT_SLURM_QOS"),
    ):
        value = res.get(conf_key) or os.environ.get(env)
        if value:
            out[key] = value
    return out


def job_threads(rule_name, model=None):
    job = wc.job_settings(config, rule_name, model)
    gpus = int(job.get("gpus", 0) or 0)
    return gpus * int(job["cpus_per_gpu"]) if gpus else int(job["cpus"])


def job_resources(rule_name, model=None):
    """What one job of `rule_name` asks the scheduler for; the same keys for every model.

    Keys that do not apply hold neutral values (gpu=0, mpi="", ...), which the SLURM
    executor ignores, so per-model differences can be expressed as callables.
    """
    job = wc.job_settings(config, rule_name, model)
    res = config.get("resources") or {}
    gpus = int(job.get("gpus", 0) or 0)
    nodes = int(job.get("nodes", 1))
    per_node = max(gpus, int(job.get("tasks_per_node", 1)))
    multi_task = nodes > 1 or int(job.get("tasks_per_node", 1)) > 1
    out = {
        "mem_mb": int(job["mem_mb"]),
        "runtime": int(job["runtime"]),
        "gpu": gpus * nodes,  # sbatch --gpus counts the whole job; config's `gpus` is per node
        "nodes": nodes,
        # One task (torchrun inside) on one node; one task per GPU started by srun otherwise.
        "tasks": nodes * per_node if multi_task else 1,
        # GPU jobs: without tasks_per_gpu the plugin turns `tasks` into --ntasks-per-gpu
        # (gpu=N with tasks=N asks for N*N tasks). 0 leaves it out; 1 = one task per GPU.
        "tasks_per_gpu": 1 if multi_task and gpus else 0,
        "mpi": "srun" if multi_task else "",
        "cpus_per_task": (
            (int(job["cpus_per_gpu"]) if gpus else int(job["cpus"])) if multi_task else job_threads(rule_name, model)
        ),
        "constraint": (res.get("gpu_constraint") or os.environ.get("TOKSHIFT_SLURM_CONSTRAINT") or "") if gpus else "",
        "slurm_extra": "",
    }
    if rule_name == "train" and int(job.get("signal_seconds", 0)):
        # SLURM signals the job's steps this long before the time limit; training
        # checkpoints, exits non-zero, and the retried job resumes.
        out["slurm_extra"] = f"--signal=USR1@{int(job['signal_seconds'])}"
    return out


def loader_workers(rule_name, model):
    """DataLoader workers per process: `auto` keeps the main process a core of its own."""
    setting = config["train" if rule_name == "train" else "evaluate"]["workers"]
    if setting != "auto":
        return int(setting)
    job = wc.job_settings(config, rule_name, model)
    cores = int(job["cpus_per_gpu"]) if int(job.get("gpus", 0) or 0) else int(job["cpus"])
    return 0 if cores <= 2 else min(8, cores - 1)


def rule_resources(rule_name):
    """Resources for a per-model rule: each value a callable of the model wildcard."""
    keys = job_resources(rule_name, MODELS[0]).keys()
    out = {k: (lambda wildcards, k=k: job_resources(rule_name, wildcards.model)[k]) for k in keys}
    out.update(slurm_account_settings())
    return out


def launcher(rule_name, model):
    """The command that starts `tokshift` with the job's processes.

    Under SLURM slurm/job-step.sh makes it a job step of its own, so that the early warning
    (--signal=USR1@N goes to job steps) reaches the training and not Snakemake, which runs
    in the batch script; outside SLURM it runs the command directly.
    """
    job = wc.job_settings(config, rule_name, model)
    gpus = int(job.get("gpus", 0) or 0)
    res = job_resources(rule_name, model)
    step = (
        f"{shlex.quote(str(Path(workflow.basedir) / 'slurm' / 'job-step.sh'))} --ntasks {res['tasks']}"
        f" --nodes {res['nodes']} --cpus-per-task {res['cpus_per_task']} --"
    )
    if res["mpi"]:
        return f"{step} tokshift"
    if gpus > 1:
        return f"{step} torchrun --standalone --nproc-per-node={gpus} -m tokshift.cli"
    return f"{step} tokshift"


def train_override_args(model):
    ov = wc.training_overrides(config, model)
    if not ov:
        return ""
    return "--override " + " ".join(shlex.quote(f"{k}={json.dumps(v)}") for k, v in ov.items())


def index_inputs(wildcards):
    """The annotation files an index is built from (so editing them re-indexes)."""
    kind = SPEC["kind"]
    if kind == "demo":
        return [f"{SPEC['root']}/{wildcards.split}.csv"]
    if kind == "csv":
        return [SPEC["splits"][wildcards.split]]
    if kind == "kinetics":
        return [SPEC["annotations"][wildcards.split]]
    return [SPEC["lists"][wildcards.split]]
