"""Fine-tune SmolVLA on Kuavo's 16-D data with LeRobot's training pieces: one task, or several
tasks in order with earlier data mixed back in.

Everything that trains is LeRobot 0.4's: ``make_dataset`` (delta_timestamps from the policy
config), ``make_policy`` (pretrained weights, camera ``rename_map``), ``make_pre_post_processors``
(the checkpoint's saved processors with the dataset's stats), the policy's optimizer and scheduler
presets (``make_optimizer_and_scheduler``), ``lerobot_train.update_policy`` (one step under
accelerate, bf16 on GPU), ``save_checkpoint`` / ``load_training_state`` (the checkpoint layout and
resume of ``lerobot-train``). This module adds what LeRobot's ``train()`` cannot do for us:

1. The dimension rules of ``dims`` run on every dataset's features, fps and stats against the
   checkpoint and the package config *before* the model is built (``check_dataset``): 16-D state
   and action, 16-D stats, ``max_state_dim`` kept, camera names mapped through
   ``inputs.cameras.rename_to``, dataset fps == ``scheduler.action_fps``, action horizon ==
   ``chunk_size``. A base checkpoint trained for another robot (``lerobot/smolvla_base`` is 6-D)
   gets the dataset's 16-D state feature; its 32-D width is untouched.
2. Stages (``Stage``): each starts from the previous stage's last checkpoint with fresh optimizer
   and scheduler presets; ``mix`` samples earlier stages' data with given weights
   (``WeightedRandomSampler``); normalization stats are aggregated over every dataset seen so far.
   After each stage a validation loss (fixed seed, same samples every time) is computed on every
   task so far: ``<out>/validation.json`` and a printed table show forgetting.
3. Checkpoints stay loadable by ``policy.load_policy`` offline: a bundled backbone (``vlm/``) is
   copied into each saved ``pretrained_model``.

Layout of ``--out``: one dataset -> ``OUT/checkpoints/<step>/pretrained_model`` (+ ``last``
symlink), ``OUT/train_log.jsonl``, ``OUT/validation.json``; stages -> the same under
``OUT/stage_<k>/``, and ``OUT/validation.json`` with one row per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import Config, ConfigError, load_config
from kuavo_smolvla_ros.runners.eager import (
    CheckpointError,
    bundled_vlm_dir,
    processor_overrides,
    read_policy_config,
    resolve_checkpoint,
    resolve_device,
)

log = logging.getLogger(__name__)

MIXED_PRECISION = ("auto", "bf16", "fp16", "no")
LOG_NAME = "train_log.jsonl"
VALIDATION_NAME = "validation.json"
RUN_NAME = "kuavo_train.json"


class DatasetMismatchError(dims.DimensionError):
    """A dataset does not fit the checkpoint or the config (dims, cameras, fps, horizon)."""


class StagesError(ConfigError):
    """The stage list (``--stages`` YAML) is malformed; the text names the stage and field."""


# ---------------------------------------------------------------------------------------------
# Inputs: datasets, stages, options.


@dataclass(frozen=True)
class DatasetRef:
    """A LeRobot dataset: a local root (``meta/info.json`` inside) or a hub repo id."""

    repo_id: str
    root: Path | None = None

    @property
    def label(self) -> str:
        return self.root.name if self.root is not None else self.repo_id

    def __str__(self) -> str:
        return str(self.root) if self.root is not None else self.repo_id


def resolve_dataset(spec: str | Path, base_dir: Path | None = None) -> DatasetRef:
    """``spec`` as a local dataset root (also relative to ``base_dir``), else a hub repo id."""
    text = str(spec)
    for cand in (Path(text).expanduser(), (base_dir / text) if base_dir else None):
        if cand is not None and (cand / "meta" / "info.json").is_file():
            root = cand.resolve()
            return DatasetRef(repo_id=f"local/{root.name}", root=root)
    looks_local = text.startswith((".", "/", "~")) or Path(text).expanduser().exists()
    if looks_local or text.count("/") != 1:
        raise DatasetMismatchError(
            f"dataset {text!r} is not a LeRobot dataset root (no meta/info.json there) nor a hub"
            " repo id like 'user/name'. Convert bags first (kuavo-smolvla-convert)."
        )
    return DatasetRef(repo_id=text)


@dataclass(frozen=True)
class Stage:
    """One fine-tuning stage: a dataset, its language instruction, steps and replay mix.

    ``task`` replaces the dataset's own task text for every frame when set. ``mix`` maps an
    earlier stage (its ``name`` or ``dataset`` as written) to the fraction of each batch drawn
    from it; this stage's dataset gets the rest (``1 - sum``), unless it is named too.
    """

    dataset: str
    task: str | None = None
    steps: int | None = None
    mix: Mapping[str, float] = field(default_factory=dict)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.task or Path(self.dataset).name


def load_stages(path: str | Path) -> list[Stage]:
    """Read a stages YAML: a list (or ``stages:`` list) of {dataset, task, steps, mix, name}."""
    p = Path(path)
    if not p.is_file():
        raise StagesError(f"stages file {p} does not exist.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise StagesError(f"{p} is not valid YAML: {exc}") from None
    if isinstance(raw, dict) and "stages" in raw:
        raw = raw["stages"]
    if not isinstance(raw, list) or not raw:
        raise StagesError(f"{p}: expected a non-empty list of stages (or 'stages: [...]').")
    known = {f.name for f in dataclasses.fields(Stage)}
    stages = []
    for i, entry in enumerate(raw, 1):
        where = f"{p} stage {i}"
        if not isinstance(entry, dict):
            raise StagesError(f"{where}: expected a mapping with 'dataset', got {entry!r}.")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise StagesError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}.")
        if not entry.get("dataset"):
            raise StagesError(f"{where}: 'dataset' is missing.")
        mix = entry.get("mix") or {}
        if not isinstance(mix, dict):
            raise StagesError(f"{where}: 'mix' must map earlier datasets to weights, got {mix!r}.")
        stages.append(
            Stage(
                dataset=_beside(p, str(entry["dataset"])),
                task=entry.get("task"),
                steps=entry.get("steps"),
                mix={_beside(p, str(k)): v for k, v in mix.items()},
                name=entry.get("name"),
            )
        )
    return stages


def _beside(stages_file: Path, dataset: str) -> str:
    """A dataset path relative to the stages file, made absolute (others stay as written)."""
    here = stages_file.parent / dataset
    if not Path(dataset).is_absolute() and (here / "meta" / "info.json").is_file():
        return str(here.resolve())
    return dataset


@dataclass(frozen=True)
class TrainOptions:
    """How to train; the policy's own presets supply the rest (AdamW, cosine schedule, clip)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float | None = None  # None: the policy preset (1e-4 for SmolVLA)
    device: str = "auto"
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none elsewhere
    num_workers: int = 2
    seed: int = 1000
    save_freq: int = 0  # 0: save only at the end of each stage
    log_freq: int = 50
    val_fraction: float = 0.1  # held-out episodes per dataset (none if the dataset is small)
    val_samples: int = 64  # validation samples per task; 0 disables validation
    action_horizon: int | None = None  # None: the checkpoint's chunk_size (anything else refused)
    video_backend: str | None = None  # None: torchcodec if it loads, else pyav
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
        if min(self.num_workers, self.save_freq, self.log_freq, self.val_samples) < 0:
            raise ConfigError("num_workers, save_freq, log_freq and val_samples must be >= 0.")


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


