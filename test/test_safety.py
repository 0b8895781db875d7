"""SafetyFilter and the pure clamp/speed-limit helpers: limits, speed, ramp-in, hold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kuavo_smolvla_ros.core.config import RobotConfig, SafetyConfig
from kuavo_smolvla_ros.core.safety import SafetyFilter, clamp_to_limits, limit_step

ROBOT = RobotConfig()
DIM = ROBOT.dim
LOWER, UPPER = np.array(ROBOT.lower), np.array(ROBOT.upper)
MID = (LOWER + UPPER) / 2
VMAX = np.array(ROBOT.max_velocity)
RATE = 100.0

WILD = st.one_of(
    st.floats(-4.0, 4.0),
    st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 1e308, -1e308, 0.0]),
)
TARGET = st.one_of(st.none(), st.lists(WILD, min_size=DIM, max_size=DIM).map(np.array))
GAP = st.one_of(st.floats(0.0, 0.03), st.sampled_from([0.0, 0.01, 5.0]))


def make(**kw) -> SafetyFilter:
    return SafetyFilter(ROBOT, SafetyConfig(**kw), publish_rate_hz=RATE)


# --- pure helpers ---------------------------------------------------------------------------


def test_clamp_to_limits_clips_and_counts_the_dims_outside():
    out, n = clamp_to_limits(np.array([-5.0, 0.5, np.inf]), np.zeros(3), np.ones(3))
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0])
    assert n == 2


def test_limit_step_moves_at_most_max_step_per_dim_without_overflow():
    prev = np.array([0.0, 0.0, 1.0])
    with np.errstate(all="raise"):
        out, n = limit_step(np.array([1e308, -0.05, -1e308]), prev, np.array([0.1, 0.1, 0.2]))
    np.testing.assert_allclose(out, [0.1, -0.05, 0.8])
    assert n == 2
    with pytest.raises(ValueError, match="max_step"):
        limit_step(prev, prev, -1.0)


# --- filter -----------------------------------------------------------------------------


def test_filter_before_start_ramp_returns_none():
    f = make()
    assert f.filter(MID, 0.0) is None
    assert f.last_command is None
    assert not f.ramping(0.0)


def test_start_ramp_refuses_a_non_finite_measured_pose():
    f = make()
    bad = MID.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        f.start_ramp(bad, 0.0)
    with pytest.raises(ValueError, match="shape"):
        f.start_ramp(MID[:14], 0.0)
    assert f.filter(MID, 0.0) is None


def test_first_command_is_the_measured_pose_clamped_into_the_limits():
    f = make(limit_margin=0.01)
    measured = MID.copy()
    measured[0] = -10.0
    f.start_ramp(measured, 1.0)
    cmd = f.filter(MID + 0.3, 1.0)
    expected = measured.copy()
    expected[0] = LOWER[0] + 0.01
    np.testing.assert_array_equal(cmd, expected)


def test_ramp_blends_from_the_measured_pose_to_the_target_over_ramp_time():
    f = make(ramp_time_s=2.0)
    start, target = MID, MID + 0.1  # slow enough that the speed limit never binds
    f.start_ramp(start, 0.0)
    for i in range(1, 301):
        t = i / RATE
        cmd = f.filter(target, t)
        s = min(t / 2.0, 1.0)
        np.testing.assert_allclose(cmd, start + s * (target - start), atol=1e-12)
        assert f.ramping(t) == (t < 2.0)
    np.testing.assert_array_equal(cmd, target)
    assert f.speed_limited == 0


def test_ramp_converges_to_a_far_target_under_the_speed_limit():
    f = make(ramp_time_s=1.0)
    f.start_ramp(LOWER + 0.05, 0.0)
    target = UPPER - 0.05
    for i in range(1, 1001):
        cmd = f.filter(target, i / RATE)
    np.testing.assert_allclose(cmd, target, atol=1e-12)
    assert f.speed_limited > 0


def test_non_finite_or_missing_target_holds_the_last_command():
    f = make(ramp_time_s=0.0)
    f.start_ramp(MID, 0.0)
    last = f.filter(MID + 0.005, 0.01)
    for i, target in enumerate([None, np.full(DIM, np.nan), np.where(MID > 0, np.inf, MID)]):
        np.testing.assert_array_equal(f.filter(target, 0.02 + i * 0.01), last)
    assert f.holds == 3
    with pytest.raises(ValueError, match="shape"):
        f.filter(np.zeros(3), 0.1)


def test_a_long_gap_does_not_allow_a_jump():
    f = make(ramp_time_s=0.0)
    f.start_ramp(MID, 0.0)
    cmd = f.filter(UPPER, 60.0)  # one minute since the last command
    np.testing.assert_allclose(np.abs(cmd - MID), np.minimum(VMAX * 2 / RATE, UPPER - MID))


def test_velocity_scale_scales_the_speed_limit():
    f = make(ramp_time_s=0.0, velocity_scale=0.5)
    f.start_ramp(MID, 0.0)
    cmd = f.filter(UPPER, 0.01)
    np.testing.assert_allclose(cmd - MID, np.minimum(0.5 * VMAX * 0.01, UPPER - MID))


def test_reset_stops_the_filter():
    f = make()
    f.start_ramp(MID, 0.0)
    f.filter(None, 0.01)
    f.reset()
    assert f.filter(MID, 0.02) is None
    assert (f.holds, f.clamped, f.speed_limited) == (0, 0, 0)


def test_margin_larger_than_half_a_joint_range_is_refused():
    with pytest.raises(ValueError, match="limit_margin"):
        make(limit_margin=0.6)  # the grippers span 0..1


# --- properties -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@example(  # found by hypothesis: a subnormal ramp blend must not raise an underflow
    measured=np.array([0.0] * (DIM - 1) + [2.975659632114269e-179]),
    steps=[(np.zeros(DIM), 1.589235608868679e-282)],
    margin=0.0,
    ramp_time=0.1,
)
@given(
    measured=st.lists(st.floats(-4.0, 4.0), min_size=DIM, max_size=DIM).map(np.array),
    steps=st.lists(st.tuples(TARGET, GAP), max_size=40),
    margin=st.sampled_from([0.0, 0.05]),
    ramp_time=st.sampled_from([0.0, 0.1, 2.0]),
)
def test_every_command_is_inside_the_limits_and_obeys_the_speed_limit(
    measured, steps, margin, ramp_time
):
    f = make(limit_margin=margin, ramp_time_s=ramp_time)
    lo, hi = LOWER + margin, UPPER - margin
    t = 0.0
    with np.errstate(all="raise"):
        f.start_ramp(measured, t)
        prev = f.last_command
        np.testing.assert_array_equal(prev, np.clip(measured, lo, hi))
        for target, gap in steps:
            t += gap
            cmd = f.filter(target, t)
            assert np.all(cmd >= lo) and np.all(cmd <= hi)
            assert np.all(np.abs(cmd - prev) <= VMAX * min(gap, 2 / RATE) + 1e-9)
            if target is None or not np.isfinite(target).all():
                np.testing.assert_array_equal(cmd, prev)
            prev = cmd


@settings(max_examples=200, deadline=None)
@given(
    measured=st.lists(st.floats(-4.0, 4.0), min_size=DIM, max_size=DIM).map(np.array),
    target=st.lists(st.floats(-4.0, 4.0), min_size=DIM, max_size=DIM).map(np.array),
)
def test_ramp_starts_at_the_measured_pose_and_reaches_the_target(measured, target):
    f = make(ramp_time_s=0.5)
    f.start_ramp(measured, 10.0)
    np.testing.assert_array_equal(f.filter(target, 10.0), np.clip(measured, LOWER, UPPER))
    for i in range(1, 701):  # 7 s: ramp plus the slowest full-range move at 1 rad/s
        cmd = f.filter(target, 10.0 + i / RATE)
    np.testing.assert_allclose(cmd, np.clip(target, LOWER, UPPER), atol=1e-12)


# --- the command gate: the invariant right before publishing --------------------------------
from kuavo_smolvla_ros.core.safety import (  # noqa: E402
    CommandGate,
    invariant_violations,
    start_error,
)


def test_the_gate_holds_any_stream_to_the_limits_and_the_step_cap_from_the_last_admitted():
    gate = CommandGate(LOWER, UPPER, VMAX, 2 / RATE)
    assert gate.admit(None, 0.0) is None  # nothing to hold yet
    first = gate.admit(UPPER + 1.0, 0.0)
    np.testing.assert_array_equal(first, UPPER)  # the first only clamped
    nxt = gate.admit(LOWER, 0.5)  # a late tick: dt capped at two ticks
    np.testing.assert_allclose(UPPER - nxt, VMAX * 2 / RATE)
    again = gate.admit(LOWER, 0.5)  # same time: no movement at all
    np.testing.assert_array_equal(again, nxt)
    held = gate.admit(np.full(DIM, np.nan), 0.51)
    np.testing.assert_array_equal(held, nxt)
    assert gate.cut == 3
    gate.forget()
    np.testing.assert_array_equal(gate.admit(MID, 1.0), MID)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(TARGET, GAP), min_size=1, max_size=40))
def test_every_stream_the_gate_admits_passes_the_invariant_check(stream):
    gate = CommandGate(LOWER, UPPER, VMAX, 2 / RATE)
    t, times, cmds = 0.0, [], []
    for target, gap in stream:
        t += gap
        out = gate.admit(target, t)
        if out is not None:
            times.append(t)
            cmds.append(out)
    if cmds:
        assert invariant_violations(np.array(cmds), np.array(times), LOWER, UPPER, VMAX, 0.02) == []


def test_the_invariant_check_reports_a_jump_and_a_command_outside_the_limits():
    cmds = np.array([MID, MID + 0.5, UPPER + 0.1])
    bad = invariant_violations(cmds, np.array([0.0, 0.01, 0.02]), LOWER, UPPER, VMAX, 0.02)
    assert any("moved" in b for b in bad) and any("outside the limits" in b for b in bad)
    fresh = np.array([False, True, False])
    bad = invariant_violations(
        cmds[:2], np.array([0.0, 5.0]), LOWER, UPPER, VMAX, 0.02, restarts=fresh[:2]
    )
    assert bad == []


def test_start_error_names_the_joint_and_accepts_the_tolerance():
    pose = MID.copy()
    pose[3] = 0.2  # zarm_l4_joint, upper limit 0.0
    why = start_error(pose, LOWER, UPPER, 0.05, ROBOT.joint_names)
    assert why is not None and "zarm_l4_joint" in why and "0.200" in why and "above" in why
    pose[3] = 0.04
    assert start_error(pose, LOWER, UPPER, 0.05, ROBOT.joint_names) is None


def test_restart_ramp_starts_from_the_last_command_not_the_measured_pose():
    f = make(ramp_time_s=1.0)
    f.start_ramp(MID, 0.0)
    for i in range(1, 100):
        last = f.filter(np.clip(MID + 1.0, LOWER, UPPER), i * 0.01)
    f.start_ramp(LOWER, 1.0)  # already commanding: the measured pose is ignored
    nxt = f.filter(np.clip(MID + 1.0, LOWER, UPPER), 1.01)
    assert np.all(np.abs(nxt - last) <= VMAX * 0.01 + 1e-12)
