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
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokshift.attempts import Outcome
from tokshift.errors import ExitCode
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
#: The same for jobs without GPUs, which many sites send to another partition (and account).
CPU_ACCOUNT_SETTINGS = (
    ("slurm_partition", "cpu_partition", "TOKSHIFT_SLURM_CPU_PARTITION"),
    ("slurm_account", "cpu_account", "TOKSHIFT_SLURM_CPU_ACCOUNT"),
    ("qos", "cpu_qos", "TOKSHIFT_SLURM_CPU_QOS"),
)
CONSTRAINT_ENV = "TOKSHIFT_SLURM_CONSTRAINT"
GPU_MODEL_ENV = "TOKSHIFT_SLURM_GPU_MODEL"


def job_step_path(basedir: str | Path) -> Path:
    """slurm/job-step.sh of the workflow whose Snakefile lies in `basedir`."""
    return Path(basedir) / "slurm" / "job-step.sh"


def _setting(config: dict[str, Any], key: str, var: str, env: Mapping[str, str]) -> str | None:
    """`resources.<key>` from config.yaml, else the environment variable; None when empty."""
    return config["resources"][key] or env.get(var) or None


def slurm_account_settings(
    config: dict[str, Any], env: Mapping[str, str] = os.environ, cpu_job: bool = False
) -> dict[str, str]:
    """Partition, account and QoS from config.yaml, else TOKSHIFT_SLURM_* variables; only those set.

    A job without GPUs takes `cpu_partition` / `cpu_account` / `cpu_qos` where they are set, so
    packing never waits in (or is refused by) a GPU partition. An empty value must not reach
    sbatch: `--qos=''` is rejected where QoS is enforced.
    """
    out = {}
    for (key, conf_key, var), (_, cpu_key, cpu_var) in zip(ACCOUNT_SETTINGS, CPU_ACCOUNT_SETTINGS):
        value = (_setting(config, cpu_key, cpu_var, env) if cpu_job else None) or _setting(config, conf_key, var, env)
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


#: GRES type names the SLURM executor plugin passes as `--gres`; others (`a100-sxm4-80gb`) it refuses.
_PLUGIN_GRES_TYPE = re.compile(r"^[A-Za-z0-9_.]+$")


def gpu_request(config: dict[str, Any], gpus_per_node: int, env: Mapping[str, str] = os.environ) -> str | None:
    """The GRES of a GPU job, per node: `gpu:<n>` or, with a GPU model, `gpu:<model>:<n>`.

    `--gres` counts per node (sbatch `--gpus` counts the whole job and does not say how the
    GPUs spread over nodes), so a multi-node job gets its GPUs on every node. A typed GRES is
    how most clusters name GPU models; others use node features (`gpu_constraint`). None when
    the model name is one the plugin refuses as a GRES: `gpus_per_node_flag` asks for it then.
    """
    if not gpus_per_node:
        return None
    model = _setting(config, "gpu_model", GPU_MODEL_ENV, env)
    if model and not _PLUGIN_GRES_TYPE.match(model):
        return None
    return f"gpu:{model}:{gpus_per_node}" if model else f"gpu:{gpus_per_node}"


def gpus_per_node_flag(config: dict[str, Any], gpus_per_node: int, env: Mapping[str, str] = os.environ) -> str | None:
    """`--gpus-per-node=<model>:<n>` for a GPU model whose name has a `-` (the same request as the
    typed GRES, in the sbatch flag the plugin lets through), else None."""
    model = _setting(config, "gpu_model", GPU_MODEL_ENV, env)
    if gpus_per_node and model and not _PLUGIN_GRES_TYPE.match(model):
        return f"--gpus-per-node={model}:{gpus_per_node}"
    return None


def merged_slurm_extra(*parts: str | None) -> str | None:
    """sbatch flags of several sources in one string (ours first), None when there are none."""
    joined = " ".join(p.strip() for p in parts if p and p.strip())
    return joined or None


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
    # SLURM signals the training's steps this long before the time limit; training checkpoints,
    # exits non-zero, and the retried job resumes. The site's own flags follow ours.
    signal = f"--signal=USR1@{job['signal_seconds']}" if rule == "train" and job["signal_seconds"] else None
    out["slurm_extra"] = merged_slurm_extra(signal, gpus_per_node_flag(config, gpus, env), job["slurm_extra"])
    return out


