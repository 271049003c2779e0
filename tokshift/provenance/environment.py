"""Is this the environment the workflow expects? The checks `tokshift env` prints.

Three questions a cluster user asks before trusting a run: which `tokshift` runs (and is it the
one pip installed, or the checkout the workflow puts first), does a workflow job run the
checkout it was planned with, and do the installed libraries match the tested lock
(`envs/requirements.lock` of the checkout)?
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from tokshift.provenance import package_dir

#: Set by the workflow for every job (tokshift.workflow.running_code): the checkout whose code the job must run.
CODE_ENV = "TOKSHIFT_CODE"
#: The pins of the tested environment, in the checkout (absent from an installed wheel).
LOCK_FILE = Path("envs") / "requirements.lock"
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def normalise(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_tokshift() -> dict[str, str] | None:
    """What `import tokshift` gives this interpreter outside any checkout (what the `tokshift` script
    runs): its version and package folder, or None when nothing is installed.

    Asked of a fresh interpreter started in the file system's root without PYTHONPATH, since pip's
    metadata does not say where an editable install's code is.
    """
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", CODE_ENV)}
    probe = (
        "import pathlib, tokshift; print(tokshift.__version__); print(pathlib.Path(tokshift.__file__).resolve().parent)"
    )
    root = os.path.abspath(os.sep)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        return None
    return {"version": lines[-2], "location": lines[-1]}


def install_check(running: Path | None = None) -> tuple[bool, str]:
    """(ok, what) for the installed tokshift against the running package."""
    from tokshift import __version__

    running = (running or package_dir()).resolve()
    dist = installed_tokshift()
    if dist is None:
        return True, f"no tokshift installed for {sys.executable}; running {running} ({__version__})"
    if Path(dist["location"]) == running:
        return True, f"the installed tokshift {dist['version']} is this code ({running})"
    same = ", the same version string" if dist["version"] == __version__ else ""
    return (
        False,
        f"the installed tokshift {dist['version']} at {dist['location']} is not the running code {running}"
        f" ({__version__}{same}); workflow jobs run the checkout's code (python -m tokshift with the checkout"
        " first on PYTHONPATH), the `tokshift` script runs the installed one: pip install --no-deps -e <checkout>",
    )


def read_lock(path: Path) -> dict[str, str]:
    """{normalised name: version} of a requirements lock (`name==version` lines; `-r` files followed)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("-r "):
            pins.update(read_lock(path.parent / line[3:].strip()))
            continue
        m = _PIN.match(line)
        if m:
            pins[normalise(m.group(1))] = m.group(2)
    return pins


def lock_differences(pins: Mapping[str, str]) -> list[str]:
    """`name: locked X, installed Y` for every pin the environment does not match."""
    out = []
    for name, want in sorted(pins.items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "not installed"
        # A local build label (2.14.1+cpu, +cu121) is the same release for the lock.
        if have.split("+", 1)[0] != want.split("+", 1)[0]:
            out.append(f"{name}: locked {want}, installed {have}")
    return out


def lock_check(lock: Path | None = None) -> tuple[bool, str]:
    """(ok, what) for the installed libraries against `lock` (default: the checkout's envs/requirements.lock).

    A lock that was named but is missing or holds no pins is bad input, not a failed check.
    """
    from tokshift.errors import BadInput, InputMissing

    if lock is None:
        lock = package_dir().parent / LOCK_FILE
        if not lock.is_file():
            return True, f"no {LOCK_FILE} beside the running package (not a checkout): not compared"
    elif not lock.is_file():
        raise InputMissing(f"{lock}: no such lock file; name a requirements lock (envs/requirements.lock)")
    pins = read_lock(lock)
    if not pins:
        raise BadInput(f"{lock} holds no name==version pins; name a requirements lock (envs/requirements.lock)")
    diffs = lock_differences(pins)
    if not diffs:
        return True, f"every package pinned in {lock} is installed at its pinned version"
    shown = "; ".join(diffs[:10]) + (f"; and {len(diffs) - 10} more" if len(diffs) > 10 else "")
    return False, f"{len(diffs)} package(s) differ from {lock}: {shown} (pip install -r {lock} to match it)"


def job_code_mismatch(environ: Mapping[str, str]) -> str | None:
    """One line naming both packages when `TOKSHIFT_CODE` is set and this process imported another `tokshift`.

    The command checks this as it starts: the job of a workflow run must run that workflow's code.
    None when the variable is unset (a command run by hand) or the packages are the same.
    """
    code = environ.get(CODE_ENV)
    if not code:
        return None
    expected = Path(code).resolve() / "tokshift"
    imported = package_dir()
    if imported == expected:
        return None
    return (
        f"this job imported the tokshift package from {imported}, but its workflow ({CODE_ENV}={code}) runs"
        f" {expected}: start it as `python -m tokshift` with {code} first on PYTHONPATH, as the workflow's rules do"
    )


def workflow_check() -> tuple[bool, str]:
    """(ok, what) for a workflow job: the package imported is the checkout TOKSHIFT_CODE names."""
    import os

    if not os.environ.get(CODE_ENV):
        return True, f"not in a workflow job ({CODE_ENV} unset)"
    problem = job_code_mismatch(os.environ)
    return (problem is None), (problem or f"running the code of {os.environ[CODE_ENV]}, as the workflow planned")


def device_check() -> tuple[bool, str]:
    """(ok, what) for the GPUs this process was given: usable, or why not (tokshift.engine.gpu_env)."""
    from tokshift.engine.gpu_env import real_choose_device
    from tokshift.errors import TokshiftError

    try:
        device, why = real_choose_device("auto", 0)
    except TokshiftError as exc:
        return False, str(exc)
    if device.type != "cuda":
        return True, f"cpu ({why})"
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return True, f"{len(names)} GPU(s): {', '.join(names)} ({why})"
