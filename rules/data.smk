rule demo_videos:
    """The generated demo dataset: small H.264 clips whose classes differ only in time."""
    output:
        train=f"{SPEC.get('root', 'resources/demo')}/train.csv",
        val=f"{SPEC.get('root', 'resources/demo')}/val.csv",
    log:
        "logs/demo_videos/demo_videos.log",
    benchmark:
        "benchmarks/demo_videos/demo_videos.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 2
    resources:
        **scheduling.small_job_resources(config, mem_mb=2000, runtime=30),
    params:
        root=lambda wildcards, output: os.path.dirname(output.train),
    shell:
        "python -m tokshift demo --out {params.root:q} > {log:q} 2>&1"


rule index_dataset:
    """One CSV per split: video id, path, label, label index, shard; missing videos listed aside."""
    input:
        lambda wildcards: workflow_settings.index_inputs(config, wildcards.split),
        # A fetched dataset (fetch: cvdf): every part extracted and the replacement applied.
        lambda wildcards: fetch_workflow.index_waits_for(checkpoints, CVDF, wildcards.split),
    output:
        index=f"{RESULTS}/index/{{split}}.csv",
        missing=f"{RESULTS}/index/{{split}}.missing.csv",
        classes=f"{RESULTS}/index/{{split}}.classes.txt",
    log:
        f"logs/index_dataset/{DATASET}/{{split}}.log",
    benchmark:
        f"benchmarks/index_dataset/{DATASET}/{{split}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=2000, runtime=60),
    params:
        spec=lambda wildcards: json.dumps(workflow_settings.index_spec(config)),
        shards=FRAMES["shards"],
    shell:
        "python -m tokshift index --spec-json {params.spec:q} --split {wildcards.split} --shards {params.shards}"
        " --out {output.index:q} > {log:q} 2>&1"


rule pack_shard:
    """Frames of one shard's videos: ffmpeg -> JPEG -> one LMDB file; unreadable videos listed."""
    input:
        f"{RESULTS}/index/{{split}}.csv",
    output:
        lmdb=f"{RESULTS}/frames/{{split}}/shard-{{shard}}.lmdb",
        # Written with the shard: its size and checksums, checked by every reader.
        seal=f"{RESULTS}/frames/{{split}}/shard-{{shard}}.lmdb.seal.json",
        failures=f"{RESULTS}/frames/{{split}}/shard-{{shard}}.failures.csv",
        # What the shard holds, one row per video (id, label, frames, size, fps, bytes).
        videos=f"{RESULTS}/frames/{{split}}/shard-{{shard}}.videos.csv",
    log:
        f"logs/pack_shard/{DATASET}/{{split}}-{{shard}}.log",
    benchmark:
        f"benchmarks/pack_shard/{DATASET}/{{split}}-{{shard}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: scheduling.job_threads(config, "pack")
    resources:
        **rule_resources("pack_shard"),
    params:
        # Every attempt and its exit code; a retry after bad input or damaged data refuses at once.
        attempts_log=attempts_log("pack_shard"),
        short_side=FRAMES["short_side"],
        quality=FRAMES["jpeg_quality"],
        timeout=FRAMES["timeout"],
    shell:
        "python -m tokshift --attempts-log {params.attempts_log:q} pack --index {input:q} --shard {wildcards.shard} --out {output.lmdb:q}"
        " --failures {output.failures:q} --videos {output.videos:q} --short-side {params.short_side} --jpeg-quality {params.quality}"
        " --timeout {params.timeout} --workers {threads} > {log:q} 2>&1"


rule summarize_frames:
    """Per split: videos annotated, packed, missing, failed (with reasons), frames, bytes."""
    input:
        index=f"{RESULTS}/index/{{split}}.csv",
        missing=f"{RESULTS}/index/{{split}}.missing.csv",
        shards=lambda wildcards: shard_paths(wildcards.split),
        # The other split's index: the summary names the classes with videos in one split only.
        other_index=lambda wildcards: f"{RESULTS}/index/{'val' if wildcards.split == 'train' else 'train'}.csv",
    output:
        f"{RESULTS}/frames/{{split}}/summary.json",
    log:
        f"logs/summarize_frames/{DATASET}/{{split}}.log",
    benchmark:
        f"benchmarks/summarize_frames/{DATASET}/{{split}}.tsv"
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=1000, runtime=30),
    params:
        shards_dir=f"{RESULTS}/frames/{{split}}",
    shell:
        "python -m tokshift summarize --index {input.index:q} --other-index {input.other_index:q}"
        " --shards-dir {params.shards_dir:q} --out {output:q} > {log:q} 2>&1"
