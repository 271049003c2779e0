"""`tokshift --attempts-log FILE COMMAND ...`: every attempt recorded, and no rerun of a failure that would repeat.

Real commands on real files, in this process: `index` (bad input when the config lacks the dataset),
`download` (damaged data on a checksum mismatch, RETRY_LATER when the server is down).
"""

from __future__ import annotations

import logging
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tokshift.data.sources as sources
from tokshift.attempts import fingerprint, last_outcome
from tokshift.cli import main
from tokshift.errors import ExitCode

START = re.compile(
    r"^=== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ tokshift (\S+) starts \(host \S+, pid \d+(, SLURM job \S+)?\): (.*)$"
)
END = re.compile(
    r"^=== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ tokshift (\S+) ends: exit (\d+) (\w+) (after [\d.]+ s|refused) "
    r"\[fingerprint ([0-9a-f]{16})\]$"
)


@pytest.fixture(autouse=True)
def _one_process_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Rank 0 of a run of one, and no logging handler left behind by the commands."""
    for var in ("RANK", "SLURM_PROCID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config.yaml whose dataset `d` lists two videos, one of them missing (a warning when indexed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.mp4").write_bytes(b"\0")
    (tmp_path / "train.csv").write_text("path,label\na.mp4,x\nb.mp4,y\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text("datasets:\n  d:\n    kind: csv\n    splits: {train: train.csv}\n", encoding="utf-8")
    return config


@pytest.fixture
def index_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The splits `build_index` really indexed: a refused attempt adds none."""
    runs: list[str] = []
    real = sources.build_index

    def counted(spec, split, shards):  # type: ignore[no-untyped-def]
        runs.append(split)
        return real(spec, split, shards)

    monkeypatch.setattr(sources, "build_index", counted)
    return runs


def _index(log: Path, config: Path, dataset: str) -> int:
    return main(
        [
            "--attempts-log",
            str(log),
            "index",
            "--config",
            str(config),
            "--dataset",
            dataset,
            "--split",
            "train",
            "--out",
            "idx/train.csv",
        ]
    )


def _attempts(log: Path) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if START.match(line):
            blocks.append([])
        blocks[-1].append(line)
    return blocks


def test_an_attempt_records_its_start_log_records_and_end(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh `tokshift` process
    log = tmp_path / "logs" / "index.attempts.log"
    assert _index(log, dataset, "d") == ExitCode.OK
    ((start, *records, end),) = _attempts(log)
    command, _, line = START.match(start).groups()
    assert command == "index" and "--attempts-log" not in line and str(log) not in line
    assert line == f"tokshift index --config {dataset} --dataset d --split train --out idx/train.csv"
    assert any(
        r.endswith("WARNING tokshift.data: 1 annotated videos are missing on disk; listed in idx/train.missing.csv")
        for r in records
    )
    assert any("INFO tokshift.data: indexed csv split train: 1 videos, 1 missing" in r for r in records)
    command, code, kind, _, digest = END.match(end).groups()
    assert (command, int(code), kind) == ("index", 0, "OK")
    argv = ["index", "--config", str(dataset), "--dataset", "d", "--split", "train", "--out", "idx/train.csv"]
    assert digest == fingerprint(argv)  # the state after the run: idx/train.csv exists now
    err = capsys.readouterr().err  # the records still reach the terminal, each once
    assert err.count("missing on disk") == 1 and err.count("indexed csv split train") == 1


def test_records_a_command_prints_itself_are_not_printed_twice(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine prints its records through a handler of its own (tagged with the rank)."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    own = logging.getLogger("tokshift")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[rank 0] %(message)s"))
    monkeypatch.setattr(own, "handlers", [handler])
    assert _index(tmp_path / "attempts.log", dataset, "d") == ExitCode.OK
    err = capsys.readouterr().err
    assert err.count("missing on disk") == 1 and "[rank 0] 1 annotated videos are missing on disk" in err
    assert "missing on disk" in (tmp_path / "attempts.log").read_text(encoding="utf-8")


