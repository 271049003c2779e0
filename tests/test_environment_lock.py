"""The environment can be rebuilt: the lock files pin what pyproject.toml asks for and nothing else,
the conda env pins the same versions and runs the checkout's code, and the tests run in the locked
environment (CI installs from the lock, so a mismatch means the results were not made with it)."""

from __future__ import annotations

import re
import shutil
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.workflow_helpers import REPO, copy_workflow, snakemake

RUNTIME_LOCK = REPO / "envs" / "requirements.lock"
TEST_LOCK = REPO / "envs" / "requirements-test.lock"
CONDA_ENV = REPO / "envs" / "tokshift.yaml"
REINSTALL = "pip install -r envs/requirements-test.lock && pip install --no-deps -e ."
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
# torch's own CUDA runtime wheels, left out of the locks: each torch build pins its own.
CUDA_RUNTIME = re.compile(r"nvidia-.*|cuda-.*|triton")


def read_lock(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, version) of each pin in file order, names normalised; and the `-r` lines."""
    pins, includes = [], []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            includes.append(line[3:].strip())
            continue
        match = PIN.fullmatch(line)
        assert match, f"{path.name}:{n}: not a `name==version` pin: {raw!r}"
        pins.append((canonicalize_name(match[1]), match[2]))
    return pins, includes


def runtime_pins() -> dict[str, str]:
    return dict(read_lock(RUNTIME_LOCK)[0])


def extra_test_pins() -> dict[str, str]:
    return dict(read_lock(TEST_LOCK)[0])


def pyproject_requirements(group: str) -> list[Requirement]:
    """[project].dependencies (`runtime`) or an extra, without those whose marker is false here."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] if group == "runtime" else project["optional-dependencies"][group]
    reqs = [Requirement(s) for s in specs]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_lock_files_pin_each_package_once_in_order() -> None:
    runtime, runtime_includes = read_lock(RUNTIME_LOCK)
    test, test_includes = read_lock(TEST_LOCK)
    assert runtime_includes == [], "requirements.lock includes no other file"
    assert test_includes == ["requirements.lock"], "requirements-test.lock starts from the runtime lock (-r)"
    for path, pins in ((RUNTIME_LOCK, runtime), (TEST_LOCK, test)):
        names = [n for n, _ in pins]
        twice = sorted({n for n in names if names.count(n) > 1})
        assert not twice, f"{path.name} pins {twice} more than once"
        assert names == sorted(names), f"{path.name} is not sorted by name (envs/update-locks.sh writes it sorted)"
        header = path.read_text().split("\n\n", 1)[0]
        assert "envs/update-locks.sh" in header and "CPython 3.11" in header, f"{path.name}: header lost"
    both = sorted(set(dict(runtime)) & set(dict(test)))
    assert not both, f"pinned in both lock files (keep them in requirements.lock only): {both}"
    cuda = sorted(n for n in dict(runtime) | dict(test) if CUDA_RUNTIME.fullmatch(n))
    assert not cuda, f"torch's CUDA runtime wheels are pinned by each torch build itself, not here: {cuda}"


@pytest.mark.parametrize("group", ["runtime", "test"])
def test_every_pyproject_dependency_is_pinned_within_its_specifier(group: str) -> None:
    pins = runtime_pins() if group == "runtime" else runtime_pins() | extra_test_pins()
    lock = RUNTIME_LOCK.name if group == "runtime" else TEST_LOCK.name
    problems = []
    for req in pyproject_requirements(group):
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not pinned in {lock}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} does not satisfy pyproject.toml's {req}")
    assert not problems, "\n".join(problems) + "\nRegenerate the locks: envs/update-locks.sh"


def _needed(roots: list[Requirement], pins: dict[str, str]) -> tuple[set[str], list[str], set[str]]:
    """What `roots` need, following the requirements of the installed distributions (markers
    evaluated here, extras followed): the names reached, the requirements that no pin satisfies,
    and the locked packages that are not installed, whose own requirements could not be read."""
    reached: set[str] = set()
    unsatisfied: list[str] = []
    unread: set[str] = set()
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[Requirement, str]] = [(r, "pyproject.toml") for r in roots]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if parent == "torch" and CUDA_RUNTIME.fullmatch(name):
            continue
        reached.add(name)
        if name not in pins:
            unsatisfied.append(f"{parent} needs {req}, which is not pinned")
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            unsatisfied.append(f"{parent} needs {req}, but the lock pins {name}=={pins[name]}")
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            unread.add(name)
            continue
        for spec in requires:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ["", *key[1]]):
                todo.append((dep, name))
    return reached, unsatisfied, unread


@pytest.mark.parametrize("group", ["runtime", "test"])
def test_lock_is_the_closure_of_pyproject(group: str) -> None:
    """Every pin is needed (a pyproject dependency or required by a locked package) and every package
    needed is pinned within what requires it. Requirements are read from the installed distributions:
    a locked package that is not installed is named in the failure, since what it needs is unknown
    (test_the_tests_run_in_the_locked_environment fails for it too)."""
    roots = pyproject_requirements("runtime") + (pyproject_requirements("test") if group == "test" else [])
    pins = runtime_pins() | (extra_test_pins() if group == "test" else {})
    own = runtime_pins() if group == "runtime" else extra_test_pins()
    reached, unsatisfied, unread = _needed(roots, pins)
    unneeded = sorted(set(own) - reached)
    note = f" (not installed, so their requirements were not followed: {sorted(unread)})" if unread else ""
    lock = RUNTIME_LOCK.name if group == "runtime" else TEST_LOCK.name
    assert not unneeded, f"{lock} pins what nothing needs: {unneeded}{note}; regenerate: envs/update-locks.sh"
    assert not unsatisfied, "\n".join(unsatisfied) + note + "\nRegenerate the locks: envs/update-locks.sh"


