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


def test_a_clock_jump_back_forgets_inputs_and_chunk_and_resumes_from_the_held_command():
    """Sim time going back (``ros2 bag play --loop``, a simulator restart): inputs received at
    the old, later times must not count as fresh, the buffered chunk's times are in the
    future, and an answer in flight observed the old time. The robot holds the last command
    exactly (no time has passed for the speed limit), then ramps to the new chunk."""
    from kuavo_smolvla_ros.core.safety import invariant_violations

    c = PolicyController(_cfg())
    ticks = _run(c, 100.0, 102.0, _target(POSE + 0.1))
    assert ticks[-1][1].mode == "running"
    _feed(c, 102.0)
    before = c.tick(102.0)
    assert before.request is not None and before.command is not None
    ticks.append((102.0, before))

    jumped = c.tick(10.0)  # no input since the jump: everything it had is from "the future"
    ticks.append((10.0, jumped))
    assert c.counters.clock_jumps == 1
    assert jumped.mode == "holding" and jumped.request is None
    assert set(jumped.stale) >= {"arm", "gripper", "camera:head_cam_h"}
    np.testing.assert_array_equal(jumped.command, before.command)
    assert c.on_chunk(before.request, np.tile(POSE, (50, 1)), 10.02) == -1  # old observation

    ticks += _run(c, 10.01, 12.5, _target(POSE - 0.1))
    assert ticks[-1][1].mode == "running" and c.counters.clock_jumps == 1
    times = np.array([t for t, k in ticks if k.command is not None])
    cmds = np.array([k.command for _, k in ticks if k.command is not None])
    np.testing.assert_allclose(cmds[-1], np.clip(POSE - 0.1, LOWER, UPPER), atol=1e-9)
    vmax = np.asarray(Config().robot.max_velocity)
    assert invariant_violations(cmds, times, LOWER, UPPER, vmax, c.gate.dt_cap) == []


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
    assert c.enable(True).message.startswith("enabled") and c.fault is None


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


# -- issue 9: transitions never jump, enable is a safety check, one request at a time ---------
MAX_STEP = np.asarray(Config().robot.max_velocity) * 2 * DT  # dt capped at two ticks


def _published(ticks) -> tuple[np.ndarray, np.ndarray]:
    pub = [(t, k.command) for t, k in ticks if k.published]
    return np.array([t for t, _ in pub]), np.array([c for _, c in pub])


def _assert_invariant(ticks, restarts=()):
    from kuavo_smolvla_ros.core.safety import invariant_violations

    t, cmds = _published(ticks)
    fresh = np.isin(np.round(t, 6), np.round(np.asarray(restarts, float), 6))
    max_v = np.asarray(Config().robot.max_velocity)
    bad = invariant_violations(cmds, t, LOWER, UPPER, max_v, 2 * DT, restarts=fresh)
    assert bad == [], bad[:3]


def test_reset_while_the_arm_lags_ramps_from_the_last_command_not_the_measured_pose():
    """The robot does not follow (the measured pose stays at POSE) while commands move away."""
    c = PolicyController(_cfg())
    ticks = _run(c, 0.0, 2.0, _target(POSE - 0.5))
    last = ticks[-1][1].command
    assert np.abs(last - np.clip(POSE, LOWER, UPPER)).max() > 0.3, "commands moved, arm did not"
    c.reset()
    after = _run(c, 2.0, 4.0, _target(POSE - 0.5))
    _assert_invariant(ticks + after)
    first = next(k.command for _, k in after if k.command is not None)
    assert np.abs(first - last).max() <= MAX_STEP.max() + 1e-9