# ---------------------------------------------------------------------------------------------
# Checks, all before the model is built.


@functools.cache
def video_backend() -> str:
    """LeRobot picks torchcodec whenever it is installed; it also needs FFmpeg's libraries."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401

        return "torchcodec"
    except Exception:
        return "pyav"


def _open_meta(ref: DatasetRef) -> Any:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    try:
        return LeRobotDatasetMetadata(ref.repo_id, root=ref.root)
    except Exception as exc:
        raise DatasetMismatchError(
            f"cannot open dataset {ref}: {type(exc).__name__}: {exc}. Offline? Pass a local"
            " dataset root."
        ) from None


def _shape(meta: Any, key: str) -> tuple[int, ...] | None:
    ft = meta.features.get(key)
    return tuple(int(n) for n in ft["shape"]) if ft else None


def check_dataset(
    meta: Any, ck: dims.CheckpointDims, cfg: Config, horizon: int, name: str = ""
) -> dict[str, str]:
    """Every rule a dataset must pass before training; returns LeRobot's camera ``rename_map``.

    Raises ``DimensionError`` (``DatasetMismatchError``) naming the dataset, the field and the fix.
    """
    name = name or str(getattr(meta, "root", "dataset"))
    robot_dim = cfg.robot.dim
    dims.check_checkpoint(dataclasses.replace(ck, state_dim=None, action_dim=None), robot_dim)
    for key in (dims.STATE_KEY, dims.ACTION_KEY):
        shape = _shape(meta, key)
        if shape is None:
            raise DatasetMismatchError(
                f"dataset {name} has no {key!r} feature (it has {sorted(meta.features)})."
            )
        if shape != (robot_dim,):
            padded = len(shape) == 1 and shape[0] in (ck.max_state_dim, ck.max_action_dim)
            hint = (
                f" Keep the data at the robot's native {robot_dim} dims: the model pads to"
                f" {ck.max_state_dim} inside (padding before the 16-D normalizer gives 'size of"
                " tensor a (32) must match b (16)')."
                if padded
                else " Convert the data with the robot profile of the config (robot.joint_names),"
                " or give the config the dataset's robot profile."
            )
            raise DatasetMismatchError(
                f"dataset {name}: {key} is {list(shape)} but the robot profile has {robot_dim}"
                f" dims.{hint}"
            )
    stats = {k: {n: v for n, v in d.items() if n != "count"} for k, d in (meta.stats or {}).items()}
    for key in (dims.STATE_KEY, dims.ACTION_KEY):
        if not {"mean", "std"} <= set(stats.get(key, {})):
            raise DatasetMismatchError(
                f"dataset {name} has no mean/std stats for {key} (meta/stats.json), which"
                " SmolVLA's normalizer needs. Recompute them with LeRobot or re-convert the data."
            )
    dims.check_stats(stats, robot_dim)
    fps = float(meta.fps)
    if abs(fps - cfg.scheduler.action_fps) > 1e-6:
        raise DatasetMismatchError(
            f"dataset {name} is recorded at {fps:g} fps but scheduler.action_fps is"
            f" {cfg.scheduler.action_fps:g}: one chunk step must last one dataset frame. Set"
            f" scheduler.action_fps: {fps:g} in the config (the node uses it too) or convert the"
            f" bags at {cfg.scheduler.action_fps:g} fps (kuavo-smolvla-convert --fps)."
        )
    cams = tuple(k[len(dims.IMAGE_PREFIX) :] for k in meta.camera_keys)
    if set(cams) != set(cfg.inputs.cameras.names):
        raise DatasetMismatchError(
            f"dataset {name} has cameras {sorted(cams)} but inputs.cameras.names lists"
            f" {sorted(cfg.inputs.cameras.names)}: the node would feed the policy other cameras"
            " than it was trained on. Make inputs.cameras.names the dataset's cameras (map them"
            " to the checkpoint's image features with inputs.cameras.rename_to)."
        )
    mapping = dims.check_cameras(ck, cams, cfg.inputs.cameras.rename_map)
    dims.check_horizon(horizon, ck.chunk_size, "training action horizon")
    dims.check_n_action_steps(cfg.scheduler.n_action_steps, ck.chunk_size)
    return {
        dims.IMAGE_PREFIX + cam: feat
        for cam, feat in mapping.items()
        if dims.IMAGE_PREFIX + cam != feat
    }


def _check_same_layout(metas: Mapping[str, Any], stage: str) -> None:
    """Mixed datasets share one batch: their features must have the same shapes."""
    items = list(metas.items())
    first_name, first = items[0]
    for other_name, other in items[1:]:
        for key in sorted(set(first.features) | set(other.features)):
            if key.startswith(("observation.", "action")) and _shape(first, key) != _shape(
                other, key
            ):
                raise DatasetMismatchError(
                    f"{stage}: datasets {first_name} and {other_name} cannot be mixed: {key} is"
                    f" {_shape(first, key)} in one and {_shape(other, key)} in the other."
                    " Convert them with the same cameras and image size."
                )


# ---------------------------------------------------------------------------------------------
# Planning: resolve every stage and check every dataset up front.


@dataclass
class _Source:
    """A dataset as used by a stage: its ref, metadata, task override and episode split."""

    ref: DatasetRef
    meta: Any
    task: str | None
    label: str
    train_episodes: list[int] | None
    val_episodes: list[int] | None

    @property
    def val_split(self) -> str:
        return "held-out" if self.val_episodes is not None else "train"


@dataclass
class _StagePlan:
    index: int
    stage: Stage
    steps: int
    source: _Source
    mix: list[tuple[_Source, float]]  # (source, weight), this stage's own included
    stats_sources: list[_Source]  # every dataset seen so far
    rename_map: dict[str, str]


def _split(meta: Any, val_fraction: float) -> tuple[list[int] | None, list[int] | None]:
    n = int(meta.total_episodes)
    n_val = int(n * val_fraction)
    if n_val < 1 or n_val >= n:
        return None, None
    return list(range(n - n_val)), list(range(n - n_val, n))


def _plan(
    stages: Sequence[Stage], ck: dims.CheckpointDims, cfg: Config, opts: TrainOptions, horizon: int
) -> list[_StagePlan]:
    plans: list[_StagePlan] = []
    labels = [s.label for s in stages]
    if len(set(labels)) != len(labels):
        raise StagesError(f"stage labels {labels} repeat: give stages distinct 'name's.")
    sources: list[_Source] = []
    rename_map: dict[str, str] | None = None
    for k, stage in enumerate(stages, 1):
        where = f"stage {k} ({stage.label})"
        ref = resolve_dataset(stage.dataset)
        meta = _open_meta(ref)
        stage_map = check_dataset(meta, ck, cfg, horizon, name=str(ref))
        if rename_map is not None and stage_map != rename_map:
            raise DatasetMismatchError(f"{where}: its cameras map differently from stage 1's.")
        rename_map = stage_map
        train_eps, val_eps = _split(meta, opts.val_fraction)
        src = _Source(ref, meta, stage.task, stage.label, train_eps, val_eps)
        mix: list[tuple[_Source, float]] = []
        for key, weight in stage.mix.items():
            if not (isinstance(weight, (int, float)) and 0 < weight <= 1):
                raise StagesError(f"{where}: mix weight for {key!r} is {weight!r}; use 0 < w <= 1.")
            if key in (stage.dataset, stage.name, str(ref)):
                mix.append((src, float(weight)))
                continue
            match = [
                s
                for s, st in zip(sources, stages)
                if key in (st.dataset, st.name, str(s.ref), s.label)
            ]
            if not match:
                raise StagesError(
                    f"{where}: mix names {key!r}, which is no earlier stage's dataset or name"
                    f" (earlier: {[st.dataset for st in stages[: k - 1]]})."
                )
            mix.append((match[0], float(weight)))
        if all(s is not src for s, _ in mix):
            rest = 1.0 - sum(w for _, w in mix)
            if rest <= 1e-9:
                raise StagesError(
                    f"{where}: mix weights sum to {1 - rest:g}, leaving nothing for the stage's"
                    " own dataset; keep the sum below 1 or name the stage's dataset in mix."
                )
            mix.insert(0, (src, rest))
        _check_same_layout({str(s.ref): s.meta for s, _ in mix}, where)
        sources.append(src)
        steps = int(stage.steps if stage.steps is not None else opts.steps)
        if steps < 1:
            raise StagesError(f"{where}: steps={steps} must be >= 1.")
        seen = list({str(s.ref): s for s in sources}.values())
        plans.append(_StagePlan(k, stage, steps, src, mix, seen, stage_map))
    return plans


# ---------------------------------------------------------------------------------------------
# Datasets for torch.


class _TaskText:
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


def _make_dataset(train_cfg: Any, src: _Source, episodes: list[int] | None, opts: TrainOptions):
    from lerobot.configs.default import DatasetConfig
    from lerobot.datasets.factory import make_dataset

    ds_cfg = DatasetConfig(
        repo_id=src.ref.repo_id,
        root=str(src.ref.root) if src.ref.root else None,
        episodes=episodes,
        use_imagenet_stats=False,
        video_backend=opts.video_backend or video_backend(),
    )
    return _TaskText(make_dataset(dataclasses.replace(train_cfg, dataset=ds_cfg)), src.task)


def _aggregate_stats(sources: Sequence[_Source]) -> dict[str, dict[str, np.ndarray]]:
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


# ---------------------------------------------------------------------------------------------
# The training run.


def _mixed_precision(choice: str, device: str) -> str:
    import torch

    if choice != "auto":
        return choice
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _accelerator(device: str, mixed_precision: str) -> Any:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=mixed_precision,
        cpu=device == "cpu",
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _last_checkpoint(stage_dir: Path) -> Path | None:
    last = stage_dir / "checkpoints" / "last"
    return last.resolve() if (last / "training_state").is_dir() else None


def _saved_step(ckpt_dir: Path) -> int:
    from lerobot.utils.train_utils import load_training_step

    return int(load_training_step(ckpt_dir / "training_state"))


def _build(
    plan: _StagePlan, src_ckpt: Path, device: str, opts: TrainOptions, stage_dir: Path, cfg: Config
):
    """Policy, processors, train config for one stage, from ``src_ckpt`` (LeRobot factories)."""
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_policy, make_pre_post_processors

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
            video_backend=opts.video_backend or video_backend(),
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
    stats = _aggregate_stats(plan.stats_sources)
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


def _train_loader(plan: _StagePlan, train_cfg: Any, opts: TrainOptions, device: str):
    import torch
    from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, WeightedRandomSampler

    parts = [(_make_dataset(train_cfg, s, s.train_episodes, opts), w) for s, w in plan.mix]
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


def validation_loss(
    policy: Any,
    preprocessor: Any,
    dataset: Any,
    *,
    batch_size: int = 8,
    max_samples: int = 64,
    seed: int = 0,
    accelerator: Any = None,
) -> float:
    """Mean flow-matching loss on evenly spaced samples with fixed noise: comparable over stages."""
    import torch
    from lerobot.utils.random_utils import seeded_context
    from torch.utils.data import DataLoader, Subset

    n = len(dataset)
    idx = np.unique(np.linspace(0, n - 1, num=min(n, max_samples)).round().astype(int)).tolist()
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
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


def _copy_vlm(src_ckpt: Path, pretrained_dir: Path) -> None:
    vlm = bundled_vlm_dir(src_ckpt)
    if vlm is not None and vlm != (pretrained_dir / "vlm").resolve():
        shutil.copytree(vlm, pretrained_dir / "vlm", dirs_exist_ok=True)


def _trim_log(path: Path, step: int) -> None:
    """Keep the loss log's lines up to ``step``: a resumed run repeats the steps after it."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _run_stage(
    plan: _StagePlan,
    src_ckpt: Path,
    stage_dir: Path,
    device: str,
    accelerator: Any,
    opts: TrainOptions,
    cfg: Config,
) -> tuple[StageResult, Any, Any, Any]:
    """Train one stage (or resume it); returns the result, policy, preprocessor, train config."""
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
    last = _last_checkpoint(stage_dir)
    step = 0
    if last is not None:
        if not opts.resume:
            raise FileExistsError(
                f"{stage_dir} already holds checkpoints: pass --resume (resume=True) to continue"
                " from the last one, or choose another output directory."
            )
        step = _saved_step(last)
        src_ckpt = last / "pretrained_model"
        log.info("%s: resuming from %s (step %d of %d)", name, last, step, plan.steps)
    set_seed(opts.seed + plan.index, accelerator=accelerator)
    policy, pre, post, train_cfg = _build(plan, src_ckpt, device, opts, stage_dir, cfg)
    if step >= plan.steps:
        return StageResult(name, src_ckpt, step, [], None), policy, pre, train_cfg

    optimizer, lr_scheduler = make_optimizer_and_scheduler(train_cfg, policy)
    if last is not None:
        step, optimizer, lr_scheduler = load_training_state(last, optimizer, lr_scheduler)
    loader, n_frames, n_episodes = _train_loader(plan, train_cfg, opts, device)
    policy, optimizer, lr_scheduler = accelerator.prepare(policy, optimizer, lr_scheduler)
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
        "%s: %d steps from %s on %s (batch %d, %d frames, %s trainable params, precision %s)",
        name,
        plan.steps,
        src_ckpt,
        device,
        opts.batch_size,
        n_frames,
        f"{n_train:,}",
        accelerator.mixed_precision,
    )
    stage_dir.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    final = src_ckpt
    bar = tqdm(
        total=plan.steps,
        initial=step,
        desc=name,
        unit="step",
        disable=not opts.progress,
        dynamic_ncols=True,
    )
    t_start = time.perf_counter()
    first_step = step
    _trim_log(stage_dir / LOG_NAME, step)
    with (stage_dir / LOG_NAME).open("a") as log_file:
        policy.train()
        while step < plan.steps:
            t0 = time.perf_counter()
            batch = pre(next(batches))
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
            tracker.step()
            loss = float(tracker.loss.val)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"{name}: loss became {loss} at step {step}. Lower the learning rate (--lr)"
                    " or check the dataset for NaN/Inf values."
                )
            losses.append(loss)
            record = {
                "stage": name,
                "step": step,
                "loss": loss,
                "grad_norm": float(tracker.grad_norm.val),
                "lr": float(tracker.lr.val),
                "update_s": float(tracker.update_s.val),
                "data_s": float(tracker.dataloading_s.val),
            }
            log_file.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.1e}")
            if opts.log_freq and step % opts.log_freq == 0:
                log.info("%s %s", name, tracker)
                tracker.reset_averages()
            if step % train_cfg.save_freq == 0 or step == plan.steps:
                ckpt_dir = get_step_checkpoint_dir(stage_dir, plan.steps, step)
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
                _copy_vlm(src_ckpt, ckpt_dir / "pretrained_model")
                update_last_checkpoint(ckpt_dir)
                final = ckpt_dir / "pretrained_model"
                log_file.flush()
    bar.close()
    wall = time.perf_counter() - t_start
    rate = (step - first_step) / wall if wall > 0 else None
    log.info("%s: done, %.2f steps/s, checkpoint %s", name, rate or 0.0, final)
    result = StageResult(name, final, step, losses, rate)
    return result, accelerator.unwrap_model(policy), pre, train_cfg