def rule_job_resources(
    config: dict[str, Any], rule: str, model: str | None = None, env: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """A heavy rule's resources as its job carries them: `job_resources` and the account settings."""
    gpus = job_settings(config, rule, model)["gpus"]
    return {**job_resources(config, rule, model, env), **slurm_account_settings(config, env, cpu_job=not gpus)}


#: What a resubmitted job asks for when its last attempt failed in a way a rerun repeats: it
#: only reads its attempts log and exits with the same code (tokshift.attempts).
REFUSAL_MB, REFUSAL_MINUTES = 1000, 5


def retry_resources(
    config: dict[str, Any],
    rule: str,
    model: str | None,
    attempt: int,
    last: Outcome | None,
    env: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """The resources of attempt `attempt` of a job whose last recorded attempt ended `last`.

    Snakemake resubmits every failed job; what it asks for is ours to decide. A failure whose
    rerun repeats (bad input, no usable GPU, damaged data: `ExitCode.rerun_repeats`) gets a
    job that asks for almost nothing, no GPU, in the CPU partition: it refuses at once (the
    attempts log) instead of queueing for GPUs again. A clean stop to be continued (exit 75:
    preemption, the signal before the time limit) gets the same job. Anything else, above all
    a job killed without an end line (out of memory, over its time limit), gets more memory
    and, for packing and evaluation, more time: x the attempt, up to `max_mem_mb`/`max_runtime`.
    """
    res = rule_job_resources(config, rule, model, env)
    if attempt <= 1 or (last is not None and last.code == ExitCode.RETRY_LATER):
        return res
    if last is not None and last.code in ExitCode._value2member_map_ and ExitCode(last.code).rerun_repeats:
        extra = job_settings(config, rule, model)["slurm_extra"]
        return {
            **res,
            "mem_mb": REFUSAL_MB,
            "runtime": REFUSAL_MINUTES,
            "gres": None,
            "constraint": None,
            "tasks_per_gpu": 0,
            "cpus_per_task": 1,
            "slurm_extra": merged_slurm_extra(extra),
            **slurm_account_settings(config, env, cpu_job=True),
        }
    limits = config["resources"]
    killed = last is None
    grow_time = rule != "train" or killed
    mem = res["mem_mb"] * attempt
    runtime = res["runtime"] * attempt if grow_time else res["runtime"]
    return {
        **res,
        "mem_mb": min(mem, limits["max_mem_mb"]) if limits["max_mem_mb"] else mem,
        "runtime": min(runtime, limits["max_runtime"]) if limits["max_runtime"] else runtime,
    }


def attempts_log_path(dataset: str, rule: str, name: str) -> str:
    """Where the jobs of `rule` for `name` (a model, or split-shard) append their attempts."""
    return f"logs/{rule}/{dataset}/{name}.attempts.log"


def small_job_resources(
    config: dict[str, Any], mem_mb: int, runtime: int, env: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """A one-core bookkeeping job (index, summary, table, download) with the site's account settings.

    These run where Snakemake runs by default (`resources.local_rules`); where a site moves
    them to the cluster they still need the partition, account and QoS of every other job.
    """
    return {"mem_mb": mem_mb, "runtime": runtime, **slurm_account_settings(config, env, cpu_job=True)}


def job_device(config: dict[str, Any], rule: str, model: str) -> str:
    """`--device` of a train or evaluate job: the config's `<rule>.device`, where `auto` is the
    device the job asks the scheduler for (cuda with GPUs, else cpu), so a GPU job never falls
    back to the CPU in silence."""
    setting = config[rule]["device"]
    if setting != "auto":
        return setting
    return "cuda" if job_settings(config, rule, model)["gpus"] else "cpu"


def launcher(config: dict[str, Any], rule: str, model: str) -> str:
    """The command that starts `python -m tokshift` (the checkout's code, see running_code) with the job's processes.

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
    return f"{step} python -m tokshift"


def train_override_args(config: dict[str, Any], model: str) -> list[str]:
    """The `KEY=VALUE` items of `train --override` (values as JSON) for the zoo fields config.yaml changes for `model`.

    JSON reads back as YAML, so lists and nulls reach the zoo with their types.
    """
    return [f"{k}={json.dumps(v)}" for k, v in training_overrides(config, model).items()]


#: The rules whose jobs the config sizes, and their `resources` key.
SIZED_RULES = {"pack_shard": "pack", "train": "train", "evaluate": "evaluate", "evaluate_released": "evaluate"}


def _cli_string(raw: object) -> str:
    """A `--set-resources` value as the user meant it: a quoted Python string or the bare text."""
    import ast

    text = str(raw)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


def fold_cli_slurm_extra(config: dict[str, Any], overwrite: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Move `--set-resources <rule>:slurm_extra=...` into `resources.<step>.slurm_extra`; the rules it names.

    Snakemake lets a command-line resource replace a rule's value, which would drop our
    `--signal` (and with it the checkpoint before the time limit). The flags go into the config
    instead, after any already there, where `job_resources` merges them with ours and
    `check_config` checks them; the Snakefile then gives those rules their own value back.
    """
    folded = []
    for rule, resources in overwrite.items():
        if rule not in SIZED_RULES or "slurm_extra" not in resources:
            continue
        value = resources["slurm_extra"]
        extra = _cli_string(getattr(value, "raw", value))
        job = config["resources"][SIZED_RULES[rule]]
        job["slurm_extra"] = merged_slurm_extra(job.get("slurm_extra"), extra) or ""
        folded.append(rule)
    return folded


#: Time limit of a preflight probe job, minutes: a few steps, short enough to start from backfill.
PROBE_MINUTES = 15


def preflight_jobs(config: dict[str, Any], models: list[str]) -> dict[str, dict[str, Any]]:
    """Each model's train and evaluate job shape, as `tokshift preflight-report --jobs` checks and prices it."""
    jobs = {}
    for model in models:
        for rule in ("train", "evaluate"):
            res = rule_job_resources(config, rule, model)
            job = job_settings(config, rule, model)
            jobs[f"{rule} {model}"] = {
                "rule": rule,
                "model": model,
                "gpus": job["gpus"],
                "nodes": job["nodes"],
                "runtime": res["runtime"],
                "partition": res.get("slurm_partition"),
                "account": res.get("slurm_account"),
                "qos": res.get("qos"),
                "gres": res.get("gres"),
                "constraint": res.get("constraint"),
                "overrides": training_overrides(config, model) if rule == "train" else {},
            }
    return jobs
