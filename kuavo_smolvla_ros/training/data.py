"""Datasets and loaders for training: LeRobot's ``make_dataset`` per stage source, the stage's
instruction on every item, replay mixing (``WeightedRandomSampler``), normalization stats over
every dataset seen so far, and the video backend choice.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.training.checks import Source, StagePlan
from kuavo_smolvla_ros.training.options import TrainOptions

log = logging.getLogger(__name__)


@functools.cache
def _torchcodec_error() -> str | None:
    """Why torchcodec cannot decode here (None when it can): it needs FFmpeg's shared libraries,
    which its wheel does not bring, and fails at import with a page-long message without them."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as exc:  # ImportError, RuntimeError, OSError: all mean "cannot load"
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        return f"{type(exc).__name__}: {first}"[:200]
    return None


@functools.cache
def _warn_fallback(reason: str) -> None:
    log.warning("torchcodec cannot load (%s); decoding video with pyav instead", reason)


def video_backend(requested: str | None = None, has_video: bool = True) -> str:
    """The video decoder for LeRobot: ``requested``, or torchcodec (LeRobot's default) when it
    loads; else pyav, with one warning line per process instead of torchcodec's traceback."""
    if not has_video:
        return requested or "pyav"
    if requested != "pyav":
        reason = _torchcodec_error()
        if reason is None:
            return "torchcodec"
        _warn_fallback(reason)
    # LeRobot's pyav path goes through torchvision, which repeats a deprecation notice from
    # every loader worker; the choice is deliberate here, so say it once (above) and no more.
    warnings.filterwarnings("ignore", message=_TORCHVISION_VIDEO_NOTICE, category=UserWarning)
    return "pyav"


_TORCHVISION_VIDEO_NOTICE = "The video decoding and encoding capabilities of torchvision"


