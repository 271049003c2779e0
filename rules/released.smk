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
        **scheduling.small_job_resources(config, mem_mb=1000, runtime=120),
    params:
        url=lambda wildcards: released_source(wildcards.model),
        # Empty: record the sha256 of the first download.
        sha256=lambda wildcards: workflow_settings.released_entry(config, wildcards.model).get("sha256") or "",
        # The settings that hold the URL and the hash, named in the download's messages.
        url_key=lambda wildcards: f"released.{wildcards.model}.source",
        key=lambda wildcards: f"released.{wildcards.model}.sha256",
    shell:
        "python -m tokshift download --url {params.url:q} --out {output:q} --sha256={params.sha256:q} --config-key {params.key}"
        " --url-key {params.url_key:q} --progress off > {log:q} 2>&1"


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
        **scheduling.small_job_resources(config, mem_mb=8000, runtime=30),
    params:
        class_order=lambda wildcards: workflow_settings.released_entry(config, wildcards.model).get(
            "class_order", "sorted"
        ),
    shell:
        "python -m tokshift import-original {input.pth:q} --model {wildcards.model} --classes {input.classes:q}"
        " --class-order {params.class_order} --out {output:q} > {log:q} 2>&1"


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
    threads: lambda wildcards: scheduling.job_threads(config, "evaluate", wildcards.model)
    resources:
        **rule_resources("evaluate_released"),
    params:
        launch=lambda wildcards: scheduling.launcher(config, "evaluate", wildcards.model),
        device=lambda wildcards: scheduling.job_device(config, "evaluate", wildcards.model),
        attempts_log=attempts_log("evaluate_released"),
        out_dir=lambda wildcards: f"{RELEASED}/eval/{wildcards.model}",
        clips=config["evaluate"]["clips"],
        crops=config["evaluate"]["crops"],
        # Bicubic unless config.yaml sets it (default_released_resize in tokshift/workflow/config.py).
        resize=config["evaluate"]["resize"],
        view_batch=config["evaluate"]["view_batch"],
        faithful=str(config["evaluate"]["faithful"]).lower(),
        amp=config["evaluate"]["amp"],
        max_failed_share=config["evaluate"]["max_failed_share"],
        stage_to=FRAMES["stage_to"] or "",
        workers=config["evaluate"]["workers"],
    shell:
        "{params.launch} --attempts-log {params.attempts_log:q} evaluate --checkpoint {input.model:q} --shards {input.val:q} --out-dir {params.out_dir:q}"
        " --clips {params.clips} --crops {params.crops} --resize {params.resize} --view-batch {params.view_batch}"
        " --faithful {params.faithful} --amp {params.amp}"
        " --max-failed-share {params.max_failed_share} --stage-to={params.stage_to:q} --workers {params.workers}"
        " --device {params.device}"
        " > {log:q} 2>&1"


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
        # Written beside the CSV (no option names it): the table as a model-index metafile.
        index=f"{RELEASED}/model-index.yml",
    log:
        f"logs/collect_released/{DATASET}.log",
    benchmark:
        f"benchmarks/collect_released/{DATASET}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=4000, runtime=10),
    params:
        dataset=DATASET,
        # MODEL=SOURCE: the table names each URL or path as configured.
        sources=lambda wildcards: [f"{m}={released_source(m)}" for m in MODELS],
    shell:
        "python -m tokshift collect --dataset {params.dataset} --metrics {input.metrics:q} --released {input.checkpoints:q}"
        " --released-source {params.sources:q} --val-summary {input.val_summary:q}"
        " --csv {output.csv:q} --md {output.md:q} --plot {output.plot:q} > {log:q} 2>&1"
