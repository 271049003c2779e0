# Shared lookups for the rules (paths, the selected dataset and models, job resources).
# The checks and the decisions live in the tokshift package: tokshift/workflow/config.py
# (config lookups) and tokshift/workflow/scheduling.py (threads, resources, launchers).

import json
import os
import shlex

from tokshift.workflow import config as workflow_settings
from tokshift.workflow import scheduling
from tokshift.zoo import get_config

workflow_settings.check_config(config, base=Path(workflow.basedir))

# The rules' launchers name slurm/job-step.sh through this variable (set for every job,
# local or submitted), so no rule's params hold the checkout's absolute path.
os.environ[scheduling.JOB_STEP_ENV] = str(scheduling.job_step_path(workflow.basedir))

DATASET = config["dataset"]
SPEC = workflow_settings.dataset_spec(config)
MODELS = workflow_settings.selected_models(config)
FRAMES = workflow_settings.frames_settings(config)
SHARDS = list(range(FRAMES["shards"]))
RESULTS = f"results/{DATASET}"


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


def released_sha_arg(model):
    sha = workflow_settings.released_entry(config, model).get("sha256")
    return f"--sha256 {sha}" if sha else ""


def released_source_args():
    """`tokshift collect --released-source MODEL=SOURCE ...`: the table names each URL or path as configured."""
    return " ".join(shlex.quote(f"{m}={released_source(m)}") for m in MODELS)


def stage_args():
    """`--stage-to DIR` from frames.stage_to, quoted so that $VARS expand on the node, in the job."""
    stage_to = FRAMES["stage_to"]
    return f"--stage-to {shlex.quote(stage_to)}" if stage_to else ""


def evaluate_view_args():
    e = config["evaluate"]
    return (
        f"--clips {e['clips']} --crops {e['crops']} --resize {e['resize']} --view-batch {e['view_batch']}"
        f" --max-failed-share {e['max_failed_share']}"
    )


def pretrained_weights(wildcards):
    """What a model starts from: `train.init_from` (fine-tuning) or its zoo's ImageNet-21k .npz."""
    start = workflow_settings.init_from(config, wildcards.model)
    if start:
        return [start]
    backbone = get_config(wildcards.model).pretrained
    return [f"resources/weights/{backbone}.npz"] if backbone else []


def index_inputs(wildcards):
    return workflow_settings.index_inputs(config, wildcards.split)


def job_threads(rule_name, model=None):
    return scheduling.job_threads(config, rule_name, model)


def job_resources(rule_name, model=None):
    return scheduling.rule_job_resources(config, rule_name, model)


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


def small_job(mem_mb, runtime):
    """Resources of a one-core bookkeeping or download step (with the site's account settings)."""
    return scheduling.small_job_resources(config, mem_mb, runtime)


def rule_resources(rule_name):
    """Resources for a per-model rule: each value a callable of the model wildcard."""
    keys = scheduling.rule_job_resources(config, rule_name, MODELS[0]).keys()
    return {
        k: (lambda wildcards, k=k: scheduling.rule_job_resources(config, rule_name, wildcards.model)[k]) for k in keys
    }


def launcher(rule_name, model):
    return scheduling.launcher(config, rule_name, model)


def loader_workers(rule_name, model):
    return scheduling.loader_workers(config, rule_name, model)


def train_override_args(model):
    return scheduling.train_override_args(config, model)
