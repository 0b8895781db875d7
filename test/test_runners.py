"""One runner interface: the Protocol, its one input/output check, run_request, make_runner and
the CPU default (the fast path's float32 code, kept only when it equals LeRobot at warm-up).

Real (tiny) LeRobot SmolVLA checkpoints, real child processes; the fall-back branch is forced
with a perturbed engine weight and with a zero tolerance, never with a stand-in.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from kuavo_smolvla_ros.core.config import Config, ConfigError, PolicyConfig, SchedulerConfig
from kuavo_smolvla_ros.core.controller import InferenceRequest
from kuavo_smolvla_ros.core.dims import DimensionError
from kuavo_smolvla_ros.core.observation import Observation
from kuavo_smolvla_ros.runners import fast
from kuavo_smolvla_ros.runners.base import (
    Runner,
    Timing,
    check_chunk,
    check_inputs,
    run_request,
)
from kuavo_smolvla_ros.runners.eager import (
    PolicyRunner,
    example_inputs,
    load_policy,
    pick_checked,
)
from kuavo_smolvla_ros.runners.factory import make_runner
from kuavo_smolvla_ros.runners.fast import FastRunner
from kuavo_smolvla_ros.runners.process import ProcessRunner

pytestmark = pytest.mark.slow
TASK = "pick up the cup"
RUNNERS_LOG = "kuavo_smolvla_ros.runners"


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    return load_policy(tiny_checkpoint, device="cpu", warmup=False, rtc=True)


@pytest.fixture(scope="module")
def fast_runner(eager):
    """The float32 fast path on the eager runner's own weights (no copy of the model)."""
    return FastRunner(eager.parts)


def _inputs(runner, seed=0):
    _, images = example_inputs(runner, height=96, width=128, seed=seed)
    return np.linspace(-0.3, 0.3, runner.robot_dim), images


def _request(runner, leftover=None, delay=0, seed=0) -> InferenceRequest:
    state, images = _inputs(runner, seed)
    obs = Observation(state=state, images=images, task=TASK, stamp=12.5)
    return InferenceRequest(obs, episode=3, leftover=leftover, delay_steps=delay)


def _runner_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(RUNNERS_LOG) and r.levelno >= logging.WARNING
    ]


# -- the interface --------------------------------------------------------------------------------
def test_eager_and_fast_runners_are_runners_with_one_timing_form(eager, fast_runner):
    for runner in (eager, fast_runner):
        assert isinstance(runner, Runner)
        assert runner.chunk_size == 50
        state, images = _inputs(runner)
        chunk = runner.predict_chunk(state, images, TASK, seed=1)
        assert chunk.shape == (50, 16) and chunk.dtype == np.float64
        t = runner.timing
        assert isinstance(t, Timing)
        assert runner.last_inference_s == t.total_s > 0
        assert t.total_s == pytest.approx(t.preprocess_s + t.inference_s)
        runner.reset()
        runner.close()  # nothing to release in-process, but part of the interface


def test_a_plain_object_without_close_is_not_a_runner():
    class HalfRunner:
        chunk_size = 50
        last_inference_s = 0.0

        def predict_chunk(self, state, images, task, **kwargs):
            return np.zeros((50, 16))

        def reset(self) -> None:
            pass

    assert not isinstance(HalfRunner(), Runner)


@pytest.mark.parametrize("which", ["eager", "fast"])
def test_every_runner_refuses_bad_inputs_with_the_same_messages(eager, fast_runner, which):
    runner = eager if which == "eager" else fast_runner
    state, images = _inputs(runner)
    with pytest.raises(DimensionError, match="32 values, the robot profile has 16"):
        runner.predict_chunk(np.zeros(32), images, TASK)
    with pytest.raises(ValueError, match="NaN or Inf"):
        runner.predict_chunk(np.full(16, np.inf), images, TASK)
    with pytest.raises(ValueError, match=r"missing camera image\(s\) \['wrist_cam_r'\]"):
        runner.predict_chunk(state, {k: v for k, v in images.items() if k != "wrist_cam_r"}, TASK)
    gray = dict(images, head_cam_h=np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="camera 'head_cam_h': expected an RGB uint8"):
        runner.predict_chunk(state, gray, TASK)


def test_check_inputs_returns_float32_state_and_the_named_frames_only():
    img = np.zeros((4, 6, 3), np.uint8)
    state, frames = check_inputs([0.5] * 16, {"a": img, "b": img, "extra": img}, 16, ["b", "a"])
    assert state.dtype == np.float32 and state.shape == (16,)
    assert list(frames) == ["b", "a"]
    with pytest.raises(ValueError, match="float64"):
        check_inputs(np.zeros(16), {"a": img.astype(np.float64)}, 16, ["a"])


def test_check_chunk_names_the_shape_it_expected():
    assert check_chunk(np.zeros((50, 16)), 50, 16).shape == (50, 16)
    with pytest.raises(DimensionError, match=r"returned a \(50, 32\) chunk, expected \(50, 16\)"):
        check_chunk(np.zeros((50, 32)), 50, 16)


# -- one call from a controller request to a chunk ----------------------------------------------
def test_run_request_feeds_observation_seed_and_rtc_inputs_to_the_runner(eager):
    leftover = np.random.default_rng(2).uniform(-0.5, 0.5, (30, 16))
    req = _request(eager, leftover=leftover, delay=4)
    obs = req.observation
    direct = eager.predict_chunk(
        obs.state, obs.images, TASK, seed=9, inference_delay=4, prev_chunk_left_over=leftover
    )
    np.testing.assert_array_equal(run_request(eager, req, 9), direct)
    plain = run_request(eager, _request(eager), 9)
    assert np.abs(plain - direct).max() > 1e-3, "RTC's leftover must reach the model"
    fresh = [run_request(eager, _request(eager), -1) for _ in range(2)]  # policy.seed: -1
    assert np.abs(fresh[0] - fresh[1]).max() > 1e-6, "a negative seed means fresh noise"


