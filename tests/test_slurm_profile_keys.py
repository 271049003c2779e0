"""The SLURM profile and the workflow's job resources against the installed Snakemake and SLURM plugin.

A profile key Snakemake does not know stops `snakemake --profile slurm` before anything runs,
on the cluster only; a resource the plugin does not read never reaches sbatch, silently. Both
are checked here without a cluster, and so are the version floors pyproject.toml declares.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tokshift.settings import SCHEMA_PATH
from tokshift.workflow import config as settings
from tokshift.workflow import scheduling

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm"
PLUGIN_PREFIX = "slurm-"
#: The packages whose floors pyproject.toml must keep true.
FLOORED = ("snakemake", "snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep")
#: `job.resources.get("name")`, `job.resources.name` or `job.resources["name"]` in plugin code.
RESOURCE_READ = re.compile(r"""resources\.get\(\s*["'](\w+)["']|resources\.(\w+)\b|resources\[\s*["'](\w+)["']\s*\]""")
#: Methods of the resources object that RESOURCE_READ also matches.
NOT_RESOURCES = {"get", "items", "keys", "values"}
#: Snakemake's standard resources ("Standard Resources" in its documentation).
SNAKEMAKE_RESOURCES = {"mem", "mem_mb", "mem_mib", "disk", "disk_mb", "disk_mib", "runtime", "tmpdir"}


def profile() -> dict[str, Any]:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def snakemake_options() -> set[str]:
    """Every option string of the installed Snakemake's command line, executor plugin settings included.

    argparse has no public list of its options; `_actions` is what it parses with.
    """
    import snakemake.cli

    parser = snakemake.cli.get_argument_parser()
    return {opt for action in parser._actions for opt in action.option_strings}


def plugin_settings() -> set[str]:
    """The installed SLURM plugin's settings, as profile keys (`slurm-` + field name with dashes)."""
    import snakemake_executor_plugin_slurm

    fields = dataclasses.fields(snakemake_executor_plugin_slurm.ExecutorSettings)
    return {PLUGIN_PREFIX + f.name.replace("_", "-") for f in fields}


def unknown_profile_keys(cfg: dict[str, Any], options: set[str], plugin: set[str]) -> list[str]:
    """Keys of `cfg` that are neither Snakemake options nor settings of the SLURM plugin."""
    unknown = []
    for key in cfg:
        known = f"--{key}" in options
        if key.startswith(PLUGIN_PREFIX):
            known = known and key in plugin
        if not known:
            unknown.append(key)
    return unknown


def plugin_resources() -> set[str]:
    """Job resources the installed SLURM plugin and its job-step plugin read, from their source."""
    names: set[str] = set()
    for module in ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_slurm_jobstep"):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, f"{module} is not installed"
        for path in Path(spec.origin).parent.rglob("*.py"):
            for match in RESOURCE_READ.finditer(path.read_text()):
                names.add(next(g for g in match.groups() if g))
    return names - NOT_RESOURCES


def unknown_resources(names: set[str] | list[str], known: set[str]) -> list[str]:
    return sorted(set(names) - known)


def unmet_floors(requirements: list[str]) -> list[str]:
    """The requirements among FLOORED that the installed version does not satisfy."""
    unmet = []
    for line in requirements:
        req = Requirement(line)
        if canonicalize_name(req.name) not in FLOORED:
            continue
        installed = importlib.metadata.version(req.name)
        if not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{line} (installed {installed})")
    return unmet


def declared_requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.fixture(scope="module")
def options() -> set[str]:
    return snakemake_options()


def test_every_profile_key_is_a_snakemake_option_or_a_plugin_setting(options: set[str]) -> None:
    assert unknown_profile_keys(profile(), options, plugin_settings()) == []


def test_made_up_keys_are_reported(options: set[str]) -> None:
    cfg = {"jobs": 1, "slurm-logdir": "logs", "slurm-no-such-setting": 1, "no-such-option": True}
    assert unknown_profile_keys(cfg, options, plugin_settings()) == ["slurm-no-such-setting", "no-such-option"]


def test_the_setting_the_profile_suggests_in_a_comment_exists(options: set[str]) -> None:
    """The profile tells users to add `slurm-keep-successful-logs: true`; that must be a real setting."""
    assert "slurm-keep-successful-logs" in (PROFILE / "config.yaml").read_text()
    assert unknown_profile_keys({"slurm-keep-successful-logs": True}, options, plugin_settings()) == []


def test_snakemake_reads_every_plugin_setting_of_the_profile() -> None:
    """Snakemake's own parser, given the profile folder, hands each `slurm-` value to the plugin."""
    import snakemake.cli

    args = snakemake.cli.get_argument_parser(profiles=[str(PROFILE)]).parse_args([])
    cfg = profile()
    assert args.executor == cfg["executor"]
    plugin_keys = [key for key in cfg if key.startswith(PLUGIN_PREFIX)]
    assert plugin_keys, "the profile sets no SLURM plugin setting"
    for key in plugin_keys:
        assert str(getattr(args, key.replace("-", "_"))) == str(cfg[key]), key


def test_snakemake_rejects_a_profile_with_an_unknown_setting(tmp_path: Path) -> None:
    import snakemake.cli

    folder = tmp_path / "slurm"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({**profile(), "slurm-no-such-setting": 1}))
    with pytest.raises(SystemExit):
        snakemake.cli.get_argument_parser(profiles=[str(folder)]).parse_args([])


def test_default_resources_are_known_resources() -> None:
    known = SNAKEMAKE_RESOURCES | plugin_resources()
    defaults = profile()["default-resources"]
    assert defaults, "the profile sets no default resources"
    assert unknown_resources(list(defaults), known) == []
    assert unknown_resources([*defaults, "no_such_resource"], known) == ["no_such_resource"]


def test_every_resource_a_job_asks_for_is_read_by_the_plugin() -> None:
    """Keys of the train/evaluate/pack jobs of every selected model, partition, account and QoS set."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(cfg, str(SCHEMA_PATH))
    env = {var: "x" for _, _, var in scheduling.ACCOUNT_SETTINGS}
    asked = set(scheduling.slurm_account_settings(cfg, env=env))
    assert {"slurm_partition", "slurm_account", "qos"} <= asked
    for model in settings.selected_models(cfg):
        for rule in ("train", "evaluate", "pack"):
            asked |= set(scheduling.job_resources(cfg, rule, model))
    known = SNAKEMAKE_RESOURCES | plugin_resources()
    assert {"tasks_per_gpu", "cpus_per_task", "constraint", "gres", "gpu_model"} <= known
    assert unknown_resources(asked, known) == []


def test_installed_versions_meet_the_declared_floors() -> None:
    declared = declared_requirements()
    named = {canonicalize_name(Requirement(line).name) for line in declared}
    assert set(FLOORED) <= named, f"pyproject.toml declares no floor for {set(FLOORED) - named}"
    assert unmet_floors(declared) == []
    assert unmet_floors(["snakemake>=999"]) == [f"snakemake>=999 (installed {importlib.metadata.version('snakemake')})"]


def test_snakemake_floor_is_the_snakefile_min_version() -> None:
    """pyproject.toml may not admit a Snakemake that the Snakefile's min_version() refuses."""
    found = re.search(r"""min_version\(\s*["']([\d.]+)["']\s*\)""", (REPO / "Snakefile").read_text())
    assert found, "the Snakefile declares no min_version()"
    req = next(Requirement(line) for line in declared_requirements() if Requirement(line).name == "snakemake")
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert floors and min(floors) >= Version(found.group(1)), (str(req), found.group(1))
