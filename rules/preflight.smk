# Before the queue: `snakemake preflight` checks the cluster for every job shape, runs one short
# job of each shape (a model's train or evaluate resources) and prices the zoo (docs/preflight.md).
# The cluster checks run first, where Snakemake runs: one that fails stops the run before any probe.

PREFLIGHT = f"{RESULTS}/preflight"
PREFLIGHT_JOBS = json.dumps(scheduling.preflight_jobs(config, MODELS), sort_keys=True)


rule preflight_cluster:
    """Partitions, time limits, GRES, constraints, accounts and disk of every job shape, before any probe."""
    output:
        json=f"{PREFLIGHT}/cluster.json",
        md=f"{PREFLIGHT}/cluster.md",
    log:
        f"logs/preflight/{DATASET}/cluster.log",
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=1000, runtime=10),
    params:
        jobs=PREFLIGHT_JOBS,
        disk=["results", SPEC.get("root") or "resources"],
        executor=executor_name,
        dataset=DATASET,
        shards_dir=f"{RESULTS}/frames",
        # The downloads still to come: they run where Snakemake runs (resources.local_rules).
        urls=lambda wildcards: workflow_settings.preflight_urls(config, MODELS),
        # A failed check is also written where the final report goes: Snakemake removes this job's outputs.
        report=PREFLIGHT_REPORT,
    shell:
        "python -m tokshift preflight-report --static-only --executor {params.executor} --dataset {params.dataset}"
        " --jobs {params.jobs:q} --disk {params.disk:q} --shards-dir {params.shards_dir:q} --urls {params.urls:q}"
        " --json {output.json:q} --md {output.md:q} --report {params.report:q} > {log:q} 2>&1"


rule preflight_probe:
    """One short job with a model's train or evaluate resources: devices, all-reduce, step time, memory."""
    input:
        f"{PREFLIGHT}/cluster.json",
    output:
        f"{PREFLIGHT}/{{step}}/{{model}}.json",
    log:
        f"logs/preflight/{DATASET}/{{step}}-{{model}}.log",
    wildcard_constraints:
        step="train|evaluate",
    conda:
        "../envs/tokshift.yaml"
    threads: lambda wildcards: scheduling.job_threads(config, wildcards.step, wildcards.model)
    resources:
        **probe_resources(),
    params:
        launch=lambda wildcards: scheduling.launcher(config, wildcards.step, wildcards.model),
        device=lambda wildcards: scheduling.job_device(config, wildcards.step, wildcards.model),
        overrides=lambda wildcards: scheduling.train_override_args(config, wildcards.model),
        shards=lambda wildcards: shard_paths("train" if wildcards.step == "train" else "val"),
        stage_to=FRAMES["stage_to"] or "",
        amp=lambda wildcards: config[wildcards.step]["amp"],
        workers=lambda wildcards: config[wildcards.step]["workers"],
    shell:
        "{params.launch} preflight-probe --model {wildcards.model} --step {wildcards.step}"
        " --override {params.overrides:q} --shards {params.shards:q} --stage-to={params.stage_to:q}"
        " --device {params.device} --amp {params.amp} --workers {params.workers} --out {output:q} > {log:q} 2>&1"


rule preflight:
    """The report: every check with its fix, each model's projected hours and GPU-hours, the zoo total."""
    input:
        cluster=f"{PREFLIGHT}/cluster.json",
        probes=expand(f"{PREFLIGHT}/{{step}}/{{model}}.json", step=["train", "evaluate"], model=MODELS),
    output:
        json=PREFLIGHT_REPORT,
        md=f"{RESULTS}/preflight.md",
    log:
        f"logs/preflight/{DATASET}/report.log",
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=1000, runtime=10),
    params:
        jobs=PREFLIGHT_JOBS,
        dataset=DATASET,
        index_dir=f"{RESULTS}/index",
        disk=["results", SPEC.get("root") or "resources"],
        executor=executor_name,
    shell:
        "python -m tokshift preflight-report --executor {params.executor} --dataset {params.dataset}"
        " --jobs {params.jobs:q}"
        " --probes {input.probes:q}"
        " --index-dir {params.index_dir:q} --disk {params.disk:q} --json {output.json:q} --md {output.md:q}"
        " > {log:q} 2>&1"
