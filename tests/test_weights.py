"""Downloads against a real HTTP server on 127.0.0.1 (no external network)."""

from __future__ import annotations

import argparse
import ast
import hashlib
import http.server
import io
import logging
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tokshift.cli import main
from tokshift.download import (
    ChecksumMismatch,
    DownloadError,
    download,
    part_path,
    read_sha256_record,
)
from tokshift.errors import ExitCode
from tokshift.fetch import commands as fetch_commands
from tokshift.fileio import sha256_file


@dataclass
class ServerState:
    """What the test server serves and what it saw."""

    data: bytes
    mode: str = "range"  # range | ignore-range | drop-once | 404 | 503-once
    requests: list[dict] = field(default_factory=list)
    dropped: bool = False
    failed_once: bool = False


def _make_handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str], send: int | None = None) -> None:
            """Record the request first (the client may check before this thread returns), then answer."""
            sent = len(body) if send is None else send
            state.requests.append({"range": self.headers.get("Range"), "status": status, "sent": sent})
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[:sent])
            self.wfile.flush()
            if sent < len(body):  # drop the connection midway
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            data = state.data
            if state.mode == "404":
                return self._reply(404, b"", {})
            if state.mode == "503-once" and not state.failed_once:
                state.failed_once = True
                return self._reply(503, b"", {})
            rng = self.headers.get("Range")
            if rng and state.mode != "ignore-range":
                start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                if start >= len(data):
                    return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return self._reply(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            headers = {"Accept-Ranges": "none" if state.mode == "ignore-range" else "bytes"}
            if state.mode == "drop-once" and not state.dropped:
                state.dropped = True
                return self._reply(200, data, headers, send=len(data) // 2)
            return self._reply(200, data, headers)

    return Handler


@pytest.fixture
def npz_bytes() -> bytes:
    """A real ViT-style .npz of a few hundred KB."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(
        buf,
        **{
            "embedding/kernel": rng.standard_normal((16, 16, 3, 32)).astype(np.float32),
            "Transformer/encoder_norm/scale": rng.standard_normal(32).astype(np.float32),
            "cls": rng.standard_normal((1, 1, 32)).astype(np.float32),
            "blob": rng.standard_normal(60_000).astype(np.float32),
        },
    )
    return buf.getvalue()


@pytest.fixture
def server(npz_bytes: bytes) -> Iterator[tuple[str, ServerState]]:
    state = ServerState(data=npz_bytes)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/ViT-B_16.npz", state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_verifies_and_records(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "weights" / "ViT-B_16.npz"
    digest = download(url, dest, sha256=_sha(npz_bytes).upper(), progress=False)
    assert digest == _sha(npz_bytes)
    assert dest.read_bytes() == npz_bytes
    assert not part_path(dest).exists()
    assert (tmp_path / "weights" / "ViT-B_16.npz.sha256").read_text() == f"{digest}  ViT-B_16.npz\n"
    assert read_sha256_record(dest) == digest
    with np.load(dest) as z:
        assert z["embedding/kernel"].shape == (16, 16, 3, 32)
    assert [r["range"] for r in state.requests] == [None]


def test_resumes_partial_file_with_range(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "ViT-B_16.npz"
    have = 123_457
    part_path(dest).write_bytes(npz_bytes[:have])
    digest = download(url, dest, sha256=_sha(npz_bytes), progress=False)
    assert digest == _sha(npz_bytes)
    assert dest.read_bytes() == npz_bytes
    assert state.requests == [{"range": f"bytes={have}-", "status": 206, "sent": len(npz_bytes) - have}]


def test_complete_part_answered_416_is_accepted(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "ViT-B_16.npz"
    part_path(dest).write_bytes(npz_bytes)
    assert download(url, dest, progress=False) == _sha(npz_bytes)
    assert dest.read_bytes() == npz_bytes
    assert [r["status"] for r in state.requests] == [416]


def test_oversized_part_restarts_from_zero(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "ViT-B_16.npz"
    part_path(dest).write_bytes(npz_bytes + b"garbage")
    assert download(url, dest, progress=False, backoff=0) == _sha(npz_bytes)
    assert dest.read_bytes() == npz_bytes
    assert [r["status"] for r in state.requests] == [416, 200]


def test_server_ignoring_range_restarts_cleanly(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, state = server
    state.mode = "ignore-range"
    dest = tmp_path / "ViT-B_16.npz"
    part_path(dest).write_bytes(b"X" * 50_000)  # stale bytes that must not survive
    digest = download(url, dest, sha256=_sha(npz_bytes), progress=False)
    assert digest == _sha(npz_bytes)
    assert dest.read_bytes() == npz_bytes
    assert state.requests[0]["range"] == "bytes=50000-"
    assert state.requests[0]["status"] == 200


def test_sha256_mismatch_leaves_nothing(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, _ = server
    dest = tmp_path / "ViT-B_16.npz"
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as info:
        download(url, dest, sha256=wrong, progress=False, config_key="weights.ViT-B_16.sha256")
    msg = str(info.value)
    assert wrong in msg and _sha(npz_bytes) in msg
    assert f"set weights.ViT-B_16.sha256 in config.yaml to {_sha(npz_bytes)}" in msg
    # Without the setting that holds the hash, no setting is named (none is guessed from the file name).
    with pytest.raises(ChecksumMismatch) as info:
        download(url, dest, sha256=wrong, progress=False)
    assert "weights." not in str(info.value) and f"expect {_sha(npz_bytes)} instead" in str(info.value)
    assert not dest.exists()
    assert not part_path(dest).exists()
    assert not (tmp_path / "ViT-B_16.npz.sha256").exists()


def test_retry_after_dropped_connection(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, state = server
    state.mode = "drop-once"
    dest = tmp_path / "ViT-B_16.npz"
    digest = download(url, dest, sha256=_sha(npz_bytes), retries=2, backoff=0, progress=False)
    assert digest == _sha(npz_bytes)
    assert dest.read_bytes() == npz_bytes
    assert len(state.requests) == 2
    half = len(npz_bytes) // 2
    # the second request resumes from what the first one delivered
    assert state.requests[1]["range"] == f"bytes={half}-"
    assert state.requests[1]["sent"] == len(npz_bytes) - half


def test_retry_after_server_error(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, state = server
    state.mode = "503-once"
    dest = tmp_path / "ViT-B_16.npz"
    assert download(url, dest, retries=1, backoff=0, progress=False) == _sha(npz_bytes)
    assert [r["status"] for r in state.requests] == [503, 200]


def test_gives_up_after_retries_and_keeps_part(server, npz_bytes: bytes, tmp_path: Path) -> None:
    url, state = server
    state.mode = "drop-once"
    dest = tmp_path / "ViT-B_16.npz"
    with pytest.raises(DownloadError, match="giving up .* after 1 attempts"):
        download(url, dest, retries=0, backoff=0, progress=False)
    assert not dest.exists()
    assert part_path(dest).stat().st_size == len(npz_bytes) // 2


def test_404_names_url_and_what_to_do(server, tmp_path: Path) -> None:
    url, state = server
    state.mode = "404"
    dest = tmp_path / "ViT-B_16.npz"
    with pytest.raises(DownloadError) as info:
        download(url, dest, retries=5, backoff=10, progress=False, url_key="weights.ViT-B_16.url")
    msg = str(info.value)
    assert url in msg and "404" in msg and "Check weights.ViT-B_16.url in config.yaml" in msg
    assert len(state.requests) == 1  # no retries on 404
    assert not dest.exists()
    # A URL no setting holds: no setting is named, the file's place is.
    with pytest.raises(DownloadError) as info:
        download(url, dest, retries=5, backoff=10, progress=False)
    assert "config.yaml" not in str(
        info.value
    ) and f"Check the URL, or download the file yourself and put it at {dest}" in str(info.value)


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/x.npz"
    with pytest.raises(DownloadError, match="after 2 attempts"):
        download(url, tmp_path / "x.npz", retries=1, backoff=0, timeout=5, progress=False)


def test_file_url_and_local_path(npz_bytes: bytes, tmp_path: Path) -> None:
    src = tmp_path / "mirror" / "ViT-L_16.npz"
    src.parent.mkdir()
    src.write_bytes(npz_bytes)
    a = download(src.as_uri(), tmp_path / "a" / "ViT-L_16.npz", sha256=_sha(npz_bytes), progress=False)
    b = download(str(src), tmp_path / "b" / "ViT-L_16.npz", progress=False)
    assert a == b == _sha(npz_bytes)
    assert (tmp_path / "a" / "ViT-L_16.npz").read_bytes() == npz_bytes
    assert read_sha256_record(tmp_path / "b" / "ViT-L_16.npz") == a


def test_missing_local_file_is_clear(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DownloadError, match="nope.npz.*does not exist"):
        download(missing.as_uri(), tmp_path / "out.npz", progress=False)


def test_existing_dest_is_verified_not_refetched(npz_bytes: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "ViT-B_16.npz"
    dest.write_bytes(npz_bytes)
    assert download("http://127.0.0.1:9/never-contacted", dest, sha256=_sha(npz_bytes), progress=False) == _sha(
        npz_bytes
    )
    with pytest.raises(ChecksumMismatch, match="already exists"):
        download("http://127.0.0.1:9/never-contacted", dest, sha256="f" * 64, progress=False)
    assert dest.read_bytes() == npz_bytes  # a hand-placed file is never deleted


def test_malformed_sha256_rejected_before_download(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="64 hexadecimal"):
        download("http://127.0.0.1:9/x", tmp_path / "x.npz", sha256="abc123", progress=False)


def test_cli_download(server, npz_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = server
    parser = argparse.ArgumentParser()
    fetch_commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "ViT-B_16.npz"
    args = parser.parse_args(["download", "--url", url, "--out", str(out), "--sha256", _sha(npz_bytes)])
    assert args.func(args) == 0
    assert _sha(npz_bytes) in capsys.readouterr().out
    assert sha256_file(out) == _sha(npz_bytes)
    # '' is no expected checksum (a rule always passes the option): the digest is recorded instead.
    unchecked = tmp_path / "z.npz"
    args = parser.parse_args(["download", "--url", url, "--out", str(unchecked), "--sha256", "", "--progress", "off"])
    assert args.sha256 is None and args.func(args) == 0
    assert read_sha256_record(unchecked) == _sha(npz_bytes)
    mismatch = ["download", "--url", url, "--out", str(tmp_path / "y.npz"), "--sha256", "1" * 64]
    assert main(mismatch) == ExitCode.DATA_DAMAGED
    assert "tokshift download: error: sha256 mismatch" in capsys.readouterr().err


def test_the_hash_hint_names_the_setting_that_holds_it_or_the_record(
    npz_bytes: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first download with no sha256 logs where its hash went; the hint to pin it names the real
    setting (weights.<backbone>.sha256, released.<model>.sha256), never one made up from the file name
    (a CVDF part archive has no sha256 setting at all)."""
    src = tmp_path / "mirror" / "part_0.tar.gz"
    src.parent.mkdir()
    src.write_bytes(npz_bytes)
    caplog.set_level(logging.INFO, logger="tokshift.download")
    part = tmp_path / "archives" / "part_0.tar.gz"
    download(str(src), part, progress=False)
    record = tmp_path / "archives" / "part_0.tar.gz.sha256"
    assert f"no config setting holds one); its sha256 {_sha(npz_bytes)} is recorded in {record}" in caplog.text
    assert "weights." not in caplog.text and "pin" not in caplog.text
    caplog.clear()
    download(str(src), tmp_path / "released" / "demo_vit.pth", progress=False, config_key="released.demo_vit.sha256")
    assert f"(released.demo_vit.sha256 is empty); recorded {_sha(npz_bytes)}" in caplog.text
    assert "set released.demo_vit.sha256 to it" in caplog.text


def test_every_download_rule_names_the_settings_of_its_url_and_hash() -> None:
    """Each rule that downloads passes the setting that holds its URL, and (weights, released
    checkpoints: the ones with a sha256 setting) the one that holds its hash."""
    from tests.test_rule_flags import workflow_rules

    downloads = {r.name: r for r in workflow_rules() if r.shell and re.search(r"tokshift (download|fetch-)", r.shell)}
    assert {"download_weights", "fetch_released", "cvdf_part_list", "fetch_part"} <= set(downloads)
    keys = {}
    for name, rule in downloads.items():
        assert "--url-key {params." in rule.shell, name
        keys[name] = ast.unparse(rule.params[re.search(r"--url-key \{params\.(\w+)", rule.shell).group(1)])
    assert "weights.{wildcards.backbone}.url" in keys["download_weights"]
    assert "released.{wildcards.model}.source" in keys["fetch_released"]
    assert all(
        "datasets.{DATASET}.cvdf." in keys[n] for n in downloads if n not in ("download_weights", "fetch_released")
    )
    for name, key in (
        ("download_weights", "weights.{wildcards.backbone}.sha256"),
        ("fetch_released", "released.{wildcards.model}.sha256"),
    ):
        flag = re.search(r"--config-key \{params\.(\w+)", downloads[name].shell)
        assert flag and key in ast.unparse(downloads[name].params[flag.group(1)]), name