def test_dry_run_keeps_the_last_published_command_then_ramps_from_it():
    c = PolicyController(_cfg())
    ticks = _run(c, 0.0, 1.0, _target(POSE + 0.3))
    before = c.gate.last
    dry = []
    t = 1.0
    while t < 3.0:  # dry run: commands computed (for ~/action), none published
        _feed(c, t)
        k = c.tick(t, publish=False)
        if k.request is not None:
            c.on_chunk(k.request, np.tile(POSE - 0.4, (50, 1)), t)
        dry.append((t, k))
        t = round(t + DT, 9)
    assert not any(k.published for _, k in dry)
    np.testing.assert_array_equal(c.gate.last, before)
    assert np.abs(dry[-1][1].command - before).max() > 0.3, "the dry run moved on"
    after = _run(c, 3.0, 5.0, _target(POSE - 0.4))
    _assert_invariant(ticks + dry + after)
    assert c.gate.cut == 0, "the controller itself kept the invariant; the gate had no work"


def test_enable_with_a_pose_outside_the_limits_is_refused_and_names_the_joint():
    c = PolicyController(dataclasses.replace(_cfg(), start_enabled=False))
    pose = POSE.copy()
    pose[3] = 0.2  # zarm_l4_joint: upper limit 0.0
    c.buffer.update_state("arm", pose[[*range(7), *range(8, 15)]], 0.0)
    c.buffer.update_state("gripper", pose[[7, 15]], 0.0)
    answer = c.enable(True, 0.0)
    assert not answer.ok and "zarm_l4_joint" in answer.message and "0.200" in answer.message
    assert not c.enabled and c.counters.refused_enables == 1


def test_enable_before_the_pose_is_known_faults_when_it_arrives_and_commands_nothing():
    c = PolicyController(_cfg())  # start_enabled: the pose is not known yet
    pose = POSE.copy()
    pose[3] = 0.2

    def feed_bad(t):
        _feed(c, t)
        c.buffer.update_state("arm", pose[[*range(7), *range(8, 15)]], t)

    out = []
    for i in range(100):
        feed_bad(i * DT)
        out.append(c.tick(i * DT))
    assert all(k.command is None for k in out)
    assert c.fault is not None and "zarm_l4_joint" in c.fault
    assert c.health()[0] == 2


def test_a_pose_within_the_start_tolerance_is_clamped_and_is_the_first_command():
    c = PolicyController(_cfg())
    pose = POSE.copy()
    pose[3] = 0.03  # 0.03 rad above the limit 0.0, tolerance 0.05
    first = None
    for i in range(100):
        _feed(c, i * DT)
        c.buffer.update_state("arm", pose[[*range(7), *range(8, 15)]], i * DT)
        k = c.tick(i * DT)
        if k.request is not None:
            c.on_chunk(k.request, np.tile(POSE, (50, 1)), i * DT)
        if k.command is not None:
            first = k.command
            break
    assert first is not None and c.fault is None
    np.testing.assert_allclose(first, np.clip(pose, LOWER, UPPER), atol=1e-12)


def test_an_unanswered_request_faults_after_the_timeout_and_asks_for_nothing_new():
    c = PolicyController(_cfg(), timeout_s=1.0)
    ticks = _run(c, 0.0, 1.0, _target(POSE))  # answered: running
    assert ticks[-1][1].mode == "running"
    out = []
    t = 1.0
    while t < 4.0:  # requests are made but never answered
        _feed(c, t)
        out.append((t, c.tick(t)))
        t = round(t + DT, 9)
    assert c.fault is not None and "timed out" in c.fault
    assert sum(k.request is not None for _, k in out) <= 1
    assert c.counters.timeouts == 1
    level, message = c.health()
    assert level == 2 and "timed out" in message
    _assert_invariant(ticks + out)


