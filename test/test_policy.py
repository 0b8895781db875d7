"""The policy runner on a real (tiny) LeRobot SmolVLA: dims, parity with LeRobot, clear errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from kuavo_smolvla_ros import load_policy
from kuavo_smolvla_ros.core.config import CamerasConfig, Config, InputsConfig, SchedulerConfig
from kuavo_smolvla_ros.core.dims import DimensionError, state_proj_in_features
from kuavo_smolvla_ros.runners.eager import CheckpointError, PolicyRunner, example_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner(tiny_checkpoint):
    """LeRobot's eager runner (the CPU default's fast path is checked in test_runners.py)."""
    runner = load_policy(tiny_checkpoint, device="cpu", fast_path="off")
    assert isinstance(runner, PolicyRunner)
    return runner


def test_32d_checkpoint_loads_for_16d_kuavo_and_returns_chunk_by_16(tiny_checkpoint, runner):
    assert state_proj_in_features(tiny_checkpoint) == 32
    assert runner.policy.model.state_proj.weight.shape[1] == 32
    assert runner.policy.config.max_state_dim == 32 and runner.policy.config.max_action_dim == 32
    state, images = example_inputs(runner)
    chunk = runner.predict_chunk(state, images, "pick up the object", seed=1)
    assert chunk.shape == (runner.chunk_size, 16) == (50, 16)
    assert np.all(np.isfinite(chunk))
    assert runner.last_inference_s > 0


def test_eager_runner_equals_lerobot_predict_action_chunk_bit_for_bit(tiny_checkpoint, runner):
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.utils import prepare_observation_for_inference

    state, images = example_inputs(runner, height=240, width=320, seed=7)
    state = state + 0.1
    ours = runner.predict_chunk(state, images, "put the bottle on the table", seed=123)

    policy = SmolVLAPolicy.from_pretrained(str(tiny_checkpoint))
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(tiny_checkpoint))
    obs = {"observation.state": state.astype(np.float32)}
    obs.update({f"observation.images.{k}": v.copy() for k, v in images.items()})
    batch = pre(
        prepare_observation_for_inference(
            obs, torch.device("cpu"), task="put the bottle on the table"
        )
    )
    torch.manual_seed(123)
    ref = post(policy.predict_action_chunk(batch))[0].double().numpy()

    np.testing.assert_array_equal(ours, ref)  # the same float32 code, the same noise
    other = runner.predict_chunk(state, images, "put the bottle on the table", seed=124)
    assert np.abs(other - ours).max() > 1e-6, "the seed must matter (noise is sampled)"


def test_same_seed_gives_same_chunk_and_task_text_reaches_the_model(runner):
    state, images = example_inputs(runner)
    a = runner.predict_chunk(state, images, "open the drawer", seed=5)
    b = runner.predict_chunk(state, images, "open the drawer", seed=5)
    c = runner.predict_chunk(state, images, "wave hello", seed=5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-7


def test_max_state_dim_changed_to_16_is_refused_before_building_the_model(tiny_checkpoint_copy):
    cfg_path = tiny_checkpoint_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["max_state_dim"] = 16
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DimensionError, match=r"state_proj \[hidden, 32\].*max_state_dim=16"):
        load_policy(tiny_checkpoint_copy, warmup=False)


def test_stats_padded_to_32_are_refused_with_the_fix(tiny_checkpoint_copy):
    from safetensors.torch import load_file, save_file

    for f in tiny_checkpoint_copy.glob("*normalizer_processor.safetensors"):
        tensors = load_file(f)
        padded = {k: torch.cat([v, torch.zeros(32 - v.shape[0])]) for k, v in tensors.items()}
        save_file(padded, f)
    with pytest.raises(DimensionError, match="native size"):
        load_policy(tiny_checkpoint_copy, warmup=False)


def test_state_of_the_wrong_width_is_refused_before_the_normalizer(runner):
    _, images = example_inputs(runner)
    with pytest.raises(DimensionError, match="32 values, the robot profile has 16"):
        runner.predict_chunk(np.zeros(32), images, "x")


def test_n_action_steps_beyond_chunk_size_is_refused(tiny_checkpoint):
    cfg = Config(scheduler=SchedulerConfig(n_action_steps=60))
    with pytest.raises(DimensionError, match="n_action_steps=60.*chunk_size=50"):
        load_policy(tiny_checkpoint, config=cfg, warmup=False)


def test_unknown_camera_names_are_refused_and_a_rename_map_fixes_them(tiny_checkpoint):
    cams = CamerasConfig(names=("head", "left", "right"))
    bad = Config(inputs=dataclasses.replace(InputsConfig(), cameras=cams))
    with pytest.raises(DimensionError, match="rename_to"):
        load_policy(tiny_checkpoint, config=bad, warmup=False)
    fixed = dataclasses.replace(cams, rename_to=("head_cam_h", "wrist_cam_l", "wrist_cam_r"))
    good = Config(inputs=dataclasses.replace(InputsConfig(), cameras=fixed))
    r = load_policy(tiny_checkpoint, config=good, warmup=False)
    state, images = example_inputs(r)
    assert set(images) == {"head", "left", "right"}
    assert r.predict_chunk(state, images, "x", seed=0).shape == (50, 16)


def test_missing_camera_and_bad_images_give_clear_errors(runner):
    state, images = example_inputs(runner)
    partial = dict(images)
    partial.pop("wrist_cam_r")
    with pytest.raises(ValueError, match="missing camera"):
        runner.predict_chunk(state, partial, "x")
    gray = dict(images, head_cam_h=np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        runner.predict_chunk(state, gray, "x")
    with pytest.raises(ValueError, match="NaN"):
        runner.predict_chunk(np.full(16, np.nan), images, "x")


def test_unusable_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="neither a local directory nor a hub id"):
        load_policy(tmp_path / "nope.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_policy(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        load_policy("someone/not-downloadable-here")
