"""ImageNet-21k ViT weights: fetched by the shared resumable downloader (:mod:`tokshift.download`)."""

from tokshift.download import (
    CHUNK_BYTES,
    FATAL_STATUSES,
    USER_AGENT,
    ChecksumMismatch,
    DownloadError,
    download,
    normalise_sha256,
    part_path,
    read_sha256_record,
    sha256_record_path,
    write_sha256_record,
)
from tokshift.fileio import sha256_file

__all__ = [
    "CHUNK_BYTES",
    "FATAL_STATUSES",
    "USER_AGENT",
    "ChecksumMismatch",
    "DownloadError",
    "download",
    "normalise_sha256",
    "part_path",
    "read_sha256_record",
    "sha256_file",
    "sha256_record_path",
    "write_sha256_record",
]
