# checkpoints: released -- the original TokShift's checkpoints evaluated as they are, no training.
# Everything lands under results/<dataset>/released/, apart from the trained models' results.


rule fetch_released:
    """An original checkpoint named by URL in `released`: resumable, retried, sha256 checked (or recorded)."""
    output:
        "resources/released/{model}.pth",
    log:
        "logs/fetch_released/{model}.log",
    benchmark:
        "benchmarks/fetch_released/{model}.tsv"
    retries: 3
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **small_job(mem_mb=1000, runtime=120),
    params:
        url=lambda wildcards: released_source(wildcards.model),
        sha=lambda wildcards: released_sha_arg(wildcards.model),
        key=lambda wildcards: f"released.{wildcards.model}.sha256",
    shell:
        "tokshift download --url {params.url:q} --out {output:q} {params.sha} --config-key {params.key}"
        " --no-progress > {log:q} 2>&1"


rule import_released:
    """The original's .pth as a model.pt with the dataset's class names (in the order of the shards' labels)."""
    input:
        pth=released_checkpoint,
        classes=f"{RESULTS}/index/val.classes.txt",
    output:
        f"{RELEASED}/{{model}}/model.pt",
    log:
        f"logs/import_released/{DATASET}/{{model}}.log",
    benchmark:
        f"benchmarks/import_released/{DATASET}/{{model}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **small_job(mem_mb=8000, runtime=30),
    shell:
        "tokshift import-original {input.pth:q} --model {wildcards.model} --classes {input.classes:q}"
        " --out {output:q} > {log:q} 2>&1"


rule evaluate_released:
    """30 views per validation video of a released checkpoint, as rule evaluate does for a trained one."""
    input:
        model=f"{RELEASED}/{{model}}/model.pt",
        val=shard_paths("val"),
    output:
        metrics=f"{RELEASED}/eval/{{model}}/metrics.json",
        predictions=f"{RELEASED}/eval/{{model}}/predictions.csv",
    log:
        f"logs/evaluate_released/{DATASET}/{{model}}.log",
    benchmark:
        f"benchmarks/evaluate_released/{DATASET}/{{model}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: lambda wildcards: job_threads("evaluate", wildcards.model)
    resources:
        **rule_resources("evaluate"),
    params:
        launch=lambda wildcards: launcher("evaluate", wildcards.model),
        out_dir=lambda wildcards: f"{RELEASED}/eval/{wildcards.model}",
        workers=lambda wildcards: loader_workers("evaluate", wildcards.model),
        views=evaluate_view_args(),
        stage=stage_args(),
    shell:
        "{params.launch} evaluate --checkpoint {input.model:q} --shards {input.val:q}"
        " --out-dir {params.out_dir:q} {params.views} {params.stage} --workers {params.workers} > {log:q} 2>&1"


rule collect_released:
    """The table of the released checkpoints, each row naming the URL or path its checkpoint came from."""
    input:
        metrics=expand(f"{RELEASED}/eval/{{model}}/metrics.json", model=MODELS),
        checkpoints=expand(f"{RELEASED}/{{model}}/model.pt", model=MODELS),
        val_summary=f"{RESULTS}/frames/val/summary.json",
    output:
        csv=report(
            f"{RELEASED}/model_zoo.csv", category="Released checkpoints", caption="../workflow/report/model_zoo.rst"
        ),
        md=f"{RELEASED}/model_zoo.md",
        plot=report(
            f"{RELEASED}/accuracy_vs_gflops.png",
            category="Released checkpoints",
            caption="../workflow/report/plot.rst",
        ),
    log:
        f"logs/collect_released/{DATASET}.log",
    benchmark:
        f"benchmarks/collect_released/{DATASET}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **small_job(mem_mb=4000, runtime=10),
    params:
        dataset=DATASET,
        sources=lambda wildcards: released_source_args(),
    shell:
        "tokshift collect --dataset {params.dataset} --metrics {input.metrics:q} --released {input.checkpoints:q}"
        " --released-source {params.sources} --val-summary {input.val_summary:q}"
        " --csv {output.csv:q} --md {output.md:q} --plot {output.plot:q} > {log:q} 2>&1"
