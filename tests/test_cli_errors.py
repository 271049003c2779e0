"""One error model for every command: bad input is one line `tokshift COMMAND: error: ...` and the
ExitCode of its kind, a bug keeps its traceback and exits 1, and every --help lists its exit codes.

Each command is run in this process through `tokshift.cli.main` on real files (a missing file, a
file that is not YAML, a garbage checkpoint, ...); the commands are enumerated from the parser,
so a new one fails here until it has a bad input of its own.
"""

from __future__ import annotations

import argparse
import ast
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engine_helpers import REPO, cli_env
from tokshift.cli import build_parser, main
from tokshift.errors import BadInput, DataDamaged, ExitCode, NotRetryable, RetryLater, TokshiftError

PACKAGE = REPO / "tokshift"
PREDICTIONS_HEADER = "video_id,label,pred1,pred2,pred3,pred4,pred5,error\n"


def _commands() -> dict[str, argparse.ArgumentParser]:
    (group,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(group.choices)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _garbage(path: Path) -> Path:
    """A file with a checkpoint's name and no checkpoint inside."""
    return _write(path, b"\x00not a checkpoint\xff" * 64)


# command -> (argv after the command name, built in a temporary folder; expected code; text of the message)
BadCase = tuple[Callable[[Path], list[str]], ExitCode, str]
BAD_INPUTS: dict[str, BadCase] = {
    "zoo": (lambda t: ["--dataset", "k700"], ExitCode.BAD_INPUT, "--dataset 'k700': no zoo entries"),
    "download": (
        lambda t: ["--url", str(t / "nowhere.npz"), "--out", str(t / "w.npz")],
        ExitCode.BAD_INPUT,
        "nowhere.npz",
    ),
    "fetch-part": (
        lambda t: [
            "--list",
            str(_write(t / "train.txt", "# no URLs here\n")),
            "--part",
            "part_0",
            "--archives",
            str(t / "archives"),
            "--dest",
            str(t / "videos"),
            "--marker",
            str(t / "part_0.json"),
        ],
        ExitCode.BAD_INPUT,
        "holds no URLs",
    ),
    "fetch-replacement": (
        lambda t: [
            "--url",
            f"file://{t / 'missing.tar.gz'}",
            "--archive",
            str(t / "replacement.tar.gz"),
            "--root",
            str(t / "videos"),
            "--marker",
            str(t / "replacement.json"),
        ],
        ExitCode.BAD_INPUT,
        "missing.tar.gz",
    ),
    "demo": (lambda t: ["--out", str(t / "demo"), "--size", "4"], ExitCode.BAD_INPUT, "size >= 8"),
    "index": (
        lambda t: ["--config", str(_write(t / "config.yaml", "datasets: [\n")), "--split", "train", "--out", "i.csv"],
        ExitCode.BAD_INPUT,
        "is not a YAML file",
    ),
    "pack": (
        lambda t: ["--index", str(_write(t / "index.csv", "a,b\n1,2\n")), "--shard", "0", "--out", str(t / "s.lmdb")],
        ExitCode.BAD_INPUT,
        "not a tokshift index",
    ),
    "summarize": (
        lambda t: ["--index", str(_write(t / "index.csv", "a,b\n"))],
        ExitCode.BAD_INPUT,
        "give --shards-dir or --shards",
    ),
    "train": (
        lambda t: ["--model", "no_such_model", "--train-shards", str(t / "t.lmdb"), "--out-dir", str(t / "run")],
        ExitCode.BAD_INPUT,
        "unknown zoo model 'no_such_model'",
    ),
    "evaluate": (
        lambda t: [
            "--checkpoint",
            str(_garbage(t / "model.pt")),
            "--shards",
            str(t / "missing.lmdb"),
            "--out-dir",
            str(t / "eval"),
        ],
        ExitCode.BAD_INPUT,
        "missing.lmdb does not exist",
    ),
    "predict": (
        lambda t: [str(t / "clip.mp4"), "--checkpoint", str(_garbage(t / "model.pt"))],
        ExitCode.BAD_INPUT,
        "model.pt",
    ),
    "import-original": (
        lambda t: [str(_garbage(t / "best.pth")), "--model", "demo_vit", "--out", str(t / "model.pt")],
        ExitCode.BAD_INPUT,
        "best.pth",
    ),
    "export": (
        lambda t: [str(_garbage(t / "run" / "model.pt")), "--out-dir", str(t / "run")],
        ExitCode.BAD_INPUT,
        "contains the input",
    ),
    "collect": (
        lambda t: [
            "--dataset",
            "demo",
            "--metrics",
            str(t / "metrics.json"),
            "--train-summaries",
            str(t / "train_summary.json"),
            "--csv",
            str(t / "zoo.csv"),
            "--md",
            str(t / "zoo.md"),
            "--plot",
            str(t / "zoo.png"),
        ],
        ExitCode.BAD_INPUT,
        "metrics.json",
    ),
    "explain": (
        lambda t: ["--checkpoint", str(t / "model.pt"), "--pick-from", str(t / "predictions.csv")],
        ExitCode.BAD_INPUT,
        "give the shards too (--shards)",
    ),
    "per-class": (
        lambda t: [
            "--predictions",
            str(_write(t / "predictions.csv", "video,top1\nv,a\n")),
            "--csv",
            str(t / "pc.csv"),
            "--plot",
            str(t / "pc.png"),
        ],
        ExitCode.BAD_INPUT,
        "is it a predictions.csv",
    ),
    "provenance": (
        lambda t: [str(_write(t / "metrics.json", '{"top1": 50.0}'))],
        ExitCode.BAD_INPUT,
        "records no provenance",
    ),
    "env": (
        lambda t: ["--lock", str(_write(t / "lock.txt", "# nothing pinned\n"))],
        ExitCode.BAD_INPUT,
        "no name==version",
    ),
    "preflight-probe": (
        lambda t: ["--model", "k400_huge", "--step", "train", "--out", str(t / "probe.json")],
        ExitCode.BAD_INPUT,
        "--model k400_huge",
    ),
    "preflight-report": (
        lambda t: ["--dataset", "demo", "--jobs", "{not json", "--json", str(t / "p.json"), "--md", str(t / "p.md")],
        ExitCode.BAD_INPUT,
        "--jobs is not JSON",
    ),
    "curves": (
        lambda t: ["--metrics", str(_write(t / "run" / "metrics.jsonl", "")), "--out-dir", str(t / "curves")],
        ExitCode.BAD_INPUT,
        "holds no step or epoch records",
    ),
}


@pytest.fixture(autouse=True)
def _own_log_handlers() -> Iterator[None]:
    """A command sets up logging on the streams of this test (captured): leave no handler behind."""
    loggers = [logging.getLogger(), logging.getLogger("tokshift")]
    saved = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    yield
    for lg, handlers, level in saved:
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)


