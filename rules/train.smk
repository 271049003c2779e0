rule train:
    """One zoo model: DDP over the job's GPUs (or CPU), resumable from results/.../resume/."""
    input:
        train=shard_paths("train"),
        # The validation shards only feed the per-epoch 1-view check: they must exist, but a
        # newer one (touched, repacked) must not plan a retrain, which deletes model.pt first.
        val=ancient(shard_paths("val")),
        weights=pretrained_weights,
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
    threads: lambda wildcards: job_threads("train", wildcards.model)
    resources:
        **rule_resources("train"),
    params:
        launch=lambda wildcards: launcher("train", wildcards.model),
        out_dir=lambda wildcards: f"{RESULTS}/train/{wildcards.model}",
        # ImageNet-21k .npz, or the train.init_from checkpoint when fine-tuning.
        pretrained=lambda wildcards, input: f"--pretrained {shlex.quote(input.weights[0])}" if input.weights else "",
        overrides=lambda wildcards: train_override_args(wildcards.model),
        workers=lambda wildcards: loader_workers("train", wildcards.model),
        compile="--compile" if config["train"]["compile"] else "",
        stage=stage_args(),
        attempts=lambda wildcards: f"logs/train/{DATASET}/{wildcards.model}.attempts.log",
        settings=(
            f"--seed {config['train']['seed']}"
            f" --amp {config['train']['amp']} --checkpoint-minutes {config['train']['checkpoint_minutes']}"
        ),
    # {log} holds the last attempt; a preempted training is resubmitted, so every attempt is also
    # appended to <model>.attempts.log next to it (Snakemake empties {log} before each attempt).
    shell:
        'echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) training starts (SLURM job ${{SLURM_JOB_ID:-none}})" > {log:q};'
        " {params.launch} train --model {wildcards.model} --train-shards {input.train:q}"
        " --val-shards {input.val:q} --out-dir {params.out_dir:q} {params.pretrained}"
        " {params.overrides} {params.compile} {params.settings} {params.stage} --workers {params.workers}"
        " >> {log:q} 2>&1 || status=$?; cat {log:q} >> {params.attempts:q}; exit ${{status:-0}}"
