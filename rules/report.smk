rule collect_results:
    """The model-zoo table: one row per model, every number traceable to an input file.

    `tokshift collect` reads exactly these inputs; it matches them to models by the model
    name inside each file and the checkpoints by sha256."""
    input:
        metrics=expand(f"{RESULTS}/eval/{{model}}/metrics.json", model=MODELS),
        summaries=expand(f"{RESULTS}/train/{{model}}/train_summary.json", model=MODELS),
        # The table names each checkpoint and its sha256: a deleted or retrained one
        # rebuilds that model's row (and only that model's training and evaluation).
        checkpoints=expand(f"{RESULTS}/train/{{model}}/model.pt", model=MODELS),
        val_summary=f"{RESULTS}/frames/val/summary.json",
    output:
        csv=report(f"{RESULTS}/model_zoo.csv", category="Model zoo", caption="../workflow/report/model_zoo.rst"),
        md=f"{RESULTS}/model_zoo.md",
        plot=report(f"{RESULTS}/accuracy_vs_gflops.png", category="Model zoo", caption="../workflow/report/plot.rst"),
        # Written beside the CSV (no option names it): the table as a model-index metafile.
        index=f"{RESULTS}/model-index.yml",
    log:
        f"logs/collect_results/{DATASET}.log",
    benchmark:
        f"benchmarks/collect_results/{DATASET}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=1000, runtime=10),
    params:
        dataset=DATASET,
        # A preflight on record puts each model's projection beside its measured hours (not an input:
        # the table never waits for one).
        preflight=lambda wildcards: PREFLIGHT_REPORT if os.path.exists(PREFLIGHT_REPORT) else "",
    shell:
        "python -m tokshift collect --dataset {params.dataset}"
        " --metrics {input.metrics:q} --train-summaries {input.summaries:q}"
        " --checkpoints {input.checkpoints:q} --val-summary {input.val_summary:q} --preflight={params.preflight:q}"
        " --csv {output.csv:q} --md {output.md:q} --plot {output.plot:q} > {log:q} 2>&1"


rule export_model:
    """A trained model as safetensors weights, config.json and a model card with its row of the table
    (`tokshift export --format hub`, docs/export.md). Not a default target: ask for it by its card,
    `snakemake results/<dataset>/export/<model>/README.md`."""
    input:
        model=f"{RESULTS}/train/{{model}}/model.pt",
        table=f"{RESULTS}/model_zoo.csv",
    output:
        weights=f"{RESULTS}/export/{{model}}/model.safetensors",
        config=f"{RESULTS}/export/{{model}}/config.json",
        card=f"{RESULTS}/export/{{model}}/README.md",
    log:
        f"logs/export_model/{DATASET}/{{model}}.log",
    benchmark:
        f"benchmarks/export_model/{DATASET}/{{model}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        # model.pt, the model that checks it and the safetensors bytes: three copies of ViT-L's 1.2 GB.
        **scheduling.small_job_resources(config, mem_mb=8000, runtime=10),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.card),
    shell:
        "python -m tokshift export {input.model:q} --format hub --out-dir {params.out_dir:q}"
        " --results {input.table:q} > {log:q} 2>&1"


# Figures that let people look inside (README, "Pictures"): cheap, part of the default targets.
FIGURES = f"{RESULTS}/figures"
# The explain figures of each model: `tokshift explain --pick-from` writes one per role.
EXPLAIN_ROLES = {
    "correct_most_confident": "most confident correct",
    "correct_least_confident": "least confident correct",
    "error_1": "most confident error",
    "error_2": "second most confident error",
}
FIGURE_TARGETS = (
    expand(f"{RESULTS}/eval/{{model}}/per_class.csv", model=MODELS)
    + expand(f"{FIGURES}/confusions/{{model}}.png", model=MODELS)
    + expand(f"{FIGURES}/curves/{{model}}.png", model=MODELS)
    + [f"{FIGURES}/training_compared.png"]
    + expand(f"{FIGURES}/explain/{{model}}/{{role}}.png", model=MODELS, role=EXPLAIN_ROLES)
)


