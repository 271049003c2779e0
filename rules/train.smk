rule train:
    """One zoo model: DDP over the job's GPUs (or CPU), resumable from results/.../resume/."""
    input:
        train=shard_paths("train"),
        # The validation shards only feed the per-epoch 1-view check: they must exist, but a
        # newer one (touched, repacked) must not plan a retrain, which deletes model.pt first.
        val=ancient(shard_paths("val")),
        weights=init_weights,
    output:
        model=f"{RESULTS}/train/{{model}}/model.pt",
        metrics=f"{RESULTS}/train/{{model}}/metrics.jsonl",
        summary=f"{RESULTS}/train/{{model}}/train_summary.json",
    log:
        f"logs/train/{DATASET}/{{model}}.log",
    benchmark:
        f"benchmarks/train/{DATASET}/{{model}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: lambda wildcards: scheduling.job_threads(config, "train", wildcards.model)
    resources:
        **rule_resources("train"),
    params:
        launch=lambda wildcards: scheduling.launcher(config, "train", wildcards.model),
        device=lambda wildcards: scheduling.job_device(config, "train", wildcards.model),
        # {log} holds the last attempt (Snakemake empties it before each); a preempted training
        # is resubmitted, so every attempt, with its exit code, is also appended here.
        attempts_log=attempts_log("train"),
        out_dir=lambda wildcards: f"{RESULTS}/train/{wildcards.model}",
        # ImageNet-21k .npz, the train.init_from checkpoint when fine-tuning, or empty (random init).
        init_from=lambda wildcards, input: input.weights[0] if input.weights else "",
        overrides=lambda wildcards: scheduling.train_override_args(config, wildcards.model),
        compile=str(config["train"]["compile"]).lower(),
        grad_checkpointing=str(config["train"]["grad_checkpointing"]).lower(),
        oom_fallback=str(config["train"]["oom_fallback"]).lower(),
        seed=config["train"]["seed"],
        amp=config["train"]["amp"],
        checkpoint_minutes=config["train"]["checkpoint_minutes"],
        loggers=config["train"]["loggers"],
        # Empty: read the shards in place. Quoted, so that $VARS in it expand on the node, in the job.
        stage_to=FRAMES["stage_to"] or "",
        workers=config["train"]["workers"],
    shell:
        "{params.launch} --attempts-log {params.attempts_log:q} train --model {wildcards.model}"
        " --train-shards {input.train:q} --val-shards {input.val:q} --out-dir {params.out_dir:q}"
        " --init-from={params.init_from:q} --override {params.overrides:q} --compile {params.compile}"
        " --grad-checkpointing {params.grad_checkpointing} --oom-fallback {params.oom_fallback}"
        " --seed {params.seed} --amp {params.amp} --checkpoint-minutes {params.checkpoint_minutes} --loggers {params.loggers}"
        " --stage-to={params.stage_to:q} --workers {params.workers} --device {params.device} > {log:q} 2>&1"
