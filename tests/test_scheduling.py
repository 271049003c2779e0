"""Threads, scheduler resources and launcher command lines of the workflow's jobs.

Configs are the repository's config.yaml with edits, validated (and completed with the
schema's defaults) exactly as the Snakefile does, so these pin what a job asks for.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokshift.settings import SCHEMA_PATH, default
from tokshift.workflow import config as settings
from tokshift.workflow import running_code, scheduling

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config.yaml").read_text())
STEP = '"${TOKSHIFT_JOB_STEP:?is set by the workflow to its slurm/job-step.sh}"'


def make_config(**resources: Any) -> dict[str, Any]:
    """config.yaml with `resources.<key>` entries updated, validated with defaults applied."""
    from snakemake.utils import validate

    cfg = copy.deepcopy(BASE)
    for key, value in resources.items():
        if isinstance(value, dict):
            cfg["resources"][key].update(value)
        else:
            cfg["resources"][key] = value
    validate(cfg, str(SCHEMA_PATH))
    return cfg


def neutral(**kw: Any) -> dict[str, Any]:
    out = {
        "mem_mb": 8000,
        "runtime": 60,
        "gres": None,
        "nodes": 1,
        "tasks": 1,
        "tasks_per_gpu": 0,
        "mpi": "",
        "cpus_per_task": 2,
        "constraint": None,
        "slurm_extra": "--signal=USR1@300",
    }
    out.update(kw)
    return out


# (gpus per node, nodes, tasks_per_node) -> (resources, launcher after the job-step options)
MATRIX = [
    ((0, 1, 1), neutral(), "--ntasks 1 --nodes 1 --cpus-per-task 2 -- python -m tokshift"),
    ((1, 1, 1), neutral(gres="gpu:1", cpus_per_task=8), "--ntasks 1 --nodes 1 --cpus-per-task 8 -- python -m tokshift"),
    (
        (4, 1, 1),
        neutral(gres="gpu:4", cpus_per_task=32),
        "--ntasks 1 --nodes 1 --cpus-per-task 32 -- torchrun --standalone --nproc-per-node=4 -m tokshift.cli",
    ),
    (
        (0, 2, 1),
        neutral(nodes=2, tasks=2, mpi="srun"),
        "--ntasks 2 --nodes 2 --cpus-per-task 2 -- python -m tokshift",
    ),
    (
        (1, 2, 1),
        neutral(gres="gpu:1", nodes=2, tasks=2, tasks_per_gpu=1, mpi="srun", cpus_per_task=8),
        "--ntasks 2 --nodes 2 --cpus-per-task 8 -- python -m tokshift",
    ),
    (
        (4, 3, 1),
        neutral(gres="gpu:4", nodes=3, tasks=12, tasks_per_gpu=1, mpi="srun", cpus_per_task=8),
        "--ntasks 12 --nodes 3 --cpus-per-task 8 -- python -m tokshift",
    ),
    ((0, 1, 3), neutral(tasks=3, mpi="srun"), "--ntasks 3 --nodes 1 --cpus-per-task 2 -- python -m tokshift"),
    (
        (4, 1, 4),
        neutral(gres="gpu:4", tasks=4, tasks_per_gpu=1, mpi="srun", cpus_per_task=8),
        "--ntasks 4 --nodes 1 --cpus-per-task 8 -- python -m tokshift",
    ),
    (
        (2, 2, 4),
        neutral(gres="gpu:2", nodes=2, tasks=8, tasks_per_gpu=1, mpi="srun", cpus_per_task=8),
        "--ntasks 8 --nodes 2 --cpus-per-task 8 -- python -m tokshift",
    ),
]


@pytest.mark.parametrize("shape, resources, launch", MATRIX, ids=[f"g{g}-n{n}-t{t}" for (g, n, t), _, _ in MATRIX])
def test_resources_and_launcher_of_each_job_shape(shape, resources, launch) -> None:
    gpus, nodes, tasks_per_node = shape
    cfg = make_config(train={"gpus": gpus, "nodes": nodes, "tasks_per_node": tasks_per_node})
    # A GPU job's host memory grows with its GPUs per node (config defaults: 8000 + 24000 per GPU).
    assert scheduling.job_resources(cfg, "train", "demo_vit", env={}) == {**resources, "mem_mb": 8000 + 24000 * gpus}
    assert scheduling.launcher(cfg, "train", "demo_vit") == f"{STEP} {launch}"
    assert scheduling.job_threads(cfg, "train", "demo_vit") == (gpus * 8 if gpus else 2)


def test_signal_only_for_training() -> None:
    cfg = make_config(evaluate={"gpus": 1}, train={"signal_seconds": 0})
    assert scheduling.job_resources(cfg, "evaluate", "demo_vit", env={})["slurm_extra"] is None
    assert scheduling.job_resources(cfg, "train", "demo_vit", env={})["slurm_extra"] is None
    cfg = make_config(train={"signal_seconds": 120})
    assert scheduling.job_resources(cfg, "train", "demo_vit", env={})["slurm_extra"] == "--signal=USR1@120"


def test_pack_jobs_take_the_pack_settings() -> None:
    cfg = make_config(pack={"cpus": 6, "mem_mb": 3000})
    res = scheduling.job_resources(cfg, "pack", env={})
    assert res == neutral(mem_mb=3000, runtime=120, cpus_per_task=6, slurm_extra=None)
    assert scheduling.job_threads(cfg, "pack") == 6


@pytest.mark.parametrize(
    "in_config, env, gpus, expect",
    [
        (None, {}, 1, None),
        (None, {"TOKSHIFT_SLURM_CONSTRAINT": ""}, 1, None),  # empty: left out, never -C ''
        ("a100", {}, 1, "a100"),
        (None, {"TOKSHIFT_SLURM_CONSTRAINT": "h100"}, 2, "h100"),
        ("a100", {"TOKSHIFT_SLURM_CONSTRAINT": "h100"}, 1, "a100"),
        ("a100", {"TOKSHIFT_SLURM_CONSTRAINT": "h100"}, 0, None),  # CPU jobs ask for no GPU type
    ],
)
def test_gpu_constraint_from_config_else_environment(in_config, env, gpus, expect) -> None:
    cfg = make_config(gpu_constraint=in_config, train={"gpus": gpus})
    assert scheduling.job_resources(cfg, "train", "demo_vit", env=env)["constraint"] == expect


@pytest.mark.parametrize(
    "in_config, env, expect",
    [
        ({}, {}, {}),
        ({}, {"TOKSHIFT_SLURM_QOS": ""}, {}),  # empty values never reach sbatch
        (
            {"slurm_partition": "gpu", "slurm_account": "lab", "slurm_qos": "high"},
            {},
            {"slurm_partition": "gpu", "slurm_account": "lab", "qos": "high"},
        ),
        (
            {},
            {"TOKSHIFT_SLURM_PARTITION": "p", "TOKSHIFT_SLURM_ACCOUNT": "a", "TOKSHIFT_SLURM_QOS": "q"},
            {"slurm_partition": "p", "slurm_account": "a", "qos": "q"},
        ),
        (
            {"slurm_account": "lab"},
            {"TOKSHIFT_SLURM_ACCOUNT": "other", "TOKSHIFT_SLURM_QOS": "low"},
            {"slurm_account": "lab", "qos": "low"},
        ),
    ],
    ids=["none", "empty-env", "config", "env", "config-wins"],
)
def test_partition_account_qos_from_config_else_environment(in_config, env, expect) -> None:
    cfg = make_config(**in_config)
    assert scheduling.slurm_account_settings(cfg, env=env) == expect


def test_zoo_gpus_and_per_model_settings() -> None:
    cfg = make_config(
        train={"gpus": "zoo"},
        per_model={"k400_tokshift_div4_8x32_large_384": {"train": {"nodes": 2, "runtime": 4320}}},
    )
    # The reference GPU count, one node: torchrun inside one task.
    assert scheduling.job_resources(cfg, "train", "k400_vit_8x32_224", env={})["gres"] == "gpu:2"
    assert "--nproc-per-node=2" in scheduling.launcher(cfg, "train", "k400_vit_8x32_224")
    # 8 GPUs on each of 2 nodes: one srun task per GPU.
    res = scheduling.job_resources(cfg, "train", "k400_tokshift_div4_8x32_large_384", env={})
    assert (res["gres"], res["nodes"], res["tasks"], res["runtime"], res["mpi"]) == ("gpu:8", 2, 16, 4320, "srun")
    # The evaluation of the same model keeps the evaluate settings: auto, its reference GPUs on one node.
    res = scheduling.job_resources(cfg, "evaluate", "k400_tokshift_div4_8x32_large_384", env={})
    assert (res["gres"], res["nodes"]) == ("gpu:8", 1)


def test_train_override_args_are_key_json_items() -> None:
    """Each item one `--override` argument (the rule quotes it): JSON values keep lists and nulls."""
    cfg = make_config()
    assert scheduling.train_override_args(cfg, "demo_vit") == []
    cfg["train"]["overrides"] = {"epochs": "2"}
    cfg["train"]["per_model"] = {"demo_vit": {"lr_milestones": [3, 4], "imagenet_weights": None}}
    expect = ["epochs=2", "imagenet_weights=null", "lr_milestones=[3, 4]"]
    assert scheduling.train_override_args(cfg, "demo_vit") == expect


def test_defaults_come_from_the_schema_alone() -> None:
    """A config that sets none of `frames` / `resources` gets exactly the schema's defaults."""
    from snakemake.utils import validate

    cfg = {"dataset": "demo", "datasets": {"demo": {"kind": "demo", "zoo": "demo", "root": "d"}}, "models": "all"}
    validate(cfg, str(SCHEMA_PATH))
    assert settings.frames_settings(cfg) == {
        k: default("frames", k) for k in ("short_side", "jpeg_quality", "shards", "timeout", "stage_to")
    }
    for rule in ("pack", "train", "evaluate"):
        job = cfg["resources"][rule]
        assert job == {k: default("resources", rule, k) for k in job}
        # `auto` sizes come from the zoo entry: the demo's are CPU jobs of an hour.
        resolved = settings.job_settings(cfg, rule, None if rule == "pack" else "demo_vit")
        assert resolved["gpus"] == 0 and resolved["runtime"] == (120 if rule == "pack" else 60)
    assert scheduling.job_resources(cfg, "train", "demo_vit", env={}) == neutral()
    # A dataset entry's own frames override the global ones, the rest stays.
    cfg["datasets"]["demo"]["frames"] = {"shards": 3}
    assert settings.frames_settings(cfg)["shards"] == 3 and settings.frames_settings(cfg)["short_side"] == 331


