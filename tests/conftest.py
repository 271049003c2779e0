"""Fixtures shared by the test modules, each built once per test session.

The suite has two tiers (README, "Quick start"): `python -m pytest` runs every test not marked
`slow` or `slurm` (pyproject's addopts) in minutes; `python -m pytest -m "slow or slurm"`
runs the end-to-end tier, whose tests share the expensive runs below instead of starting
their own. Heavy libraries load inside the fixtures, so collecting the suite stays fast.
"""

from __future__ import annotations

import time

import pytest

from tests.engine_helpers import PackedDemo, TrainedDemo, build_packed_demo, run_cli, train_args
from tests.slurm.cluster import Cluster, ensure_cluster
from tests.workflow_helpers import DemoRun, checkout_copy, other_tokshift_venv, snakemake


@pytest.fixture(scope="session")
def packed_demo(tmp_path_factory: pytest.TempPathFactory) -> PackedDemo:
    """Real LMDB shards of a few generated demo clips (train, val, an odd val subset, static clips)."""
    return build_packed_demo(tmp_path_factory.mktemp("engine_demo"))


@pytest.fixture(scope="session")
def trained_demo(packed_demo: PackedDemo, tmp_path_factory: pytest.TempPathFactory) -> TrainedDemo:
    """The demo TokShift model trained for 3 short epochs by `tokshift train` (read-only for its users)."""
    out = tmp_path_factory.mktemp("engine_trained") / "demo_tokshift"
    res = run_cli(*train_args(packed_demo, out), threads=2)
    assert res.returncode == 0, res.stderr[-3000:]
    return TrainedDemo(out, out / "model.pt", res)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The whole demo pipeline, run once for every end-to-end test that can read it.

    Its users read it; a test that changes results, logs or shards works on a copy
    (`shutil.copytree(demo_run.wf, ..., symlinks=True)` keeps the modification times).
    The copy is a git checkout at this one's commit, and Snakemake runs from a venv where another
    tokshift is installed: every job must still run the copy's own code.
    """
    root = tmp_path_factory.mktemp("demo")
    wf = checkout_copy(root / "wf")
    venv = other_tokshift_venv(root / "venv")
    t0 = time.monotonic()
    # umask 022 whatever the machine's: test_demo_pipeline checks every output is 0644 (folders 0755).
    snakemake(wf, "--cores", "2", check=True, timeout=1800, umask=0o022, python=venv / "bin" / "python")
    return DemoRun(wf, time.monotonic() - t0, venv)


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """A running SLURM cluster (partition `main`: one node; `multi`: two) with accounting and fake GPUs."""
    return ensure_cluster()
