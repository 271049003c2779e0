"""The `tokshift` command line: version, help text and defaults of every option, fast help,
range checks that name the option, and directories given where a file belongs."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_helpers import REPO, cli_env
from tokshift.argtypes import HelpFormatter
from tokshift.cli import COMMAND_MODULES, build_parser, main
from tokshift.workflow.schema import default

FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(group.choices)


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tokshift {importlib.metadata.version('tokshift')}"


def test_each_stage_registers_its_own_commands() -> None:
    assert COMMAND_MODULES == tuple(
        f"tokshift.{stage}.commands" for stage in ("zoo", "weights", "fetch", "data", "engine", "results", "viz")
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
        "collect",
        "explain",
        "per-class",
        "curves",
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


def test_options_mirroring_config_settings_take_the_schema_default() -> None:
    commands = _subparsers(build_parser())

    def defaults(name: str) -> dict:
        return {a.dest: a.default for a in commands[name]._actions}

    pack = defaults("pack")
    assert pack["timeout"] == default("frames", "timeout") == 600
    assert pack["short_side"] == default("frames", "short_side")
    assert pack["jpeg_quality"] == default("frames", "jpeg_quality")
    for name in ("evaluate", "predict"):
        views = defaults(name)
        assert (views["clips"], views["crops"], views["view_batch"], views["resize"]) == (
            default("evaluate", "clips"),
            default("evaluate", "crops"),
            default("evaluate", "view_batch"),
            default("evaluate", "resize"),
        )
        assert views["resize"] == "linear"
    train = defaults("train")
    assert train["seed"] == default("train", "seed")
    assert train["amp"] == default("train", "amp")
    assert train["checkpoint_minutes"] == default("train", "checkpoint_minutes")


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
        (TRAIN + "--pretrained {}", "--pretrained"),
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
