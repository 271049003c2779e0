"""Resumable, verified HTTP downloads: the ViT checkpoints and the Kinetics-400 archives.

Why our own downloader: the ViT-L/16 ``.npz`` is over a gigabyte, a Kinetics-400 part
archive several, and cluster login nodes drop long transfers, so a download has to
*resume* where it stopped.
What the existing tools offer, and what they lack:

* Snakemake's ``ensure(..., sha256=...)`` checks an output only after the rule
  has finished; it neither downloads, resumes nor retries, and a mismatch is only
  reported after the full transfer.  It remains useful on top of this module.
* The Snakemake HTTP storage plugin fetches the whole file again on every
  failure (no ``Range`` requests) and has no notion of a pinned checksum that is
  recorded on first use.
* ``pooch`` verifies known hashes and retries, but every retry is a fresh full
  ``GET``: its HTTP downloader streams the body without a ``Range`` header, so an
  interrupted gigabyte starts from zero.  It would also be a new dependency.

So this module uses only the standard library (``urllib``) and adds exactly
that: ``Range`` resume from a ``.part`` file, servers that ignore ``Range``
(restart cleanly), ``416`` on an already complete part, retries with
exponential backoff on dropped connections and 5xx, immediate clear errors on
404/403, sha256 verification (or recording when no hash is configured), and an
atomic rename so ``dest`` never holds a partial or unverified file.  ``file://``
URLs and plain local paths are copied through the same verify-and-rename path so
an offline cluster can point at a pre-downloaded checkpoint.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from tokshift.errors import BadInput, DataDamaged, RetryLater, TokshiftError
from tokshift.fileio import atomic_write_text, refuse_output_over_input, sha256_file

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "tokshift-downloader/1.0"
# Statuses that will not change by asking again: fail at once with a clear message.
FATAL_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 451})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(TokshiftError, RuntimeError):
    """A download failed; the subclass says whether to fix a setting, the file, or wait and rerun."""


class DownloadRefused(DownloadError, BadInput):
    """The URL, the sha256 setting or a local source is wrong: asking again cannot help."""


class ChecksumMismatch(DownloadError, DataDamaged):
    """The downloaded bytes do not have the configured sha256."""


class DownloadIncomplete(DownloadError, RetryLater):
    """The connection kept failing through every retry; the ``.part`` file is kept for a rerun to resume."""


class _Retryable(Exception):
    """Internal: a transient failure worth another attempt."""


def sha256_record_path(dest: Path) -> Path:
    """Where the checksum of ``dest`` is recorded (``<dest>.sha256``)."""
    return dest.with_name(dest.name + ".sha256")


def write_sha256_record(dest: Path, hexdigest: str) -> Path:
    """Write ``<hex>  <filename>`` (``sha256sum -c`` format) next to ``dest``, atomically."""
    record = sha256_record_path(dest)
    atomic_write_text(record, f"{hexdigest}  {dest.name}\n")
    return record


def read_sha256_record(dest: Path) -> str | None:
    """The hex sha256 recorded next to ``dest``, or None when there is no record."""
    record = sha256_record_path(dest)
    if not record.exists():
        return None
    text = record.read_text().split()
    if not text or not _HEX64.match(text[0].lower()):
        raise DownloadRefused(f"{record} is not a sha256 record ('<64 hex digits>  <filename>'); delete it")
    return text[0].lower()


def normalise_sha256(sha256: str | None) -> str | None:
    """Validate a configured hash early, so a typo does not cost a gigabyte download."""
    if sha256 is None or str(sha256).strip() == "":
        return None
    value = str(sha256).strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    if not _HEX64.match(value):
        raise DownloadRefused(f"sha256 {sha256!r} is not 64 hexadecimal digits; fix or remove it")
    return value


def part_path(dest: Path) -> Path:
    """The partial-download file that a later call resumes from."""
    return dest.with_suffix(dest.suffix + ".part")


#: Retries after a dropped connection or a 5xx, the first delay between them (it doubles), and the
#: socket timeout: the defaults of every download, and of `tokshift download`'s options.
RETRIES = 5
BACKOFF_SECONDS = 1.0
TIMEOUT_SECONDS = 60.0


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    retries: int = RETRIES,
    timeout: float = TIMEOUT_SECONDS,
    progress: bool | None = True,
    *,
    config_key: str | None = None,
    backoff: float = BACKOFF_SECONDS,
    url_key: str | None = None,
) -> str:
    """Fetch ``url`` to ``dest`` resumably, verify it, and return its hex sha256.

    ``url`` may be ``http(s)://``, ``file://`` or a plain local path.  Bytes go to
    ``<dest>.part`` (resumed with ``Range`` on the next call or retry) and are
    renamed into place only after the sha256 matches ``sha256`` (when given).
    The digest is always recorded in ``<dest>.sha256``.  ``config_key`` is the config
    setting that holds the expected sha256 (``weights.<backbone>.sha256``,
    ``released.<model>.sha256``), named in checksum messages; ``url_key`` the one that holds
    ``url``, named when it is unreachable. Without them a message names no setting (the CVDF
    files have no sha256 setting: their hash is only recorded).
    ``backoff`` is the first retry delay in seconds (doubled each time, max 60).
    ``progress`` None shows the bar only when stderr is a terminal.
    """
    dest = Path(dest)
    expected = normalise_sha256(sha256)
    key = config_key or None
    if retries < 0:
        raise BadInput(f"retries must be >= 0, got {retries}")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("file", ""):  # a local source is never its own destination (nor the .part beside it)
        try:
            source: Path | None = _local_path(url)
        except DownloadRefused:
            source = None  # a file URL naming a host: reported when the copy starts
        refuse_output_over_input(dest, [source], name="--out")
        refuse_output_over_input(part_path(dest), [source], name="the partial file of --out")
    dest.parent.mkdir(parents=True, exist_ok=True)

    if dest.exists():
        return _accept_existing(dest, expected, key)

    part = part_path(dest)
    if scheme in ("http", "https"):
        _fetch_http(url, part, retries=retries, timeout=timeout, progress=progress, backoff=backoff, url_key=url_key)
    elif scheme in ("file", ""):
        _copy_local(_local_source(url, url_key), part, progress=progress)
    else:
        raise DownloadRefused(
            f"cannot download {url!r}: unsupported scheme {scheme!r}; use http(s)://, file:// or a local path"
        )

    actual = sha256_file(part)
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"sha256 mismatch for {url}: expected {expected} ({key or 'the sha256 given'}), got {actual}. "
            f"The partial file was deleted and nothing was written to {dest}. "
            f"If the file changed upstream on purpose, {_pin(key, actual)}; otherwise retry."
        )
    os.replace(part, dest)
    record = write_sha256_record(dest, actual)
    if expected is None:
        log.info("%s", _recorded(dest, actual, record, key))
    return actual


def _pin(key: str | None, actual: str) -> str:
    """What to change to expect `actual` from now on."""
    return f"set {key} in config.yaml to {actual}" if key else f"expect {actual} instead (--sha256)"


def _recorded(dest: Path, actual: str, record: Path, key: str | None) -> str:
    """The log line of a download no sha256 was given for: where its hash went, and where to pin it."""
    if key:
        return f"no sha256 configured for {dest} ({key} is empty); recorded {actual} in {record}: set {key} to it"
    return f"{dest} has no configured sha256 (no config setting holds one); its sha256 {actual} is recorded in {record}"


def _accept_existing(dest: Path, expected: str | None, key: str | None) -> str:
    """A file already at ``dest`` (e.g. put there by hand) is kept only if it verifies."""
    actual = sha256_file(dest)
    if expected is not None and actual != expected:
        raise ChecksumMismatch(
            f"{dest} already exists but its sha256 is {actual}, expected {expected} ({key or 'the sha256 given'}). "
            f"Delete {dest} to download it again, or {_pin(key, actual)} if this file is the right one."
        )
    write_sha256_record(dest, actual)
    log.info("%s already present (sha256 %s)", dest, actual)
    return actual


def _local_path(url: str) -> Path:
    """The file a file:// URL or a plain path names (not checked)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadRefused(f"file URL {url!r} names host {parsed.netloc!r}; use file:///absolute/path")
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(url).expanduser()