rule per_class:
    """Each class's videos, top-1, top-5 and most confused class, recomputed from predictions.csv."""
    input:
        predictions=f"{RESULTS}/eval/{{model}}/predictions.csv",
        # Its class_coverage marks the classes the model had no training video of.
        metrics=f"{RESULTS}/eval/{{model}}/metrics.json",
        classes=f"{RESULTS}/index/val.classes.txt",
    output:
        csv=report(
            f"{RESULTS}/eval/{{model}}/per_class.csv",
            category="Per class",
            subcategory="{model}",
            caption="../workflow/report/per_class.rst",
            labels={"model": "{model}", "figure": "per-class table"},
        ),
        plot=report(
            f"{FIGURES}/confusions/{{model}}.png",
            category="Per class",
            subcategory="{model}",
            caption="../workflow/report/confusions.rst",
            labels={"model": "{model}", "figure": "confusions"},
        ),
    log:
        f"logs/per_class/{DATASET}/{{model}}.log",
    benchmark:
        f"benchmarks/per_class/{DATASET}/{{model}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=1000, runtime=10),
    shell:
        "python -m tokshift per-class --predictions {input.predictions:q} --metrics {input.metrics:q}"
        " --classes {input.classes:q} --csv {output.csv:q} --plot {output.plot:q} --title {wildcards.model} > {log:q} 2>&1"


rule training_curves:
    """Loss, learning rate and 1-view validation accuracy of each model, and all models compared."""
    input:
        metrics=expand(f"{RESULTS}/train/{{model}}/metrics.jsonl", model=MODELS),
    output:
        curves=report(
            expand(f"{FIGURES}/curves/{{model}}.png", model=MODELS),
            category="Training curves",
            caption="../workflow/report/curves.rst",
        ),
        compared=report(
            f"{FIGURES}/training_compared.png",
            category="Training curves",
            caption="../workflow/report/curves_compared.rst",
        ),
    log:
        f"logs/training_curves/{DATASET}.log",
    benchmark:
        f"benchmarks/training_curves/{DATASET}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=1000, runtime=10),
    params:
        # Each log named by its model: the figures are <model>.png.
        named=lambda wildcards, input: [f"{m}={p}" for m, p in zip(MODELS, input.metrics)],
        out_dir=lambda wildcards, output: os.path.dirname(output.curves[0]),
        title=DATASET,
    shell:
        "python -m tokshift curves --metrics {params.named:q} --out-dir {params.out_dir:q}"
        " --comparison {output.compared:q} --title {params.title:q} > {log:q} 2>&1"


rule explain_examples:
    """Explain figures of validation videos picked from predictions.csv: the most and least confident
    correct ones and the two most confident errors (TokShift also with its shift off)."""
    input:
        model=f"{RESULTS}/train/{{model}}/model.pt",
        predictions=f"{RESULTS}/eval/{{model}}/predictions.csv",
        val=shard_paths("val"),
    output:
        correct_most_confident=report(
            f"{FIGURES}/explain/{{model}}/correct_most_confident.png",
            category="Explain",
            subcategory="{model}",
            caption="../workflow/report/explain.rst",
            labels={"model": "{model}", "video": "most confident correct"},
        ),
        correct_least_confident=report(
            f"{FIGURES}/explain/{{model}}/correct_least_confident.png",
            category="Explain",
            subcategory="{model}",
            caption="../workflow/report/explain.rst",
            labels={"model": "{model}", "video": "least confident correct"},
        ),
        error_1=report(
            f"{FIGURES}/explain/{{model}}/error_1.png",
            category="Explain",
            subcategory="{model}",
            caption="../workflow/report/explain.rst",
            labels={"model": "{model}", "video": "most confident error"},
        ),
        error_2=report(
            f"{FIGURES}/explain/{{model}}/error_2.png",
            category="Explain",
            subcategory="{model}",
            caption="../workflow/report/explain.rst",
            labels={"model": "{model}", "video": "second most confident error"},
        ),
    log:
        f"logs/explain_examples/{DATASET}/{{model}}.log",
    benchmark:
        f"benchmarks/explain_examples/{DATASET}/{{model}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=8000, runtime=20),
    params:
        # --pick-from writes one ROLE.png per output above (a placeholder where no video fits the role).
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        errors=sum(role.startswith("error_") for role in EXPLAIN_ROLES),
    shell:
        "python -m tokshift explain --checkpoint {input.model:q} --shards {input.val:q} --pick-from {input.predictions:q}"
        " --errors {params.errors} --device cpu --out-dir {params.out_dir:q} > {log:q} 2>&1"