def test_every_command_has_a_bad_input_case() -> None:
    assert set(BAD_INPUTS) == set(_commands())


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_the_code_of_its_kind(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args, code, text = BAD_INPUTS[command]
    monkeypatch.chdir(tmp_path)
    assert main([command, *args(tmp_path)]) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"tokshift {command}: error: "), err
    assert text in errors[0], err
    assert "Traceback" not in err


def test_a_missing_file_the_command_opens_is_bad_input_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predictions = _write(tmp_path / "predictions.csv", PREDICTIONS_HEADER + "v1,a,a,b,c,d,e,\n")
    argv = ["--predictions", str(predictions), "--classes", str(tmp_path / "classes.txt")]
    argv += ["--csv", str(tmp_path / "pc.csv"), "--plot", str(tmp_path / "pc.png")]
    assert main(["per-class", *argv]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err == f"tokshift per-class: error: {tmp_path / 'classes.txt'}: no such file or folder; check the path"


@pytest.mark.parametrize(
    "content, text",
    [
        ("", "is empty (not even a header line)"),
        (PREDICTIONS_HEADER, "holds no evaluated video"),
        (PREDICTIONS_HEADER + "v1,a,a,b,c,d,e,video unreadable\n", "holds no evaluated video"),
    ],
)
def test_per_class_of_a_predictions_csv_without_videos_is_one_line_naming_it(
    content: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty file, a header alone or only failed videos: nothing to tabulate, said in one line, no table."""
    predictions = _write(tmp_path / "predictions.csv", content)
    argv = ["--predictions", str(predictions), "--csv", str(tmp_path / "pc.csv"), "--plot", str(tmp_path / "pc.png")]
    assert main(["per-class", *argv]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tokshift per-class: error: {predictions} ")
    assert text in err and "tokshift evaluate" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


BUG_RUN = """
import sys
import tokshift.data.sources as sources
from tokshift.cli import main


def build_index(spec, split, shards):
    raise {raised}


sources.build_index = build_index
sys.exit(main(["index", "--spec-json", '{{"kind": "csv"}}', "--split", "train", "--out", "index.csv"]))
"""


@pytest.mark.parametrize(
    "raised, code",
    [
        ('ValueError("boom: a bug, not the input")', ExitCode.BUG),
        ('sources.DatasetSpecError("boom: the dataset description is wrong")', ExitCode.BAD_INPUT),
    ],
)
def test_a_plain_exception_is_a_bug_with_its_traceback_not_bad_input(
    tmp_path: Path, raised: str, code: ExitCode
) -> None:
    """The same failure point raising a plain ValueError (a bug: numpy, pandas or our own code) and the
    project's bad-input error: only the second is a one-line message and exit 2."""
    script = textwrap.dedent(BUG_RUN).format(raised=raised)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=120
    )
    assert proc.returncode == code, proc.stderr
    if code == ExitCode.BUG:
        assert "Traceback (most recent call last)" in proc.stderr and "ValueError: boom" in proc.stderr
        assert "tokshift index: error:" not in proc.stderr
    else:
        assert proc.stderr.strip() == "tokshift index: error: boom: the dataset description is wrong"


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_each_help_lists_the_exit_codes_of_its_command(command: str) -> None:
    text = _commands()[command].format_help()
    table = text[text.index("exit codes:") :]
    listed = {int(line.split()[0]) for line in table.splitlines()[1:] if line[:6].strip().isdigit()}
    assert {ExitCode.OK, ExitCode.BUG, ExitCode.BAD_INPUT} <= listed <= set(ExitCode)
    for code in listed:
        assert f"{ExitCode(code).name}" in table and ExitCode(code).meaning.split()[0] in table


def test_the_help_of_long_runs_names_their_other_outcomes() -> None:
    commands = _commands()

    def listed(command: str) -> set[ExitCode]:
        table = commands[command].format_help().split("exit codes:")[1]
        return {c for c in ExitCode if f" {c.name} " in f" {table} "}

    assert listed("train") == set(ExitCode)
    assert listed("evaluate") == set(ExitCode)  # NOT_RETRYABLE: an unusable GPU, views that do not fit
    assert {ExitCode.DATA_DAMAGED, ExitCode.RETRY_LATER} <= listed("download")
    assert ExitCode.RETRY_LATER in listed("pack")  # a full disk
    top = build_parser().format_help()
    assert all(f"{int(c):<4}{c.name}" in top for c in ExitCode)


def test_the_kinds_carry_their_codes_and_stay_catchable_as_before() -> None:
    assert [k.exit_code for k in (BadInput, DataDamaged, NotRetryable, RetryLater)] == [2, 5, 3, 75]
    assert issubclass(BadInput, ValueError) and issubclass(RetryLater, RuntimeError)
    assert [c for c in ExitCode if c.rerun_repeats] == [
        ExitCode.BAD_INPUT,
        ExitCode.NOT_RETRYABLE,
        ExitCode.DATA_DAMAGED,
    ]


def _exception_classes() -> dict[str, tuple[str, list[str]]]:
    """name -> (module file, base names) of every class in the package whose bases name an error."""
    found: dict[str, tuple[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                found[node.name] = (str(path.relative_to(REPO)), bases)
    return found


def test_every_project_exception_has_a_kind() -> None:
    """An exception of the package outside the four kinds would leave `tokshift` as a traceback."""
    classes = _exception_classes()
    kinds = {"TokshiftError", "BadInput", "DataDamaged", "NotRetryable", "RetryLater"}

    def is_exception(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name in kinds or name.endswith(("Error", "Exception", "Exit")) and name not in classes:
            return True
        return name in classes and name not in seen and any(is_exception(b, seen | {name}) for b in classes[name][1])

    def has_kind(name: str) -> bool:
        return name in kinds or name in classes and any(has_kind(b) for b in classes[name][1])

    errors = {n: where for n, (where, _) in classes.items() if is_exception(n) and n not in kinds}
    assert "ShardCorruptError" in errors and "FolderBusy" in errors  # the walk sees the package's errors
    private = {n for n in errors if n.startswith("_")}  # never leave their module
    assert {n: where for n, where in errors.items() if n not in private and not has_kind(n)} == {}
    assert issubclass(TokshiftError, Exception)


def test_interrupt_exits_130_without_a_traceback(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        import tokshift.data.sources as sources
        from tokshift.cli import main

        def build_index(spec, split, shards):
            raise KeyboardInterrupt

        sources.build_index = build_index
        sys.exit(main(["index", "--spec-json", '{"kind": "csv"}', "--split", "train", "--out", "i.csv"]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=120
    )
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
