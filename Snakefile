# tokshift: ImageNet-21k ViT weights -> frames in LMDB shards -> training -> 30-view evaluation -> zoo table.
# Stages live in rules/*.smk; config.yaml selects the dataset and the models.

from snakemake.utils import min_version, validate

from tokshift.settings import SCHEMA_PATH
from tokshift.workflow.cli_values import coerce_command_line
from tokshift.workflow.config import default_released_resize

min_version("9.0")


configfile: "config.yaml"


# Nested --config values arrive as strings: numbers become numbers before validation,
# which fills in every default the schema declares.
coerce_command_line(config, workflow.config_settings.overwrite_config)
# `checkpoints: released` evaluates with the original's resize unless evaluate.resize is set.
default_released_resize(config)
validate(config, str(SCHEMA_PATH))


include: "rules/common.smk"


wildcard_constraints:
    split="train|val",
    shard=r"\d+",
    model="|".join(MODELS),
    backbone=r"[A-Za-z0-9_.-]+",


include: "rules/weights.smk"
include: "rules/fetch.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/released.smk"
include: "rules/preflight.smk"


# Downloads and bookkeeping run where Snakemake runs (config: resources.local_rules); the
# `localrules:` directive takes the same names, but only literally.
workflow.localrules(*local_rules())
# `--set-resources <rule>:slurm_extra=...` adds to the rule's sbatch flags instead of replacing them.
keep_merged_slurm_extra()


rule all:
    default_target: True
    input:
        # Trained: the table and the checkpoints (a deleted one is retrained and re-evaluated).
        # Released: the table of the original's checkpoints, nothing trained.
        default_targets(),
