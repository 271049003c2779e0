"""One code version per run: the workflow's plan and every job run the checkout's `tokshift`.

The end-to-end proof (a run from a venv with another tokshift installed) is part of the shared
demo run, tests/test_demo_pipeline.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflow_helpers import REPO, copy_workflow, planned_jobs, snakemake
from tokshift.workflow.running_code import (
    CODE_ENV,
    CodeMismatch,
    check_workflow_imports,
    imported_package,
    job_code_mismatch,
    job_environment,
)

PACKAGE = REPO / "tokshift"


def test_the_tests_import_the_checkout() -> None:
    """What the checks below compare with: this test process runs REPO's package."""
    assert imported_package() == PACKAGE


def test_job_environment_puts_the_checkout_and_the_interpreter_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bindir = tmp_path / "venv" / "bin"
    environ = {
        "PYTHONPATH": os.pathsep.join(["/opt/lib", str(tmp_path / "wf"), "", "/opt/other"]),
        "PATH": os.pathsep.join(["/usr/bin", str(bindir), "/bin"]),
        "HOME": "/home/x",
    }
    env = job_environment("wf", environ, str(bindir / "python"))
    wf = str(tmp_path / "wf")
    assert env == {
        CODE_ENV: wf,
        # The checkout once, in front; the other entries kept in order (an empty one dropped).
        "PYTHONPATH": os.pathsep.join([wf, "/opt/lib", "/opt/other"]),
        "PATH": os.pathsep.join([str(bindir), "/usr/bin", "/bin"]),
    }
    assert job_environment(wf, {}, str(bindir / "python"))["PYTHONPATH"] == wf


def test_job_environment_keeps_a_venv_interpreter_link(tmp_path: Path) -> None:
    """A venv's bin/python is a link to the base interpreter: PATH must name the venv's bin/, whose
    python sees the venv's packages, so the link is not followed."""
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python").symlink_to(sys.executable)
    env = job_environment(REPO, {"PATH": os.environ.get("PATH", "")}, str(bindir / "python"))
    assert env["PATH"].split(os.pathsep)[0] == str(bindir)
    found = subprocess.run(
        ["sh", "-c", "command -v python"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == str(bindir / "python")


def test_a_job_imports_the_checkout_it_is_given(tmp_path: Path) -> None:
    """With the job's variables, `python -m tokshift` runs the package of TOKSHIFT_CODE, wherever it
    starts, and leaves with the command's exit code."""
    code = tmp_path / "checkout"
    shutil.copytree(PACKAGE, code / "tokshift", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, **job_environment(code, os.environ, sys.executable)}
    where = subprocess.run(
        ["python", "-c", "import tokshift; print(tokshift.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(code / "tokshift" / "__init__.py")
    version = subprocess.run(["python", "-m", "tokshift", "--version"], env=env, cwd=tmp_path, capture_output=True)
    assert version.returncode == 0 and version.stdout.startswith(b"tokshift "), version
    usage = subprocess.run(["python", "-m", "tokshift", "index"], env=env, cwd=tmp_path, capture_output=True)
    assert usage.returncode == 2, usage


def test_the_workflow_accepts_its_own_package_by_any_path(tmp_path: Path, monkeypatch) -> None:
    check_workflow_imports(REPO)
    (tmp_path / "link").symlink_to(REPO)
    check_workflow_imports(tmp_path / "link")
    monkeypatch.chdir(REPO.parent)
    check_workflow_imports(REPO.name)


def test_the_workflow_refuses_another_package(tmp_path: Path) -> None:
    with pytest.raises(CodeMismatch) as missing:
        check_workflow_imports(tmp_path)
    message = str(missing.value)
    assert str(PACKAGE) in message and str(tmp_path.resolve() / "tokshift") in message
    assert "restore the checkout's package folder" in message
    (tmp_path / "tokshift").mkdir()
    (tmp_path / "tokshift" / "__init__.py").write_text("")
    with pytest.raises(CodeMismatch, match="without another tokshift ahead of it") as other:
        check_workflow_imports(tmp_path)
    assert str(PACKAGE) in str(other.value)


def test_a_job_names_both_packages_when_they_differ(tmp_path: Path, monkeypatch) -> None:
    assert job_code_mismatch({}) is None  # run by hand
    assert job_code_mismatch({CODE_ENV: ""}) is None
    assert job_code_mismatch({CODE_ENV: str(REPO)}) is None
    (tmp_path / "link").symlink_to(REPO)
    assert job_code_mismatch({CODE_ENV: str(tmp_path / "link")}) is None
    monkeypatch.chdir(REPO.parent)
    assert job_code_mismatch({CODE_ENV: REPO.name}) is None
    message = job_code_mismatch({CODE_ENV: str(tmp_path)})
    assert message is not None and "\n" not in message
    assert str(PACKAGE) in message and str(tmp_path.resolve() / "tokshift") in message


def test_a_workflow_without_its_package_is_refused_before_any_job(tmp_path: Path) -> None:
    """A copy of the workflow whose tokshift/ is gone imports the package from elsewhere (here REPO,
    as an install would): the plan stops at parse time naming both folders."""
    wf = copy_workflow(tmp_path / "wf")
    shutil.rmtree(wf / "tokshift")
    proc = snakemake(wf, "-n", "--cores", "1", env={"PYTHONPATH": str(REPO)})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "CodeMismatch" in out and str(PACKAGE) in out and str(wf.resolve() / "tokshift") in out, out[-3000:]
    assert planned_jobs(out) == {}
