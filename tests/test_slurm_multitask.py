"""Two SLURM tasks started by `srun` inside one job join one gloo process group.

The job is submitted through the project's `slurm` profile the way the workflow submits a
multi-task training job (`mpi` resource, `tasks`), and the ranks use the project's own
distributed init (tokshift.engine.distributed), which reads them from SLURM's environment.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.slurm.cluster import Cluster, snakemake_slurm, unique_prefix, wait_until_recorded

RANK_SCRIPT = textwrap.dedent("""
    import json, os, socket, sys
    import torch
    from tokshift.engine.distributed import init_distributed, all_reduce, shutdown

    ctx = init_distributed(device="cpu", timeout_minutes=2)
    t = torch.tensor([float(ctx.rank + 1)])
    all_reduce(ctx, t)
    out = {"rank": ctx.rank, "world_size": ctx.world_size, "source": ctx.launch.source,
           "backend": ctx.backend, "sum": t.item(), "procid": os.environ.get("SLURM_PROCID"),
           "step": os.environ.get("SLURM_STEP_ID"), "job": os.environ.get("SLURM_JOB_ID"),
           "host": socket.gethostname(), "pid": os.getpid()}
    with open(os.path.join(sys.argv[1], f"rank{ctx.rank}.json"), "w") as f:
        json.dump(out, f)
    shutdown(ctx)
""")

SNAKEFILE = textwrap.dedent("""
    rule ranks:
        output: directory("ranks")
        threads: 1
        # What the workflow asks for a training job with 2 tasks on one node.
        resources: nodes=1, tasks=2, mpi="srun", cpus_per_task=1, mem_mb=2000, runtime=5
        shell: "mkdir -p {output} && {resources.mpi} --ntasks=2 --nodes=1 python rank.py {output}"
""")


@pytest.mark.slurm
def test_two_srun_tasks_form_one_gloo_group(slurm_cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    prefix = unique_prefix("mt")
    proc = snakemake_slurm(tmp_path, prefix=prefix, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["procid"] for r in ranks} == {"0", "1"}
    for r in ranks:
        assert r["world_size"] == 2 and r["source"] == "slurm" and r["backend"] == "gloo"
        assert r["sum"] == 3.0  # 1 + 2: both ranks took part in the all-reduce
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["job"] == ranks[1]["job"] and ranks[0]["step"] == ranks[1]["step"] != "batch"

    # The accounting database shows one job, and in it one srun step with 2 tasks.
    (job,) = wait_until_recorded(prefix, 1)
    assert job.state == "COMPLETED" and job.job_id == ranks[0]["job"]
    steps = subprocess.run(
        ["sacct", "-n", "-P", "-j", job.job_id, "-o", "JobID,NTasks,State"], capture_output=True, text=True, check=True
    ).stdout.split()
    srun_steps = [s.split("|") for s in steps if s.split("|")[0] == f"{job.job_id}.{ranks[0]['step']}"]
    assert srun_steps and srun_steps[0][1] == "2" and srun_steps[0][2] == "COMPLETED", steps
