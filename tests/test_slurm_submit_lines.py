"""The sbatch command line of every job, rendered by the installed SLURM executor plugin's own code.

Each job's resources come from tokshift.workflow.scheduling exactly as the rules get them
(values of None dropped, as Snakemake drops unset resources); the plugin's
`get_submit_command` and `set_gres_string` turn them into the sbatch line it would submit.
Only the account and partition arguments are written here: the executor checks them against
the live cluster (sacctmgr) before it formats them as ` -A <account>` and ` -p <partition>`.
No cluster is needed.
"""

from __future__ import annotations

import itertools
import shlex
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.workflow_helpers import repo_config
from tokshift.settings import SCHEMA_PATH
from tokshift.workflow import scheduling

HEAD = "sbatch --parsable --job-name RUN --output logs/slurm/%j.log --export=ALL --comment COMMENT"


def make_config(rule: str, job: dict[str, Any], **site: Any) -> dict[str, Any]:
    from snakemake.utils import validate

    cfg = repo_config()
    cfg["resources"][rule].update(job)
    cfg["resources"].update(site)
    validate(cfg, str(SCHEMA_PATH))
    return cfg


def render(resources: dict[str, Any], threads: int) -> str:
    """The plugin's sbatch line for a job with these resources (None = unset, as in Snakemake)."""
    from snakemake.iocontainers import ResourceList
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    res = {k: v for k, v in resources.items() if v is not None}
    job = SimpleNamespace(resources=ResourceList(fromdict=res), threads=threads)
    account = f" -A {shlex.quote(res['slurm_account'])}" if "slurm_account" in res else ""
    partition = f" -p {res['slurm_partition']}" if "slurm_partition" in res else ""
    params = {
        "run_uuid": "RUN",
        "slurm_logfile": "logs/slurm/%j.log",
        "comment_str": "COMMENT",
        "account": account,
        "partition": partition,
        "workdir": "/work",
    }
    line = get_submit_command(job, params) + set_gres_string(job)
    assert line.startswith(HEAD)
    return " ".join(line[len(HEAD) :].split())


def render_rule(cfg: dict[str, Any], rule: str, model: str | None = "demo_vit", env: dict | None = None) -> str:
    model = None if rule == "pack" else model
    resources = scheduling.rule_job_resources(cfg, rule, model, env=env or {})
    return render(resources, scheduling.job_threads(cfg, rule, model))


# (rule, per-rule job settings, site settings) -> the sbatch options after the common head.
PINNED = [
    ("pack", {}, {}, "-t 120 --mem 4000 --nodes=1 --ntasks=1 --cpus-per-task=2 -D /work"),
    ("evaluate", {}, {}, "-t 60 --mem 8000 --nodes=1 --ntasks=1 --cpus-per-task=2 -D /work"),
    (
        "train",
        {},
        {},
        "-t 60 --mem 8000 --nodes=1 --ntasks=1 --cpus-per-task=2 --signal=USR1@300 -D /work",
    ),
    # One GPU, no type: the GRES alone, no -C.
    (
        "train",
        {"gpus": 1},
        {},
        "-t 60 --mem 32000 --nodes=1 --cpus-per-task=8 --signal=USR1@300 -D /work --gres=gpu:1",
    ),
    # Four GPUs on one node, typed GRES: torchrun inside one task with all the node's cores.
    (
        "train",
        {"gpus": 4},
        {"gpu_model": "a100"},
        "-t 60 --mem 104000 --nodes=1 --cpus-per-task=32 --signal=USR1@300 -D /work --gres=gpu:a100:4",
    ),
    # GPU type as a node feature instead.
    (
        "evaluate",
        {"gpus": 2},
        {"gpu_constraint": "a100"},
        "-t 60 -C a100 --mem 40000 --nodes=1 --cpus-per-task=16 -D /work --gres=gpu:2",
    ),
    # Two nodes with 2 GPUs each: the GRES is per node, one task per GPU.
    (
        "train",
        {"gpus": 2, "nodes": 2},
        {"gpu_model": "h100"},
        "-t 60 --mem 56000 --nodes=2 --ntasks-per-gpu=1 --ntasks=4 --cpus-per-task=8 --signal=USR1@300"
        " -D /work --gres=gpu:h100:2",
    ),
    # Two CPU nodes (the test cluster's multi-node training): one task per node.
    (
        "train",
        {"nodes": 2},
        {},
        "-t 60 --mem 8000 --nodes=2 --ntasks=2 --cpus-per-task=2 --signal=USR1@300 -D /work",
    ),
    # Everything a site may set.
    (
        "train",
        {"gpus": 8, "nodes": 2, "runtime": 4320},
        {
            "gpu_model": "a100",
            "gpu_constraint": "ib",
            "slurm_qos": "long",
            "slurm_account": "vision",
            "slurm_partition": "gpu",
        },
        "-A vision -p gpu -t 4320 -C ib --qos=long --mem 200000 --nodes=2 --ntasks-per-gpu=1 --ntasks=16"
        " --cpus-per-task=8 --signal=USR1@300 -D /work --gres=gpu:a100:8",
    ),
]


