"""Files that are either wholly old or wholly new: atomic writes and sha256 of files.

Every output the pipeline writes goes through a temporary file beside the target
that is flushed, fsynced and renamed onto it, so a crash, a preemption or a full
disk never leaves a half-written file that a later step would trust. The temporary
is created with mode 0o666, like any file a shell or a tool writes, so the umask (or the
folder's default ACL) decides who may read the output: 0644 under umask 022, 0640 under
027. Only the standard library (and tokshift.errors) is imported here; torch is imported when a
tensor is saved.

No command may overwrite its own input: `refuse_output_over_input` is called by every command
before it writes, so `--out X` naming an input X fails at once and leaves X as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from tokshift.errors import BadInput

__all__ = [
    "FILE_MODE",
    "atomic_folder",
    "atomic_path",
    "atomic_savefig",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "create_beside",
    "refuse_folder_over_input",
    "refuse_output_over_input",
    "refuse_shared_outputs",
    "sha256_file",
]

CHUNK_BYTES = 1 << 20
# The mode new files ask for; the kernel takes away the umask's bits (or applies the
# folder's default ACL). tempfile.mkstemp asks for 0o600, which made every output private.
FILE_MODE = 0o666


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read in chunks so gigabyte checkpoints fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (skipped where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty file `.<name>.<random><suffix>` beside `path`, made with FILE_MODE.

    Unlike tempfile.mkstemp (always 0o600) the umask decides its mode, so the renamed
    output is as readable as anything else the user writes.
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}; remove the stale .{path.name}.* files there")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh temporary path beside `path`, renamed onto it only if the block succeeds.

    For files written by another program (ffmpeg): the program writes the yielded
    path, which keeps `suffix` so tools that choose a format by extension still can.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_beside(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh empty folder beside `path`, put in its place only if the block succeeds.

    For outputs that are several files read together (an export): a reader never sees some
    files new and others old or missing. Whatever `path` held (the caller has checked that it
    may go) is removed once the new folder is in place; a failed block leaves it untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {path}; remove the stale .{path.name}.* folders there")
    old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
    try:
        yield tmp
        _fsync_dir(tmp)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside `path`, fsynced and renamed onto it on success."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` so that `path` holds either the old content or all of the new."""
    with _atomic_file(Path(path)) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text (no newline translation)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """`obj` as JSON (non-ASCII kept), ending in a newline."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_savefig(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """`fig.savefig` (a matplotlib Figure) atomically; `format` defaults to the file's extension."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    with atomic_path(path, suffix=path.suffix or ".png") as tmp:
        fig.savefig(tmp, **kwargs)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> str:
    """`torch.save` atomically; returns the sha256 of what was written (hashed while writing)."""
    import torch

    with _atomic_file(Path(path)) as f:
        hasher = _HashingWriter(f)
        torch.save(obj, hasher)
    return hasher.hexdigest()


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes what passes through (saves a second read)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:  # type: ignore[override]
        mv = memoryview(b).cast("B")
        self._h.update(mv)
        self._f.write(mv)
        self._pos += len(mv)
        return len(mv)

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def new_stale_folder(folder: Path) -> Path:
    """A new, empty `folder/stale-<UTC time>[-n]/` for results set aside (never deleted) because
    what they were made with has changed."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = folder / f"stale-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = folder / f"stale-{stamp}-{n}"
    dest.mkdir(parents=True)
    return dest


PathArg = str | os.PathLike[str]


def _inode(path: str) -> tuple[int, int] | None:
    """(device, inode) of an existing file, None for a missing one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_output_over_input(
    output: PathArg,
    inputs: Iterable[PathArg | None],
    *,
    name: str = "the output",
    folder: bool = False,
    fix: str = "",
) -> None:
    """Raise BadInput when writing `output` would overwrite or remove one of `inputs`.

    A file output is refused when it is an input: the same path once symlinks and `..` are
    resolved, or the same file under another name (a hard link; an atomic rename would leave
    the other name with the old bytes and the command's record of its input wrong). With
    `folder`, `output` is a folder whose contents the command writes, replaces or removes,
    and it is also refused when it holds an input. `name` is the option that named `output`,
    `fix` what the message tells to do (default: choose another output, or folder).
    """
    out = os.path.realpath(output)
    out_inode = None if folder else _inode(out)  # a new output is no other file's second name
    for given in inputs:
        if given is None or str(given) == "":
            continue
        inp = os.path.realpath(given)
        if inp == out:
            same = f"is the input {given}" if str(given) == str(output) else f"is the input {given} (the same file)"
            raise BadInput(
                f"{name} {output} {same}; writing it would destroy the input: {fix or 'choose another output'}"
            )
        if folder and Path(inp).is_relative_to(out):
            raise BadInput(
                f"{name} {output} contains the input {given}, which writing it could overwrite or remove: "
                f"{fix or 'choose an output folder that holds no input'}"
            )
        if out_inode is not None and _inode(inp) == out_inode:
            raise BadInput(
                f"{name} {output} is a hard link to the input {given} (one file under two names); writing it "
                f"would replace the input: {fix or 'choose another output'}"
            )


def refuse_folder_over_input(
    folder: PathArg,
    inputs: Iterable[PathArg | None],
    *,
    name: str,
    files: Iterable[str] = (),
    subfolders: Iterable[str] = (),
) -> None:
    """`refuse_output_over_input` for a command that writes `files` into `folder` and replaces or
    empties its `subfolders`: an input anywhere else in `folder` is left alone, so it is allowed."""
    given = [i for i in inputs if i is not None and str(i) != ""]
    fix = f"choose another {name} than {folder}, or move the input out of it"
    refuse_output_over_input(folder, given, name=name, fix=fix)
    for file in files:
        refuse_output_over_input(Path(folder) / file, given, name=f"{name}'s", fix=fix)
    for sub in subfolders:
        refuse_output_over_input(Path(folder) / sub, given, name=f"{name}'s", folder=True, fix=fix)


def refuse_shared_outputs(outputs: Mapping[str, PathArg | None]) -> None:
    """Raise BadInput when two options name one output file: the second write would replace the first."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None or str(path) == "":
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise BadInput(f"{seen[real]} and {option} both name {path}; give each output a file of its own")
        seen[real] = option