def test_index_inputs_per_dataset_kind() -> None:
    cfg = make_config()
    assert settings.index_inputs(cfg, "val") == ["resources/demo/val.csv"]
    cfg["datasets"]["k"] = {"kind": "kinetics", "zoo": "k400", "root": "/r", "annotations": {"train": "t", "val": "v"}}
    cfg["datasets"]["c"] = {"kind": "csv", "zoo": "k400", "splits": {"train": "a.csv", "val": "b.csv"}}
    cfg["datasets"]["f"] = {"kind": "frames", "zoo": "k400", "root": "/r", "lists": {"train": "l", "val": "m"}}
    for name, expect in (("k", ["v"]), ("c", ["b.csv"]), ("f", ["m"])):
        cfg["dataset"] = name
        assert settings.index_inputs(cfg, "val") == expect


def test_launcher_runs_through_the_job_step_script() -> None:
    """The launcher is a shell command: with the variable set it runs the program via job-step.sh."""
    cmd = scheduling.launcher(make_config(), "train", "demo_vit") + " --help"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != scheduling.JOB_STEP_ENV}
    env.update(running_code.job_environment(REPO, env, sys.executable))  # as the workflow sets it for a job
    ok = subprocess.run(
        ["bash", "-c", cmd],
        env={**env, scheduling.JOB_STEP_ENV: str(scheduling.job_step_path(REPO))},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "usage: tokshift" in ok.stdout
    missing = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "TOKSHIFT_JOB_STEP" in missing.stderr


def test_host_memory_grows_with_the_gpus_of_a_node() -> None:
    cfg = make_config(train={"gpus": 2, "nodes": 3, "mem_mb": 1000, "mem_mb_per_gpu": 5000})
    assert scheduling.job_resources(cfg, "train", "demo_vit", env={})["mem_mb"] == 11000  # per node
    cfg = make_config(train={"gpus": 0, "mem_mb": 1000, "mem_mb_per_gpu": 5000})
    assert scheduling.job_resources(cfg, "train", "demo_vit", env={})["mem_mb"] == 1000


def test_jobs_state_the_device_they_ask_for() -> None:
    cfg = make_config(train={"gpus": 2}, evaluate={"gpus": 0})
    assert scheduling.job_device(cfg, "train", "demo_vit") == "cuda"
    assert scheduling.job_device(cfg, "evaluate", "demo_vit") == "cpu"
    cfg["train"] = {**cfg["train"], "device": "cpu"}  # stand-in GPUs, or a CPU run on a GPU node
    assert scheduling.job_device(cfg, "train", "demo_vit") == "cpu"


def kinetics(cfg: dict[str, Any], tmp_path: Path, models: list[str]) -> dict[str, Any]:
    """`cfg` running `models` on a Kinetics-400 entry whose paths exist."""
    ann = tmp_path / "ann.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\n")
    cfg["datasets"]["kinetics400"] = {
        "kind": "kinetics",
        "zoo": "k400",
        "root": str(tmp_path),
        "annotations": {"train": str(ann), "val": str(ann)},
    }
    cfg["dataset"], cfg["models"] = "kinetics400", models
    return cfg