@pytest.mark.parametrize("rule, job, site, expect", PINNED, ids=[f"{r}-{i}" for i, (r, _, _, _) in enumerate(PINNED)])
def test_pinned_submit_lines(rule, job, site, expect) -> None:
    assert render_rule(make_config(rule, job, **site), rule) == expect


SITES = {
    "bare": {},
    "model": {"gpu_model": "a100"},
    "feature": {"gpu_constraint": "a100"},
    "both+qos+account": {
        "gpu_model": "a100",
        "gpu_constraint": "nvlink",
        "slurm_qos": "normal",
        "slurm_account": "lab",
        "slurm_partition": "gpu",
    },
}


@pytest.mark.parametrize("rule", ["train", "evaluate"])
@pytest.mark.parametrize("site", list(SITES))
def test_every_job_shape_asks_for_its_gpus_on_every_node(rule, site) -> None:
    """0, 1 and N GPUs on 1 and N nodes: GRES per node, tasks, type; never an empty option."""
    for gpus, nodes in itertools.product((0, 1, 3), (1, 2, 3)):
        cfg = make_config(rule, {"gpus": gpus, "nodes": nodes}, **SITES[site])
        line = render_rule(cfg, rule)
        opts = line.split()
        assert "''" not in line and '""' not in line, line
        assert f"--nodes={nodes}" in opts, line
        model = SITES[site].get("gpu_model")
        if gpus:
            assert opts[-1] == (f"--gres=gpu:{model}:{gpus}" if model else f"--gres=gpu:{gpus}"), line
            assert not any(o.startswith("--gpus") for o in opts), line
            feature = SITES[site].get("gpu_constraint")
            assert (f"-C {feature}" in line) == bool(feature), line
        else:
            assert "--gres" not in line and "-C" not in opts, line
        if nodes > 1:
            # srun starts one rank per GPU (or per node without GPUs) on every node.
            ranks = nodes * max(gpus, 1)
            assert f"--ntasks={ranks}" in opts, line
            assert ("--ntasks-per-gpu=1" in opts) == bool(gpus), line
        if "slurm_account" in SITES[site]:
            assert line.startswith("-A lab -p gpu ") and "--qos=normal" in opts, line
        else:
            assert "--qos" not in line and " -A " not in f" {line}", line


@pytest.mark.parametrize("env", [{}, {"TOKSHIFT_SLURM_QOS": "", "TOKSHIFT_SLURM_CONSTRAINT": ""}])
def test_no_empty_constraint_or_qos_reaches_sbatch(env) -> None:
    cfg = make_config("train", {"gpus": 1})
    line = render_rule(cfg, "train", env=env)
    assert "-C" not in line.split() and "--qos" not in line, line


