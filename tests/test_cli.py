"""The `tokshift` command line: version, help text and defaults of every option, fast help,
range checks that name the option, and directories given where a file belongs."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import tokshift
from tests.engine_helpers import REPO, cli_env
from tokshift.argtypes import HelpFormatter, options_from_args
from tokshift.cli import COMMAND_MODULES, build_parser, main
from tokshift.settings import default, load_schema

FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(group.choices)


def test_version_is_the_running_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    # The running package's version (a workflow job may run a checkout other than pip's install).
    assert capsys.readouterr().out.strip() == f"tokshift {tokshift.__version__}"
    assert tokshift.__version__ == importlib.metadata.version("tokshift")  # this checkout is the one installed


def test_each_stage_registers_its_own_commands() -> None:
    assert COMMAND_MODULES == tuple(
        f"tokshift.{stage}.commands"
        for stage in ("zoo", "fetch", "data", "engine", "results", "viz", "provenance", "preflight")
    )
    commands = _subparsers(build_parser())
    assert set(commands) == {
        "zoo",
        "download",
        "fetch-part",
        "fetch-replacement",
        "demo",
        "index",
        "pack",
        "summarize",
        "train",
        "evaluate",
        "predict",
        "import-original",
        "export",
        "collect",
        "explain",
        "per-class",
        "curves",
        "provenance",
        "env",
        "preflight-probe",
        "preflight-report",
    }


def test_every_option_has_help_and_shows_its_default() -> None:
    for name, sub in _subparsers(build_parser()).items():
        assert isinstance(sub.formatter_class, type) and issubclass(sub.formatter_class, HelpFormatter), name
        text = " ".join(sub.format_help().split())  # undo line wrapping
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"tokshift {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and len(action.help) > 5, f"{label} has no help text"
            if action.required or isinstance(action, FLAGS):
                continue
            if action.default in (None, []):
                # nothing to print: the help says what happens without the option
                assert "default" in action.help, f"{label}: help must say what happens by default"
            else:
                assert f"(default: {action.default})" in text, f"{label}: default {action.default!r} not shown"


# Every option whose dest names a config setting (or that mirrors one under another name), and the
# setting whose schema default and allowed values it takes; None: the same name, another meaning.
MIRRORS: dict[tuple[str, str], str | None] = {
    ("zoo", "dataset"): None,  # a zoo dataset (k400, demo), not the config's dataset entry
    ("download", "url"): None,  # any file; the workflow passes the setting's value
    ("download", "sha256"): None,
    ("download", "retries"): None,  # the downloader's own: weights and checkpoints have no retry settings
    ("download", "backoff"): None,
    ("download", "timeout"): None,  # a socket timeout, not frames.timeout
    ("fetch-part", "retries"): "cvdf.retries",
    ("fetch-part", "backoff"): "cvdf.backoff",
    ("fetch-part", "delete_archive"): "cvdf.delete_archives",
    ("fetch-part", "timeout"): None,
    ("fetch-replacement", "retries"): "cvdf.retries",
    ("fetch-replacement", "backoff"): "cvdf.backoff",
    ("fetch-replacement", "delete_archive"): "cvdf.delete_archives",
    ("fetch-replacement", "timeout"): None,
    ("fetch-replacement", "url"): None,
    ("fetch-replacement", "root"): None,
    ("demo", "seed"): None,  # the rendered clips' seed
    ("demo", "frames"): None,  # frames per clip
    ("demo", "workers"): None,  # ffmpeg encoders
    ("index", "dataset"): None,  # read from --config, whose `dataset` key it defaults to
    ("index", "shards"): None,  # read from --config when given, so no default of its own
    ("pack", "short_side"): "frames.short_side",
    ("pack", "jpeg_quality"): "frames.jpeg_quality",
    ("pack", "timeout"): "frames.timeout",
    ("pack", "workers"): None,  # ffmpeg processes
    ("summarize", "shards"): None,
    ("train", "init_from"): "train.init_from",
    ("train", "seed"): "train.seed",
    ("train", "workers"): "train.workers",
    ("train", "amp"): "train.amp",
    ("train", "grad_checkpointing"): "train.grad_checkpointing",
    ("train", "device"): "train.device",
    ("evaluate", "device"): "evaluate.device",
    ("predict", "device"): "train.device",
    ("explain", "device"): None,  # a figure of one video: the CPU unless asked
    ("train", "oom_fallback"): "train.oom_fallback",
    ("train", "compile"): "train.compile",
    ("train", "checkpoint_minutes"): "train.checkpoint_minutes",
    ("train", "loggers"): "train.loggers",
    ("train", "stage_to"): "frames.stage_to",
    # The preflight's probe takes what the job it measures takes (rules/preflight.smk passes them).
    ("preflight-probe", "shards"): None,
    ("preflight-probe", "stage_to"): None,
    ("preflight-probe", "device"): "train.device",
    ("preflight-probe", "amp"): "train.amp",
    ("preflight-probe", "workers"): "train.workers",
    ("preflight-report", "dataset"): None,
    ("evaluate", "clips"): "evaluate.clips",
    ("evaluate", "crops"): "evaluate.crops",
    ("evaluate", "resize"): "evaluate.resize",
    ("evaluate", "view_batch"): "evaluate.view_batch",
    ("evaluate", "workers"): "evaluate.workers",
    ("evaluate", "max_failed_share"): "evaluate.max_failed_share",
    ("evaluate", "stage_to"): "frames.stage_to",
    ("evaluate", "amp"): "evaluate.amp",  # auto as training; off (fp32) when faithful
    ("evaluate", "faithful"): "evaluate.faithful",
    ("import-original", "class_order"): None,  # released.<model>.class_order, one per checkpoint
    ("evaluate", "shards"): None,  # shard files, not frames.shards
    ("evaluate", "classes"): None,  # a class-name file
    ("predict", "clips"): "evaluate.clips",
    ("predict", "crops"): "evaluate.crops",
    ("predict", "resize"): "evaluate.resize",
    ("predict", "view_batch"): "evaluate.view_batch",
    ("predict", "amp"): "train.amp",
    ("predict", "classes"): None,
    ("import-original", "source"): None,
    ("import-original", "classes"): None,
    ("collect", "dataset"): None,  # the table's title
    ("collect", "released"): None,  # model.pt files
    ("collect", "checkpoints"): None,
    ("explain", "resize"): "evaluate.resize",
    ("explain", "classes"): None,
    ("explain", "shards"): None,
    ("per-class", "classes"): None,
}


def _schema_names() -> set[str]:
    """Every setting name the config schema declares, at any depth."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            names.update(node.get("properties") or {})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_schema())
    return names