def test_a_failure_that_would_repeat_is_not_run_again(
    dataset: Path, tmp_path: Path, index_runs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "attempts.log"
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT
    first = capsys.readouterr().err.strip()
    assert first == f"tokshift index: error: dataset 'e' is not in {dataset} (datasets: ['d'])"
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT
    refused = capsys.readouterr().err.strip()
    assert refused.startswith(f"tokshift index: error: not run again: the previous attempt recorded in {log} failed ")
    assert "with exit 2 (BAD_INPUT: dataset 'e' is not in" in refused
    assert f"change the input, or delete {log} to force a run" in refused
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT  # still the first failure's cause
    assert "(BAD_INPUT: dataset 'e' is not in" in capsys.readouterr().err
    ends = [END.match(block[-1]).groups() for block in _attempts(log)]
    assert [(int(code), kind, note) for _, code, kind, note, _ in ends] == [
        (2, "BAD_INPUT", ends[0][3]),
        (2, "BAD_INPUT", "refused"),
        (2, "BAD_INPUT", "refused"),
    ]
    assert index_runs == []  # the dataset check fails before indexing: nothing ran at all

    # A new command line is a new attempt.
    assert _index(log, dataset, "d") == ExitCode.OK and index_runs == ["train"]


def test_a_changed_input_file_runs_again(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "attempts.log"
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT and "not run again" in capsys.readouterr().err
    dataset.write_text(dataset.read_text(encoding="utf-8").replace("  d:", "  e:"), encoding="utf-8")
    assert _index(log, dataset, "e") == ExitCode.OK
    assert last_outcome(log).code == ExitCode.OK


def test_damaged_data_is_refused_until_the_file_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "weights.npz"
    source.write_bytes(b"weights" * 100)
    log = tmp_path / "download.attempts.log"
    argv = ["--attempts-log", str(log), "download", "--url", str(source), "--out", str(tmp_path / "w.npz")]
    argv += ["--sha256", "0" * 64, "--progress", "off"]
    assert main(argv) == ExitCode.DATA_DAMAGED and "sha256 mismatch" in capsys.readouterr().err
    assert main(argv) == ExitCode.DATA_DAMAGED
    assert "not run again" in capsys.readouterr().err and last_outcome(log).code == ExitCode.DATA_DAMAGED
    source.write_bytes(b"other weights" * 100)  # the URL is a local path on the command line: its file counts
    assert main(argv) == ExitCode.DATA_DAMAGED
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "not run again" not in err


def test_a_retry_later_failure_is_retried(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port where nothing listens: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "download.attempts.log"
    argv = ["--attempts-log", str(log), "download", "--url", f"http://127.0.0.1:{port}/w.npz"]
    argv += ["--out", str(tmp_path / "w.npz"), "--retries", "0", "--timeout", "5", "--progress", "off"]
    for _ in range(2):
        assert main(argv) == ExitCode.RETRY_LATER
        err = capsys.readouterr().err
        assert "giving up on" in err and "not run again" not in err
    notes = [END.match(block[-1]).group(3, 4) for block in _attempts(log)]
    assert [kind for kind, _ in notes] == ["RETRY_LATER", "RETRY_LATER"]
    assert all(note.startswith("after ") for _, note in notes)


def test_a_bug_is_recorded_with_its_traceback_and_retried(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(spec, split, shards):  # type: ignore[no-untyped-def]
        raise ValueError("boom: a bug")

    monkeypatch.setattr(sources, "build_index", broken)
    log = tmp_path / "attempts.log"
    for _ in range(2):  # a bug may be fixed by the next release: never refused
        with pytest.raises(ValueError, match="boom"):
            _index(log, dataset, "d")
    blocks = _attempts(log)
    assert len(blocks) == 2
    for block in blocks:
        text = "\n".join(block)
        assert "Traceback (most recent call last)" in text and "ValueError: boom: a bug" in text
        assert END.match(block[-1]).group(2, 3) == ("1", "BUG")


def test_only_rank_zero_writes_but_every_rank_is_refused(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "attempts.log"
    monkeypatch.setenv("RANK", "1")
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT
    assert not log.exists()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT
    written = log.read_text(encoding="utf-8")
    monkeypatch.setenv("SLURM_PROCID", "1")  # rank 1 of srun without torchrun
    monkeypatch.delenv("RANK")
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT  # refused from the file rank 0 wrote
    assert log.read_text(encoding="utf-8") == written


def test_an_attempt_without_an_end_line_does_not_block_the_next(dataset: Path, tmp_path: Path) -> None:
    """A killed attempt (SIGKILL, node failure) leaves only its start line: its outcome is unknown."""
    log = tmp_path / "attempts.log"
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("=== 2030-01-01T00:00:00Z tokshift index starts (host h, pid 1): tokshift index\n")
    assert last_outcome(log) is None
    assert _index(log, dataset, "e") == ExitCode.BAD_INPUT
    assert END.match(_attempts(log)[-1][-1]).group(4).startswith("after ")  # it ran


def test_the_fingerprint_follows_the_files_the_command_line_names(tmp_path: Path) -> None:
    shard = tmp_path / "train.lmdb"
    shard.write_bytes(b"x")
    folder = tmp_path / "out"
    folder.mkdir()
    argv = ["train", "--train-shards", str(shard), "--out-dir", str(folder), "--metrics", f"a={shard}"]
    before = fingerprint(argv)
    (folder / "model.pt").write_bytes(b"new file")  # an output folder changes with every run
    assert fingerprint(argv) == before
    shard.write_bytes(b"xy")
    assert fingerprint(argv) != before
    assert fingerprint([*argv, "--seed", "1"]) != fingerprint(argv)
