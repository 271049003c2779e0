"""What each job asks the scheduler for, and the command line that starts its processes.

One place for the decisions behind a rule's `threads`, `resources` and launcher, so that
they can be tested without a cluster: how many tasks and nodes, CPUs per task, whether
torchrun or srun starts the processes, and which SLURM settings (partition, account, QoS,
GPU constraint) come from config.yaml or from TOKSHIFT_SLURM_* variables.

Every function takes the config as validated against the schema (defaults filled in).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokshift.workflow.config import job_settings, training_overrides

#: The variable that holds the path of slurm/job-step.sh while the workflow runs. The rules'
#: command lines name the variable, not the path, so that a project moved elsewhere keeps
#: its results: an absolute path in a rule's params would make Snakemake rerun every job.
JOB_STEP_ENV = "TOKSHIFT_JOB_STEP"

#: (resource name, config key under `resources`, environment variable) of the SLURM settings.
ACCOUNT_SETTINGS = (
    ("slurm_partition", "slurm_partition", "TOKSHIFT_SLURM_PARTITION"),
    ("slurm_account", "slurm_account", "TOKSHIFT_SLURM_ACCOUNT"),
    ("qos", "slurm_qos", "TOKSHIFT_SLURM_QOS"),
)
CONSTRAINT_ENV = "TOKSHIFT_SLURM_CONSTRAINT"
GPU_MODEL_ENV = "TOKSHIFT_SLURM_GPU_MODEL"


def job_step_path(basedir: str | Path) -> Path:
    """slurm/job-step.sh of the workflow whose Snakefile lies in `basedir`."""
    return Path(basedir) / "slurm" / "job-step.sh"


def _setting(config: dict[str, Any], key: str, var: str, env: Mapping[str, str]) -> str | None:
    """`resources.<key>` from config.yaml, else the environment variable; None when empty."""
    return config["resources"][key] or env.get(var) or None


def slurm_account_settings(config: dict[str, Any], env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Partition, account and QoS from config.yaml, else TOKSHIFT_SLURM_* variables; only those set.

    An empty value must not reach sbatch: `--qos=''` is rejected where QoS is enforced.
    """
    out = {}
    for key, conf_key, var in ACCOUNT_SETTINGS:
        value = _setting(config, conf_key, var, env)
        if value:
            out[key] = value
    return out


def _cores_per_process(job: dict[str, Any]) -> int:
    """CPU cores of one process: `cpus_per_gpu` in GPU jobs, `cpus` otherwise."""
    return job["cpus_per_gpu"] if job["gpus"] else job["cpus"]


def _multi_task(job: dict[str, Any]) -> bool:
    """Whether srun starts several processes (more than one node or task per node)."""
    return job["nodes"] > 1 or job["tasks_per_node"] > 1


def job_threads(config: dict[str, Any], rule: str, model: str | None = None) -> int:
    """Cores of one job on one node: all its GPUs' cores, or `cpus` without GPUs."""
    job = job_settings(config, rule, model)
    return job["gpus"] * job["cpus_per_gpu"] if job["gpus"] else job["cpus"]


def gpu_request(config: dict[str, Any], gpus_per_node: int, env: Mapping[str, str] = os.environ) -> str | None:
    """The GRES of a GPU job, per node: `gpu:<n>` or, with a GPU model, `gpu:<model>:<n>`.

    `--gres` counts per node (sbatch `--gpus` counts the whole job and does not say how the
    GPUs spread over nodes), so a multi-node job gets its GPUs on every node. A typed GRES is
    how most clusters name GPU models; others use node features (`gpu_constraint`).
    """
    if not gpus_per_node:
        return None
    model = _setting(config, "gpu_model", GPU_MODEL_ENV, env)
    return f"gpu:{model}:{gpus_per_node}" if model else f"gpu:{gpus_per_node}"


