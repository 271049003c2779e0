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
    log:
        f"logs/collect_results/{DATASET}.log",
    benchmark:
        f"benchmarks/collect_results/{DATASET}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        dataset=DATASET,
    shell:
        "tokshift collect --dataset {params.dataset}"
        " --metrics {input.metrics:q} --train-summaries {input.summaries:q}"
        " --checkpoints {input.checkpoints:q} --val-summary {input.val_summary:q}"
        " --csv {output.csv:q} --md {output.md:q} --plot {output.plot:q} > {log:q} 2>&1"


# Figures that let people look inside (README, "Pictures"): cheap, part of the default targets.
FIGURES = f"{RESULTS}/figures"


def figure_outputs():
    """Per-class tables and confusion figures, training curves and explain figures of every model."""
    return (
        expand(f"{RESULTS}/eval/{{model}}/per_class.csv", model=MODELS)
        + expand(f"{FIGURES}/confusions/{{model}}.png", model=MODELS)
        + expand(f"{FIGURES}/curves/{{model}}.png", model=MODELS)
        + [f"{FIGURES}/training_compared.png"]
        + expand(f"{FIGURES}/explain/{{model}}", model=MODELS)
    )


rule per_class:
    """Each class's videos, top-1, top-5 and most confused class, recomputed from predictions.csv."""
    input:
        predictions=f"{RESULTS}/eval/{{model}}/predictions.csv",
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
        mem_mb=1000,
        runtime=10,
    shell:
        "tokshift per-class --predictions {input.predictions:q} --classes {input.classes:q}"
        " --csv {output.csv:q} --plot {output.plot:q} --title {wildcards.model} > {log:q} 2>&1"


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
        mem_mb=1000,
        runtime=10,
    params:
        named=" ".join(shlex.quote(f"{m}={RESULTS}/train/{m}/metrics.jsonl") for m in MODELS),
        out_dir=f"{FIGURES}/curves",
        title=DATASET,
    shell:
        "tokshift curves --metrics {params.named} --out-dir {params.out_dir:q}"
        " --comparison {output.compared:q} --title {params.title:q} > {log:q} 2>&1"


rule explain_examples:
    """Explain figures of a few validation videos picked from predictions.csv: the most and least
    confident correct ones and the most confident errors (TokShift also with its shift off)."""
    input:
        model=f"{RESULTS}/train/{{model}}/model.pt",
        predictions=f"{RESULTS}/eval/{{model}}/predictions.csv",
        val=shard_paths("val"),
    output:
        figures=report(
            directory(f"{FIGURES}/explain/{{model}}"),
            patterns=["{name}.png"],
            category="Explain",
            subcategory="{model}",
            caption="../workflow/report/explain.rst",
            labels={"model": "{model}", "video": "{name}"},
        ),
    log:
        f"logs/explain_examples/{DATASET}/{{model}}.log",
    benchmark:
        f"benchmarks/explain_examples/{DATASET}/{{model}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    shell:
        "tokshift explain --checkpoint {input.model:q} --shards {input.val:q} --pick-from {input.predictions:q}"
        " --errors 2 --device cpu --out-dir {output.figures:q} > {log:q} 2>&1"