def test_the_tests_run_in_the_locked_environment() -> None:
    """CI installs the test lock; every pinned package is installed at its pinned version (a local
    build label such as +cpu or +cu126 is allowed: it is the same release)."""
    mismatches = []
    for name, pinned in sorted((runtime_pins() | extra_test_pins()).items()):
        installed = installed_version(name)
        if installed is None:
            mismatches.append(f"{name}: pinned {pinned}, not installed")
        elif Version(installed).public != Version(pinned).public:
            mismatches.append(f"{name}: pinned {pinned}, installed {installed}")
    assert not mismatches, (
        "this environment is not the locked one:\n  "
        + "\n  ".join(mismatches)
        + f"\nReinstall it from the lock: {REINSTALL}"
    )


def _conda_env() -> dict:
    return yaml.safe_load(CONDA_ENV.read_text())


def _conda_pip_entries() -> list[str]:
    pips = [d["pip"] for d in _conda_env()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, f"{CONDA_ENV.name} has {len(pips)} pip: lists, expected one"
    return [str(e) for e in pips[0]]


def test_conda_env_pins_the_runtime_lock() -> None:
    pins, options = {}, []
    for entry in _conda_pip_entries():
        if entry.startswith("-"):
            options.append(entry)
            continue
        match = PIN.fullmatch(entry.strip())
        assert match, f"{CONDA_ENV.name}: pip entry {entry!r} is not a `name==version` pin"
        pins[canonicalize_name(match[1])] = match[2]
    assert pins == runtime_pins(), (
        f"{CONDA_ENV.name}'s pip pins differ from {RUNTIME_LOCK.name}: only in the env "
        f"{sorted(set(pins.items()) - set(runtime_pins().items()))}, only in the lock "
        f"{sorted(set(runtime_pins().items()) - set(pins.items()))}; regenerate both: envs/update-locks.sh"
    )
    assert all(o.split()[0] in ("--extra-index-url", "--index-url") for o in options), options
    assert "python=3.11" in _conda_env()["dependencies"], "the locks are for CPython 3.11"


def test_conda_env_does_not_install_the_project() -> None:
    """The jobs run the checkout's code (`python -m tokshift`, checkout first on PYTHONPATH); an
    installed copy would be frozen at the environment's creation, and a post-deploy script runs from
    the conda prefix, not from the checkout."""
    entries = _conda_pip_entries() + [str(d) for d in _conda_env()["dependencies"] if not isinstance(d, dict)]
    for entry in entries:
        words = entry.split()
        assert not {"-e", "--editable", ".", "./", ".."} & set(words), f"installs a project: {entry!r}"
        assert not re.match(r"(\.|/|file:|git\+)", words[-1]), f"installs from a path: {entry!r}"
        assert canonicalize_name(re.split(r"[=<>!~ \[]", words[-1])[0]) != "tokshift", entry
    # Snakemake runs `<env file without .yaml>.post-deploy.sh` after creating an environment.
    scripts = sorted(p.name for p in (REPO / "envs").glob("*.post-deploy.sh"))
    assert not scripts, f"Snakemake would run {scripts} in the new environment; delete them"
    rule_envs = set()
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for env in re.findall(r"^\s*conda:\s*\n\s*\"([^\"]+)\"", smk.read_text(), flags=re.M):
            rule_envs.add((smk.parent / env).resolve())
    assert rule_envs == {CONDA_ENV.resolve()}, f"the rules' conda envs are {sorted(map(str, rule_envs))}"


def _shell_commands(output: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Shell command:")]


def _check_plan(output: str) -> None:
    commands = _shell_commands(output)
    assert commands, f"the dry run printed no command:\n{output[-3000:]}"
    bare = [c for c in commands if re.search(r"(^|[;&|(]|--)\s*tokshift\s", c)]
    assert not bare, f"commands run an installed tokshift instead of the checkout's: {bare}"
    assert all("python -m tokshift" in c for c in commands if "tokshift" in c)
    assert "post-deploy" not in output


def test_the_plan_runs_the_checkouts_code(tmp_path: Path) -> None:
    """What every route prints for its jobs, --sdm conda or not: `python -m tokshift`, no post-deploy."""
    wf = copy_workflow(tmp_path / "wf")
    proc = snakemake(wf, "-n", "-p", "--cores", "2", check=True)
    _check_plan(proc.stdout + proc.stderr)


def test_the_plan_check_sees_an_installed_tokshift_and_a_post_deploy_script() -> None:
    good = "Shell command: python -m tokshift pack --shard 0 > logs/pack.log 2>&1\n"
    _check_plan(good)
    for bad in (
        "Shell command: tokshift pack --shard 0\n",
        'Shell command: "$STEP" --ntasks 1 -- tokshift train --model m\n',
        good + "Running post-deploy script .snakemake/conda/abc.post-deploy.sh...\n",
    ):
        with pytest.raises(AssertionError):
            _check_plan(bad)


@pytest.mark.skipif(
    shutil.which("conda") is None,
    reason="conda is not installed: Snakemake 9 runs `conda info --json` even for a dry run with --sdm conda",
)
def test_conda_route_dry_run_with_the_prefix_elsewhere(tmp_path: Path) -> None:
    """`--conda-prefix` outside the project: the plan still runs the checkout's code."""
    wf = copy_workflow(tmp_path / "wf")
    prefix = tmp_path / "elsewhere" / "conda-envs"
    proc = snakemake(wf, "-n", "-p", "--cores", "2", "--sdm", "conda", "--conda-prefix", str(prefix), check=True)
    _check_plan(proc.stdout + proc.stderr)