def config_problems(cfg: dict[str, Any]) -> str:
    try:
        settings.check_config(cfg)
    except settings.ConfigError as e:
        return str(e)
    return ""


def test_kinetics_training_without_gpus_is_refused_naming_the_key_unless_allowed(tmp_path: Path) -> None:
    k400 = ["k400_vit_8x32_224", "k400_tokshift_div4_8x32_large_384"]
    assert config_problems(kinetics(make_config(), tmp_path, k400)) == ""
    msg = config_problems(kinetics(make_config(train={"gpus": 0}), tmp_path, k400))
    assert "'resources.train.gpus': 0 GPUs for k400_vit_8x32_224, which trains on 2 GPUs" in msg
    assert "k400_tokshift_div4_8x32_large_384, which trains on 8 GPUs" in msg
    assert "resources.allow_cpu_training: true" in msg
    per_model = make_config(per_model={"k400_vit_8x32_224": {"train": {"gpus": 0}}})
    msg = config_problems(kinetics(per_model, tmp_path, k400))
    assert "'resources.per_model.k400_vit_8x32_224.train.gpus'" in msg and "large_384" not in msg
    cfg = kinetics(make_config(train={"gpus": 0}), tmp_path, k400)
    cfg["train"]["device"] = "cpu"
    cfg["resources"]["allow_cpu_training"] = True
    assert config_problems(cfg) == ""
    on_cpu = kinetics(make_config(), tmp_path, k400)
    on_cpu["train"]["device"] = "cpu"
    assert "config key 'train.device': cpu would train k400_vit_8x32_224 on the CPUs" in config_problems(on_cpu)
    # The demo stays a CPU job, and needs no switch.
    assert config_problems(make_config(train={"gpus": 0})) == ""