def test_resuming_from_a_hold_while_the_model_computes_never_overflows_the_queue():
    """Regression (issue 9): resume used to clear in_flight while the worker still computed;
    a second hold/resume then queued a request behind a full one-slot queue and latched
    "inference queue full". The request token keeps one request in the pipeline."""
    import queue

    c = PolicyController(_cfg())
    _run(c, 0.0, 1.0, _target(POSE))
    slot: queue.Queue = queue.Queue(maxsize=1)  # the node's request queue
    computing = None  # the request the worker took and is still computing
    t, full = 1.0, 0
    for phase in range(6):  # alternate: a camera drops out 0.6 s, comes back 0.6 s
        cams = ("head_cam_h",) if phase % 2 == 0 else ("head_cam_h", "wrist_cam_l", "wrist_cam_r")
        for _ in range(60):
            _feed(c, t, cams)
            k = c.tick(t)
            if k.request is not None:
                try:
                    slot.put_nowait(k.request)
                except queue.Full:
                    full += 1
                if computing is None:
                    computing = slot.get_nowait()
            t = round(t + DT, 9)
    assert full == 0 and c.fault is None
    assert c.outstanding is computing  # nothing new while the first is still out
    c.on_chunk(computing, np.tile(POSE, (50, 1)), t)  # its late answer is dropped...
    assert c.outstanding is None and c.counters.dropped_results >= 1
    ticks = _run(c, t, t + 1.0, _target(POSE))  # ...and the next request goes out
    assert ticks[-1][1].mode == "running" and c.health()[0] == 0


def test_enable_after_a_fault_ramps_from_the_last_command():
    c = PolicyController(_cfg())
    ticks = _run(c, 0.0, 2.0, _target(POSE - 0.5))
    c.set_fault("InferenceProcessError: the inference process exited (code -9)")
    held = _run(c, 2.0, 2.5, _target(POSE - 0.5))
    assert {k.mode for _, k in held} == {"holding"} and c.health()[0] == 2
    assert c.enable(True, 2.5).ok and c.fault is None
    after = _run(c, 2.5, 4.0, _target(POSE + 0.2))
    _assert_invariant(ticks + held + after)


def test_disable_then_enable_starts_from_the_measured_pose():
    c = PolicyController(_cfg())
    ticks = _run(c, 0.0, 2.0, _target(POSE - 0.5))
    assert c.enable(False).ok
    assert _run(c, 2.0, 2.5, _target(POSE))[-1][1].command is None
    assert c.enable(True, 2.5).ok
    after = _run(c, 2.5, 3.5, _target(POSE - 0.5))
    first_t, first = next((t, k.command) for t, k in after if k.command is not None)
    np.testing.assert_allclose(first, np.clip(POSE, LOWER, UPPER), atol=1e-12)
    _assert_invariant(ticks + after, restarts=[first_t])


def test_health_is_ok_only_while_commands_follow_a_live_chunk():
    c = PolicyController(_cfg())
    assert c.health()[0] == 1  # waiting
    _run(c, 0.0, 1.0, _target(POSE))
    assert c.health() == (0, "running (ramping)") or c.health()[0] == 0
    _run(c, 1.0, 2.0, _target(POSE), cameras=("head_cam_h",))
    level, message = c.health()
    assert level == 1 and "stale" in message
    c.enable(False)
    assert c.health()[0] == 0