def test_environment_supplies_gpu_model_and_account() -> None:
    env = {"TOKSHIFT_SLURM_GPU_MODEL": "l40s", "TOKSHIFT_SLURM_ACCOUNT": "env_acct", "TOKSHIFT_SLURM_QOS": "q"}
    line = render_rule(make_config("train", {"gpus": 2}), "train", env=env)
    assert line.endswith("--gres=gpu:l40s:2") and line.startswith("-A env_acct ") and "--qos=q" in line, line


def test_bookkeeping_steps_carry_the_site_settings_when_submitted() -> None:
    """Moved to the cluster (resources.local_rules: []), a small step still names account and QoS."""
    cfg = make_config("train", {}, slurm_account="lab", slurm_qos="short")
    line = render(scheduling.small_job_resources(cfg, mem_mb=1000, runtime=10, env={}), threads=1)
    assert line == "-A lab -t 10 --qos=short --mem 1000 --ntasks=1 --cpus-per-task=1 -D /work"
    bare = render(scheduling.small_job_resources(make_config("train", {}), mem_mb=2000, runtime=60, env={}), 1)
    assert bare == "-t 60 --mem 2000 --ntasks=1 --cpus-per-task=1 -D /work"


def test_gpu_model_with_a_bad_name_is_rejected_by_the_schema() -> None:
    """A name with `-` is a real GRES type (a100-sxm4-80gb); one with `:` would break the GRES."""
    from snakemake.utils import validate

    cfg = repo_config()
    cfg["resources"]["gpu_model"] = "a100:2"
    with pytest.raises(Exception, match="gpu_model|does not match"):
        validate(cfg, str(SCHEMA_PATH))


def test_local_rules_default_names_download_and_bookkeeping_steps() -> None:
    from snakemake.utils import validate

    cfg = yaml.safe_load(yaml.safe_dump(repo_config()))
    validate(cfg, str(SCHEMA_PATH))
    local = set(cfg["resources"]["local_rules"])
    assert {"download_weights", "index_dataset", "summarize_frames", "collect_results"} <= local
    assert not local & {"train", "evaluate", "pack_shard", "evaluate_released"}


def shipped_kinetics_config() -> dict[str, Any]:
    """config.yaml with its first `kinetics400` entry uncommented and selected, as a user does it."""
    from snakemake.utils import validate

    from tests.workflow_helpers import REPO

    lines = (REPO / "config.yaml").read_text().splitlines()
    start = lines.index("  # kinetics400:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #") or (block and line.startswith("  # ") and not line.startswith("  #   ")):
            break
        block.append("  " + line[len("  # ") :])
    at = lines.index("datasets:") + 1
    cfg = yaml.safe_load("\n".join(lines[:at] + block + lines[at:]))
    cfg["dataset"] = "kinetics400"
    validate(cfg, str(SCHEMA_PATH))
    return cfg


def test_every_kinetics_entry_asks_for_its_reference_gpus_with_the_shipped_config() -> None:
    """The zoo as shipped: each K400 training asks for its reference GPUs on one node, the loader cores
    and memory of each, a time limit from its estimate and the signal before it; the demo for none."""
    from tokshift.zoo import get_config, zoo_names
    from tokshift.zoo.jobs import zoo_job

    cfg = shipped_kinetics_config()
    assert settings_models(cfg) == zoo_names("k400")
    for model in zoo_names("k400"):
        gpus, job = get_config(model).gpus, zoo_job(get_config(model))
        assert gpus in (2, 4, 8)
        train = render_rule(cfg, "train", model).split()
        assert train[-1] == f"--gres=gpu:{gpus}", (model, train)
        assert f"--cpus-per-task={8 * gpus}" in train and "--signal=USR1@300" in train, (model, train)
        assert train[train.index("--mem") + 1] == str(8000 + 24000 * gpus), (model, train)
        assert train[train.index("-t") + 1] == str(job.train_runtime), (model, train)
        evaluate = render_rule(cfg, "evaluate", model).split()
        assert evaluate[-1] == f"--gres=gpu:{gpus}" and "--signal=USR1@300" not in evaluate, (model, evaluate)
    demo = make_config("train", {})
    for model in zoo_names("demo"):
        for rule in ("train", "evaluate"):
            line = render_rule(demo, rule, model)
            assert "--gres" not in line and "--gpus" not in line and " -t 60 " in f" {line} ", (model, line)


