"""Dimension rules: padding stats, refusing wider robots, horizon checks (pure + LeRobot normalizer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.processor import NormalizerProcessorStep, UnnormalizerProcessorStep

from kuavo_smolvla_ros.core.dims import (
    CheckpointDims,
    DimensionError,
    check_checkpoint,
    check_horizon,
    check_stats,
    pad_stats,
    sanitize_stats,
)
from kuavo_smolvla_ros.demo.model import kuavo_stats

MODES = [m for m in NormalizationMode if m is not NormalizationMode.IDENTITY]


def _dims(**kw) -> CheckpointDims:
    base = dict(
        max_state_dim=32,
        max_action_dim=32,
        state_dim=16,
        action_dim=16,
        chunk_size=50,
        n_action_steps=50,
        image_features=("observation.images.head_cam_h",),
        state_proj_in=32,
    )
    base.update(kw)
    return CheckpointDims(**base)


@pytest.mark.parametrize("mode", [*MODES, NormalizationMode.IDENTITY], ids=lambda m: m.value)
def test_padded_stats_stay_finite_through_lerobot_normalizer_in_every_mode(mode):
    stats16 = kuavo_stats()["action"]
    # A dim that never moved in the data (constant gripper) is the other division-by-zero trap.
    for k in stats16:
        stats16[k] = stats16[k].copy()
    stats16["std"][7] = 0.0
    stats16["min"][7] = stats16["max"][7] = 0.5
    stats16["q01"][7] = stats16["q99"][7] = stats16["q10"][7] = stats16["q90"][7] = 0.5
    padded = pad_stats(stats16, 32)
    assert all(v.shape == (32,) for v in padded.values())
    np.testing.assert_array_equal(padded["std"][16:], 1.0)
    assert np.all(padded["max"] - padded["min"] > 0)
    assert np.all(padded["q99"] - padded["q01"] > 0) and np.all(padded["q90"] - padded["q10"] > 0)

    feats = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(32,))}
    norm_map = {FeatureType.ACTION: mode}
    tstats = {"action": {k: torch.as_tensor(v) for k, v in padded.items()}}
    norm = NormalizerProcessorStep(features=feats, norm_map=norm_map, stats=tstats)
    unnorm = UnnormalizerProcessorStep(features=feats, norm_map=norm_map, stats=tstats)
    x = torch.randn(4, 50, 32) * 3
    y = norm._normalize_action(x, inverse=False)
    assert torch.isfinite(y).all()
    assert y.abs().max() < 1e4, "no dim may be divided by ~0"
    back = unnorm._normalize_action(y, inverse=True)
    assert torch.allclose(back, x, atol=1e-4)


def test_sanitize_keeps_healthy_stats_untouched():
    s = kuavo_stats()["observation.state"]
    out = sanitize_stats(s)
    for k in s:
        np.testing.assert_array_equal(out[k], s[k])


def test_a_robot_wider_than_the_checkpoint_is_refused():
    with pytest.raises(DimensionError, match="33 dims but the checkpoint's max_state_dim is 32"):
        check_checkpoint(_dims(state_dim=33, action_dim=33), robot_dim=33)


def test_a_checkpoint_trained_for_another_robot_says_to_fine_tune():
    with pytest.raises(DimensionError, match="6-D.*16 dims.*kuavo-smolvla-train"):
        check_checkpoint(_dims(state_dim=6, action_dim=6), robot_dim=16)


def test_features_padded_to_the_model_width_are_explained():
    with pytest.raises(DimensionError, match="native size"):
        check_checkpoint(_dims(state_dim=32), robot_dim=16)


def test_weights_that_disagree_with_max_state_dim_name_the_fix():
    with pytest.raises(DimensionError, match="set it back to 32"):
        check_checkpoint(_dims(max_state_dim=16, state_proj_in=32), robot_dim=16)


def test_native_16d_checkpoint_on_32d_model_passes():
    check_checkpoint(_dims(), robot_dim=16)
    check_stats(kuavo_stats(), robot_dim=16)


def test_action_horizon_other_than_chunk_size_is_refused_with_the_attention_error_named():
    check_horizon(50, 50)
    with pytest.raises(DimensionError, match="267 vs 233"):
        check_horizon(16, 50)