def _setting(key: str) -> dict:
    """The schema node of a setting; `cvdf.X` is a dataset entry's, declared once in a definition."""
    head, _, rest = key.partition(".")
    if head == "cvdf":
        return load_schema()["$defs"]["cvdf"]["properties"][rest]
    node = load_schema()["properties"][head]["properties"][rest]
    return {"default": default(head, rest), **node}


def test_settings_reach_enums_and_the_shared_cvdf_block() -> None:
    from tokshift.settings import choices, definition_default

    assert choices("evaluate", "resize") == ["linear", "bicubic"] and choices("evaluate", "crops") == [1, 3]
    assert definition_default("cvdf", "retries") == _setting("cvdf.retries")["default"]
    with pytest.raises(KeyError, match="evaluate.nope"):
        choices("evaluate", "nope")


def test_options_mirroring_config_settings_take_the_schema_default_and_choices() -> None:
    names = _schema_names()
    seen = set()
    for command, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            key = (command, action.dest)
            if action.dest in names:
                assert key in MIRRORS, f"tokshift {command} {action.option_strings}: names a setting; add it to MIRRORS"
            if key not in MIRRORS:
                continue
            seen.add(key)
            if MIRRORS[key] is None:
                continue
            setting = _setting(MIRRORS[key])
            assert action.default == setting["default"], f"{key}: default differs from {MIRRORS[key]}"
            if "enum" in setting:
                assert list(action.choices) == setting["enum"], f"{key}: choices differ from {MIRRORS[key]}"
    assert seen == set(MIRRORS), f"MIRRORS names options that do not exist: {sorted(set(MIRRORS) - seen)}"
    assert _setting("train.workers")["default"] == "auto" and _setting("evaluate.resize")["default"] == "linear"