def loader_settings(opts: TrainOptions, device: str, local_processes: int = 1) -> dict[str, Any]:
    """DataLoader keyword arguments that keep the accelerator fed.

    Workers (``num_workers=None``): one per core the process gets (cores / processes on this
    machine, one left for the training loop), at most 16 on CUDA (at most 2 elsewhere, where the
    workers compete with the model for the same cores). A worker needed about 3 s for a batch
    of 16 items of three 640x480 PNG cameras on a 2x H200 host while a step took 0.25 s: 8
    workers stalled every eighth step once the queue had drained (a third of the step time
    over 100 steps), 16 keep up. ``persistent_workers`` keeps them over epochs: re-spawning
    them stalled a step at every epoch start. ``prefetch_factor`` batches queued per worker
    absorb the slow items (a video seek, a cold page cache). Pinned memory makes the
    host-to-GPU copy asynchronous.
    """
    cuda = device.startswith("cuda")
    workers = opts.num_workers
    if workers is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        workers = max(0, min(cores // max(local_processes, 1) - 1, 16 if cuda else 2))
    return {
        "num_workers": workers,
        "pin_memory": cuda,
        "persistent_workers": workers > 0,
        "prefetch_factor": opts.prefetch_factor if workers > 0 else None,
    }


class TaskText:
    """A stage's view of a LeRobot dataset: the frames of its episodes (all by default), every
    item carrying the stage's instruction (``task``, when set)."""

    def __init__(
        self, dataset: Any, task: str | None, episodes: Sequence[int] | None = None
    ) -> None:
        self.dataset = dataset
        self.task = task
        self.frames = None if episodes is None else episode_frames(dataset.meta, episodes)
        self.num_episodes = dataset.num_episodes if episodes is None else len(episodes)

    def __len__(self) -> int:
        return len(self.dataset) if self.frames is None else len(self.frames)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i if self.frames is None else int(self.frames[i])]
        if self.task is not None:
            item["task"] = self.task
        return item


def episode_frames(meta: Any, episodes: Sequence[int]) -> np.ndarray:
    """Dataset indices of ``episodes``' frames, in order (LeRobot v3 episode metadata)."""
    rows = [meta.episodes[int(e)] for e in episodes]
    spans = [(int(r["dataset_from_index"]), int(r["dataset_to_index"])) for r in rows]
    return np.concatenate([np.arange(a, b) for a, b in spans]) if spans else np.zeros(0, int)


def open_dataset(train_cfg: Any, src: Source, episodes: list[int] | None, opts: TrainOptions):
    """The whole dataset, opened once, seen through the stage's ``episodes``.

    LeRobot's own episode selection (``DatasetConfig.episodes``) re-reads the parquet files
    through a row filter on every open: 9 s per 100 frames of three 640x480 image cameras on
    this repository's CPU, 38 s for 1050 frames on a 2x H200 host, against 0.4-0.6 s for the
    whole dataset. The items are the same: an item's chunk and padding follow its episode's
    bounds in the metadata either way (``test_train`` compares them).
    """
    from lerobot.configs.default import DatasetConfig
    from lerobot.datasets.factory import make_dataset

    ds_cfg = DatasetConfig(
        repo_id=src.ref.repo_id,
        root=str(src.ref.root) if src.ref.root else None,
        episodes=None,
        use_imagenet_stats=False,
        video_backend=video_backend(opts.video_backend, bool(src.meta.video_keys)),
    )
    dataset = make_dataset(dataclasses.replace(train_cfg, dataset=ds_cfg))
    read_chunks_from_columns(dataset)
    return TaskText(dataset, src.task, episodes)


def read_chunks_from_columns(dataset: Any) -> None:
    """Serve the action chunk of every item from a tensor of the whole column.

    LeRobot reads an item's 50-step action chunk as ``hf_dataset["action"][indices]``, which
    runs the dataset's torch transform over those whole rows. With image features (the
    converter's ``--images``) that decodes 3 x 50 PNGs for one sample: 1.9 s per item at
    640x480 on this repository's CPU, against 0.03 s for the rest of the item. The numeric
    columns are small (frames x 16 floats), so they are read once, here, into tensors that
    forked loader workers share; anything else still goes through LeRobot's own query.
    """
    import torch

    if hasattr(dataset, "_ensure_hf_dataset_loaded"):
        dataset._ensure_hf_dataset_loaded()
    meta, hf = dataset.meta, dataset.hf_dataset
    keys = [
        k
        for k in (dataset.delta_indices or {})
        if k not in meta.video_keys and k not in meta.image_keys and k in hf.column_names
    ]
    if not keys:
        return
    table = hf.with_format("numpy", columns=keys)
    columns = {k: torch.from_numpy(np.stack(table[k])) for k in keys}
    dataset._query_hf_dataset = ColumnQuery(dataset, columns)


class ColumnQuery:
    """``LeRobotDataset._query_hf_dataset`` with the numeric columns served from tensors.

    A class, not a closure, so that a dataset still pickles: loader workers started by spawn
    or forkserver (macOS, Python 3.14) receive it pickled."""

    def __init__(self, dataset: Any, columns: dict[str, Any]) -> None:
        self.dataset = dataset
        self.columns = columns

    def __call__(self, query_indices: dict[str, list[int]]) -> dict[str, Any]:
        ds = self.dataset
        rest = {k: v for k, v in query_indices.items() if k not in self.columns}
        out = type(ds)._query_hf_dataset(ds, rest) if rest else {}  # LeRobot's own query
        to_rel = ds._absolute_to_relative_idx
        for key in query_indices.keys() & self.columns.keys():
            idx = query_indices[key]
            out[key] = self.columns[key][idx if to_rel is None else [to_rel[i] for i in idx]]
        return out


class Uint8Images:
    """Images cross from the loader workers to the GPU as the 8-bit pixels they were decoded
    from, and become float32 there: the same values, bit for bit, in a quarter of the bytes.

    LeRobot hands a camera frame over as float32 ``pixel / 255``: 59 MB for a batch of 16
    640x480 frames of one camera, copied into shared memory by the worker, into pinned memory
    by the training process and then to the GPU. ``collate`` (in the workers) keeps a batch's
    image as uint8 only when dividing those pixels by 255 gives back exactly what LeRobot
    produced (an augmented image does not, and stays float32); ``restore`` (after accelerate
    moved the batch to the device) looks every uint8 value up in a 256-entry table computed
    with that same division.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self._tables: dict[Any, Any] = {}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from torch.utils.data import default_collate

        batch = default_collate(items)
        for key in self.keys:
            x = batch.get(key)
            if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32):
                continue
            # in place where possible: the check costs a worker 0.24 s a batch of 16 three-camera
            # 640x480 items on one core here, against 0.38 s with a new tensor per step
            y = x.mul(255).round_()
            q = y.to(torch.uint8)  # out-of-range values wrap, and the check below fails
            if torch.equal(y.copy_(q).div_(255), x):
                batch[key] = q
        return batch

    def restore(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        for key in self.keys:
            x = batch.get(key)
            if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
                table = self._tables.get(x.device)
                if table is None:  # LeRobot's division, done once on the CPU
                    table = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)
                    table = self._tables.setdefault(x.device, table.to(x.device))
                batch[key] = table[x.long()]
        return batch


def aggregate_stats(sources: Sequence[Source]) -> dict[str, dict[str, np.ndarray]]:
    """Stats over every dataset seen so far; degenerate scales made safe (``dims``)."""
    from lerobot.datasets.compute_stats import aggregate_stats

    keys = (dims.STATE_KEY, dims.ACTION_KEY)
    per = [{k: dict(s.meta.stats[k]) for k in keys} for s in sources]
    stats = per[0] if len(per) == 1 else aggregate_stats(per)
    out = {}
    for k in keys:
        clean = dims.sanitize_stats({n: v for n, v in stats[k].items() if n != "count"})
        out[k] = {n: np.asarray(v, dtype=np.float32) for n, v in clean.items()}
    return out


def train_loader(
    plan: StagePlan,
    train_cfg: Any,
    opts: TrainOptions,
    device: str,
    local_processes: int = 1,
    samples: int = 0,
    collate: Any = None,
):
    """The stage's loader over its own data and its replay mix; accelerate shards it.

    The sampler draws ``samples`` indices (all processes together; at least one epoch), the
    whole run's worth, epoch after epoch without a break: a new epoch of the loader restarted
    the workers' prefetching and, under accelerate, stalled a step for seconds (3.5 s on
    2 H200s), once per epoch, which a small dataset reaches every few dozen steps.
    """
    import torch
    from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, WeightedRandomSampler

    parts = [(open_dataset(train_cfg, s, s.train_episodes, opts), w) for s, w in plan.mix]
    gen = torch.Generator().manual_seed(opts.seed + plan.index)
    if len(parts) == 1:
        dataset = parts[0][0]
        sampler = RandomSampler(dataset, num_samples=max(samples, len(dataset)), generator=gen)
    else:
        dataset = ConcatDataset([d for d, _ in parts])
        total = sum(w for _, w in parts)
        weights = torch.cat(
            [torch.full((len(d),), w / total / len(d), dtype=torch.double) for d, w in parts]
        )
        n = max(samples, len(dataset))
        sampler = WeightedRandomSampler(weights, n, replacement=True, generator=gen)
        log.info(
            "stage %d mixes %s",
            plan.index,
            ", ".join(f"{s.label} {w / total:.2f}" for (s, w) in plan.mix),
        )
    loader = DataLoader(
        dataset,
        batch_size=opts.batch_size,
        sampler=sampler,
        drop_last=False,
        collate_fn=collate,
        **loader_settings(opts, device, local_processes),
    )
    return loader, len(dataset), sum(d.num_episodes for d, _ in parts)
