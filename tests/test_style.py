"""The code base stays lint-clean and formatted: ruff for Python, snakefmt for the workflow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(check):
    proc = _run(sys.executable, "-m", "ruff", *check, ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    snakefmt = shutil.which("snakefmt")
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (it needs Python >= 3.11)")
    proc = _run(snakefmt, "--check", "Snakefile", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
