"""``kuavo-smolvla-train``: the command line of ``train_stages``.

Also ``python -m kuavo_smolvla_ros.training.cli``, which ``torchrun -m`` and
``accelerate launch -m`` start once per process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import Config, ConfigError, load_config
from kuavo_smolvla_ros.runners.eager import CheckpointError
from kuavo_smolvla_ros.training.options import GRAD_COMM, MIXED_PRECISION, TrainOptions
from kuavo_smolvla_ros.training.stages import Stage, format_validation, load_stages, train_stages


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kuavo-smolvla-train",
        description="Fine-tune SmolVLA on Kuavo LeRobot datasets (one task, or --stages in order).",
    )
    p.add_argument("--checkpoint", required=True, help="SmolVLA checkpoint dir or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="LeRobot dataset root or hub repo id")
    src.add_argument("--stages", help="YAML list of {dataset, task, steps, mix, name}")
    p.add_argument("--config", help="package YAML config (robot, cameras, scheduler.action_fps)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--task", help="instruction for --dataset (default: the dataset's own)")
    d = TrainOptions()
    p.add_argument("--steps", type=int, default=d.steps, help="steps (per stage without 'steps')")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: preset)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=d.mixed_precision)
    p.add_argument(
        "--num-workers",
        type=int,
        default=d.num_workers,
        help="loader workers per process (default: one per core, at most 16 on CUDA)",
    )
    p.add_argument(
        "--prefetch-factor",
        type=int,
        default=d.prefetch_factor,
        help="batches queued per loader worker",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-freq", type=int, default=d.save_freq, help="0: at the end only")
    p.add_argument("--log-freq", type=int, default=d.log_freq)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--val-samples", type=int, default=d.val_samples, help="0: no validation")
    p.add_argument(
        "--val-freq",
        type=int,
        default=d.val_freq,
        help="also validate every N steps into the train log (0: after each stage)",
    )
    p.add_argument("--action-horizon", type=int, default=None, help="must equal chunk_size")
    p.add_argument("--video-backend", choices=("torchcodec", "pyav"), default=None)
    p.add_argument(
        "--grad-comm",
        choices=GRAD_COMM,
        default=d.grad_comm,
        help="gradient all-reduce between processes (auto: bf16 between machines, else fp32)",
    )
    p.add_argument(
        "--no-uint8-images",
        action="store_true",
        help="loader workers hand images over as float32 (default: 8-bit pixels as uint8)",
    )
    p.add_argument("--bucket-mb", type=int, default=d.bucket_mb, help="DDP gradient bucket MB")
    p.add_argument(
        "--profile-steps",
        type=int,
        default=d.profile_steps,
        help="profile N steps after the first 5: profile_rank<R>.txt and .json in --out",
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(a.config) if a.config else Config()
        opts = TrainOptions(
            steps=a.steps,
            batch_size=a.batch_size,
            lr=a.lr,
            device=a.device,
            mixed_precision=a.mixed_precision,
            num_workers=a.num_workers,
            prefetch_factor=a.prefetch_factor,
            seed=a.seed,
            save_freq=a.save_freq,
            log_freq=a.log_freq,
            val_fraction=a.val_fraction,
            val_samples=a.val_samples,
            val_freq=a.val_freq,
            action_horizon=a.action_horizon,
            video_backend=a.video_backend,
            grad_comm=a.grad_comm,
            uint8_images=not a.no_uint8_images,
            bucket_mb=a.bucket_mb,
            profile_steps=a.profile_steps,
            resume=a.resume,
            progress=not a.no_progress,
        )
        if a.stages:
            stages = load_stages(a.stages)
            result = train_stages(a.checkpoint, stages, a.out, cfg, opts)
        else:
            stage = Stage(dataset=a.dataset, task=a.task)
            result = train_stages(a.checkpoint, [stage], a.out, cfg, opts, flat=True)
    except (ConfigError, dims.DimensionError, CheckpointError, FileExistsError) as exc:
        print(f"kuavo-smolvla-train: {exc}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    if os.environ.get("RANK", "0") != "0":  # the main process reports for the run
        return 0
    if opts.val_samples:
        print(format_validation(result.validation))
    for r in result.stages:
        rate = f"{r.steps_per_s:.2f} steps/s" if r.steps_per_s else "already complete"
        print(f"{r.name}: {r.steps} steps ({rate}) -> {r.checkpoint}")
    return 0


def _leave_process_group() -> None:
    """Under torchrun / accelerate launch: leave the process group cleanly (no NCCL warning)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
