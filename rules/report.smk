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
        **small_job(mem_mb=1000, runtime=10),
    params:
        dataset=DATASET,
    shell:
        "tokshift collect --dataset {params.dataset}"
        " --metrics {input.metrics:q} --train-summaries {input.summaries:q}"
        " --checkpoints {input.checkpoints:q} --val-summary {input.val_summary:q}"
        " --csv {output.csv:q} --md {output.md:q} --plot {output.plot:q} > {log:q} 2>&1"
