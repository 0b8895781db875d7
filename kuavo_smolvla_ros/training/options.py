"""Training options and results, shared by every training module (no torch, no LeRobot here).

``TrainOptions`` holds every default and bound of a run; ``TrainResult`` / ``StageResult`` are
what ``train_stages`` hands back. File names of the output directory live here so the CLI, the
tests and the benchmarks agree on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuavo_smolvla_ros.core.config import ConfigError

MIXED_PRECISION = ("auto", "bf16", "fp16", "no")
GRAD_COMM = ("auto", "none", "bf16", "fp16")
LOG_NAME = "train_log.jsonl"
VALIDATION_NAME = "validation.json"
RUN_NAME = "kuavo_train.json"


@dataclass(frozen=True)
class TrainOptions:
    """How to train; the policy's own presets supply the rest (AdamW, cosine schedule, clip)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float | None = None  # None: the policy preset (1e-4 for SmolVLA)
    device: str = "auto"
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none elsewhere
    num_workers: int | None = None  # None: one per core, at most 16 on CUDA (data.loader_settings)
    prefetch_factor: int = 2  # batches queued per loader worker
    seed: int = 1000
    save_freq: int = 0  # 0: save only at the end of each stage
    log_freq: int = 50
    val_fraction: float = 0.1  # held-out episodes per dataset (none if the dataset is small)
    val_samples: int = 64  # validation samples per task; 0 disables validation
    val_freq: int = 0  # also validate the stage's own task every N steps (0: at the end only)
    action_horizon: int | None = None  # None: the checkpoint's chunk_size (anything else refused)
    video_backend: str | None = None  # None: torchcodec if it loads, else pyav
    # Gradients between processes: auto sends fp32 within one machine (on 2 H200s over NVLink
    # the all-reduce of 400 MB takes 1.4 ms, and compressing costs more than it saves) and bf16
    # between machines (DDP's bf16_compress_hook: half the bytes over the network). The
    # optimizer steps on fp32 gradients either way.
    grad_comm: str = "auto"
    bucket_mb: int = 25  # DDP's gradient bucket size (its default); larger: fewer all-reduces
    # Loader workers hand decoded 8-bit pixels over as uint8 (a quarter of the float32 bytes
    # through shared and pinned memory and to the GPU), made float32 again on the device,
    # bit for bit; images that are not 8-bit pixels (augmented) stay float32.
    uint8_images: bool = True
    profile_steps: int = 0  # profile this many steps after the first 5 (torch.profiler)
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr={self.lr} must be > 0.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"mixed_precision={self.mixed_precision!r}: one of {MIXED_PRECISION}."
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in [0, 1).")
        workers = 0 if self.num_workers is None else self.num_workers
        if min(workers, self.save_freq, self.log_freq, self.val_samples, self.val_freq) < 0:
            raise ConfigError(
                "num_workers, save_freq, log_freq, val_samples and val_freq must be >= 0."
            )
        if self.prefetch_factor < 1:
            raise ConfigError(f"prefetch_factor={self.prefetch_factor} must be >= 1.")
        if self.grad_comm not in GRAD_COMM:
            raise ConfigError(f"grad_comm={self.grad_comm!r}: one of {GRAD_COMM}.")
        if self.bucket_mb < 1:
            raise ConfigError(f"bucket_mb={self.bucket_mb} must be >= 1.")
        if self.profile_steps < 0:
            raise ConfigError(f"profile_steps={self.profile_steps} must be >= 0.")
        if self.video_backend not in (None, "torchcodec", "pyav"):
            raise ConfigError(f"video_backend={self.video_backend!r}: torchcodec, pyav or None.")


@dataclass
class StageResult:
    """What one stage produced: its final checkpoint, losses and speed."""

    name: str
    checkpoint: Path
    steps: int
    losses: list[float]
    steps_per_s: float | None  # None when the stage was already complete (resume)
    val_loss: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    stages: list[StageResult]
    validation: dict[str, Any]

    @property
    def checkpoint(self) -> Path:
        return self.stages[-1].checkpoint