# -- the CPU default ------------------------------------------------------------------------------
def test_cpu_default_is_the_float32_fast_path_and_equals_lerobot(tiny_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger=RUNNERS_LOG)
    runner = load_policy(tiny_checkpoint, device="cpu")  # fast_path auto, warm-up on
    assert isinstance(runner, FastRunner)
    assert runner.engine.dtype == torch.float32 and not runner.cuda_graphs
    assert runner.last_inference_s > 0, "the warm-up chunk's time, for the node's latency"
    assert _runner_warnings(caplog) == []
    assert any("fast path on" in r.getMessage() for r in caplog.records)
    reference = PolicyRunner(runner.parts)  # LeRobot's predict_action_chunk, same weights
    state, images = _inputs(runner, seed=4)
    ours = runner.predict_chunk(state, images, "wave hello", seed=21)
    ref = reference.predict_chunk(state, images, "wave hello", seed=21)
    assert np.abs(ours - ref).max() <= fast.CPU_MATCH_TOL


def test_cpu_default_falls_back_to_lerobot_with_one_line_when_the_tolerance_is_zero(
    tiny_checkpoint, monkeypatch, caplog
):
    monkeypatch.setattr(fast, "CPU_MATCH_TOL", 0.0)  # float32 reordering differs at ~1e-7
    caplog.set_level(logging.INFO, logger=RUNNERS_LOG)
    runner = load_policy(tiny_checkpoint, device="cpu")
    assert isinstance(runner, PolicyRunner)
    warnings = _runner_warnings(caplog)
    assert len(warnings) == 1 and "differs from LeRobot's by" in warnings[0], warnings
    assert runner.last_inference_s > 0, "the eager runner ran the warm-up chunk"


def test_a_perturbed_fast_path_weight_is_caught_by_the_warm_up_check(eager, caplog):
    def perturbed() -> FastRunner:
        runner = FastRunner(eager.parts)
        w = runner.engine.qkv_w[0]  # the engine's own fused copy: LeRobot's weights stay intact
        w.add_(1e-2 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
        return runner

    caplog.set_level(logging.INFO, logger=RUNNERS_LOG)
    assert pick_checked(eager, perturbed, fast.CPU_MATCH_TOL) is eager
    warnings = _runner_warnings(caplog)
    assert len(warnings) == 1 and "differs from LeRobot's" in warnings[0], warnings
    caplog.clear()
    kept = pick_checked(eager, lambda: FastRunner(eager.parts), fast.CPU_MATCH_TOL)
    assert isinstance(kept, FastRunner) and _runner_warnings(caplog) == []


def test_a_checkpoint_the_fast_path_cannot_serve_stays_eager_with_one_line(eager, caplog):
    caplog.set_level(logging.INFO, logger=RUNNERS_LOG)
    eager.policy.config.add_image_special_tokens = True  # the engine refuses these
    try:
        chosen = pick_checked(eager, lambda: FastRunner(eager.parts), fast.CPU_MATCH_TOL)
    finally:
        eager.policy.config.add_image_special_tokens = False
    assert chosen is eager
    warnings = _runner_warnings(caplog)
    assert len(warnings) == 1 and "add_image_special_tokens" in warnings[0], warnings


# -- make_runner ----------------------------------------------------------------------------------
def test_make_runner_runs_thread_backends_in_process_with_the_configured_threads(
    tiny_checkpoint,
):
    before = torch.get_num_threads()
    cfg = Config(policy=PolicyConfig(checkpoint=str(tiny_checkpoint), device="cpu",
                                     backend="thread", torch_threads=1, fast_path="off"))  # fmt: skip
    try:
        runner = make_runner(cfg, warmup=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert isinstance(runner, PolicyRunner)
    assert run_request(runner, _request(runner), 0).shape == (50, 16)


def test_make_runner_runs_the_process_backend_in_a_child_with_the_same_chunks(
    tiny_checkpoint, eager
):
    sched = SchedulerConfig(merge_mode="rtc")  # as the module's eager runner
    cfg = Config(policy=PolicyConfig(checkpoint=str(tiny_checkpoint), device="cpu",
                                     backend="process", fast_path="off"), scheduler=sched)  # fmt: skip
    runner = make_runner(cfg)
    try:
        assert isinstance(runner, ProcessRunner) and isinstance(runner, Runner)
        assert runner.alive and runner.last_inference_s > 0  # the child's warm-up
        leftover = np.random.default_rng(5).uniform(-0.5, 0.5, (20, 16))
        for req in (_request(eager), _request(eager, leftover=leftover, delay=2)):
            np.testing.assert_allclose(run_request(runner, req, 4), run_request(eager, req, 4),
                                       rtol=0, atol=1e-6)  # fmt: skip
    finally:
        runner.close()
    assert not runner.alive
    runner.close()  # idempotent


def test_make_runner_without_a_checkpoint_or_with_an_unknown_backend_says_so():
    with pytest.raises(ConfigError, match="no checkpoint"):
        make_runner(Config())
    with pytest.raises(ConfigError, match="backend='gpu'"):
        make_runner(Config(), checkpoint="somewhere", backend="gpu")
