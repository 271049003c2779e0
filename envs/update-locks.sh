#!/usr/bin/env bash
# Writes envs/requirements.lock, envs/requirements-test.lock and the pip pins of envs/tokshift.yaml
# from pyproject.toml: one pip resolution of [project].dependencies plus the `test` extra, for the
# platform the locks are for (Linux x86-64, CPython 3.11; run it there).
#
#   envs/update-locks.sh                       keep every pin that still fits pyproject.toml; resolve
#                                              only what is new (rerunning it changes nothing)
#   envs/update-locks.sh --upgrade-package P   the newest release of P (repeatable), the rest kept
#   envs/update-locks.sh --upgrade             the newest release of everything
#   envs/update-locks.sh --from-installed      the versions installed in this Python's environment
#                                              (pin what was just tested)
#
# Needs pip and the package indexes pip is configured for; installs nothing (pip install --dry-run).
# PYTHON selects the interpreter (default: python3). Then run the test suite in an environment
# installed from the new locks before committing them.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" - "$@" <<'PY'
import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a bare environment: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

RUNTIME_LOCK = Path("envs/requirements.lock")
TEST_LOCK = Path("envs/requirements-test.lock")
CONDA_ENV = Path("envs/tokshift.yaml")
CONDA_PINS_MARK = "# Pins below: written by envs/update-locks.sh from envs/requirements.lock."
# torch's own CUDA runtime wheels: left out of the locks (see the header below).
CUDA_RUNTIME = re.compile(r"nvidia-.*|cuda-.*|triton")
PLATFORM = "Linux x86-64, CPython 3.11"


def fail(message: str) -> None:
    print(f"update-locks: error: {message}", file=sys.stderr)
    sys.exit(2)


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                name, _, version = line.partition("==")
                pins[canonicalize_name(name)] = version.strip()
    return pins


def installed_pins() -> dict[str, str]:
    from importlib.metadata import distributions

    pins = {}
    for dist in distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name != "tokshift":
            pins[name] = Version(dist.version).public  # 2.14.1+cpu -> 2.14.1
    return pins


def resolve(requirements: list[str], constraints: dict[str, str]) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, requires_dist) of everything pip would install into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        req_file, con_file, report = Path(tmp, "req.txt"), Path(tmp, "con.txt"), Path(tmp, "report.json")
        req_file.write_text("".join(f"{r}\n" for r in requirements))
        con_file.write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        cmd += ["--report", str(report), "-r", str(req_file), "-c", str(con_file)]
        if subprocess.run(cmd).returncode != 0:
            fail(
                "pip could not resolve pyproject.toml's dependencies with the pins kept (above); "
                "rerun with --upgrade-package NAME for the package pip names, or --upgrade"
            )
        installs = json.loads(report.read_text())["install"]
    return {
        canonicalize_name(i["metadata"]["name"]): (
            Version(i["metadata"]["version"]).public,
            i["metadata"].get("requires_dist") or [],
        )
        for i in installs
    }


def closure(roots: list[Requirement], resolved: dict[str, tuple[str, list[str]]]) -> set[str]:
    """The packages `roots` need, markers evaluated here, without torch's CUDA runtime wheels."""
    seen: set[str] = set()
    todo = [(r, "") for r in roots]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if parent == "torch" and CUDA_RUNTIME.fullmatch(name):
            continue
        if name not in resolved:
            fail(f"{name} (needed by {parent or 'pyproject.toml'}) is missing from pip's resolution")
        extras = sorted(req.extras)
        key = f"{name}[{','.join(extras)}]"
        if key in seen:
            continue
        seen.add(key)
        for spec in resolved[name][1]:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ["", *extras]):
                todo.append((dep, name))
    return {k.split("[", 1)[0] for k in seen}


def header(what: str, torch_version: str) -> str:
    return f"""\
# {what}
# Platform: {PLATFORM} (environment markers were evaluated there).
# Regenerate with envs/update-locks.sh (it writes both lock files and the pip pins of
# envs/tokshift.yaml); do not edit by hand.
# Not pinned: torch's CUDA runtime wheels (nvidia-*, cuda-*, triton). Each torch wheel names the
# CUDA libraries it was built with itself, pinned to that build, and a CPU-only build
# (torch=={torch_version}+cpu, which satisfies torch=={torch_version}) installs none of them; pinned
# here, they would add gigabytes of CUDA libraries to every CPU install.
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="envs/update-locks.sh")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--upgrade", action="store_true")
    mode.add_argument("--from-installed", action="store_true")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME")
    args = parser.parse_args()
    here = (platform.system(), platform.machine(), sys.version_info[:2])
    if here != ("Linux", "x86_64", (3, 11)):
        fail(
            f"the locks are for {PLATFORM}; this is {here[0]} {here[1]}, Python "
            f"{here[2][0]}.{here[2][1]}: run it there (PYTHON=python3.11 envs/update-locks.sh)"
        )

    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    runtime_roots = [Requirement(r) for r in project["dependencies"]]
    test_roots = [Requirement(r) for r in project["optional-dependencies"]["test"]]

    def active(reqs: list[Requirement]) -> list[Requirement]:
        return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]

    runtime_roots, test_roots = active(runtime_roots), active(test_roots)
    roots = runtime_roots + test_roots

    if args.upgrade:
        kept = {}
    elif args.from_installed:
        kept = installed_pins()
    else:
        kept = {**read_pins(RUNTIME_LOCK), **read_pins(TEST_LOCK)}
    for name in args.upgrade_package:
        kept.pop(canonicalize_name(name), None)
    for r in roots:  # a pin that pyproject.toml's new floor excludes is resolved afresh
        name = canonicalize_name(r.name)
        if name in kept and not r.specifier.contains(kept[name], prereleases=True):
            print(f"update-locks: {name}=={kept[name]} does not satisfy {r}; resolving it afresh")
            del kept[name]

    resolved = resolve([str(r) for r in roots], kept)
    runtime = closure(runtime_roots, resolved)
    test = closure(roots, resolved) - runtime
    torch_version = resolved["torch"][0]

    def pins(names: set[str]) -> str:
        return "".join(f"{n}=={resolved[n][0]}\n" for n in sorted(names))

    RUNTIME_LOCK.write_text(
        header(
            "tokshift's runtime dependencies: pyproject.toml's [project].dependencies and everything they need.",
            torch_version,
        )
        + "# Install: pip install -r envs/requirements.lock && pip install --no-deps -e .\n"
        + pins(runtime)
    )
    TEST_LOCK.write_text(
        header("The runtime lock plus the `test` extra of pyproject.toml and what it needs.", torch_version)
        + "# Install: pip install -r envs/requirements-test.lock && pip install --no-deps -e .\n"
        + "-r requirements.lock\n"
        + pins(test)
    )
    lines = CONDA_ENV.read_text().splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if line.strip() == CONDA_PINS_MARK]
    if len(marks) != 1:
        fail(f"{CONDA_ENV} must have the line {CONDA_PINS_MARK!r} once, in its pip: list, above the pins")
    indent = lines[marks[0]][: len(lines[marks[0]]) - len(lines[marks[0]].lstrip())]
    pip_pins = "".join(f'{indent}- "{n}=={resolved[n][0]}"\n' for n in sorted(runtime))
    CONDA_ENV.write_text("".join(lines[: marks[0] + 1]) + pip_pins)
    print(
        f"update-locks: {len(runtime)} runtime pins, {len(test)} more for the tests "
        f"({RUNTIME_LOCK}, {TEST_LOCK}, {CONDA_ENV})"
    )


main()
PY
