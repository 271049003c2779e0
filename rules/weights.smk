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
        **small_job(mem_mb=1000, runtime=120),
    params:
        url=lambda wildcards: config["weights"][wildcards.backbone]["url"],
        sha=lambda wildcards: (
            f"--sha256 {config['weights'][wildcards.backbone]['sha256']}"
            if config["weights"][wildcards.backbone].get("sha256")
            else ""
        ),
    shell:
        "tokshift download --url {params.url:q} --out {output:q} {params.sha} > {log:q} 2>&1"