def format_validation(validation: Mapping[str, Any]) -> str:
    """The per-task validation losses as a text table (rows: after stage, columns: task)."""
    heads = [f"{t['name']} [{t['split']}]" for t in validation["tasks"]]
    widths = [max(len(h), 8) for h in heads]
    first = max([len("after stage"), *(len(r["stage"]) for r in validation["rows"])])
    lines = [
        "validation loss (rows: after stage; columns: task [split])",
        "  ".join(["after stage".ljust(first), *(h.rjust(w) for h, w in zip(heads, widths))]),
    ]
    for row in validation["rows"]:
        cells = []
        for t, w in zip(validation["tasks"], widths):
            v = row["val_loss"].get(t["name"])
            cells.append(("-" if v is None else f"{v:.4f}").rjust(w))
        lines.append("  ".join([row["stage"].ljust(first), *cells]))
    return "\n".join(lines)


def train_stages(
    checkpoint: str | Path,
    stages: Sequence[Stage],
    out: str | Path,
    config: Config | None = None,
    options: TrainOptions | None = None,
    *,
    flat: bool = False,
) -> TrainResult:
    """Fine-tune ``checkpoint`` through ``stages`` in order; ``flat`` puts a single stage in
    ``out`` itself (no ``stage_1``). Every dataset is checked before the first step."""
    cfg = config or Config()
    opts = options or TrainOptions()
    if not stages:
        raise StagesError("no stages to train.")
    if flat and len(stages) != 1:
        raise StagesError("flat=True needs exactly one stage.")
    out = Path(out)
    device = resolve_device(opts.device)
    ckpt = resolve_checkpoint(checkpoint)
    policy_cfg = read_policy_config(ckpt, device)
    ck = dims.CheckpointDims.from_policy_config(policy_cfg, dims.state_proj_in_features(ckpt))
    horizon = (
        opts.action_horizon
        if opts.action_horizon is not None
        else len(policy_cfg.action_delta_indices)
    )
    plans = _plan(stages, ck, cfg, opts, horizon)
    if not opts.resume and out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"output directory {out} exists and is not empty: pass --resume (resume=True) to"
            " continue its run, or choose another output directory."
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_NAME).write_text(
        json.dumps(
            {
                "checkpoint": str(checkpoint),
                "stages": [dataclasses.asdict(s) | {"mix": dict(s.mix)} for s in stages],
                "options": dataclasses.asdict(opts),
            },
            indent=2,
        )
    )
    accelerator = _accelerator(device, _mixed_precision(opts.mixed_precision, device))
    validation: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "tasks": [
            {
                "name": p.source.label,
                "dataset": str(p.source.ref),
                "task": p.source.task,
                "split": p.source.val_split,
            }
            for p in plans
        ],
        "rows": [],
    }
    val_path = out / VALIDATION_NAME
    old_rows: dict[str, Any] = {}
    if opts.resume and val_path.is_file():
        old_rows = {r["stage"]: r for r in json.loads(val_path.read_text()).get("rows", [])}
    results: list[StageResult] = []
    src = ckpt
    for plan in plans:
        stage_dir = out if flat else out / f"stage_{plan.index}"
        result, policy, pre, train_cfg = _run_stage(
            plan, src, stage_dir, device, accelerator, opts, cfg
        )
        src = result.checkpoint
        row_key = f"stage_{plan.index}"
        if result.steps_per_s is None and row_key in old_rows:
            result.val_loss = dict(old_rows[row_key]["val_loss"])
        elif opts.val_samples:
            for earlier in plans[: plan.index]:
                s = earlier.source
                ds = _make_dataset(train_cfg, s, s.val_episodes or s.train_episodes, opts)
                result.val_loss[s.label] = validation_loss(
                    policy,
                    pre,
                    ds,
                    batch_size=opts.batch_size,
                    max_samples=opts.val_samples,
                    seed=opts.seed,
                    accelerator=accelerator,
                )
        results.append(result)
        validation["rows"].append(
            {
                "stage": row_key,
                "label": plan.stage.label,
                "checkpoint": str(result.checkpoint),
                "steps": result.steps,
                "steps_per_s": result.steps_per_s,
                "val_loss": result.val_loss,
            }
        )
        val_path.write_text(json.dumps(validation, indent=2))
        if opts.val_samples:
            log.info("\n%s", format_validation(validation))
        del policy, pre
        accelerator.free_memory()
    return TrainResult(results, validation)


