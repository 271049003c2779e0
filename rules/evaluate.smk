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
    threads: lambda wildcards: scheduling.job_threads(config, "evaluate", wildcards.model)
    resources:
        **rule_resources("evaluate"),
    params:
        launch=lambda wildcards: scheduling.launcher(config, "evaluate", wildcards.model),
        device=lambda wildcards: scheduling.job_device(config, "evaluate", wildcards.model),
        # Every attempt and its exit code; a retry after bad input or damaged data refuses at once.
        attempts_log=attempts_log("evaluate"),
        out_dir=lambda wildcards: f"{RESULTS}/eval/{wildcards.model}",
        clips=config["evaluate"]["clips"],
        crops=config["evaluate"]["crops"],
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