def job_resources(
    config: dict[str, Any], rule: str, model: str | None = None, env: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """What one job of `rule` asks the scheduler for; the same keys for every model.

    A key that does not apply to this job holds None, which Snakemake treats as unset: the
    SLURM executor then leaves the option out instead of passing an empty `-C ''`. Per-model
    differences can therefore be expressed as callables of the model wildcard.
    """
    job = job_settings(config, rule, model)
    gpus, nodes = job["gpus"], job["nodes"]
    multi_task = _multi_task(job)
    out = {
        # Every rank of a GPU job holds the CUDA libraries, its loader workers and their batches.
        "mem_mb": job["mem_mb"] + job["mem_mb_per_gpu"] * gpus,
        "runtime": job["runtime"],
        "gres": gpu_request(config, gpus, env),
        "nodes": nodes,
        # One task (torchrun inside) on one node; one task per GPU started by srun otherwise.
        "tasks": nodes * max(gpus, job["tasks_per_node"]) if multi_task else 1,
        # GPU jobs: without tasks_per_gpu the plugin turns `tasks` into --ntasks-per-gpu, so
        # it must be set: 0 leaves the option out (one task: torchrun), 1 = one task per GPU.
        "tasks_per_gpu": 1 if multi_task and gpus else 0,
        # Always present: the job-step plugin wraps a job without an `mpi` key in its own
        # `srun -n1`; with the key (even "") it runs the rule in the batch script, where
        # slurm/job-step.sh starts the step itself.
        "mpi": "srun" if multi_task else "",
        "cpus_per_task": _cores_per_process(job) if multi_task else job_threads(config, rule, model),
        "constraint": _setting(config, "gpu_constraint", CONSTRAINT_ENV, env) if gpus else None,
        "slurm_extra": None,
    }
    if rule == "train" and job["signal_seconds"]:
        # SLURM signals the job's steps this long before the time limit; training
        # checkpoints, exits non-zero, and the retried job resumes.
        out["slurm_extra"] = f"--signal=USR1@{job['signal_seconds']}"
    return out


def rule_job_resources(
    config: dict[str, Any], rule: str, model: str | None = None, env: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """A heavy rule's resources as its job carries them: `job_resources` and the account settings."""
    return {**job_resources(config, rule, model, env), **slurm_account_settings(config, env)}


def small_job_resources(
    config: dict[str, Any], mem_mb: int, runtime: int, env: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """A one-core bookkeeping job (index, summary, table, download) with the site's account settings.

    These run where Snakemake runs by default (`resources.local_rules`); where a site moves
    them to the cluster they still need the partition, account and QoS of every other job.
    """
    return {"mem_mb": mem_mb, "runtime": runtime, **slurm_account_settings(config, env)}


def job_device(config: dict[str, Any], rule: str, model: str) -> str:
    """`--device` of a train or evaluate job: the config's `<rule>.device`, where `auto` is the
    device the job asks the scheduler for (cuda with GPUs, else cpu), so a GPU job never falls
    back to the CPU in silence."""
    setting = config[rule]["device"]
    if setting != "auto":
        return setting
    return "cuda" if job_settings(config, rule, model)["gpus"] else "cpu"


def launcher(config: dict[str, Any], rule: str, model: str) -> str:
    """The command that starts `tokshift` with the job's processes.

    Under SLURM slurm/job-step.sh makes it a job step of its own, so that the early warning
    (--signal=USR1@N goes to job steps) reaches the training and not Snakemake, which runs
    in the batch script; outside SLURM it runs the command directly. The script is named
    through $TOKSHIFT_JOB_STEP, which the workflow sets, so the command holds no checkout path.
    Several processes on one node without srun: torchrun starts one per GPU.
    """
    job = job_settings(config, rule, model)
    res = job_resources(config, rule, model, env={})
    step = (
        f'"${{{JOB_STEP_ENV}:?is set by the workflow to its slurm/job-step.sh}}" --ntasks {res["tasks"]}'
        f" --nodes {res['nodes']} --cpus-per-task {res['cpus_per_task']} --"
    )
    if job["gpus"] > 1 and not res["mpi"]:
        return f"{step} torchrun --standalone --nproc-per-node={job['gpus']} -m tokshift.cli"
    return f"{step} tokshift"


def train_override_args(config: dict[str, Any], model: str) -> list[str]:
    """The `KEY=VALUE` items of `train --override` (values as JSON) for the zoo fields config.yaml changes for `model`.

    JSON reads back as YAML, so lists and nulls reach the zoo with their types.
    """
    return [f"{k}={json.dumps(v)}" for k, v in training_overrides(config, model).items()]