def settings_models(cfg: dict[str, Any]) -> list[str]:
    from tokshift.workflow.config import selected_models

    return selected_models(cfg)


def test_time_limits_with_the_resubmissions_cover_twice_the_estimated_training() -> None:
    """Each job of the chain resumes the last: (retries + 1) time limits hold the estimate twice."""
    from tests.workflow_helpers import REPO
    from tokshift.zoo import get_config, zoo_names
    from tokshift.zoo.jobs import zoo_job

    retries = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())["retries"]
    for model in zoo_names("k400"):
        job = zoo_job(get_config(model))
        assert job.train_hours and job.train_runtime * (retries + 1) / 60 >= 2 * job.train_hours, (model, job)
        assert job.train_runtime <= 24 * 60 and job.evaluate_runtime >= 60 * job.evaluate_hours, (model, job)


def test_site_flags_from_the_config_and_the_command_line_sit_next_to_the_signal() -> None:
    """resources.train.slurm_extra and `--set-resources train:slurm_extra=...` both reach sbatch after
    --signal (the fold the workflow applies to the command-line value), and the plugin accepts them."""
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    cfg = make_config("train", {"gpus": 2, "slurm_extra": "--mail-type=END"})
    assert scheduling.fold_cli_slurm_extra(cfg, {"train": {"slurm_extra": "'--exclusive'"}}) == ["train"]
    assert scheduling.fold_cli_slurm_extra(cfg, {"collect_results": {"slurm_extra": "--x"}}) == []
    resources = scheduling.rule_job_resources(cfg, "train", "demo_vit", env={})
    line = render(resources, scheduling.job_threads(cfg, "train", "demo_vit"))
    assert "--signal=USR1@300 --mail-type=END --exclusive -D /work --gres=gpu:2" in line, line
    validate_slurm_extra(SimpleNamespace(resources=SimpleNamespace(slurm_extra=resources["slurm_extra"])))


def test_a_gpu_model_with_a_dash_asks_per_node_through_the_flag_the_plugin_lets_through() -> None:
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    cfg = make_config("train", {"gpus": 4}, gpu_model="a100-sxm4-80gb")
    resources = scheduling.rule_job_resources(cfg, "train", "demo_vit", env={})
    line = render(resources, scheduling.job_threads(cfg, "train", "demo_vit"))
    assert "--gres" not in line and "--signal=USR1@300 --gpus-per-node=a100-sxm4-80gb:4" in line, line
    validate_slurm_extra(SimpleNamespace(resources=SimpleNamespace(slurm_extra=resources["slurm_extra"])))


def test_cpu_steps_go_to_the_cpu_partition_gpu_steps_to_the_gpu_partition() -> None:
    cfg = make_config("train", {}, slurm_partition="gpu", slurm_account="lab", cpu_partition="cpu")
    cfg["resources"]["cpu_qos"] = "short"
    assert render_rule(cfg, "pack").startswith("-A lab -p cpu ")
    assert "--qos=short" in render_rule(cfg, "pack")
    small = render(scheduling.small_job_resources(cfg, mem_mb=1000, runtime=10, env={}), threads=1)
    assert small.startswith("-A lab -p cpu ")
    assert render_rule(cfg, "train", "demo_vit").startswith("-A lab -p cpu ")  # a CPU model
    gpu = render_rule(cfg, "train", "k400_vit_8x32_224")
    assert gpu.startswith("-A lab -p gpu ") and "--qos" not in gpu and gpu.endswith("--gres=gpu:2"), gpu
    env = {"TOKSHIFT_SLURM_CPU_PARTITION": "cpu-env"}
    assert render_rule(make_config("pack", {}, slurm_partition="gpu"), "pack", env=env).startswith("-p cpu-env ")