def test_a_model_of_another_zoo_than_the_dataset_is_refused_naming_both(tmp_path: Path) -> None:
    cfg = make_config()
    cfg["models"] = ["demo_vit", "k400_vit_8x32_224"]
    msg = config_problems(cfg)
    assert "k400_vit_8x32_224 is an entry of the 'k400' zoo, but dataset 'demo' uses the 'demo' zoo" in msg
    assert "datasets.demo.zoo: k400" in msg and "demo_vit" not in msg
    with_k400 = kinetics(make_config(), tmp_path, ["k400_vit_8x32_224"])
    with_k400["dataset"], with_k400["models"] = "demo", ["k400_vit_8x32_224"]
    assert "run it with --config dataset=kinetics400" in config_problems(with_k400)
    # Own videos trained with K400 recipes say so with their zoo.
    own = kinetics(make_config(), tmp_path, ["demo_vit"])
    msg = config_problems(own)
    assert "demo_vit is an entry of the 'demo' zoo, but dataset 'kinetics400' uses the 'k400' zoo" in msg


@pytest.mark.parametrize(
    "extra, expect",
    [
        ("--signal=B:USR1@60", "--signal is set by the workflow"),
        ("--mail-type=END --mem=100G", "memory"),
        ("--gres=gpu:1", "generic resources"),
    ],
)
def test_slurm_extra_that_would_set_our_flags_again_is_refused_naming_the_key(extra: str, expect: str) -> None:
    msg = config_problems(make_config(train={"slurm_extra": extra}))
    assert "config key 'resources.train.slurm_extra'" in msg and expect in msg
    assert config_problems(make_config(train={"slurm_extra": "--mail-type=END --exclusive"})) == ""


