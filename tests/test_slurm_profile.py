"""The `slurm` profile against a real one-node SLURM cluster (tests/slurm/start-local-slurm.sh).

A two-rule workflow that needs no training code is run with `snakemake --profile <repo>/slurm`;
what each job asked for is read back from the accounting database (sacct).
"""

from __future__ import annotations

import functools
import http.server
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.slurm.cluster import PROFILE, REPO, Cluster, sacct_jobs, snakemake_slurm, unique_prefix, wait_until_recorded

SMOKE_SNAKEFILE = textwrap.dedent("""
    rule all:
        input: "out/gpu.txt", "out/cpu.txt"

    rule gpu_job:
        output: "out/gpu.txt"
        threads: 1
        resources: gpu=1, mem_mb=321, runtime=3
        shell: "echo $SLURM_JOB_ID $CUDA_VISIBLE_DEVICES > {output}"

    rule cpu_job:
        output: "out/cpu.txt"
        threads: 2
        resources: mem_mb=234, runtime=2
        shell: "echo $SLURM_JOB_ID > {output}"
""")


def test_profile_is_found_from_the_repository_root() -> None:
    """`snakemake --profile slurm` resolves a folder `slurm/` in the working directory."""
    cfg = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    assert cfg["retries"] >= 1 and cfg["rerun-incomplete"] is True
    assert cfg["slurm-init-seconds-before-status-checks"] <= 5
    assert isinstance(cfg["jobs"], int) and cfg["jobs"] > 0
    # Cluster specifics come from config.yaml or TOKSHIFT_SLURM_* variables, never from the profile.
    for key in ("slurm_partition", "slurm_account", "qos", "constraint"):
        assert key not in (cfg.get("default-resources") or {}), key
    assert "slurm-qos" not in cfg and "slurm-reservation" not in cfg


def test_local_profile_runs_on_this_machine_only() -> None:
    cfg = yaml.safe_load((REPO / "profiles/local/config.yaml").read_text())
    assert "executor" not in cfg and cfg["cores"] == "all"
    assert cfg["rerun-incomplete"] is True


def _tripwire_path(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A PATH where every SLURM command only records that it was called and fails (no cluster)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "slurm-calls.txt"
    for name in ("sbatch", "srun", "squeue", "sacct", "sinfo", "scontrol", "sshare", "sacctmgr", "scancel"):
        exe = bindir / name
        exe.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    return calls, env


def test_dry_run_plans_the_demo_without_contacting_a_cluster(tmp_path: Path) -> None:
    """On a fresh clone, `snakemake --profile slurm -n` prints the whole demo plan and calls no SLURM command."""
    if not (REPO / "Snakefile").exists():
        pytest.skip("the workflow (Snakefile) is not in this checkout yet")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    if not (clone / "Snakefile").exists() or not (clone / "slurm" / "config.yaml").exists():
        pytest.skip("the committed tree has no Snakefile or slurm profile yet")
    calls, env = _tripwire_path(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "-n"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    for rule in ("demo_videos", "index_dataset", "pack_shard", "train", "evaluate", "collect_results", "all"):
        assert f"rule {rule}:" in out, f"{rule} missing from the plan:\n{out[-3000:]}"
    assert "This was a dry-run" in out
    # Every SLURM command fails here, as on a machine without a cluster. The executor plugin
    # probes `scontrol show config` (MinJobAge) when Snakemake loads it, even for local runs;
    # that probe may fail. Nothing may be submitted, queried or cancelled.
    called = calls.read_text().splitlines() if calls.exists() else []
    job_calls = [c for c in called if not c.startswith("scontrol show config")]
    assert not job_calls, f"dry-run called SLURM job commands: {job_calls}"


@pytest.mark.slurm
def test_each_rule_is_one_job_with_the_resources_it_asked_for(slurm_cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(SMOKE_SNAKEFILE)
    prefix = unique_prefix("smoke")
    proc = snakemake_slurm(tmp_path, prefix=prefix, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    jobs = wait_until_recorded(prefix, 2)
    by_rule = {j.rule: j for j in jobs}
    assert sorted(by_rule) == ["cpu_job", "gpu_job"], jobs
    assert len(jobs) == 2, f"expected one job per rule, sacct shows {jobs}"

    gpu, cpu = by_rule["gpu_job"], by_rule["cpu_job"]
    assert gpu.state == cpu.state == "COMPLETED"
    assert (gpu.gpus, gpu.mem_mb, gpu.timelimit_minutes) == (1, 321, 3)
    assert (cpu.gpus, cpu.mem_mb, cpu.timelimit_minutes, cpu.cpus) == (0, 234, 2, 2)
    assert gpu.nnodes == cpu.nnodes == 1
    assert Path(gpu.workdir).resolve() == tmp_path.resolve()

    # Each rule ran inside its own allocation; the GPU job saw its (fake) GPU.
    gpu_out = (tmp_path / "out/gpu.txt").read_text().split()
    assert gpu_out[0] == gpu.job_id and gpu_out[1] == "0"
    assert (tmp_path / "out/cpu.txt").read_text().split()[0] == cpu.job_id
    # SLURM logs of successful jobs are removed; the profile puts them under logs/slurm.
    assert (tmp_path / "logs/slurm").is_dir()


def test_job_step_runs_the_command_directly_outside_slurm(tmp_path: Path) -> None:
    """Outside a SLURM job the rule's program runs as is, arguments intact, exit code passed on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    script = PROFILE / "job-step.sh"
    proc = subprocess.run(
        [
            str(script),
            "--ntasks",
            "2",
            "--cpus-per-task",
            "4",
            "--",
            sys.executable,
            "-c",
            "import sys; print(sys.argv[1:]); sys.exit(75)",
            "a b",
            "c",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 75 and proc.stdout.strip() == "['a b', 'c']", proc


def test_job_step_rejects_bad_counts_naming_them() -> None:
    proc = subprocess.run(
        [str(PROFILE / "job-step.sh"), "--ntasks", "0", "--", "true"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "'0'" in proc.stderr
    proc = subprocess.run(
        [str(PROFILE / "job-step.sh"), "--gpus", "2", "--", "true"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--gpus" in proc.stderr


@pytest.mark.slurm
def test_download_runs_on_the_submit_host_not_as_a_job(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """`download_weights` is a local rule: with the slurm profile it runs where Snakemake runs.

    The weights come from an HTTP server on this machine's loopback address; sacct must show
    no job for the run, while the file is downloaded and its log written.
    """
    from tests.workflow_helpers import copy_workflow

    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(200_000)
    (served / "w.npz").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        wf = copy_workflow(tmp_path / "wf")
        url = f"http://127.0.0.1:{httpd.server_address[1]}/w.npz"
        (wf / "weights.yaml").write_text(yaml.safe_dump({"weights": {"ViT-B_16": {"url": url, "sha256": None}}}))
        prefix = unique_prefix("dl")
        proc = snakemake_slurm(
            wf,
            "resources/weights/ViT-B_16.npz",
            "--configfile",
            "weights.yaml",
            prefix=prefix,
            profile="slurm",
            timeout=300,
            env={"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert (wf / "resources/weights/ViT-B_16.npz").read_bytes() == payload
    assert (wf / "logs/download_weights/ViT-B_16.log").exists()
    time.sleep(2)  # a submitted job would be in the accounting database by now
    assert sacct_jobs(name_prefix=prefix) == [], "the download was submitted as a SLURM job"
