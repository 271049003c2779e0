"""A stand-in for the training under a real SLURM time limit (test_slurm_pipeline.py runs it).

The rule runs the stand-in through slurm/job-step.sh (its own SLURM step, so `--signal=USR1@N`
reaches it and not Snakemake), SLURM sends SIGUSR1 ahead of the limit, the program saves its
state and exits 75, the profile's retries resubmit the job, and the second attempt resumes and
finishes. Also under torchrun, which must outlive the signal while its workers checkpoint. The
stand-in never finishes by itself before the signal, so the outcome does not depend on speed.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from tests.slurm.cluster import PROFILE, snakemake_slurm, unique_prefix

WORKER = textwrap.dedent('''
    """Works until SIGUSR1, then saves its state and exits 75; a rerun with saved state finishes."""
    import json, os, signal, sys, time
    t0 = time.time()
    out = sys.argv[1]
    rank = os.environ.get("RANK", "0")
    state = f"{out}.rank{rank}.state.json"
    if os.path.exists(state):
        with open(out + f".rank{rank}.done", "w") as f:
            f.write("resumed\\n")
        sys.exit(0)
    def on_signal(signum, frame):
        with open(state, "w") as f:
            json.dump({"signal": signal.Signals(signum).name, "after_s": time.time() - t0,
                       "step": os.environ.get("SLURM_STEP_ID"), "job": os.environ.get("SLURM_JOB_ID")}, f)
        sys.exit(75)
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while time.time() - t0 < 300:
        time.sleep(0.2)
    sys.exit(1)
''')

SNAKEFILE = textwrap.dedent("""
    STEP = "{job_step}"
    SIGNAL = dict(
        runtime=2, mem_mb=1000, slurm_partition="{partition}", slurm_extra="--signal=USR1@30 --exclude={exclude}"
    )

    rule all:
        input: "out/plain.rank0.done", "out/torchrun.rank0.done", "out/torchrun.rank1.done"

    rule plain:
        output: "out/plain.rank0.done"
        # one task, one GPU, 2 CPUs: the mapping of a one-node training job
        resources: gpu=1, tasks=1, tasks_per_gpu=0, mpi="", cpus_per_task=2, **SIGNAL
        shell: "mkdir -p out && {{STEP}} --ntasks 1 --nodes 1 --cpus-per-task 2 -- python worker.py out/plain"

    rule torchrun:
        output: "out/torchrun.rank0.done", "out/torchrun.rank1.done"
        # 1 GPU so that both rules fit the 2 fake GPUs at once (the workers run on the CPU)
        resources: gpu=1, tasks=1, tasks_per_gpu=0, mpi="", cpus_per_task=2, **SIGNAL
        shell:
            "mkdir -p out && {{STEP}} --ntasks 1 --nodes 1 --cpus-per-task 2 --"
            " torchrun --standalone --nproc-per-node=2 --no-python python worker.py out/torchrun"
""")


def run_standin(dest: Path, partition: str, exclude_node: str) -> tuple[Path, str, subprocess.CompletedProcess]:
    """Run the stand-in workflow in `dest` through the `slurm` profile, in `partition` and away from
    `exclude_node` (so that it can run beside other tests' jobs); returns (dest, job-name prefix, run)."""
    snakefile = SNAKEFILE.format(job_step=PROFILE / "job-step.sh", partition=partition, exclude=exclude_node)
    (dest / "Snakefile").write_text(snakefile)
    (dest / "worker.py").write_text(WORKER)
    prefix = unique_prefix("sig")
    return dest, prefix, snakemake_slurm(dest, prefix=prefix, timeout=600)
