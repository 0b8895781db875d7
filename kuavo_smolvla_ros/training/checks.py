"""Refusals before training: every dataset, stage mix and camera map is checked before the model
is built, so a run that cannot work stops in seconds with a message naming the field and the fix.

The dimension rules of ``dims`` run on every dataset's features, fps and stats against the
checkpoint and the package config (``check_dataset``): 16-D state and action, 16-D stats,
``max_state_dim`` kept, camera names mapped through ``inputs.cameras.rename_to``, dataset fps ==
``scheduler.action_fps``, action horizon == ``chunk_size``. ``plan_stages`` resolves each stage's
dataset, episode split and replay mix up front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import Config, ConfigError
from kuavo_smolvla_ros.training.options import TrainOptions

if TYPE_CHECKING:
    from kuavo_smolvla_ros.training.stages import Stage


class DatasetMismatchError(dims.DimensionError):
    """A dataset does not fit the checkpoint or the config (dims, cameras, fps, horizon)."""


class StagesError(ConfigError):
    """The stage list (``--stages`` YAML) is malformed; the text names the stage and field."""


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


def open_meta(ref: DatasetRef) -> Any:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    try:
        return LeRobotDatasetMetadata(ref.repo_id, root=ref.root)
    except Exception as exc:
        raise DatasetMismatchError(
            f"cannot open dataset {ref}: {type(exc).__name__}: {exc}. Offline? Pass a local"
            " dataset root."
        ) from None


def feature_shape(meta: Any, key: str) -> tuple[int, ...] | None:
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
        shape = feature_shape(meta, key)
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


def check_same_layout(metas: Mapping[str, Any], stage: str) -> None:
    """Mixed datasets share one batch: their features must have the same shapes."""
    items = list(metas.items())
    first_name, first = items[0]
    for other_name, other in items[1:]:
        for key in sorted(set(first.features) | set(other.features)):
            if key.startswith(("observation.", "action")) and feature_shape(
                first, key
            ) != feature_shape(other, key):
                raise DatasetMismatchError(
                    f"{stage}: datasets {first_name} and {other_name} cannot be mixed: {key} is"
                    f" {feature_shape(first, key)} in one and {feature_shape(other, key)} in the other."
                    " Convert them with the same cameras and image size."
                )


@dataclass
class Source:
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
class StagePlan:
    index: int
    stage: Stage
    steps: int
    source: Source
    mix: list[tuple[Source, float]]  # (source, weight), this stage's own included
    stats_sources: list[Source]  # every dataset seen so far
    rename_map: dict[str, str]


def split_episodes(meta: Any, val_fraction: float) -> tuple[list[int] | None, list[int] | None]:
    n = int(meta.total_episodes)
    n_val = int(n * val_fraction)
    if n_val < 1 or n_val >= n:
        return None, None
    return list(range(n - n_val)), list(range(n - n_val, n))


def plan_stages(
    stages: Sequence[Stage], ck: dims.CheckpointDims, cfg: Config, opts: TrainOptions, horizon: int
) -> list[StagePlan]:
    plans: list[StagePlan] = []
    labels = [s.label for s in stages]
    if len(set(labels)) != len(labels):
        raise StagesError(f"stage labels {labels} repeat: give stages distinct 'name's.")
    sources: list[Source] = []
    rename_map: dict[str, str] | None = None
    for k, stage in enumerate(stages, 1):
        where = f"stage {k} ({stage.label})"
        ref = resolve_dataset(stage.dataset)
        meta = open_meta(ref)
        stage_map = check_dataset(meta, ck, cfg, horizon, name=str(ref))
        if rename_map is not None and stage_map != rename_map:
            raise DatasetMismatchError(f"{where}: its cameras map differently from stage 1's.")
        rename_map = stage_map
        train_eps, val_eps = split_episodes(meta, opts.val_fraction)
        src = Source(ref, meta, stage.task, stage.label, train_eps, val_eps)
        mix: list[tuple[Source, float]] = []
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
        check_same_layout({str(s.ref): s.meta for s, _ in mix}, where)
        sources.append(src)
        steps = int(stage.steps if stage.steps is not None else opts.steps)
        if steps < 1:
            raise StagesError(f"{where}: steps={steps} must be >= 1.")
        seen = list({str(s.ref): s for s in sources}.values())
        plans.append(StagePlan(k, stage, steps, src, mix, seen, stage_map))
    return plans


def check_output_dir(out: Path, resume: bool) -> None:
    """A new run needs an empty or absent ``out``; ``resume`` continues the run already there."""
    if not resume and out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"output directory {out} exists and is not empty: pass --resume (resume=True) to"
            " continue its run, or choose another output directory."
        )
