"""One stage's training run under accelerate: build the policy and processors from the previous
checkpoint (LeRobot's factories), run LeRobot's ``update_policy`` step, log, checkpoint in
``lerobot-train``'s layout, resume from the last checkpoint, and the validation loss.

Checkpoints stay loadable by ``load_policy`` offline: a bundled backbone (``vlm/``) is copied
into each saved ``pretrained_model``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import Config
from kuavo_smolvla_ros.runners.eager import (
    bundled_vlm_dir,
    processor_overrides,
    read_policy_config,
)
from kuavo_smolvla_ros.training.checks import StagePlan
from kuavo_smolvla_ros.training.data import (
    Uint8Images,
    aggregate_stats,
    open_dataset,
    train_loader,
    video_backend,
)
from kuavo_smolvla_ros.training.options import LOG_NAME, StageResult, TrainOptions
from kuavo_smolvla_ros.training.profiling import StepProfiler

log = logging.getLogger(__name__)

_SEED_STRIDE = 100_003  # keeps the processes' seeds apart from the stages' (seed + index)


def mixed_precision(choice: str, device: str) -> str:
    import torch

    if choice != "auto":
        return choice
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def grad_comm(choice: str, device: str, processes: int, local_processes: int | None = None) -> str:
    """The gradient all-reduce's precision: ``auto`` is bf16 between machines (CUDA processes
    on more than one host), where the network is the slow part, and fp32 on one machine."""
    if choice != "auto":
        return choice
    local = processes if local_processes is None else local_processes
    return "bf16" if device.startswith("cuda") and processes > local else "none"


def make_accelerator(device: str, precision: str, comm: str = "none", bucket_mb: int = 25) -> Any:
    """LeRobot's accelerator settings; under ``accelerate launch`` / ``torchrun`` it joins the
    process group (NCCL on CUDA, gloo with ``--device cpu``) and picks this process's GPU."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import (
        DataLoaderConfiguration,
        DDPCommunicationHookType,
        DistributedDataParallelKwargs,
    )

    if device.startswith("cuda:") and world_size() == 1:
        torch.cuda.set_device(torch.device(device))
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, precision):
        AcceleratorState._reset_state(reset_partial_state=True)
    hook = {"none": "NO", "bf16": "BF16", "fp16": "FP16"}[comm]
    ddp = DistributedDataParallelKwargs(
        # The same parameters take part in every step: DDP learns them in the first step
        # instead of searching the autograd graph each step (LeRobot's find_unused_parameters
        # did that, 25 % of the step on 2 H200s, and found no unused parameter).
        static_graph=True,
        bucket_cap_mb=bucket_mb,
        comm_hook=DDPCommunicationHookType[hook],
    )
    return Accelerator(
        mixed_precision=precision,
        cpu=device == "cpu",
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[ddp],
        # pinned host batches go to the GPU without blocking the step that queued them
        dataloader_config=DataLoaderConfiguration(non_blocking=device.startswith("cuda")),
    )


