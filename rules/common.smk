# Shared lookups for the rules (paths, the selected dataset and models, job resources).
# The checks and the decisions live in the tokshift package: tokshift/workflow/config.py
# (config lookups) and tokshift/workflow/scheduling.py (threads, resources, launchers).
# Rules pass values in `params:` and spell every flag of their command in `shell:`. A value that
# may be empty (none) is written `--flag={params.value:q}`: Snakemake leaves an empty value
# unquoted, and `--flag=` still gives the command the empty value.

import json
import os
import sys

from tokshift.attempts import last_outcome
from tokshift.workflow import config as workflow_settings
from tokshift.workflow import running_code, scheduling
from tokshift.zoo import get_config

# One code version per run: the plan must import this checkout's tokshift/, not another copy.
running_code.check_workflow_imports(workflow.basedir)

# `--set-resources train:slurm_extra=...` joins resources.train.slurm_extra (checked with the rest)
# instead of replacing the rule's value, which holds --signal; see keep_merged_slurm_extra().
CLI_SLURM_EXTRA_RULES = scheduling.fold_cli_slurm_extra(config, workflow.resource_settings.overwrite_resources)
workflow_settings.check_config(config, base=Path(workflow.basedir))
if workflow.is_main_process:  # the plan's first lines, not every cluster job's log
    for line in workflow_settings.shadowed_settings(config, workflow.config_settings.overwrite_config):
        print(line, file=sys.stderr)
    for line in workflow_settings.preflight_runtime_notes(config, workflow_settings.selected_models(config)):
        print(line, file=sys.stderr)

# The rules' launchers name slurm/job-step.sh through this variable (set for every job,
# local or submitted), so no rule's params hold the checkout's absolute path.
os.environ[scheduling.JOB_STEP_ENV] = str(scheduling.job_step_path(workflow.basedir))
# Every job runs `python -m tokshift` with the checkout first on PYTHONPATH and this interpreter's
# bin/ first on PATH: the code the plan was made with (checked above), whatever else is installed.
os.environ.update(running_code.job_environment(workflow.basedir, os.environ, sys.executable))

DATASET = config["dataset"]
SPEC = workflow_settings.dataset_spec(config)
MODELS = workflow_settings.selected_models(config)
FRAMES = workflow_settings.frames_settings(config)
SHARDS = list(range(FRAMES["shards"]))
RESULTS = f"results/{DATASET}"
# `snakemake preflight` writes it (rules/preflight.smk); the table and `runtime: preflight` read it.
PREFLIGHT_REPORT = str(workflow_settings.preflight_report_path(config))


def shard_paths(split):
    return expand(f"{RESULTS}/frames/{split}/shard-{{shard}}.lmdb", shard=SHARDS)


def zoo_table_outputs():
    return [f"{RESULTS}/model_zoo.csv", f"{RESULTS}/model_zoo.md", f"{RESULTS}/accuracy_vs_gflops.png"]


def default_targets():
    """What `snakemake` builds: per `checkpoints`, the trained zoo (with its figures) or the released table."""
    if workflow_settings.released_mode(config):
        return released_table_outputs() + expand(f"{RELEASED}/{{model}}/model.pt", model=MODELS)
    return zoo_table_outputs() + FIGURE_TARGETS + expand(f"{RESULTS}/train/{{model}}/model.pt", model=MODELS)


# Released checkpoints (checkpoints: released): converted, evaluated and tabled apart from trained ones.
RELEASED = f"{RESULTS}/released"


def released_table_outputs():
    return [f"{RELEASED}/model_zoo.csv", f"{RELEASED}/model_zoo.md", f"{RELEASED}/accuracy_vs_gflops.png"]


def released_source(model):
    return workflow_settings.released_entry(config, model)["source"]


def released_checkpoint(wildcards):
    """The original's .pth of a model: a local path in place, a URL's download under resources/released/."""
    source = released_source(wildcards.model)
    if workflow_settings.is_url(source):
        return f"resources/released/{wildcards.model}.pth"
    return source


def init_weights(wildcards):
    """What a model starts from: `train.init_from` (fine-tuning), its zoo's ImageNet-21k .npz, or nothing."""
    start = workflow_settings.init_from(config, wildcards.model)
    if start:
        return [start]
    backbone = get_config(wildcards.model).imagenet_weights
    return [f"resources/weights/{backbone}.npz"] if backbone else []


def local_rules():
    """`resources.local_rules` that this run defines; a name that is no rule of the workflow is an error.

    The fetch rules exist only for a dataset that is fetched (`fetch: cvdf`), so they may be named always.
    """
    names = config["resources"]["local_rules"]
    defined = {r.name for r in workflow.rules}
    known = defined | set(FETCH_RULES)
    unknown = sorted(set(names) - known)
    if unknown:
        raise WorkflowError(
            f"config resources.local_rules names unknown rules: {', '.join(unknown)}."
            f" Known rules: {', '.join(sorted(known))}."
        )
    return [n for n in names if n in defined]


def rule_resources(rule_name):
    """Resources of pack_shard, train, evaluate or evaluate_released: each value a
    callable of the job's wildcards and attempt, so that a retry asks for what its last attempt's
    end calls for (scheduling.retry_resources)."""
    step = scheduling.SIZED_RULES[rule_name]
    sample = None if step == "pack" else MODELS[0]
    keys = set(scheduling.rule_job_resources(config, step, sample)) | {k for k, _, _ in scheduling.ACCOUNT_SETTINGS}

    def resource(key):
        def value(wildcards, attempt):
            model = None if step == "pack" else wildcards.model
            last = None
            if attempt > 1:
                name = wildcards.model if model else f"{wildcards.split}-{wildcards.shard}"
                last = last_outcome(Path(scheduling.attempts_log_path(DATASET, rule_name, name)))
            return scheduling.retry_resources(config, step, model, attempt, last).get(key)

        return value

    funcs = {k: resource(k) for k in sorted(keys)}
    RULE_RESOURCE_FUNCS[rule_name] = funcs
    return funcs


RULE_RESOURCE_FUNCS = {}


def attempts_log(rule_name):
    """The `--attempts-log` of a sized rule's job: a params function of its wildcards."""

    def path(wildcards):
        name = wildcards.model if "model" in wildcards.keys() else f"{wildcards.split}-{wildcards.shard}"
        return scheduling.attempts_log_path(DATASET, rule_name, name)

    return path


def keep_merged_slurm_extra():
    """Give the rules named by `--set-resources <rule>:slurm_extra` their own value back: it holds
    the flags given there, after ours (fold_cli_slurm_extra), where Snakemake put theirs alone."""
    for name in CLI_SLURM_EXTRA_RULES:
        if name in RULE_RESOURCE_FUNCS:
            workflow.get_rule(name).resources["slurm_extra"] = RULE_RESOURCE_FUNCS[name]["slurm_extra"]


# The preflight (rules/preflight.smk).
def executor_name(wildcards):
    """The executor of this run (slurm under the profile): the cluster is checked under slurm only."""
    plugin = workflow.executor_plugin
    return plugin.name if plugin is not None else "local"


def probe_resources():
    """The resources of the model's own train or evaluate job, with a probe's short time limit."""
    keys = set(scheduling.rule_job_resources(config, "train", MODELS[0])) | {
        k for k, _, _ in scheduling.ACCOUNT_SETTINGS
    }

    def resource(key):
        def value(wildcards):
            if key == "runtime":
                return scheduling.PROBE_MINUTES
            return scheduling.rule_job_resources(config, wildcards.step, wildcards.model).get(key)

        return value

    return {k: resource(k) for k in sorted(keys)}
