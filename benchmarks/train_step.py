"""SmolVLA training steps per second with LeRobot's own pieces (issue 5).

One step is what ``lerobot-train`` does per batch: ``SmolVLAPolicy.forward`` (flow-matching
loss), backward, gradient clipping at the config's ``optimizer_grad_clip_norm``, the config's
optimizer preset (``get_optimizer_preset().build(policy.get_optim_params())``, AdamW) and its
scheduler preset. On a GPU the forward runs under bf16 autocast (``--precision fp32`` or
``both`` for the float32 figure). The batch is synthetic but shaped like a Kuavo dataset's:
``--batch-size`` samples (8 by default), three cameras at the model's input size (512x512 for
the full model, 64x64 for tiny), a 16-D state, a (50, 16) action chunk and a tokenized task.
Random weights (``demo_model``) train at the same speed as real ones.

    python benchmarks/train_step.py --device cuda --size full --out train_gpu.json
    python benchmarks/train_step.py --device cpu --size tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASK = "pick up the red cube and place it in the box\n"


def _checkpoint(args: argparse.Namespace) -> Path:
    from kuavo_smolvla_ros.demo.model import build_demo_model

    path = Path(args.checkpoint or tempfile.mkdtemp(prefix=f"smolvla_{args.size}_"))
    if not (path / "model.safetensors").is_file():
        build_demo_model(path, size=args.size)
    return path


def _batch(policy: Any, batch_size: int, device: str, image_size: int | None) -> dict:
    """A normalized training batch as LeRobot's dataloader + preprocessor would hand it over."""
    import torch
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    cfg = policy.config
    side = image_size or (cfg.resize_imgs_with_padding or (512, 512))[0]
    g = torch.Generator().manual_seed(0)
    batch: dict[str, Any] = {
        "observation.state": torch.randn(
            batch_size, cfg.input_features["observation.state"].shape[0], generator=g
        ),
        "action": torch.randn(batch_size, cfg.chunk_size, cfg.action_feature.shape[0], generator=g),
    }
    for key in cfg.image_features:
        batch[key] = torch.rand(batch_size, 3, side, side, generator=g)
    tok = policy.model.vlm_with_expert.processor.tokenizer(
        [TASK] * batch_size,
        padding="max_length",
        max_length=cfg.tokenizer_max_length,
        truncation=True,
        return_tensors="pt",
    )
    batch[OBS_LANGUAGE_TOKENS] = tok["input_ids"]
    batch[OBS_LANGUAGE_ATTENTION_MASK] = tok["attention_mask"].bool()
    return {k: v.to(device) for k, v in batch.items()}


def bench(ckpt: Path, args: argparse.Namespace, precision: str) -> dict[str, Any]:
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cuda = args.device.startswith("cuda")
    cfg = PreTrainedConfig.from_pretrained(ckpt)
    cfg.vlm_model_name, cfg.device, cfg.load_vlm_weights = str(ckpt / "vlm"), args.device, False
    policy = SmolVLAPolicy.from_pretrained(str(ckpt), config=cfg)
    policy.train()
    optimizer = cfg.get_optimizer_preset().build(policy.get_optim_params())
    scheduler = cfg.get_scheduler_preset().build(optimizer, num_training_steps=100_000)
    params = [p for p in policy.parameters() if p.requires_grad]
    batch = _batch(policy, args.batch_size, args.device, args.image_size)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast(
        device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=precision == "bf16"
    )

    def step() -> float:
        with autocast:
            loss, _ = policy.forward(dict(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optimizer_grad_clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    losses = [step() for _ in range(args.warmup)]
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())  # float(loss) syncs, as LeRobot's own loss logging does
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    out = {
        "precision": precision,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "median_step_s": float(np.median(t)),
        "steps_per_s": float(1.0 / np.median(t)),
        "samples_per_s": float(args.batch_size / np.median(t)),
        "trainable_params_M": sum(p.numel() for p in params) / 1e6,
        "loss_first_last": [losses[0], losses[-1]],
        "loss_finite": bool(np.all(np.isfinite(losses))),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "full"), default="full")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--checkpoint", help="existing checkpoint dir, or where to build one")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image-size", type=int, default=None, help="default: the model's input size")
    p.add_argument("--precision", choices=("bf16", "fp32", "both"), default=None)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (20 if cuda else 5)
    precision = args.precision or ("bf16" if cuda else "fp32")
    precisions = ("bf16", "fp32") if precision == "both" else (precision,)
    ckpt = _checkpoint(args)
    device = (
        torch.cuda.get_device_name(torch.device(args.device))
        if cuda
        else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    )
    results: dict[str, Any] = {
        "meta": {"device": device, "size": args.size, "torch": torch.__version__},
        "runs": [bench(ckpt, args, pr) for pr in precisions],
    }
    print(f"\n### Training steps/s - {device}, SmolVLA {args.size}, batch {args.batch_size}")
    print(
        "| precision | steps/s | samples/s | s/step (median) | peak GPU MB | trainable M | loss |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        mem = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        loss = "finite" if r["loss_finite"] else "NOT FINITE"
        print(
            f"| {r['precision']} | {r['steps_per_s']:.2f} | {r['samples_per_s']:.1f} |"
            f" {r['median_step_s']:.3f} | {mem} | {r['trainable_params_M']:.1f} | {loss} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