def _local_source(url: str, url_key: str | None) -> Path:
    src = _local_path(url)
    if not src.is_file():
        fix = f"fix {url_key} in config.yaml" if url_key else "check the path"
        raise DownloadRefused(
            f"local file {src} (from {url!r}) does not exist or is not a file; {fix} or copy the file there"
        )
    return src


def _copy_local(src: Path, part: Path, progress: bool | None) -> None:
    """Copy a local checkpoint into ``part`` (no resume: local copies are fast and reliable)."""
    total = src.stat().st_size
    with open(src, "rb") as fin, open(part, "wb") as fout, _bar(part, total, 0, progress) as bar:
        while chunk := fin.read(CHUNK_BYTES):
            fout.write(chunk)
            bar.update(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())


def _bar(part: Path, total: int | None, initial: int, progress: bool | None) -> tqdm:
    name = part.name[: -len(".part")] if part.name.endswith(".part") else part.name
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=None if progress is None else not progress,  # None: a bar on terminals only
        leave=False,
        # Into a log file (Snakemake redirects stderr) update rarely instead of ten times a second.
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )


def _fetch_http(
    url: str, part: Path, retries: int, timeout: float, progress: bool | None, backoff: float, url_key: str | None
) -> None:
    """Fill ``part`` with the full body of ``url``, resuming and retrying as needed."""
    attempt = 0
    while True:
        try:
            _http_attempt(url, part, timeout=timeout, progress=progress, url_key=url_key)
            return
        except _Retryable as exc:
            if attempt >= retries:
                kept = (
                    f" The partial file {part} ({part.stat().st_size} bytes) is kept; run the download "
                    "again to resume it."
                    if part.exists()
                    else ""
                )
                raise DownloadIncomplete(f"giving up on {url} after {attempt + 1} attempts: {exc}.{kept}") from exc
            delay = min(backoff * (2**attempt), 60.0)
            attempt += 1
            log.warning("download of %s interrupted (%s); retry %d/%d in %.1f s", url, exc, attempt, retries, delay)
            time.sleep(delay)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _http_attempt(url: str, part: Path, timeout: float, progress: bool | None, url_key: str | None) -> None:
    """One request: resume from the part's size; raise _Retryable on transient failure."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        _handle_http_error(url, part, offset, err, url_key)
        return
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Retryable(f"connection failed: {err}") from err

    with response:
        status = response.status
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                log.warning("%s answered a range starting at %s instead of %d; restarting", url, start, offset)
                part.unlink(missing_ok=True)
                raise _Retryable("server sent an unexpected range")
            mode = "ab"
        elif status == 200:
            if offset > 0:
                log.info("%s ignores Range requests; restarting from byte 0", url)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            raise _Retryable(f"unexpected HTTP status {status}")

        with open(part, mode) as fh, _bar(part, total, offset, progress) as bar:
            received = _stream(response, fh, bar)
            fh.flush()
            os.fsync(fh.fileno())

    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink(missing_ok=True)
            raise _Retryable(f"received {size} bytes but the file has {total}; restarting")
        raise _Retryable(f"connection dropped after {size} of {total} bytes")
    if total is None and received == 0 and size == 0:
        raise _Retryable("empty response without a length")


def _stream(response: http.client.HTTPResponse, fh: BinaryIO, bar: tqdm) -> int:
    received = 0
    try:
        while chunk := response.read(CHUNK_BYTES):
            fh.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    except (TimeoutError, http.client.IncompleteRead, ConnectionError, OSError) as err:
        fh.flush()
        raise _Retryable(f"connection dropped after {received} more bytes: {err}") from err
    return received


def _handle_http_error(url: str, part: Path, offset: int, err: urllib.error.HTTPError, url_key: str | None) -> None:
    """Turn an HTTP error status into: done (416 on a complete part), fatal, or retryable."""
    status = err.code
    if status == 416 and offset > 0:
        _, total = _parse_content_range(err.headers.get("Content-Range"))
        err.close()
        if total is not None and total == offset:
            return  # the part already holds the whole file
        log.warning("%s rejected resuming %s at byte %d (total %s); restarting", url, part, offset, total)
        part.unlink(missing_ok=True)
        raise _Retryable("range not satisfiable; restarting from byte 0")
    err.close()
    if status in FATAL_STATUSES or (400 <= status < 500 and status not in (408, 425, 429)):
        dest = part.with_name(part.name[: -len(".part")]) if part.name.endswith(".part") else part
        if url_key:
            fix = (
                f"Check {url_key} in config.yaml (it holds this URL), or download the file yourself and put "
                f"it at {dest} (or set {url_key} to its path or file:///path)."
            )
        else:
            fix = f"Check the URL, or download the file yourself and put it at {dest}."
        raise DownloadRefused(f"HTTP {status} {err.reason} for {url}. {fix}")
    raise _Retryable(f"HTTP {status} {err.reason}")
