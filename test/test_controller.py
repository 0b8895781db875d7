"""The control core in simulated time: modes, holds, resume, faults, episodes (no ROS, no model)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kuavo_smolvla_ros.core.config import Config, InputsConfig, PolicyConfig, SafetyConfig
from kuavo_smolvla_ros.core.controller import PolicyController, split_command

DT = 0.01
POSE = np.array([-0.2] * 7 + [0.3] + [-0.1] * 7 + [0.3])
LOWER, UPPER = np.asarray(Config().robot.lower), np.asarray(Config().robot.upper)


def _cfg(**kw) -> Config:
    base = Config(safety=SafetyConfig(ramp_time_s=0.5), policy=PolicyConfig(task="pick"))
    inputs = dataclasses.replace(base.inputs, **kw) if kw else base.inputs
    return dataclasses.replace(base, inputs=inputs, start_enabled=True)


def _feed(c: PolicyController, t: float, cameras=("head_cam_h", "wrist_cam_l", "wrist_cam_r")):
    c.buffer.update_state("arm", POSE[[*range(7), *range(8, 15)]], t)
    c.buffer.update_state("gripper", POSE[[7, 15]], t)
    img = np.zeros((8, 8, 3), np.uint8)
    for cam in cameras:
        c.buffer.update_image(cam, img, t)


def _run(c: PolicyController, t0: float, t1: float, model, latency=0.05, cameras=None):
    """Tick at 100 Hz from t0 to t1; the 'model' answers each request after ``latency``."""
    pending = []
    out = []
    t = t0
    while t < t1 - 1e-9:
        _feed(c, t, cameras) if cameras is not None else _feed(c, t)
        for req, due in list(pending):
            if t >= due:
                c.on_chunk(req, model(req), t)
                pending.remove((req, due))
        tick = c.tick(t)
        if tick.request is not None:
            pending.append((tick.request, t + latency))
        out.append((t, tick))
        t = round(t + DT, 9)
    return out


def _target(value):
    return lambda req: np.tile(np.asarray(value, float), (50, 1))


def test_disabled_controller_commands_nothing_and_requests_nothing():
    c = PolicyController(dataclasses.replace(_cfg(), start_enabled=False))
    ticks = _run(c, 0.0, 1.0, _target(POSE))
    assert all(t.command is None and t.request is None and t.mode == "disabled" for _, t in ticks)


def test_first_command_is_the_measured_pose_then_the_ramp_reaches_the_policy_target():
    c = PolicyController(_cfg())
    goal = POSE + 0.2
    ticks = _run(c, 0.0, 2.0, _target(goal))
    cmds = [(t, k.command) for t, k in ticks if k.command is not None]
    np.testing.assert_allclose(cmds[0][1], POSE, atol=1e-12)
    np.testing.assert_allclose(cmds[-1][1], np.clip(goal, LOWER, UPPER), atol=1e-9)
    assert ticks[-1][1].mode == "running"


def test_requests_follow_the_fixed_rate_with_one_in_flight():
    c = PolicyController(_cfg())
    ticks = _run(c, 0.0, 5.0, _target(POSE), latency=0.05)
    times = [t for t, k in ticks if k.request is not None]
    periods = np.diff(times)
    assert len(times) >= 5
    np.testing.assert_allclose(periods, 1.0, atol=DT + 1e-9)  # n_action_steps 10 at 10 fps


def test_stale_camera_holds_the_last_command_and_asks_for_nothing():
    c = PolicyController(_cfg())
    _run(c, 0.0, 2.0, _target(POSE + 0.1))
    ticks = _run(c, 2.0, 3.5, _target(POSE + 0.1), cameras=("head_cam_h", "wrist_cam_l"))
    held = [k for t, k in ticks if t > 2.6]
    assert {k.mode for k in held} == {"holding"}
    assert all(k.request is None for k in held)
    assert "camera:wrist_cam_r" in held[-1].stale
    first = held[0].command
    assert all(np.array_equal(k.command, first) for k in held)


def test_fresh_inputs_resume_with_a_new_chunk_and_no_jump():
    c = PolicyController(_cfg())
    ticks = _run(c, 0.0, 2.0, _target(POSE + 0.1))
    ticks += _run(c, 2.0, 3.0, _target(POSE + 0.1), cameras=("head_cam_h",))
    ticks += _run(c, 3.0, 5.0, _target(POSE - 0.2))
    assert ticks[-1][1].mode == "running"
    cmds = np.array([k.command for _, k in ticks if k.command is not None])
    max_step = np.asarray(Config().robot.max_velocity) * 2 * DT
    assert np.all(np.abs(np.diff(cmds, axis=0)) <= max_step + 1e-9)
    np.testing.assert_allclose(cmds[-1], np.clip(POSE - 0.2, LOWER, UPPER), atol=1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1e308])
def test_a_model_answer_with_nan_or_inf_faults_and_holds_until_reset(bad):
    c = PolicyController(_cfg())
    _run(c, 0.0, 1.5, _target(POSE))

    def broken(req):
        chunk = np.tile(POSE, (50, 1))
        chunk[3, 2] = bad
        return chunk

    ticks = _run(c, 1.5, 4.0, broken)
    if np.isfinite(bad):  # a huge but finite value is clamped, never a fault
        assert c.fault is None
        assert all(np.all(k.command <= np.asarray(Config().robot.upper)) for _, k in ticks)
        return
    assert c.fault is not None and "non-finite" in c.fault
    later = [k for t, k in ticks if t > 3.0]
    assert {k.mode for k in later} == {"holding"} and all(k.request is None for k in later)
    c.reset()
    ticks = _run(c, 4.0, 5.0, _target(POSE))
    assert c.fault is None and ticks[-1][1].mode == "running"


def test_results_of_requests_made_before_a_reset_are_dropped():
    c = PolicyController(_cfg())
    t = 0.0
    _feed(c, t)
    req = c.tick(t).request
    assert req is not None
    c.reset()
    assert c.on_chunk(req, np.tile(POSE, (50, 1)), 0.05) == -1
    assert c.counters.dropped_results == 1


def test_failure_reported_by_the_driver_faults_the_controller():
    c = PolicyController(_cfg())
    _feed(c, 0.0)
    req = c.tick(0.0).request
    c.on_failure(req, "RuntimeError: boom")
    assert c.fault == "RuntimeError: boom"
    assert c.enable(True).startswith("enabled") and c.fault is None


def test_rtc_requests_carry_the_leftover_and_the_delay():
    cfg = dataclasses.replace(
        _cfg(), scheduler=dataclasses.replace(Config().scheduler, merge_mode="rtc")
    )
    c = PolicyController(cfg)
    seen = []

    def model(req):
        seen.append(req)
        return np.tile(POSE, (50, 1))

    _run(c, 0.0, 2.5, model, latency=0.25)
    assert seen[0].leftover is None
    later = seen[1]
    assert later.leftover is not None and later.leftover.shape[1] == 16
    assert later.delay_steps == 3  # ceil(0.25 s / 0.1 s)


def test_split_command_gives_degrees_and_claw_percent():
    cmd = np.zeros(16)
    cmd[0] = np.pi / 2
    cmd[7] = 0.25
    cmd[15] = 1.0
    arm, grip = split_command(cmd, Config())
    assert arm.shape == (14,) and arm[0] == pytest.approx(90.0)
    np.testing.assert_allclose(grip, [25.0, 100.0])


def test_inputs_config_is_respected_for_task_staleness():
    c = PolicyController(_cfg())
    c.buffer.set_task("")
    _feed(c, 0.0)
    tick = c.tick(0.0)
    assert tick.request is None and "task" in c.buffer.stale_inputs(0.0)
    assert isinstance(InputsConfig().task_topic, str)
