rule evaluate:
    """30 views per validation video (10 clips x 3 crops), every video counted exactly once."""
    input:
        model=f"{RESULTS}/train/{{model}}/model.pt",
        val=shard_paths("val"),
    output:
        metrics=f"{RESULTS}/eval/{{model}}/metrics.json",
        predictions=f"{RESULTS}/eval/{{model}}/predictions.csv",
    log:
        f"logs/evaluate/{DATASET}/{{model}}.log",
    benchmark:
        f"benchmarks/evaluate/{DATASET}/{{model}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: lambda wildcards: job_threads("evaluate", wildcards.model)
    resources:
        **rule_resources("evaluate"),
    params:
        launch=lambda wildcards: launcher("evaluate", wildcards.model),
        out_dir=lambda wildcards: f"{RESULTS}/eval/{wildcards.model}",
        workers=lambda wildcards: loader_workers("evaluate", wildcards.model),
        stage=stage_args(),
        views=evaluate_view_args(),
    shell:
        "{params.launch} evaluate --checkpoint {input.model:q} --shards {input.val:q}"
        " --out-dir {params.out_dir:q} {params.views} {params.stage} --workers {params.workers} > {log:q} 2>&1"
