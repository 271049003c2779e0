# tokshift: ImageNet-21k ViT weights -> frames in LMDB shards -> training -> 30-view evaluation -> zoo table.
# Stages live in rules/*.smk; config.yaml selects the dataset and the models.

from snakemake.utils import min_version, validate

from tokshift.workflow.cli_values import coerce_command_line
from tokshift.workflow.schema import SCHEMA_PATH

min_version("9.0")


configfile: "config.yaml"


# Nested --config values arrive as strings: numbers become numbers before validation,
# which fills in every default the schema declares.
coerce_command_line(config, workflow.config_settings.overwrite_config)
validate(config, str(SCHEMA_PATH))


include: "rules/common.smk"


wildcard_constraints:
    split="train|val",
    shard=r"\d+",
    model="|".join(MODELS),
    backbone=r"[A-Za-z0-9_.-]+",


include: "rules/weights.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        zoo_table_outputs(),
        # Checkpoints are targets too: a deleted one is retrained (and re-evaluated).
        expand(f"{RESULTS}/train/{{model}}/model.pt", model=MODELS),
