# Kinetics-400 from the CVDF mirror, for a kinetics dataset that says `fetch: cvdf`: the part
# lists and annotation CSVs, then one job per part archive (download, resume, retry, extract at
# once), then the replacement archive over all parts; the index of a split waits for all of it.
# The steps live in tokshift/fetch/cvdf.py, what each job waits for in tokshift/workflow/fetch.py;
# the settings (URLs, download folder, deleting archives) are `datasets.<name>.cvdf` in config.yaml.
# `retries: 0`: each job retries its own download (`cvdf.retries`, resumed where it stopped), and
# Snakemake's own restart of a job can be lost while a checkpoint (the part lists) updates the
# plan, ending the run as if it succeeded without the job's output.

from tokshift.workflow import fetch as fetch_workflow

CVDF = workflow_settings.cvdf_settings(config)
# Network steps (light on CPU and memory), e.g. for `localrules` where compute nodes have no network.
FETCH_RULES = list(fetch_workflow.FETCH_RULES)


if CVDF is not None:

    checkpoint cvdf_part_list:
        """The URLs of a split's part archives, one a line."""
        output:
            f"{CVDF['download_dir']}/lists/{{split}}.txt",
        log:
            f"logs/cvdf_part_list/{DATASET}/{{split}}.log",
        retries: 0
        conda:
            "../envs/tokshift.yaml"
        threads: 1
        resources:
            **scheduling.small_job_resources(config, mem_mb=500, runtime=30),
        params:
            url=lambda wildcards: CVDF["lists"][wildcards.split],
            key=lambda wildcards: f"datasets.{DATASET}.cvdf.lists.{wildcards.split}",
            retries=CVDF["retries"],
            backoff=CVDF["backoff"],
        shell:
            "python -m tokshift download --url {params.url:q} --out {output:q} --retries {params.retries}"
            " --backoff {params.backoff} --url-key {params.key:q} --progress off > {log:q} 2>&1"

    rule cvdf_annotations:
        """A split's annotation CSV (label,youtube_id,time_start,time_end,split[,is_cc])."""
        output:
            f"{CVDF['download_dir']}/annotations/{{split}}.csv",
        log:
            f"logs/cvdf_annotations/{DATASET}/{{split}}.log",
        retries: 0
        conda:
            "../envs/tokshift.yaml"
        threads: 1
        resources:
            **scheduling.small_job_resources(config, mem_mb=500, runtime=30),
        params:
            url=lambda wildcards: CVDF["annotations"][wildcards.split],
            key=lambda wildcards: f"datasets.{DATASET}.cvdf.annotations.{wildcards.split}",
            retries=CVDF["retries"],
            backoff=CVDF["backoff"],
        shell:
            "python -m tokshift download --url {params.url:q} --out {output:q} --retries {params.retries}"
            " --backoff {params.backoff} --url-key {params.key:q} --progress off > {log:q} 2>&1"

    rule fetch_part:
        """One part archive: download (resumed, retried), extract safely into root/<split>, record it."""
        input:
            f"{CVDF['download_dir']}/lists/{{split}}.txt",
        output:
            f"{CVDF['download_dir']}/extracted/{{split}}/{{part}}.json",
        log:
            f"logs/fetch_part/{DATASET}/{{split}}-{{part}}.log",
        benchmark:
            f"benchmarks/fetch_part/{DATASET}/{{split}}-{{part}}.tsv"
        wildcard_constraints:
            part=r"[A-Za-z0-9_.-]+",
        retries: 0
        conda:
            "../envs/tokshift.yaml"
        threads: 1
        resources:
            **scheduling.small_job_resources(config, mem_mb=1000, runtime=240),
        params:
            archives=f"{CVDF['download_dir']}/archives/{{split}}",
            dest=f"{SPEC['root']}/{{split}}",
            key=lambda wildcards: f"datasets.{DATASET}.cvdf.lists.{wildcards.split}",
            delete_archive=str(CVDF["delete_archives"]).lower(),
            retries=CVDF["retries"],
            backoff=CVDF["backoff"],
        shell:
            "python -m tokshift fetch-part --list {input:q} --part {wildcards.part} --archives {params.archives:q}"
            " --dest {params.dest:q} --marker {output:q} --delete-archive {params.delete_archive}"
            " --retries {params.retries} --backoff {params.backoff} --url-key {params.key:q} --progress off"
            " > {log:q} 2>&1"

    rule cvdf_replacement:
        """The replacement archive's clips over the extracted ones of the same name, after every part."""
        input:
            lambda wildcards: fetch_workflow.part_markers(checkpoints, CVDF, "train")
            + fetch_workflow.part_markers(checkpoints, CVDF, "val"),
        output:
            f"{CVDF['download_dir']}/replacement.json",
        log:
            f"logs/cvdf_replacement/{DATASET}.log",
        retries: 0
        conda:
            "../envs/tokshift.yaml"
        threads: 1
        resources:
            **scheduling.small_job_resources(config, mem_mb=1000, runtime=120),
        params:
            url=CVDF["replacement"] or "",
            archive=f"{CVDF['download_dir']}/archives/replacement.tgz",
            root=SPEC["root"],
            key=f"datasets.{DATASET}.cvdf.replacement",
            delete_archive=str(CVDF["delete_archives"]).lower(),
            retries=CVDF["retries"],
            backoff=CVDF["backoff"],
        shell:
            "python -m tokshift fetch-replacement --url={params.url:q} --archive {params.archive:q} --root {params.root:q}"
            " --marker {output:q} --delete-archive {params.delete_archive} --retries {params.retries}"
            " --backoff {params.backoff} --url-key {params.key:q} --progress off > {log:q} 2>&1"
