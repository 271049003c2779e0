rule download_weights:
    """ImageNet-21k ViT weights: resumable, retried, sha256 verified (or recorded on first download)."""
    output:
        "resources/weights/{backbone}.npz",
    log:
        "logs/download_weights/{backbone}.log",
    benchmark:
        "benchmarks/download_weights/{backbone}.tsv"
    retries: 3
    conda:
        "../envs/tokshift.yaml"
    threads: 1
    resources:
        **scheduling.small_job_resources(config, mem_mb=1000, runtime=120),
    params:
        url=lambda wildcards: config["weights"][wildcards.backbone]["url"],
        # Empty: record the sha256 of the first download.
        sha256=lambda wildcards: config["weights"][wildcards.backbone].get("sha256") or "",
        # The settings that hold the URL and the hash, named in the download's messages.
        url_key=lambda wildcards: f"weights.{wildcards.backbone}.url",
        key=lambda wildcards: f"weights.{wildcards.backbone}.sha256",
    shell:
        "python -m tokshift download --url {params.url:q} --out {output:q} --sha256={params.sha256:q}"
        " --url-key {params.url_key:q} --config-key {params.key:q} --progress off > {log:q} 2>&1"