def finetune(
    checkpoint: str | Path,
    dataset_root: str | Path,
    out: str | Path,
    steps: int,
    config: Config | None = None,
    batch_size: int = 8,
    lr: float | None = None,
    *,
    task: str | None = None,
    options: TrainOptions | None = None,
) -> Path:
    """Fine-tune on one dataset; returns the final ``pretrained_model`` dir (``load_policy`` it).

    ``options`` gives every other knob; ``steps``, ``batch_size`` and ``lr`` override it.
    """
    opts = dataclasses.replace(options or TrainOptions(), steps=steps, batch_size=batch_size, lr=lr)
    result = train_stages(
        checkpoint, [Stage(dataset=str(dataset_root), task=task)], out, config, opts, flat=True
    )
    return result.checkpoint


# ---------------------------------------------------------------------------------------------
# CLI.


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
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-freq", type=int, default=d.save_freq, help="0: at the end only")
    p.add_argument("--log-freq", type=int, default=d.log_freq)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--val-samples", type=int, default=d.val_samples, help="0: no validation")
    p.add_argument("--action-horizon", type=int, default=None, help="must equal chunk_size")
    p.add_argument("--video-backend", choices=("torchcodec", "pyav"), default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(a.config) if a.config else Config()
        opts = TrainOptions(
            steps=a.steps,
            batch_size=a.batch_size,
            lr=a.lr,
            device=a.device,
            mixed_precision=a.mixed_precision,
            num_workers=a.num_workers,
            seed=a.seed,
            save_freq=a.save_freq,
            log_freq=a.log_freq,
            val_fraction=a.val_fraction,
            val_samples=a.val_samples,
            action_horizon=a.action_horizon,
            video_backend=a.video_backend,
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
    if opts.val_samples:
        print(format_validation(result.validation))
    for r in result.stages:
        rate = f"{r.steps_per_s:.2f} steps/s" if r.steps_per_s else "already complete"
        print(f"{r.name}: {r.steps} steps ({rate}) -> {r.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
