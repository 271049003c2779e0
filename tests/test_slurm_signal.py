"""A job signalled ahead of its time limit checkpoints, exits non-zero and is resubmitted.

This is the mechanism the training relies on, checked with a stand-in program: the rule runs
it through slurm/job-step.sh (its own SLURM step, so `--signal=USR1@N` reaches it and not
Snakemake), SLURM sends SIGUSR1 ahead of the limit, the program saves its state and exits 75,
the profile's retries resubmit the job, and the second attempt resumes and finishes. Also
under torchrun, which must outlive the signal while its workers checkpoint.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.slurm.cluster import PROFILE, Cluster, sacct_steps, snakemake_slurm, unique_prefix, wait_until_recorded

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

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
    SIGNAL = dict(runtime=2, mem_mb=1000, slurm_extra="--signal=USR1@30")

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


@pytest.mark.timeout(900)
def test_signal_ahead_of_the_limit_then_resubmitted(slurm_cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(job_step=PROFILE / "job-step.sh"))
    (tmp_path / "worker.py").write_text(WORKER)
    prefix = unique_prefix("sig")
    proc = snakemake_slurm(tmp_path, prefix=prefix, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    for name, ranks in (("plain", 1), ("torchrun", 2)):
        for r in range(ranks):
            st = json.loads((tmp_path / f"out/{name}.rank{r}.state.json").read_text())
            # SIGUSR1 came ahead of the 2-minute limit, inside a job step (not the batch script).
            assert st["signal"] == "SIGUSR1", (name, st)
            assert st["step"] not in (None, "batch"), (name, st)
            assert (tmp_path / f"out/{name}.rank{r}.done").read_text() == "resumed\n"

    jobs = wait_until_recorded(prefix, 4)
    for name in ("plain", "torchrun"):
        attempts = sorted((j for j in jobs if j.rule == name), key=lambda j: int(j.job_id))
        assert [j.state for j in attempts] == ["FAILED", "COMPLETED"], attempts
        first = attempts[0]
        assert first.timelimit_minutes == 2 and first.elapsed_seconds < 120, first
        step_codes = [s.exit_code for s in sacct_steps(first.job_id) if not s.step_id.endswith((".batch", ".extern"))]
        # The stand-in exits 75 after saving; torchrun reports its workers' failure as 1.
        assert step_codes == [75 if name == "plain" else 1], sacct_steps(first.job_id)