def _parse(command: str) -> argparse.Namespace:
    return build_parser().parse_args(shlex.split(command))


def test_options_a_rule_always_passes_take_values(tmp_path: Path) -> None:
    """'' is "none", booleans are spelled, --workers takes a number or auto, one --progress switch."""
    start = tmp_path / "start.pt"
    args = _parse(TRAIN + "--init-from '' --stage-to '' --compile false --workers auto --progress off --override")
    assert (args.init_from, args.stage_to, args.compile, args.workers, args.override) == (None, None, False, "auto", [])
    args = _parse(TRAIN + f"--init-from {start} --compile --workers 3 --no-fused-attn")
    assert (args.init_from, args.compile, args.workers, args.fused_attn) == (start, True, 3, False)
    assert _parse(TRAIN + "--compile true").compile is True
    assert _parse(EVALUATE + "--workers 0").workers == 0
    fetch = "fetch-part --list l --part p --archives a --dest d --marker m "
    assert _parse(fetch).delete_archive is False
    assert _parse(fetch + "--delete-archive").delete_archive is True
    assert _parse(fetch + "--delete-archive false --progress off").delete_archive is False
    assert _parse("download --url u --out w.npz --sha256 ''").sha256 is None
    long_work = {"demo", "pack", "download", "fetch-part", "fetch-replacement", "train", "evaluate"}
    for name, sub in _subparsers(build_parser()).items():
        options = {o for a in sub._actions for o in a.option_strings}
        assert not options & {"--quiet", "--no-progress", "--pretrained"}, name
        if name in long_work:
            (progress,) = [a for a in sub._actions if a.dest == "progress"]
            assert list(progress.choices) == ["auto", "bar", "off"] and progress.default == "auto", name


@dataclasses.dataclass
class Job:
    name: str
    size: int
    out: Path
    note: str = "none"


def test_options_from_args_fills_fields_by_name_and_applies_conversions() -> None:
    args = argparse.Namespace(name="a", size=3, out=Path("o"), command="x", func=print)
    assert options_from_args(Job, args) == Job("a", 3, Path("o"))  # other attributes are not fields
    assert options_from_args(Job, args, size=4, note="n") == Job("a", 4, Path("o"), "n")


def test_options_from_args_fails_on_a_field_it_cannot_fill_or_a_stray_conversion() -> None:
    with pytest.raises(TypeError, match=r"Job\.out has no option"):
        options_from_args(Job, argparse.Namespace(name="a", size=3))
    with pytest.raises(TypeError, match="Job has no field sizes"):
        options_from_args(Job, argparse.Namespace(name="a", size=3, out=Path("o")), sizes=4)


@pytest.mark.parametrize(
    ("command", "module", "cls", "converted", "engine_only"),
    [
        (
            "train",
            "tokshift.engine.train",
            "TrainOptions",
            {"overrides", "progress"},
            {"val_view_batch", "keep_resume"},
        ),
        ("evaluate", "tokshift.engine.evaluate", "EvalOptions", {"classes", "progress"}, set()),
        ("predict", "tokshift.engine.predict", "PredictOptions", {"classes"}, {"timeout"}),
    ],
)
def test_every_option_field_has_its_option(
    command: str, module: str, cls: str, converted: set[str], engine_only: set[str]
) -> None:
    """A field added to an options class gets an option (or a conversion), else this names it."""
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    dests = {a.dest for a in _subparsers(build_parser())[command]._actions}
    assert fields - dests - converted == engine_only


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from tokshift.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "for sub in parser._subparsers._group_actions[0].choices.values(): sub.format_help()\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ['torch', 'pandas', 'matplotlib', 'cv2', 'lmdb', 'numpy']\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "collect" in res.stdout and "predict" in res.stdout
    assert res.stderr.strip().splitlines()[-1] == "[]"