def world_size() -> int:
    """Processes of this run as the launcher announced them (before the accelerator exists)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """Processes of this run on this machine (torchrun and accelerate launch announce it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def process_device(accelerator: Any, requested: str) -> str:
    """This process's device: the requested one alone, the launcher's local GPU with several."""
    if accelerator.num_processes == 1 or accelerator.device.type == "cpu":
        return requested  # safetensors refuses "cpu:0", which accelerate names the CPU
    return str(accelerator.device)


def last_checkpoint(stage_dir: Path) -> Path | None:
    last = stage_dir / "checkpoints" / "last"
    return last.resolve() if (last / "training_state").is_dir() else None


def saved_step(ckpt_dir: Path) -> int:
    from lerobot.utils.train_utils import load_training_step

    return int(load_training_step(ckpt_dir / "training_state"))


def build_stage(
    plan: StagePlan, src_ckpt: Path, device: str, opts: TrainOptions, stage_dir: Path, cfg: Config
):
    """Policy, processors, train config for one stage, from ``src_ckpt`` (LeRobot factories)."""
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from kuavo_smolvla_ros.runners.trust import check_checkpoint_trust

    # The source's processor files may name only LeRobot's registered steps (runners/trust.py).
    check_checkpoint_trust(src_ckpt, cfg.policy.trust_remote_code)
    policy_cfg = read_policy_config(src_ckpt, device)
    policy_cfg.pretrained_path = src_ckpt
    policy_cfg.push_to_hub = False
    feats = dict(policy_cfg.input_features or {})
    old = feats.get(dims.STATE_KEY)
    if old is None or tuple(old.shape) != (cfg.robot.dim,):
        if old is not None:
            log.info(
                "checkpoint state feature is %s-D; fine-tuning it to the robot's %d-D state"
                " (max_state_dim stays %d)",
                old.shape[0],
                cfg.robot.dim,
                policy_cfg.max_state_dim,
            )
        feats[dims.STATE_KEY] = PolicyFeature(type=FeatureType.STATE, shape=(cfg.robot.dim,))
    policy_cfg.input_features = feats

    optimizer = policy_cfg.get_optimizer_preset()
    scheduler = policy_cfg.get_scheduler_preset()
    if opts.lr is not None:
        optimizer.lr = opts.lr
        if hasattr(scheduler, "peak_lr"):
            scheduler.peak_lr = opts.lr
            scheduler.decay_lr = min(scheduler.decay_lr, opts.lr)
    src = plan.source
    train_cfg = TrainPipelineConfig(
        dataset=DatasetConfig(
            repo_id=src.ref.repo_id,
            root=str(src.ref.root) if src.ref.root else None,
            episodes=src.train_episodes,
            use_imagenet_stats=False,
            video_backend=video_backend(opts.video_backend, bool(src.meta.video_keys)),
        ),
        policy=policy_cfg,
        output_dir=stage_dir,
        job_name=f"kuavo_smolvla_{plan.stage.label}",
        resume=opts.resume,
        seed=opts.seed,
        num_workers=opts.num_workers,
        batch_size=opts.batch_size,
        steps=plan.steps,
        log_freq=opts.log_freq,
        save_freq=opts.save_freq or plan.steps,
        optimizer=optimizer,
        scheduler=scheduler,
        rename_map=dict(plan.rename_map),
    )

    policy = make_policy(policy_cfg, ds_meta=src.meta, rename_map=plan.rename_map)
    stats = aggregate_stats(plan.stats_sources)
    pol_cfg = policy.config
    pre_over = processor_overrides(src_ckpt, device)
    pre_over["normalizer_processor"] = {
        "stats": stats,
        "features": {**pol_cfg.input_features, **pol_cfg.output_features},
        "norm_map": pol_cfg.normalization_mapping,
    }
    pre_over["rename_observations_processor"] = {"rename_map": dict(plan.rename_map)}
    post_over = {
        "unnormalizer_processor": {
            "stats": stats,
            "features": pol_cfg.output_features,
            "norm_map": pol_cfg.normalization_mapping,
        }
    }
    try:
        pre, post = make_pre_post_processors(
            pol_cfg,
            pretrained_path=str(src_ckpt),
            preprocessor_overrides=pre_over,
            postprocessor_overrides=post_over,
        )
    except FileNotFoundError:
        log.warning("%s has no saved processors; building SmolVLA's defaults", src_ckpt)
        pre, post = make_pre_post_processors(pol_cfg, dataset_stats=stats)
        for step in pre.steps:
            if hasattr(step, "rename_map"):
                step.rename_map = dict(plan.rename_map)
    return policy, pre, post, train_cfg


def validation_loss(
    policy: Any,
    preprocessor: Any,
    dataset: Any,
    *,
    batch_size: int = 8,
    max_samples: int = 64,
    seed: int = 0,
    accelerator: Any = None,
    num_workers: int = 0,
) -> float:
    """Mean flow-matching loss on evenly spaced samples with fixed noise: comparable over stages.

    ``num_workers`` read the samples in parallel (decoding 64 items of three 640x480 cameras in
    the training process took 10-14 s on a 2x H200 host, against 3 s for 10 training steps)."""
    import torch
    from lerobot.utils.random_utils import seeded_context
    from torch.utils.data import DataLoader, Subset

    n = len(dataset)
    idx = np.unique(np.linspace(0, n - 1, num=min(n, max_samples)).round().astype(int)).tolist()
    workers = min(num_workers, -(-len(idx) // batch_size))  # no more workers than batches
    loader = DataLoader(
        Subset(dataset, idx), batch_size=batch_size, shuffle=False, num_workers=workers
    )
    was_training = policy.training
    policy.eval()
    total, count = 0.0, 0
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    try:
        with seeded_context(seed), torch.no_grad(), autocast:
            for batch in loader:
                b = len(batch["index"])
                loss, _ = policy.forward(preprocessor(batch))
                total += float(loss) * b
                count += b
    finally:
        policy.train(was_training)
    return total / max(count, 1)


def copy_vlm(src_ckpt: Path, pretrained_dir: Path) -> None:
    vlm = bundled_vlm_dir(src_ckpt)
    if vlm is not None and vlm != (pretrained_dir / "vlm").resolve():
        shutil.copytree(vlm, pretrained_dir / "vlm", dirs_exist_ok=True)


def trim_log(path: Path, step: int) -> None:
    """Keep the loss log's lines up to ``step``: a resumed run repeats the steps after it."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def run_stage(
    plan: StagePlan,
    src_ckpt: Path,
    stage_dir: Path,
    device: str,
    accelerator: Any,
    opts: TrainOptions,
    cfg: Config,
) -> tuple[StageResult, Any, Any, Any]:
    """Train one stage (or resume it); returns the result, policy, preprocessor, train config."""
    import torch
    from lerobot.optim.factory import make_optimizer_and_scheduler
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker
    from lerobot.utils.random_utils import set_seed
    from lerobot.utils.train_utils import (
        get_step_checkpoint_dir,
        load_training_state,
        save_checkpoint,
        update_last_checkpoint,
    )
    from tqdm import tqdm

    name = plan.stage.label
    main = accelerator.is_main_process
    n_proc = accelerator.num_processes
    last = last_checkpoint(stage_dir)
    step = 0
    if last is not None:
        if not opts.resume:
            raise FileExistsError(
                f"{stage_dir} already holds checkpoints: pass --resume (resume=True) to continue"
                " from the last one, or choose another output directory."
            )
        step = saved_step(last)
        src_ckpt = last / "pretrained_model"
        log.info("%s: resuming from %s (step %d of %d)", name, last, step, plan.steps)
    # Each process draws its own flow-matching noise; the sampler's generator is shared.
    set_seed(opts.seed + plan.index + _SEED_STRIDE * accelerator.process_index, accelerator)
    t0 = time.perf_counter()
    policy, pre, post, train_cfg = build_stage(plan, src_ckpt, device, opts, stage_dir, cfg)
    log.info("%s: policy and processors built in %.1f s", name, time.perf_counter() - t0)
    if step >= plan.steps:
        return StageResult(name, src_ckpt, step, [], None), policy, pre, train_cfg

    optimizer, lr_scheduler = make_optimizer_and_scheduler(train_cfg, policy)
    if last is not None:
        step, optimizer, lr_scheduler = load_training_state(last, optimizer, lr_scheduler)
        if n_proc > 1:  # the saved RNG state is the main process's: give each its own again
            set_seed(opts.seed + step + _SEED_STRIDE * accelerator.process_index, accelerator)
    t0 = time.perf_counter()
    local = local_world_size()
    samples = (plan.steps - step) * opts.batch_size * n_proc  # the rest of the run, in one go
    cameras = sorted({k for s, _ in plan.mix for k in s.meta.camera_keys})
    images = Uint8Images(cameras if opts.uint8_images else ())
    loader, n_frames, n_episodes = train_loader(
        plan, train_cfg, opts, device, local, samples, collate=images.collate
    )
    val_set = None
    if opts.val_freq and opts.val_samples and main:
        src = plan.source
        val_set = open_dataset(train_cfg, src, src.val_episodes or src.train_episodes, opts)
    # accelerate shards the loader: each process reads its own part of every global batch
    policy, optimizer, loader, lr_scheduler = accelerator.prepare(
        policy, optimizer, loader, lr_scheduler
    )
    log.info("%s: datasets opened and prepared in %.1f s", name, time.perf_counter() - t0)
    from lerobot.datasets.utils import cycle

    batches = cycle(loader)
    metrics = {
        "loss": AverageMeter("loss", ":.3f"),
        "grad_norm": AverageMeter("grdn", ":.3f"),
        "lr": AverageMeter("lr", ":0.1e"),
        "update_s": AverageMeter("updt_s", ":.3f"),
        "dataloading_s": AverageMeter("data_s", ":.3f"),
    }
    tracker = MetricsTracker(
        opts.batch_size,
        n_frames,
        max(n_episodes, 1),
        metrics,
        initial_step=step,
        accelerator=accelerator,
    )
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    log.info(
        "%s: %d steps from %s on %s (batch %d x %d processes, %d frames, %s trainable params,"
        " precision %s, %d loader workers per process)",
        name,
        plan.steps,
        src_ckpt,
        device,
        opts.batch_size,
        n_proc,
        n_frames,
        f"{n_train:,}",
        accelerator.mixed_precision,
        loader.num_workers,
    )
    losses: list[float] = []
    final = src_ckpt
    bar = tqdm(
        total=plan.steps,
        initial=step,
        desc=name,
        unit="step",
        disable=not (opts.progress and main),
        dynamic_ncols=True,
    )
    first_step = step
    log_path = stage_dir / LOG_NAME
    if main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        trim_log(log_path, step)
    profiler = StepProfiler(
        opts.profile_steps, stage_dir, accelerator.process_index, device.startswith("cuda")
    )
    t_train = 0.0  # training wall time, validation excluded (for loss against time)
    t_mark = time.perf_counter()
    with open(log_path if main else os.devnull, "a") as log_file:
        policy.train()
        while step < plan.steps:
            profiler.before_step(step - first_step)
            t0 = time.perf_counter()
            batch = pre(images.restore(next(batches)))
            tracker.dataloading_s = time.perf_counter() - t0
            tracker, _ = update_policy(
                tracker,
                policy,
                batch,
                optimizer,
                train_cfg.optimizer.grad_clip_norm,
                accelerator=accelerator,
                lr_scheduler=lr_scheduler,
            )
            step += 1
            profiler.after_step()
            tracker.step()
            loss = float(tracker.loss.val)
            if n_proc > 1:  # the mean over processes: every process sees the same number
                loss = float(accelerator.reduce(torch.tensor(loss, device=device), "mean"))
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"{name}: loss became {loss} at step {step}. Lower the learning rate (--lr)"
                    " or check the dataset for NaN/Inf values."
                )
            losses.append(loss)
            now = time.perf_counter()
            t_train += now - t_mark
            t_mark = now
            record = {
                "stage": name,
                "step": step,
                "loss": loss,
                "grad_norm": float(tracker.grad_norm.val),
                "lr": float(tracker.lr.val),
                "update_s": float(tracker.update_s.val),
                "data_s": float(tracker.dataloading_s.val),
                "wall_s": round(t_train, 4),
            }
            if val_set is not None and step % opts.val_freq == 0:
                t0 = time.perf_counter()
                record["val_loss"] = validation_loss(
                    accelerator.unwrap_model(policy),
                    pre,
                    val_set,
                    batch_size=opts.batch_size,
                    max_samples=opts.val_samples,
                    seed=opts.seed,
                    accelerator=accelerator,
                    num_workers=loader.num_workers,
                )
                record["val_s"] = round(time.perf_counter() - t0, 3)
            log_file.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.1e}")
            if opts.log_freq and step % opts.log_freq == 0:
                if main:
                    log.info("%s %s", name, tracker)
                tracker.reset_averages()
            if step % train_cfg.save_freq == 0 or step == plan.steps:
                ckpt_dir = get_step_checkpoint_dir(stage_dir, plan.steps, step)
                t0 = time.perf_counter()
                if main:
                    save_checkpoint(
                        checkpoint_dir=ckpt_dir,
                        step=step,
                        cfg=train_cfg,
                        policy=accelerator.unwrap_model(policy),
                        optimizer=optimizer,
                        scheduler=lr_scheduler,
                        preprocessor=pre,
                        postprocessor=post,
                    )
                    copy_vlm(src_ckpt, ckpt_dir / "pretrained_model")
                    update_last_checkpoint(ckpt_dir)
                    log_file.flush()
                    log.info("%s: checkpoint %d in %.1f s", name, step, time.perf_counter() - t0)
                final = ckpt_dir / "pretrained_model"
            if n_proc > 1 and (step % train_cfg.save_freq == 0 or step == plan.steps):
                accelerator.wait_for_everyone()  # the checkpoint is whole before anyone reads it
            t_mark = time.perf_counter()  # validation and checkpoints are not training time
    profiler.close()
    bar.close()
    rate = (step - first_step) / t_train if t_train > 0 else None
    log.info("%s: done, %.2f steps/s, checkpoint %s", name, rate or 0.0, final)
    result = StageResult(name, final, step, losses, rate)
    return result, accelerator.unwrap_model(policy), pre, train_cfg
