"""PyTorch datasets over packed shards: random training clips and 30-view evaluation samples.

Both hand out uint8 tensors; call :func:`tokshift.data.transforms.normalize` on the device.
The randomness of training item ``i`` comes only from ``(seed, epoch, i)``, so a run is
reproducible and resumable whatever the number of DataLoader workers. Shards are opened lazily
in each worker, read-only and without locks.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tokshift.data.sampling import crop_offsets, eval_clip_indices, train_clip_indices
from tokshift.data.store import ShardCorruptError, ShardReader
from tokshift.data.transforms import ClipAugment, check_resize, resize_short_side
from tokshift.errors import BadInput, InputMissing
from tokshift.settings import default

__all__ = ["EvalViewDataset", "TrainClipDataset", "eval_views_from_frames", "expand_shards"]

PathLike = str | os.PathLike[str]


def expand_shards(shards: PathLike | Sequence[PathLike]) -> list[Path]:
    """Shard files from paths; a directory stands for its ``*.lmdb`` files in sorted order."""
    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.lmdb"))
            if not found:
                raise InputMissing(f"no *.lmdb frame shards in {p}; pack the dataset first (`tokshift pack`)")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise BadInput("no frame shards given")
    return out


class _ShardSet:
    """All videos of several shards, as flat arrays: shard, position in it, id, frames, label per item.

    The headers are read once here and dropped: what each DataLoader worker receives is these
    arrays (a few bytes per video, no per-video Python objects whose reference counts would copy
    the pages of a forked worker), not the shards' per-video JSON records.
    """

    def __init__(self, shards: PathLike | Sequence[PathLike]) -> None:
        self.readers = [ShardReader(p) for p in expand_shards(shards)]
        reader_index: list[int] = []
        number: list[int] = []
        ids: list[str] = []
        nframes: list[int] = []
        labels: list[int] = []
        classes: list[str] | None = None
        for r, reader in enumerate(self.readers):
            if classes is None:
                classes = reader.classes
            elif reader.classes != classes:
                raise BadInput(
                    f"{reader.path} lists different classes than {self.readers[0].path}; "
                    "shards of one dataset must come from the same index"
                )
            for k, v in enumerate(reader.videos()):
                if int(v["nframes"]) > 0:
                    reader_index.append(r)
                    number.append(k)
                    ids.append(v["video_id"])
                    nframes.append(int(v["nframes"]))
                    labels.append(int(v["label_index"]))
        self.classes = classes or []
        self.reader_index = np.asarray(reader_index, dtype=np.int32)
        self.number = np.asarray(number, dtype=np.int64)
        self.ids = np.asarray([i.encode("utf-8") for i in ids], dtype=bytes)  # 1 byte per character
        self.nframes = np.asarray(nframes, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        for reader in self.readers:  # environments reopen in each worker, headers are not needed there
            reader.close()
            reader.drop_header()

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, i: int) -> tuple[str, int, int]:
        """Video id, frame count and label index of item ``i``."""
        return self.ids[i].decode("utf-8"), int(self.nframes[i]), int(self.labels[i])

    def frames(self, i: int, indices: Sequence[int], accurate: bool = False) -> list[np.ndarray]:
        vid, n, _ = self.item(i)
        try:
            reader = self.readers[int(self.reader_index[i])]
            return reader.read_decoded_at(int(self.number[i]), n, indices, vid, accurate)
        except ShardCorruptError:
            _let_worker_die()
            raise


def _let_worker_die() -> None:
    """In a DataLoader worker, undo its SIGTERM shield: a damaged shard stops the job.

    Workers ignore SIGTERM so the main process can checkpoint on preemption. When the main
    process stops on the error this worker reports, the worker does not leave on the loader's
    stop message and is ended with SIGTERM, so without this the job's exit would wait for it forever.
    """
    if torch.utils.data.get_worker_info() is not None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _ShardDataset(Dataset):
    """What both datasets expose about the videos of their shards."""

    _set: _ShardSet

    @property
    def classes(self) -> list[str]:
        return list(self._set.classes)

    @property
    def labels(self) -> list[int]:
        return self._set.labels.tolist()

    @property
    def video_ids(self) -> list[str]:
        return [i.decode("utf-8") for i in self._set.ids.tolist()]


class TrainClipDataset(_ShardDataset):
    """Random dense training clips: ``(uint8 tensor (T, 3, crop, crop), label_index)`` per item."""

    def __init__(
        self,
        shards: PathLike | Sequence[PathLike],
        num_frames: int,
        frame_stride: int,
        crop_size: int,
        short_side_range: tuple[int, int],
        flip_p: float = 0.5,
        jitter_p: float = 0.1,
        seed: int = 0,
    ) -> None:
        self._set = _ShardSet(shards)
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.augment = ClipAugment(
            int(crop_size), (int(short_side_range[0]), int(short_side_range[1])), flip_p=flip_p, jitter_p=jitter_p
        )
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random clips ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._set)

    def rng(self, i: int) -> np.random.Generator:
        """The generator of item ``i`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(i)])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        _, n, label = self._set.item(i)
        rng = self.rng(i)
        indices = train_clip_indices(n, self.num_frames, self.frame_stride, rng)
        clip = self.augment(self._set.frames(i, indices.tolist()), rng)
        return torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2))), label


def _views(
    get_frames: Callable[[list[int]], list[np.ndarray]],
    n: int,
    num_frames: int,
    frame_stride: int,
    crop_size: int,
    num_clips: int,
    num_crops: int,
    resize: str,
    faithful: bool = False,
) -> torch.Tensor:
    """(num_clips*num_crops, T, 3, crop, crop) uint8, clip-major; `faithful`: the original's clip
    starts and portrait crops (tokshift.data.sampling).

    Each distinct frame is decoded, resized (``resize``, checked by the caller) and cut into its crops
    once; the views are then one gather of whole crops (3x faster than copying crop by crop from
    HWC frames).
    """
    clips = eval_clip_indices(n, num_frames, frame_stride, num_clips, faithful)
    unique = sorted({int(i) for c in clips for i in c})
    position = {i: k for k, i in enumerate(unique)}
    crops = np.empty((len(unique), num_crops, 3, crop_size, crop_size), dtype=np.uint8)
    for u, frame in enumerate(get_frames(unique)):
        resized = resize_short_side(frame, crop_size, resize)
        chw = resized.transpose(2, 0, 1)
        offsets = crop_offsets(resized.shape[0], resized.shape[1], crop_size, num_crops, faithful)
        for k, (y, x) in enumerate(offsets):
            crops[u, k] = chw[:, y : y + crop_size, x : x + crop_size]
    frame_ids = np.array([[position[int(i)] for i in idx] for idx in clips])  # (clips, T)
    views = crops[frame_ids[:, None, :], np.arange(num_crops)[None, :, None]]  # (clips, crops, T, 3, c, c)
    return torch.from_numpy(views.reshape(num_clips * num_crops, num_frames, 3, crop_size, crop_size))


def eval_views_from_frames(
    frames: np.ndarray | Sequence[np.ndarray],
    num_frames: int,
    frame_stride: int,
    crop_size: int,
    num_clips: int = default("evaluate", "clips"),
    num_crops: int = default("evaluate", "crops"),
    resize: str = default("evaluate", "resize"),
    faithful: bool = False,
) -> torch.Tensor:
    """Evaluation views of decoded frames ``(N, H, W, 3)`` uint8 -> ``(V, T, 3, crop, crop)`` uint8.

    ``resize`` picks the short-side resize to ``crop_size``: ``linear`` (OpenCV bilinear) or
    ``bicubic`` (antialiased, as the original's Pillow ``BICUBIC``); ``faithful`` the original's
    clip starts and portrait crops.
    """
    n = len(frames)
    if n == 0:
        raise ValueError("cannot build evaluation views of a video with no frames")
    return _views(
        lambda idx: [np.asarray(frames[i]) for i in idx],
        n,
        num_frames,
        frame_stride,
        crop_size,
        num_clips,
        num_crops,
        check_resize(resize),
        faithful,
    )


class EvalViewDataset(_ShardDataset):
    """All evaluation views of each video: ``dict(video_id, label, views (V, T, 3, crop, crop) uint8)``.

    ``resize`` is the short-side resize to ``crop_size``: ``linear`` or ``bicubic`` (see
    :func:`~tokshift.data.transforms.resize_short_side`), checked here: in a loader worker a bad
    name would fail every video one by one. ``faithful`` decodes frames as Pillow does and takes
    the original's clip starts and portrait crops (docs/reference.md, "Faithful evaluation").
    """

    def __init__(
        self,
        shards: PathLike | Sequence[PathLike],
        num_frames: int,
        frame_stride: int,
        crop_size: int,
        num_clips: int = default("evaluate", "clips"),
        num_crops: int = default("evaluate", "crops"),
        resize: str = default("evaluate", "resize"),
        faithful: bool = False,
    ) -> None:
        self.resize = check_resize(resize)
        self.faithful = bool(faithful)
        self._set = _ShardSet(shards)
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.crop_size = int(crop_size)
        self.num_clips = int(num_clips)
        self.num_crops = int(num_crops)

    def __len__(self) -> int:
        return len(self._set)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vid, n, label = self._set.item(i)
        views = _views(
            lambda idx: self._set.frames(i, idx, accurate=self.faithful),
            n,
            self.num_frames,
            self.frame_stride,
            self.crop_size,
            self.num_clips,
            self.num_crops,
            self.resize,
            self.faithful,
        )
        return {"video_id": vid, "label": label, "views": views}