EVALUATE = "evaluate --checkpoint m.pt --shards s --out-dir o "
PREDICT = "predict v.mp4 --checkpoint m.pt "
PACK = "pack --index i.csv --shard 0 --out s.lmdb "
TRAIN = "train --model m --train-shards s --out-dir o "


@pytest.mark.parametrize(
    ("command", "option", "reason"),
    [
        (EVALUATE + "--view-batch 0", "--view-batch", ">= 1"),
        (EVALUATE + "--workers -1", "--workers", ">= 0"),
        (PREDICT + "--clips 0", "--clips", ">= 1"),
        (PREDICT + "--top zero", "--top", "expected an integer"),
        (PREDICT + "--crops 2", "--crops", "invalid choice"),
        ("index --spec-json {} --split val --out i.csv --shards 0", "--shards", ">= 1"),
        ("pack --index i.csv --shard -1 --out s.lmdb", "--shard", ">= 0"),
        (PACK + "--workers -1", "--workers", ">= 1"),
        (PACK + "--jpeg-quality 101", "--jpeg-quality", "between 1 and 100"),
        (PACK + "--timeout 0", "--timeout", "> 0"),
        (TRAIN + "--checkpoint-minutes nan", "--checkpoint-minutes", ">= 0"),
        (TRAIN + "--seed -3", "--seed", ">= 0"),
        (TRAIN + "--workers many", "--workers", "expected an integer"),
        (TRAIN + "--compile maybe", "--compile", "expected true or false"),
        (TRAIN + "--progress lines", "--progress", "invalid choice"),
        (
            "fetch-part --list l --part p --archives a --dest d --marker m --delete-archive 2",
            "--delete-archive",
            "true or false",
        ),
        ("demo --out d --fps 0", "--fps", ">= 1"),
        ("download --url u --out w.npz --retries -1", "--retries", ">= 0"),
    ],
)
def test_out_of_range_numbers_are_usage_errors_naming_the_option(
    command: str, option: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = command.split()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"tokshift {argv[0]}: error: argument {option}" in err and reason in err, err


def test_a_directory_where_a_file_belongs_is_named_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for command, option in (
        (EVALUATE.replace("m.pt", "{}"), "--checkpoint"),
        (PREDICT.replace("m.pt", "{}"), "--checkpoint"),
        (TRAIN + "--init-from {}", "--init-from"),
        (PACK.replace("i.csv", "{}"), "--index"),
        ("index --config {} --split val --out i.csv", "--config"),
        ("collect --dataset d --metrics {} --train-summaries t --csv c --md m --plot p", "--metrics"),
    ):
        argv = command.format(folder).split()
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {option}: {folder} is a directory, not a file" in err, err


def test_cli_runs_as_a_program(tmp_path: Path) -> None:
    """The installed entry point's module: exit 2 and the option named, nothing else happens."""
    res = subprocess.run(
        [sys.executable, "-m", "tokshift.cli", "zoo", "--format", "csv", "--dataset", "demo"],
        env=cli_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 0 and res.stdout.splitlines()[0].startswith("name,arch,")
    bad = subprocess.run(
        [sys.executable, "-m", "tokshift.cli", "predict", "v.mp4", "--checkpoint", "m.pt", "--view-batch", "0"],
        env=cli_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "argument --view-batch: must be >= 1, got 0" in bad.stderr
    assert bad.stdout == ""
