"""One copy of the code per run: the checkout's `tokshift`, for the plan and for every job.

Snakemake imports the `tokshift/` next to the Snakefile (it puts the Snakefile's folder first on
`sys.path`). A job that started whichever `tokshift` is installed could run other code: a second
checkout's, or an install older than the checkout, and nothing would say so. So the workflow
gives every job the checkout first on PYTHONPATH (`job_environment`), the rules run
`python -m tokshift`, and both ends check the package they imported: the Snakefile before any
job (`check_workflow_imports`), each command as it starts (`job_code_mismatch`).

Paths are compared resolved, so a symlinked or relative checkout is the same checkout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tokshift.errors import NotRetryable

# The job's side of the check lives with the other environment checks (the CLI stands below the workflow layer).
from tokshift.provenance.environment import CODE_ENV, job_code_mismatch

__all__ = ["CODE_ENV", "CodeMismatch", "check_workflow_imports", "job_code_mismatch", "job_environment"]


class CodeMismatch(NotRetryable):
    """The `tokshift` package imported is not the checkout's: rerunning cannot fix that."""


def imported_package() -> Path:
    """The folder of the `tokshift` package this process imported, resolved."""
    import tokshift

    return Path(tokshift.__file__).resolve().parent


def _front(first: str, value: str | None) -> str:
    """A search path (`os.pathsep`-joined) with `first` in front and no other copy of it."""
    same = os.path.realpath(first)
    rest = [p for p in (value or "").split(os.pathsep) if p and os.path.realpath(p) != same]
    return os.pathsep.join([first, *rest])


def job_environment(basedir: str | os.PathLike[str], environ: Mapping[str, str], executable: str) -> dict[str, str]:
    """The variables every job gets, so that it runs the checkout's code with Snakemake's interpreter.

    `TOKSHIFT_CODE` names the checkout; PYTHONPATH starts with it, so `python -m tokshift` imports
    its `tokshift/` whatever else is installed; PATH starts with the folder of `executable` (the
    interpreter running Snakemake, not resolved: a venv's `bin/python` is a link), so `python` and
    `torchrun` in a job are that interpreter's. Empty PYTHONPATH/PATH entries are dropped.
    """
    base = os.path.abspath(basedir)
    bindir = os.path.dirname(os.path.abspath(executable))
    return {
        CODE_ENV: base,
        "PYTHONPATH": _front(base, environ.get("PYTHONPATH")),
        "PATH": _front(bindir, environ.get("PATH")),
    }


def check_workflow_imports(basedir: str | os.PathLike[str]) -> None:
    """Raise `CodeMismatch` unless the `tokshift` the Snakefile imported is `<basedir>/tokshift`.

    Called while the workflow is parsed, so a plan made with other code than the jobs would run
    stops before any job starts.
    """
    expected = Path(basedir).resolve() / "tokshift"
    imported = imported_package()
    if imported == expected:
        return
    if not (expected / "__init__.py").is_file():
        fix = f"restore the checkout's package folder {expected} (the workflow runs the code next to its Snakefile)"
    else:
        fix = (
            f"run snakemake on the Snakefile in {Path(basedir).resolve()} without another tokshift ahead of it"
            " (check PYTHONPATH and the current folder)"
        )
    raise CodeMismatch(
        f"the workflow imported the tokshift package from {imported}, not its own {expected}:"
        f" its jobs would run other code than its plan; {fix}"
    )
