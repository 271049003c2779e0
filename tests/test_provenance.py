"""Provenance: every output says which code, software, devices and job made it, checked against the
real environment (this checkout's git commit and state, the installed torch/timm, this host)."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.engine_helpers import REPO, PackedDemo, TrainedDemo, run_cli_inprocess
from tokshift import provenance
from tokshift.provenance import environment


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", "-C", str(root), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def checkout_state(root: Path = REPO) -> tuple[str, bool]:
    """(HEAD, dirty) of a checkout, computed here without the module under test."""
    head = git(root, "rev-parse", "HEAD")
    status = git(root, "status", "--porcelain", "--untracked-files=no")
    changed = [line[3:] for line in status.splitlines() if line[3:] != "config.yaml"]
    return head, bool(changed)


def assert_real_environment(block: dict, command: str) -> None:
    """A block made in this test session's environment by this checkout's code."""
    head, dirty = checkout_state()
    code = block["tokshift"]
    assert code["package"] == str(REPO / "tokshift")
    assert (code["commit"], code["dirty"]) == (head, dirty)
    assert code["version"] == metadata.version("tokshift")
    sw = block["software"]
    assert sw["python"] == platform.python_version()
    for name in ("torch", "torchvision", "timm", "numpy"):
        assert sw[name] == metadata.version(name), name
    assert block["host"] == socket.gethostname()
    assert block["command"].split()[0] == command
    assert block["started"] <= block["ended"]


def test_code_info_names_the_commit_and_counts_only_tracked_code_as_modified(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    (repo / "tokshift").mkdir(parents=True)
    (repo / "tokshift" / "a.py").write_text("x = 1\n")
    (repo / "config.yaml").write_text("dataset: demo\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    info = provenance.code_info(repo / "tokshift")
    assert (info["commit"], info["dirty"], info["modified"]) == (head, False, [])
    assert provenance.short_commit(info) == head[:12]

    (repo / "config.yaml").write_text("dataset: kinetics400\n")  # the run's settings: recorded apart
    (repo / "results.csv").write_text("new, untracked\n")
    assert provenance.code_info(repo / "tokshift")["dirty"] is False

    (repo / "tokshift" / "a.py").write_text("x = 2\n")
    info = provenance.code_info(repo / "tokshift")
    assert (info["commit"], info["dirty"], info["modified"]) == (head, True, ["tokshift/a.py"])
    assert provenance.short_commit(info) == head[:12] + "+dirty"
    assert provenance.commit_label(info) == f"commit {head}, modified: tokshift/a.py"

    copy = tmp_path / "copy" / "tokshift"
    copy.mkdir(parents=True)
    info = provenance.code_info(copy)
    assert info["commit"] is None and info["git"] == provenance.NOT_A_CHECKOUT
    assert provenance.short_commit(info) == provenance.NOT_A_CHECKOUT


def test_the_slurm_job_comes_from_its_variables_and_the_header_says_it() -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    block = provenance.collect("train", devices=["cpu (x)"], env=env)
    assert block["slurm"] == {"job_id": "4242", "restart_count": "1", "nodelist": "gpu[01-02]"}
    first, libs, where = provenance.header_lines(block)
    assert first.startswith(f"tokshift {block['tokshift']['version']} from {REPO / 'tokshift'} (")
    assert f"torch {metadata.version('torch')}" in libs
    assert where.startswith(f"host {socket.gethostname()}, SLURM job 4242 (restart 1) on gpu[01-02], started ")
    assert provenance.collect("pack", env={})["slurm"] is None
    assert provenance.devices_summary(["NVIDIA A100", "NVIDIA A100", "cpu (x)"]) == "2× NVIDIA A100 + 1× cpu (x)"


def test_a_trained_model_and_its_summary_record_the_code_software_and_machine(trained_demo: TrainedDemo) -> None:
    from tokshift.checkpoints import read_torch_file

    ckpt = read_torch_file(trained_demo.checkpoint)
    summary = json.loads((trained_demo.out_dir / "train_summary.json").read_text())
    block = ckpt["provenance"]
    assert summary["provenance"] == block
    assert_real_environment(block, "train")
    import torch

    assert block["software"]["torch_loaded"] == str(torch.__version__)
    assert block["software"]["cuda"] == torch.version.cuda
    assert block["devices"] == [f"cpu ({provenance.cpu_model()})"]
    assert block["nodes"] == [socket.gethostname()]
    (attempt,) = block["attempts"]
    assert (attempt["first_step"], attempt["last_step"]) == (0, ckpt["optimizer_steps"])
    assert attempt["commit"] == block["tokshift"]["commit"]


def test_provenance_command_prints_the_block_of_a_model_a_shard_and_a_summary(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    res = run_cli_inprocess("provenance", str(trained_demo.checkpoint))
    assert res.returncode == 0, res.stderr
    shown = yaml.safe_load(res.stdout)
    assert shown["tokshift"]["commit"] == checkout_state()[0]
    assert shown["attempts"][0]["last_step"] > 0
    folder = json.loads(run_cli_inprocess("provenance", "--json", str(trained_demo.out_dir)).stdout)
    assert folder == shown

    res = run_cli_inprocess("provenance", "--json", str(packed_demo.train))
    assert res.returncode == 0, res.stderr
    assert_real_environment(json.loads(res.stdout), "pack")

    bare = tmp_path / "metrics.json"
    bare.write_text('{"top1": 50.0}\n')
    res = run_cli_inprocess("provenance", str(bare))
    assert res.returncode == 2
    assert f"{bare} records no provenance" in res.stderr


def test_env_prints_the_environment_and_its_checks() -> None:
    res = run_cli_inprocess("env", "--json")
    report = json.loads(res.stdout)
    assert report["tokshift"]["package"] == str(REPO / "tokshift")
    assert report["software"]["torch"] == metadata.version("torch")
    assert set(report["checks"]) == {"installed package", "workflow job", "lock", "devices"}
    installed = f"ok: the installed tokshift {metadata.version('tokshift')} is this code ({REPO / 'tokshift'})"
    assert report["checks"]["installed package"] == installed
    assert report["checks"]["devices"].startswith("ok: cpu")
    failed = [k for k, v in report["checks"].items() if v.startswith("FAILED")]
    assert res.returncode == (3 if failed else 0), report["checks"]


def test_the_lock_check_names_each_package_that_differs(tmp_path: Path) -> None:
    (tmp_path / "base.lock").write_text(f"torch=={metadata.version('torch')}\nnumpy==0.0.1  # too old\n")
    (tmp_path / "test.lock").write_text("-r base.lock\npytest==" + metadata.version("pytest") + "\nno-such-pkg==1.0\n")
    pins = environment.read_lock(tmp_path / "test.lock")
    assert set(pins) == {"torch", "numpy", "pytest", "no-such-pkg"}
    assert environment.lock_differences(pins) == [
        "no-such-pkg: locked 1.0, installed not installed",
        f"numpy: locked 0.0.1, installed {metadata.version('numpy')}",
    ]
    # A local build label is the same release: the CPU build of a locked torch matches the lock.
    assert environment.lock_differences({"torch": metadata.version("torch").split("+")[0] + "+cpu"}) == []


@pytest.mark.parametrize("column", ["trained_on", "train_commit", "train_torch", "eval_commit", "eval_torch"])
def test_the_table_explains_each_provenance_column(column: str) -> None:
    from tokshift.results.table import COLUMN_SOURCES, COLUMNS, RELEASED_COLUMN_SOURCES

    assert column in COLUMNS and "provenance" in COLUMN_SOURCES[column]
    if column.startswith("train"):
        assert "unknown" in RELEASED_COLUMN_SOURCES[column]


def test_a_workflow_job_logs_its_code_first_and_refuses_another_checkouts(tmp_path: Path) -> None:
    import os
    import sys

    env = {**os.environ, "TOKSHIFT_CODE": str(REPO), "PYTHONPATH": str(REPO)}  # as the workflow sets them
    # A command that fails on its input at once (no torch to load): the header comes first all the same.
    command = [sys.executable, "-m", "tokshift", "download", "--url", str(tmp_path / "no.npz"), "--out", "w.npz"]
    bad = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    first, libs, where, error = bad.stderr.splitlines()[:4]
    head, _ = checkout_state()
    assert first.startswith(f"tokshift {metadata.version('tokshift')} from {REPO / 'tokshift'} (commit {head}")
    assert libs.startswith(f"python {platform.python_version()}, torch {metadata.version('torch')}")
    assert where.startswith(f"host {socket.gethostname()}, started ")
    assert error.startswith("tokshift download: error: ") and "no.npz" in error

    env["TOKSHIFT_CODE"] = str(tmp_path)
    other = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert other.returncode == 3
    assert f"tokshift download: error: this job imported the tokshift package from {REPO / 'tokshift'}" in other.stderr
    assert str(tmp_path / "tokshift") in other.stderr.splitlines()[-1]


def test_the_install_check_names_the_installed_copy_when_other_code_runs(tmp_path: Path) -> None:
    ok, what = environment.install_check(tmp_path / "tokshift")
    assert not ok
    assert (
        f"the installed tokshift {metadata.version('tokshift')} at {REPO / 'tokshift'} is not the running code" in what
    )
    assert str(tmp_path / "tokshift") in what


def test_env_fails_naming_each_package_that_differs_from_the_lock_it_is_given(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"torch=={metadata.version('torch')}\nnumpy==0.0.1\n")
    res = run_cli_inprocess("env", "--json", "--lock", str(lock))
    assert res.returncode == 3
    check = json.loads(res.stdout)["checks"]["lock"]
    assert check.startswith(f"FAILED: 1 package(s) differ from {lock}: numpy: locked 0.0.1, installed ")
    assert "tokshift env: 1 check(s) failed: lock" in res.stderr
