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
    """Partition and account from config.yaml, else from TOKSHIFT_SLURM_* variables (only when set)."""
    res = config.get("resources") or {}
    out = {}
    partition = res.get("slurm_partition") or os.environ.get("TOKSHIFT_SLURM_PARTITION")
    account = res.get("slurm_account") or os.environ.get("TOKSHIFT_SLURM_ACCOUNT")
    if partition:
        out["slurm_partition"] = partition
    if account:
        out["slurm_account"] = account
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
        "gpu": gpus,
        "nodes": nodes,
        # One task (torchrun inside) on one node; one task per GPU started by srun otherwise.
        "tasks": nodes * per_node if multi_task else 1,
        "mpi": "srun" if multi_task else "",
        "cpus_per_task": (int(job["cpus_per_gpu"]) if gpus else int(job["cpus"])) if multi_task
        else job_threads(rule_name, model),
        "qos": res.get("slurm_qos") or os.environ.get("TOKSHIFT_SLURM_QOS") or "",
        "constraint": (res.get("gpu_constraint") or os.environ.get("TOKSHIFT_SLURM_CONSTRAINT") or "")
        if gpus else "",
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
    """The command prefix that starts `tokshift` with the right number of processes."""
    job = wc.job_settings(config, rule_name, model)
    gpus = int(job.get("gpus", 0) or 0)
    res = job_resources(rule_name, model)
    if res["mpi"]:
        return f"srun --ntasks={res['tasks']} --nodes={res['nodes']} tokshift"
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node={gpus} -m tokshift.cli"
    return "tokshift"


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
