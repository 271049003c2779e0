"""Run the project's Snakemake workflow in a temporary copy of the repository, and read its plans."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOW_PATHS = ("Snakefile", "rules", "workflow", "envs", "config.yaml", "slurm", "profiles")
#: The package a copy's jobs run (they run the code next to the Snakefile, tokshift.workflow.running_code).
PACKAGE = "tokshift"

# Local runs never talk to a SLURM cluster. The SLURM executor plugin asks `scontrol show config`
# when Snakemake loads it, and where SLURM's client is installed but no controller answers that
# call waits 10 s on every start; an empty configuration file makes it fail at once instead.
NO_SLURM = {"SLURM_CONF": "/dev/null"}


@dataclass(frozen=True)
class DemoRun:
    """The finished demo pipeline (conftest.py's `demo_run`): `snakemake --cores 2` in a git checkout
    copy of the workflow (`checkout_copy`), run by the interpreter of `venv`, where another tokshift
    (`other_tokshift_venv`) is installed."""

    wf: Path
    seconds: float
    venv: Path | None = None


def repo_config() -> dict:
    """The repository's config.yaml, as a fresh dict to edit."""
    import yaml

    return yaml.safe_load((REPO / "config.yaml").read_text())


def copy_workflow(dest: Path) -> Path:
    """Copy what `snakemake` reads (not results) into `dest`, with the `tokshift/` package its jobs run."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*WORKFLOW_PATHS, PACKAGE):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def _git(*args: str | Path, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=True).stdout


def checkout_copy(dest: Path) -> Path:
    """`copy_workflow` as a git checkout that matches this one: HEAD is REPO's HEAD, and the working
    tree differs from it exactly where REPO's does (edited, added and deleted files alike).

    So what a run records about its code (commit, modified files) can be compared with the test's
    own checkout. Without git metadata in REPO it is a plain copy.
    """
    if not (REPO / ".git").exists():
        return copy_workflow(dest)
    _git("clone", "--quiet", "--shared", REPO, dest)
    # Files of HEAD, of the index and untracked ones that git does not ignore, as they are now in the
    # working tree: a deleted or renamed one (even a staged rename) is gone from the copy too.
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    names += _git("ls-tree", "-r", "-z", "--name-only", "HEAD").split("\0")
    for name in sorted(set(names) - {""}):
        src, out = REPO / name, dest / name
        if src.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
        elif not src.exists() and out.is_file():
            out.unlink()
    return dest


#: The version and exit code of the other tokshift that `other_tokshift_venv` installs.
OTHER_VERSION = "0.0.0+other"
OTHER_EXIT = 9

_WRONG_COPY_MAIN = f'''

_checkout_main = main


def main(argv=None):
    """This copy only says its version: a job that runs it ran the wrong code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv != ["--version"]:
        print("wrong tokshift copy", file=sys.stderr)
        return {OTHER_EXIT}
    return _checkout_main(argv)

'''


def other_tokshift_venv(dest: Path) -> Path:
    """A venv at `dest` seeing the system's packages (torch, snakemake) with another tokshift installed
    in it: version OTHER_VERSION, whose CLI exits OTHER_EXIT printing "wrong tokshift copy" for
    anything but `--version`. A workflow run by this venv's interpreter must still run its own code."""
    src = dest.parent / f"{dest.name}-package"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))

    def edit(path: Path, pattern: str, repl: str) -> None:
        text, n = re.subn(pattern, repl, path.read_text(), count=1, flags=re.M)
        assert n == 1, f"{path}: no match for {pattern}"
        path.write_text(text)

    edit(src / "pyproject.toml", r'^version = ".*"$', f'version = "{OTHER_VERSION}"')
    edit(src / PACKAGE / "__init__.py", r'^__version__ = ".*"$', f'__version__ = "{OTHER_VERSION}"')
    cli = src / PACKAGE / "cli.py"
    text = cli.read_text()
    at = text.rfind('\nif __name__ == "__main__":')
    cli.write_text(text + _WRONG_COPY_MAIN if at < 0 else text[:at] + _WRONG_COPY_MAIN + text[at:])
    # No pip in the venv: the system's pip installs into it (--ignore-installed: the system's own
    # tokshift is neither looked at nor touched), offline, with the system's setuptools.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", dest], check=True)
    pip = [dest / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    pip += ["--no-build-isolation", "--ignore-installed", "--disable-pip-version-check", src]
    subprocess.run(pip, check=True, capture_output=True, text=True, timeout=600)
    return dest


def snakemake(
    workdir: Path,
    *args: str,
    timeout: float = 1800,
    check: bool = False,
    env: dict[str, str] | None = None,
    umask: int = -1,
    python: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the snakemake CLI of this interpreter (or of `python`) in `workdir` (no cluster), capturing
    its output; `umask` >= 0 is set in the child only (the test process keeps its own)."""
    full_env = {**os.environ, **NO_SLURM, **(env or {})}
    cmd = [str(python or sys.executable), "-m", "snakemake", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=full_env, umask=umask)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table that Snakemake prints (a dry run's plan, or a run's)."""
    counts: dict[str, int] = {}
    in_table = False
    for line in output.splitlines():
        if line.startswith("Job stats"):
            in_table = True
            continue
        parts = line.split()
        if in_table and parts[:1] == ["total"]:
            in_table = False
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def touch_whole_plan(wf: Path) -> list[str]:
    """Every planned output as an empty file, recorded by Snakemake as made by its job (`--touch`).

    The result looks like a finished run to Snakemake, in seconds: for tests of what it plans next.
    Returns the outputs, relative to `wf`.
    """
    summary = snakemake(wf, "--summary", "--cores", "1", check=True).stdout
    outputs = [line.split("\t")[0] for line in summary.splitlines()[1:] if "\t" in line]
    for name in outputs:
        (wf / name).parent.mkdir(parents=True, exist_ok=True)
        (wf / name).write_bytes(b"")
    snakemake(wf, "--touch", "--cores", "1", check=True)  # in job order: every output newer than its inputs
    return outputs
