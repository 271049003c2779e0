"""`snakemake --profile slurm preflight` on the real local SLURM cluster (fake GPUs, CPU steps).

The probes run as jobs of the configured shapes (sacct shows them with their GPUs), the report
holds every check, each model's price and the zoo total; a wrong partition, a time limit above
the partition's and a GPU type the nodes lack are reported with their fix before anything is
submitted; GPUs that CUDA cannot use (the fake ones, with device auto) are a failed check.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.slurm.cluster import Cluster, snakemake_slurm, unique_prefix, wait_until_recorded
from tests.workflow_helpers import copy_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Training probes on the CPU (the fake GPUs cannot run it); evaluation probes with device auto:
# cuda in a GPU job, which the fake GPUs fail.
SIZES = {
    "train": {"gpus": 1, "cpus_per_gpu": 2, "mem_mb": 1000, "mem_mb_per_gpu": 2000, "runtime": 20},
    "evaluate": {"gpus": 1, "cpus_per_gpu": 2, "mem_mb": 500, "mem_mb_per_gpu": 2000, "runtime": 10},
}


def _config(wf: Path, resources: dict) -> str:
    cfg = {"resources": resources, "train": {"device": "cpu"}}
    (wf / "preflight-test.yaml").write_text(yaml.safe_dump(cfg))
    return "preflight-test.yaml"


def _run(wf: Path, cluster: Cluster, resources: dict, partition: str = "") -> tuple[object, str]:
    prefix = unique_prefix("pf")
    proc = snakemake_slurm(
        wf,
        "preflight",
        "--configfile",  # takes every word after it: the target goes first
        _config(wf, resources),
        prefix=prefix,
        profile="slurm",
        timeout=600,
        env={"TOKSHIFT_SLURM_PARTITION": partition or cluster.partition},
    )
    return proc, prefix


def test_preflight_runs_one_job_per_shape_and_prices_the_zoo(slurm_cluster: Cluster, tmp_path: Path) -> None:
    wf = copy_workflow(tmp_path / "wf")
    t0 = time.monotonic()
    proc, prefix = _run(wf, slurm_cluster, SIZES)
    took = time.monotonic() - t0
    print(f"preflight of the demo zoo through SLURM: {took:.0f} s")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    report = json.loads((wf / "results/demo/preflight.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    for model in ("demo_tokshift", "demo_vit"):
        assert checks[f"train {model}: time limit"]["ok"] and checks[f"train {model}: gres"]["ok"]
        assert checks[f"train {model}: train_step"]["ok"] and checks[f"train {model}: all_reduce"]["ok"]
        cuda = checks[f"evaluate {model}: cuda"]  # the fake GPUs: a failed check, the report still written
        assert not cuda["ok"] and cuda["fix"], cuda
    assert not report["ok"]
    prices = {p["model"]: p for p in report["prices"]}
    assert set(prices) == {"demo_tokshift", "demo_vit"}
    assert all(
        p["gpus"] == 1 and p["train_hours"] > 0 and p["train_gpu_hours"] == p["train_hours"] for p in prices.values()
    )
    assert report["total"]["train_gpu_hours"] == pytest.approx(sum(p["train_gpu_hours"] for p in prices.values()))
    md = (wf / "results/demo/preflight.md").read_text()
    assert "Fix these before submitting the zoo" in md and "**Zoo total:**" in md
    # The probes were SLURM jobs of the train and evaluate shapes: a GPU each, the probe's time limit.
    jobs = [j for j in wait_until_recorded(prefix, 4) if j.rule == "preflight_probe"]
    assert len(jobs) == 4, jobs
    assert all(j.req_tres.get("gres/gpu") == "1" and j.timelimit_minutes == 15 for j in jobs), jobs


@pytest.mark.parametrize(
    "resources, partition, failed, words",
    [
        (SIZES, "nope", "partition", ["partition 'nope' does not exist", "slurm_partition"]),
        ({**SIZES, "train": {**SIZES["train"], "runtime": 600}}, "short", "time limit", ["above partition 'short'"]),
        ({**SIZES, "gpu_model": "h100"}, "", "gres", ["gpu:h100:1 not offered", "resources.gpu_model"]),
    ],
    ids=["wrong-partition", "time-limit", "gpu-type"],
)
def test_a_job_the_cluster_would_refuse_is_named_before_anything_is_submitted(
    slurm_cluster: Cluster, tmp_path: Path, resources: dict, partition: str, failed: str, words: list[str]
) -> None:
    wf = copy_workflow(tmp_path / "wf")
    proc, prefix = _run(wf, slurm_cluster, resources, partition)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    log = (wf / "logs/preflight/demo/cluster.log").read_text()
    assert "cluster check(s) failed, nothing submitted" in log and "Report: results/demo/preflight.md" in log
    report = json.loads((wf / "results/demo/preflight.json").read_text())
    bad = [c for c in report["checks"] if not c["ok"]]
    assert bad and all(c["name"].endswith(f": {failed}") for c in bad), bad
    text = " ".join(c["detail"] + " " + c["fix"] for c in bad)
    assert all(w in text for w in words), text
    assert "Fix: " in (wf / "results/demo/preflight.md").read_text()
    assert not (wf / "results/demo/preflight/train").exists()  # no probe ran
    assert wait_until_recorded(prefix, 0, timeout=2) == []  # nothing reached sacct