def outcome(code: int) -> Any:
    from tokshift.attempts import Outcome

    return Outcome(code, "0" * 16, None)


def test_retries_ask_for_what_the_last_attempt_calls_for() -> None:
    """Bad input: almost nothing, no GPU, CPU partition. Stopped to continue (75): the same.
    Killed (no end line): more memory, and more time for packing and evaluation, within the caps."""
    cfg = make_config(train={"gpus": 2}, evaluate={"gpus": 2}, slurm_partition="gpu", cpu_partition="cpu")
    first = scheduling.retry_resources(cfg, "evaluate", "demo_vit", 1, None, env={})
    assert first == scheduling.rule_job_resources(cfg, "evaluate", "demo_vit", env={})
    assert (first["gres"], first["mem_mb"], first["runtime"], first["slurm_partition"]) == ("gpu:2", 40000, 60, "gpu")
    for code in (2, 3, 5):
        refused = scheduling.retry_resources(cfg, "evaluate", "demo_vit", 2, outcome(code), env={})
        assert (refused["gres"], refused["mem_mb"], refused["runtime"]) == (None, 1000, 5)
        assert (refused["cpus_per_task"], refused["slurm_partition"]) == (1, "cpu")
    same = scheduling.rule_job_resources(cfg, "train", "demo_vit", env={})
    assert scheduling.retry_resources(cfg, "train", "demo_vit", 3, outcome(75), env={}) == same
    killed = scheduling.retry_resources(cfg, "evaluate", "demo_vit", 2, None, env={})
    assert (killed["gres"], killed["mem_mb"], killed["runtime"]) == ("gpu:2", 80000, 120)
    assert scheduling.retry_resources(cfg, "pack", None, 3, outcome(1), env={})["mem_mb"] == 3 * 4000
    train = scheduling.retry_resources(cfg, "train", "demo_vit", 2, outcome(1), env={})
    assert (train["mem_mb"], train["runtime"]) == (2 * 56000, 60)  # the chain of resumes covers its time
    capped = make_config(evaluate={"gpus": 2}, max_mem_mb=50000, max_runtime=90)
    killed = scheduling.retry_resources(capped, "evaluate", "demo_vit", 3, None, env={})
    assert (killed["mem_mb"], killed["runtime"]) == (50000, 90)