# -- property: no sequence of transitions breaks the invariant --------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPS = st.one_of(
    st.tuples(  # a run of ticks: (count, dt); the model answers some requests on its own
        st.just("ticks"),
        st.tuples(st.integers(1, 80), st.sampled_from([DT] * 6 + [0.004, 0.025, 0.3, 2.0])),
    ),
    st.tuples(st.just("publish"), st.booleans()),
    st.tuples(st.just("enable"), st.booleans()),
    st.tuples(st.just("reset"), st.none()),
    st.tuples(st.just("fault"), st.none()),
    st.tuples(st.just("answer"), st.sampled_from(["ok", "far", "nan", "huge", "short", "fail"])),
    st.tuples(st.just("pose"), st.floats(-0.3, 0.3)),
    st.tuples(st.just("cameras"), st.booleans()),
)
PROPERTY_STATS = {"examples": 0, "published": 0}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_OPS, min_size=5, max_size=60), seed=st.integers(0, 2**16))
def test_no_sequence_of_transitions_publishes_a_step_beyond_the_cap_or_outside_the_limits(
    ops, seed
):
    """Enable, disable, reset, dry run on/off, faults, NaN/huge/far/short chunks, measured-pose
    jumps (a robot that does not follow), stale cameras, late ticks, watchdog timeouts."""
    rng = np.random.default_rng(seed)
    cfg = dataclasses.replace(_cfg(), start_enabled=False)
    c = PolicyController(cfg, timeout_s=0.5)
    max_v = np.asarray(cfg.robot.max_velocity)
    pose, cams_on, publish, t = POSE.copy(), True, True, 0.0
    pending: list = []
    prev: tuple[float, np.ndarray] | None = None
    silent = True  # nothing published since the start or the last disable

    def feed():
        c.buffer.update_state("arm", pose[[*range(7), *range(8, 15)]], t)
        c.buffer.update_state("gripper", pose[[7, 15]], t)
        for cam in ("head_cam_h", "wrist_cam_l", "wrist_cam_r") if cams_on else ("head_cam_h",):
            c.buffer.update_image(cam, np.zeros((4, 4, 3), np.uint8), t)

    def answer(kind):
        req = pending.pop(0)
        if kind == "fail":
            c.on_failure(req, "boom")
            return
        chunk = np.tile(pose, (50, 1)) + rng.normal(0, 0.05, (50, 16))
        if kind == "far":
            chunk += rng.uniform(-3, 3, 16)
        elif kind == "nan":
            chunk[rng.integers(50), rng.integers(16)] = np.nan
        elif kind == "huge":
            chunk[:, rng.integers(16)] = 1e300
        elif kind == "short":
            chunk = chunk[:, :5]
        c.on_chunk(req, chunk, t)

    for op, arg in [("enable", True), ("ticks", (40, DT)), *ops]:
        if op == "ticks":
            n, dt_tick = arg
            for _ in range(n):
                t = round(t + dt_tick, 9)
                feed()
                k = c.tick(t, publish=publish)
                if k.request is not None:
                    pending.append(k.request)
                if pending and rng.random() < 0.15:
                    answer("far" if rng.random() < 0.3 else "ok")
                if not k.published:
                    continue
                cmd = k.command
                PROPERTY_STATS["published"] += 1
                assert np.all(cmd >= LOWER) and np.all(cmd <= UPPER), cmd
                if silent:  # the first command after an enable: the measured pose, clamped
                    np.testing.assert_allclose(cmd, np.clip(pose, LOWER, UPPER), atol=1e-12)
                else:
                    dt = min(max(t - prev[0], 0.0), 2 * DT)
                    step = np.abs(cmd - prev[1])
                    assert np.all(step <= max_v * dt + 1e-9), (step - max_v * dt).max()
                prev, silent = (t, cmd), False
        elif op == "publish":
            publish = arg
        elif op == "enable":
            c.enable(arg, t)
            if not arg:
                silent = True
        elif op == "reset":
            c.reset()
        elif op == "fault":
            c.set_fault("injected")
        elif op == "answer" and pending:
            answer(arg)
        elif op == "pose":  # the robot is somewhere else (it does not follow): a jump
            pose = np.clip(POSE + arg + rng.normal(0, 0.02, 16), LOWER - 0.08, UPPER + 0.08)
            pose[[7, 15]] = np.clip(pose[[7, 15]], 0.0, 1.0)
        elif op == "cameras":
            cams_on = arg
    PROPERTY_STATS["examples"] += 1
    assert c.gate.cut == 0, "the controller kept the invariant without the gate's help"


def test_the_property_test_reaches_published_commands():
    """Guard against a vacuous property test: its examples must publish commands."""
    PROPERTY_STATS.update(examples=0, published=0)
    test_no_sequence_of_transitions_publishes_a_step_beyond_the_cap_or_outside_the_limits()
    assert PROPERTY_STATS["examples"] >= 50
    assert PROPERTY_STATS["published"] > 20 * PROPERTY_STATS["examples"]
