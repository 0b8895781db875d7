"""Datasets and loaders for training: LeRobot's ``make_dataset`` per stage source, the stage's
instruction on every item, replay mixing (``WeightedRandomSampler``), normalization stats over
every dataset seen so far, and the video backend choice.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.training.checks import Source, StagePlan
from kuavo_smolvla_ros.training.options import TrainOptions

log = logging.getLogger(__name__)


@functools.cache
def video_backend() -> str:
    """LeRobot picks torchcodec whenever it is installed; it also needs FFmpeg's libraries."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401

        return "torchcodec"
    except Exception:
        return "pyav"


class TaskText:
    """Wraps a LeRobot dataset so every item carries the stage's instruction."""

    def __init__(self, dataset: Any, task: str | None) -> None:
        self.dataset = dataset
        self.task = task

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if self.task is not None:
            item["task"] = self.task
        return item


def open_dataset(train_cfg: Any, src: Source, episodes: list[int] | None, opts: TrainOptions):
    from lerobot.configs.default import DatasetConfig
    from lerobot.datasets.factory import make_dataset

    ds_cfg = DatasetConfig(
        repo_id=src.ref.repo_id,
        root=str(src.ref.root) if src.ref.root else None,
        episodes=episodes,
        use_imagenet_stats=False,
        video_backend=opts.video_backend or video_backend(),
    )
    return TaskText(make_dataset(dataclasses.replace(train_cfg, dataset=ds_cfg)), src.task)


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


def train_loader(plan: StagePlan, train_cfg: Any, opts: TrainOptions, device: str):
    import torch
    from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, WeightedRandomSampler

    parts = [(open_dataset(train_cfg, s, s.train_episodes, opts), w) for s, w in plan.mix]
    gen = torch.Generator().manual_seed(opts.seed + plan.index)
    if len(parts) == 1:
        dataset = parts[0][0]
        sampler = RandomSampler(dataset, generator=gen)
    else:
        dataset = ConcatDataset([d for d, _ in parts])
        total = sum(w for _, w in parts)
        weights = torch.cat(
            [torch.full((len(d),), w / total / len(d), dtype=torch.double) for d, w in parts]
        )
        sampler = WeightedRandomSampler(weights, len(dataset), replacement=True, generator=gen)
        log.info(
            "stage %d mixes %s",
            plan.index,
            ", ".join(f"{s.label} {w / total:.2f}" for (s, w) in plan.mix),
        )
    loader = DataLoader(
        dataset,
        batch_size=opts.batch_size,
        sampler=sampler,
        num_workers=opts.num_workers,
        pin_memory=device.startswith("cuda"),
        drop_last=False,
        prefetch_factor=2 if opts.num_workers > 0 else None,
    )
    return loader, len(dataset), sum(d.dataset.num_episodes for d, _ in parts)
