"""Dimension rules between a SmolVLA checkpoint, the robot profile, the stats and the cameras.

The rules (they are what makes a 32-D pretrained SmolVLA work for 16-D Kuavo):
1. The checkpoint's ``max_state_dim`` / ``max_action_dim`` (32 for ``lerobot/smolvla_base``)
   are never changed: ``state_proj`` is [hidden, 32] in the weights. Setting them to 16 gives
   ``size mismatch for model.state_proj.weight``.
2. State, action and their normalization stats stay at the robot's native 16-D; the model pads
   to 32 internally (``pad_vector``) and the policy cuts its output back to the action feature's
   16 dims. Padding data before a 16-D normalizer gives ``size of tensor a (32) must match b (16)``.
3. The action horizon fed to the model equals ``chunk_size``; otherwise attention fails with
   ``267 vs 233`` (267 - 233 = 50 - 16).
Every check here runs before any tensor math and names the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
# Neutral values for padded dims: normalize to x itself (mean 0/std 1) or to a [-1, 1] range.
PAD_VALUES = {
    "mean": 0.0,
    "std": 1.0,
    "min": -1.0,
    "max": 1.0,
    "q01": -1.0,
    "q99": 1.0,
    "q10": -1.0,
    "q90": 1.0,
}
_RANGE_PAIRS = (("min", "max"), ("q01", "q99"), ("q10", "q90"))


class DimensionError(ValueError):
    """The checkpoint, the robot profile, the stats or the data do not fit; the text says how."""


@dataclass(frozen=True)
class CheckpointDims:
    """What a checkpoint declares, read from its config.json without building the model."""

    max_state_dim: int
    max_action_dim: int
    state_dim: int | None
    action_dim: int | None
    chunk_size: int
    n_action_steps: int
    image_features: tuple[str, ...]
    empty_cameras: int = 0
    state_proj_in: int | None = None

    @classmethod
    def from_policy_config(cls, cfg: Any, state_proj_in: int | None = None) -> CheckpointDims:
        feats = dict(cfg.input_features or {})
        outs = dict(cfg.output_features or {})
        st = feats.get(STATE_KEY)
        ac = outs.get(ACTION_KEY)
        return cls(
            max_state_dim=int(cfg.max_state_dim),
            max_action_dim=int(cfg.max_action_dim),
            state_dim=int(st.shape[0]) if st is not None else None,
            action_dim=int(ac.shape[0]) if ac is not None else None,
            chunk_size=int(cfg.chunk_size),
            n_action_steps=int(cfg.n_action_steps),
            image_features=tuple(k for k in feats if k.startswith(IMAGE_PREFIX)),
            empty_cameras=int(getattr(cfg, "empty_cameras", 0) or 0),
            state_proj_in=state_proj_in,
        )


def state_proj_in_features(checkpoint_dir: str | Path) -> int | None:
    """Input width of ``model.state_proj.weight`` in the saved weights (header read only)."""
    path = Path(checkpoint_dir) / "model.safetensors"
    if not path.is_file():
        return None
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    entry = header.get("model.state_proj.weight")
    return int(entry["shape"][1]) if entry else None


def check_checkpoint(dims: CheckpointDims, robot_dim: int) -> None:
    """Rules 1 and 2 for the model itself: width, saved weights, and native feature dims."""
    if dims.state_proj_in is not None and dims.state_proj_in != dims.max_state_dim:
        raise DimensionError(
            f"the checkpoint's weights have state_proj [hidden, {dims.state_proj_in}] but its"
            f" config says max_state_dim={dims.max_state_dim}. Someone changed max_state_dim: set it"
            f" back to {dims.state_proj_in} (keep the pretrained width; the robot's"
            f" {robot_dim}-D state is padded inside the model)."
        )
    for name, width in (
        ("max_state_dim", dims.max_state_dim),
        ("max_action_dim", dims.max_action_dim),
    ):
        if robot_dim > width:
            raise DimensionError(
                f"the robot profile has {robot_dim} dims but the checkpoint's {name} is {width}:"
                f" a robot wider than the checkpoint cannot use it. Use a checkpoint with"
                f" {name} >= {robot_dim} or a robot profile with fewer dims."
            )
    for key, dim in ((STATE_KEY, dims.state_dim), (ACTION_KEY, dims.action_dim)):
        if dim is not None and dim != robot_dim:
            hint = (
                " The checkpoint was padded to the model width: its features must be the"
                " robot's native size."
                if dim in (dims.max_state_dim, dims.max_action_dim)
                else " Fine-tune it on Kuavo data first (kuavo-smolvla-train) or pick the robot"
                " profile it was trained for."
            )
            raise DimensionError(
                f"the checkpoint's {key} feature is {dim}-D but the robot profile has"
                f" {robot_dim} dims.{hint}"
            )


def check_stats(stats: Mapping[str, Mapping[str, Any]], robot_dim: int) -> None:
    """Rule 2 for the normalizer: 16-D stats for 16-D data (never padded to the model width)."""
    for key in (STATE_KEY, ACTION_KEY):
        for stat, value in (stats.get(key) or {}).items():
            n = int(np.asarray(value).reshape(-1).shape[0])
            if n != robot_dim:
                raise DimensionError(
                    f"normalization stats {key}.{stat} have {n} values but the robot profile has"
                    f" {robot_dim} dims. Stats must stay at the native size (no padding to the"
                    f" model width); recompute them from the {robot_dim}-D dataset."
                )


def check_cameras(
    dims: CheckpointDims, robot_cameras: tuple[str, ...], rename_map: Mapping[str, str]
) -> dict[str, str]:
    """Robot camera name -> checkpoint image feature key; errors name both sides and the fix."""
    mapping = {cam: IMAGE_PREFIX + rename_map.get(cam, cam) for cam in robot_cameras}
    expected = set(dims.image_features)
    unknown = sorted(v for v in mapping.values() if v not in expected)
    if unknown:
        raise DimensionError(
            f"camera(s) {unknown} are not image features of the checkpoint, which expects"
            f" {sorted(expected)}. Map robot cameras to them with inputs.cameras.rename_to"
            f" (robot cameras: {list(robot_cameras)})."
        )
    missing = sorted(expected - set(mapping.values()))
    if len(missing) > dims.empty_cameras:
        raise DimensionError(
            f"the checkpoint expects image features {missing} that no robot camera feeds."
            f" Add the cameras to inputs.cameras (with rename_to if their names differ)."
        )
    return mapping


def check_horizon(horizon: int, chunk_size: int, what: str = "action horizon") -> None:
    """Rule 3: the horizon given to the model must be ``chunk_size``."""
    if horizon != chunk_size:
        raise DimensionError(
            f"the {what} is {horizon} steps but the checkpoint's chunk_size is {chunk_size}:"
            f" SmolVLA's attention would fail with a size mismatch that differs by"
            f" {abs(chunk_size - horizon)} (the '267 vs 233' error, 267 - 233 = 50 - 16)."
            f" Use {chunk_size} steps (action delta_timestamps of length chunk_size in training)."
        )


def check_n_action_steps(n_action_steps: int, chunk_size: int) -> None:
    if not 1 <= n_action_steps <= chunk_size:
        raise DimensionError(
            f"scheduler.n_action_steps={n_action_steps} must be between 1 and the checkpoint's"
            f" chunk_size={chunk_size}: a chunk cannot be executed beyond its end."
        )


def pad_stats(stats: Mapping[str, Any], target_dim: int) -> dict[str, np.ndarray]:
    """Pad one feature's stats to ``target_dim`` with neutral values (std 1, ranges [-1, 1]).

    Every LeRobot mode stays finite on padded dims: MEAN_STD divides by 1, MIN_MAX / QUANTILES /
    QUANTILE10 by a range of 2. For users whose data is already padded to the model width.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in stats.items():
        v = np.asarray(value, dtype=np.float32).reshape(-1)
        if v.shape[0] > target_dim:
            raise DimensionError(f"stats {name} have {v.shape[0]} values, more than {target_dim}.")
        pad = np.full(target_dim - v.shape[0], PAD_VALUES.get(name, 0.0), np.float32)
        out[name] = np.concatenate([v, pad])
    return sanitize_stats(out)


def sanitize_stats(stats: Mapping[str, Any], min_scale: float = 1e-3) -> dict[str, np.ndarray]:
    """Replace degenerate scales (a dim that never moved in the data) so no mode divides by ~0.

    std < min_scale -> 1; a range narrower than min_scale -> centre +- 1. Without this, LeRobot's
    eps of 1e-8 turns any deviation on such a dim into a value of ~1e8.
    """
    out = {k: np.array(v, dtype=np.float32, copy=True).reshape(-1) for k, v in stats.items()}
    if "std" in out:
        bad = ~np.isfinite(out["std"]) | (out["std"] < min_scale)
        out["std"][bad] = 1.0
    for lo, hi in _RANGE_PAIRS:
        if lo in out and hi in out:
            width = out[hi] - out[lo]
            bad = ~np.isfinite(width) | (width < min_scale)
            centre = np.where(np.isfinite(out[lo] + out[hi]), (out[lo] + out[hi]) / 2, 0.0)
            out[lo][bad] = centre[bad] - 1.0
            out[hi][bad] = centre[bad] + 1.0
    return out
