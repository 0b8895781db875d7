"""ChunkScheduler: timing, merge modes, requests, latency, RTC inputs; and with SafetyFilter."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuavo_smolvla_ros.core.config import MERGE_MODES, RobotConfig, SafetyConfig, SchedulerConfig
from kuavo_smolvla_ros.core.safety import SafetyFilter
from kuavo_smolvla_ros.core.scheduler import ChunkRejected, ChunkScheduler

STEP = 0.1  # default action_fps = 10


def make(mode: str = "latest_only", dim: int = 2, **kw) -> ChunkScheduler:
    return ChunkScheduler(SchedulerConfig(merge_mode=mode, **kw), dim)


def const(value: float, h: int = 10, dim: int = 2) -> np.ndarray:
    return np.full((h, dim), float(value))


def ramp(h: int = 10, dim: int = 2) -> np.ndarray:
    """Step k holds k in every dim."""
    return np.repeat(np.arange(h, dtype=float)[:, None], dim, axis=1)


# --- timing and interpolation -------------------------------------------------------------


def test_step_k_is_due_at_observation_time_plus_k_steps():
    s = make()
    assert s.on_chunk(ramp(), t_obs=2.0, t_now=2.0) == 0
    for k in range(10):
        np.testing.assert_allclose(s.command_at(2.0 + k * STEP), [k, k], atol=1e-9)


def test_command_interpolates_linearly_between_steps_at_100hz():
    s = make()
    chunk = np.arange(10, dtype=float)[:, None] * np.array([1.0, -2.0]) + np.array([0.5, 0.0])
    s.on_chunk(chunk, t_obs=0.0, t_now=0.0)
    for i in range(91):
        t = i / 100
        np.testing.assert_allclose(s.command_at(t), [0.5 + 10 * t, -20 * t], atol=1e-9)


def test_before_first_step_gives_first_step_and_after_last_step_gives_none():
    s = make()
    assert s.command_at(0.0) is None
    s.on_chunk(ramp(), t_obs=1.0, t_now=1.0)
    np.testing.assert_array_equal(s.command_at(0.5), [0.0, 0.0])
    np.testing.assert_allclose(s.command_at(1.9), [9.0, 9.0])
    assert s.command_at(1.95) is None
    assert s.buffered_s(1.95) == 0.0


def test_stale_steps_are_skipped_and_counted_for_a_known_latency():
    s = make()
    skipped = s.on_chunk(ramp(), t_obs=0.0, t_now=0.25)
    # steps 0, 1, 2 (due 0.0, 0.1, 0.2) are past; step 2 stays as the left neighbour of 0.25
    assert skipped == 3
    assert s.skipped_steps == 3
    np.testing.assert_allclose(s.command_at(0.25), [2.5, 2.5])
    assert s.buffered_s(0.25) == pytest.approx(0.65)
    assert s.on_chunk(ramp(), t_obs=1.0, t_now=1.32) == 4
    assert s.skipped_steps == 7


def test_chunk_arriving_at_its_observation_time_skips_nothing():
    s = make()
    assert s.on_chunk(ramp(), t_obs=0.2, t_now=0.2) == 0
    assert s.skipped_steps == 0


def test_chunk_entirely_in_the_past_is_skipped_and_keeps_the_timeline():
    s = make()
    s.on_chunk(ramp(50), t_obs=0.0, t_now=0.0)
    assert s.on_chunk(const(-7, h=3), t_obs=0.1, t_now=0.5) == 3
    np.testing.assert_allclose(s.command_at(0.5), [5.0, 5.0])


# --- merge modes ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["latest_only", "rtc"])
def test_latest_only_and_rtc_replace_the_buffered_future(mode):
    s = make(mode)
    s.on_chunk(const(0, h=50), t_obs=0.0, t_now=0.0)
    assert s.on_chunk(const(1), t_obs=0.3, t_now=0.45) == 2
    np.testing.assert_array_equal(s.command_at(0.45), [1.0, 1.0])
    np.testing.assert_array_equal(s.command_at(1.2), [1.0, 1.0])
    assert s.command_at(1.25) is None  # the old chunk's steps after the new end are gone


def test_weighted_average_blends_overlap_03_old_07_new():
    s = make("weighted_average")
    s.on_chunk(const(0), t_obs=0.0, t_now=0.0)  # steps at 0.0 .. 0.9
    s.on_chunk(const(1), t_obs=0.5, t_now=0.5)  # steps at 0.5 .. 1.4
    for t in (0.5, 0.55, 0.7, 0.9):
        np.testing.assert_allclose(s.command_at(t), [0.7, 0.7])
    np.testing.assert_allclose(s.command_at(0.95), [0.85, 0.85])  # 0.7 -> 1.0 between steps
    for t in (1.0, 1.2, 1.4):
        np.testing.assert_allclose(s.command_at(t), [1.0, 1.0])


def test_weighted_average_interpolates_the_old_chunk_at_the_new_step_times():
    s = make("weighted_average")
    s.on_chunk(ramp(), t_obs=0.0, t_now=0.0)  # old(t) = 10 t on 0 .. 0.9
    s.on_chunk(const(10), t_obs=0.25, t_now=0.25)  # steps at 0.25 .. 1.15
    for k in range(7):  # 0.25 .. 0.85 overlap
        t = 0.25 + k * STEP
        np.testing.assert_allclose(s.command_at(t), [0.3 * 10 * t + 7.0] * 2, atol=1e-9)
    np.testing.assert_allclose(s.command_at(0.95), [10.0, 10.0])


def test_weighted_average_drops_old_steps_after_the_new_chunk_ends():
    s = make("weighted_average")
    s.on_chunk(const(0, h=50), t_obs=0.0, t_now=0.0)
    s.on_chunk(const(1, h=3), t_obs=0.5, t_now=0.5)
    np.testing.assert_allclose(s.command_at(0.7), [0.7, 0.7])
    assert s.command_at(0.75) is None


def test_temporal_ensemble_weights_the_oldest_chunk_most():
    d = 0.5
    s = make("temporal_ensemble", ensemble_decay=d)
    s.on_chunk(const(0), t_obs=0.0, t_now=0.0)  # A: 0.0 .. 0.9
    s.on_chunk(const(1), t_obs=0.2, t_now=0.2)  # B: 0.2 .. 1.1
    s.on_chunk(const(2), t_obs=0.4, t_now=0.4)  # C: 0.4 .. 1.3
    w = np.exp(-d * np.arange(3))  # w_i, i = 0 for the oldest chunk covering t
    assert s.active_chunks == 3
    np.testing.assert_allclose(s.command_at(0.5), [(w[1] + 2 * w[2]) / w.sum()] * 2)
    np.testing.assert_allclose(s.command_at(1.0), [(w[0] + 2 * w[1]) / w[:2].sum()] * 2)
    np.testing.assert_allclose(s.command_at(1.2), [2.0, 2.0])
    # linear between grid times where the same chunks cover
    mid = 0.5 * (s.command_at(0.5) + s.command_at(0.6))
    np.testing.assert_allclose(s.command_at(0.55), mid)


def test_temporal_ensemble_drops_chunks_that_ended():
    s = make("temporal_ensemble", ensemble_decay=0.5)
    for i, t in enumerate((0.0, 0.2, 0.4, 1.0)):
        s.on_chunk(const(i), t_obs=t, t_now=t)
    assert s.active_chunks == 3  # A (ended at 0.9) dropped; B, C, D remain
    w = np.exp(-0.5 * np.arange(3))
    np.testing.assert_allclose(s.command_at(1.0), [(w[0] + 2 * w[1] + 3 * w[2]) / w.sum()] * 2)


def test_temporal_ensemble_default_decay_is_act_convention():
    s = make("temporal_ensemble")  # decay 0.01
    s.on_chunk(const(0), t_obs=0.0, t_now=0.0)
    s.on_chunk(const(1), t_obs=0.5, t_now=0.5)
    expected = math.exp(-0.01) / (1 + math.exp(-0.01))
    np.testing.assert_allclose(s.command_at(0.7), [expected, expected])
    assert expected < 0.5


# --- requests ---------------------------------------------------------------------------


def test_requests_at_a_fixed_rate_with_one_in_flight():
    s = make(n_action_steps=10, min_horizon_s=0.5, latency_init_s=0.1)
    assert s.should_request(0.0)
    s.mark_requested(0.0)
    assert s.in_flight
    assert not s.should_request(0.01)
    s.on_chunk(const(0, h=50), t_obs=0.0, t_now=0.1)  # 5 s buffered
    assert not s.in_flight
    assert not s.should_request(0.5)
    assert not s.should_request(0.99)
    assert s.should_request(1.0)  # n_action_steps * step_s after the last request
    s.mark_requested(1.0)
    assert not s.should_request(3.0)  # still in flight


def test_requests_early_when_the_buffer_runs_low():
    s = make(n_action_steps=10, min_horizon_s=0.5, latency_init_s=0.1)
    s.mark_requested(0.0)
    s.on_chunk(const(0), t_obs=0.0, t_now=0.1)  # buffered until 0.9, latency 0.1
    assert not s.should_request(0.29)  # 0.61 s left
    assert s.should_request(0.31)  # 0.59 s < 0.5 + 0.1


def test_cancelled_request_allows_a_new_one():
    s = make()
    s.mark_requested(0.0)
    s.cancel_request()
    assert not s.in_flight
    assert s.should_request(0.0)


def test_rejected_chunk_leaves_the_timeline_and_ends_the_request():
    s = make("weighted_average")
    s.on_chunk(ramp(), t_obs=0.0, t_now=0.0)
    before = s.command_at(0.35)
    bad = const(1)
    bad[4, 1] = np.nan
    s.mark_requested(0.2)
    with pytest.raises(ChunkRejected, match="non-finite"):
        s.on_chunk(bad, t_obs=0.2, t_now=0.3)
    with pytest.raises(ValueError, match="shape"):
        s.on_chunk(np.zeros((10, 3)), t_obs=0.2, t_now=0.3)
    with pytest.raises(ValueError, match="shape"):
        s.on_chunk(np.zeros(2), t_obs=0.2, t_now=0.3)
    assert not s.in_flight
    assert s.rejected_chunks == 3
    assert s.n_chunks == 1
    np.testing.assert_array_equal(s.command_at(0.35), before)


def test_chunk_from_an_older_observation_is_rejected():
    s = make()
    s.on_chunk(const(0), t_obs=1.0, t_now=1.1)
    with pytest.raises(ChunkRejected, match="older"):
        s.on_chunk(const(5), t_obs=0.5, t_now=1.2)
    np.testing.assert_array_equal(s.command_at(1.2), [0.0, 0.0])


# --- latency and RTC --------------------------------------------------------------------


def test_latency_estimate_forgets_a_warm_up_spike_after_a_few_chunks():
    s = make(latency_init_s=0.1, latency_window=20)
    assert s.latency_s == 0.1
    s.on_chunk(const(0), t_obs=0.0, t_now=3.0)  # warm-up: 3 s
    assert s.latency_s == pytest.approx(3.0)
    for i in range(1, 4):
        s.on_chunk(const(0), t_obs=10.0 * i, t_now=10.0 * i + 0.12)
    assert s.latency_s == pytest.approx(0.12)
    assert s.latency_p95 > 2.0  # still visible in the diagnostics
    assert s.latency_history[0] == pytest.approx(3.0)
    assert len(s.latency_history) == 4


def test_rtc_inputs_give_the_leftover_from_the_step_in_progress_and_the_delay():
    s = make("rtc")
    assert s.rtc_inputs(0.0) == (None, 1)  # latency_init 0.1 s = 1 step
    chunk = np.arange(100, dtype=float).reshape(50, 2)
    s.on_chunk(chunk, t_obs=0.0, t_now=0.25)
    leftover, delay = s.rtc_inputs(1.03)  # step 10 (due 1.0) is in progress
    assert leftover.shape == (40, 2)
    np.testing.assert_allclose(leftover, chunk[10:], atol=1e-9)
    assert delay == 3  # ceil(0.25 / 0.1)
    assert s.rtc_inputs(1.0)[0].shape == (40, 2)
    assert s.rtc_inputs(4.95)[0] is None


def test_reset_forgets_everything():
    s = make("temporal_ensemble", latency_init_s=0.1)
    s.on_chunk(const(0), t_obs=0.0, t_now=0.5)
    s.mark_requested(0.6)
    with pytest.raises(ChunkRejected):
        s.on_chunk(const(np.inf), t_obs=0.6, t_now=0.7)
    s.mark_requested(0.7)
    s.reset()
    assert not s.in_flight
    assert s.command_at(0.7) is None
    assert s.buffered_s(0.7) == 0.0
    assert s.should_request(0.7)
    assert (s.n_chunks, s.skipped_steps, s.rejected_chunks, s.active_chunks) == (0, 0, 0, 0)
    assert s.latency_s == 0.1
    assert s.rtc_inputs(0.7) == (None, 1)
    s.on_chunk(const(1), t_obs=0.0, t_now=0.0)  # an older time is fine after a reset
    np.testing.assert_array_equal(s.command_at(0.0), [1.0, 1.0])


@settings(max_examples=100, deadline=None)
@given(
    mode=st.sampled_from(MERGE_MODES),
    arrivals=st.lists(
        st.tuples(
            st.floats(0.0, 1.5),  # gap since the previous observation
            st.floats(0.0, 1.0),  # latency
            st.integers(1, 20),  # chunk length
            st.floats(-100.0, 100.0),  # chunk offset
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_commands_stay_within_the_range_of_the_chunks_and_times_increase(mode, arrivals):
    s = make(mode)
    t_obs, t_now, lo, hi = 0.0, 0.0, np.inf, -np.inf
    for gap, latency, h, offset in arrivals:
        t_obs += gap
        t_now = max(t_now, t_obs + latency)
        chunk = offset + np.sin(np.arange(h * 2, dtype=float)).reshape(h, 2)
        lo, hi = min(lo, chunk.min()), max(hi, chunk.max())
        s.on_chunk(chunk, t_obs, t_now)
        if s._times is not None:
            assert np.all(np.diff(s._times) > 0)
        for t in t_now + np.arange(0, 3.0, 0.05):
            cmd = s.command_at(t)
            if cmd is not None:
                assert np.all(cmd >= lo - 1e-9) and np.all(cmd <= hi + 1e-9)


# --- scheduler + safety -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MERGE_MODES)
def test_chunk_switches_never_step_faster_than_the_speed_limit(mode):
    rng = np.random.default_rng(7)
    robot = RobotConfig()
    dim = robot.dim
    lower, upper = np.array(robot.lower), np.array(robot.upper)
    mid, span = (lower + upper) / 2, upper - lower
    vmax = np.array(robot.max_velocity)
    sched = ChunkScheduler(SchedulerConfig(merge_mode=mode), dim)
    safety = SafetyFilter(robot, SafetyConfig(ramp_time_s=0.5), publish_rate_hz=100.0)

    def model() -> np.ndarray:  # every chunk jumps by a large random offset
        k = np.arange(50)[:, None]
        wave = 0.2 * span * np.sin(0.3 * k + rng.uniform(0, 6, dim))
        return mid + rng.uniform(-0.6, 0.6, dim) * span + wave

    safety.start_ramp(mid + rng.uniform(-0.4, 0.4, dim) * span, 0.0)
    prev_cmd, prev_target, t_prev = safety.last_command, None, 0.0
    pending, biggest_target_jump = None, 0.0
    for i in range(1, 601):
        t = i / 100
        if pending is not None and t >= pending[0]:
            sched.on_chunk(pending[1], t_obs=pending[2], t_now=t)
            pending = None
        if sched.should_request(t):
            sched.mark_requested(t)
            if mode == "rtc":
                leftover, delay = sched.rtc_inputs(t)
                assert delay >= 1
                assert leftover is None or leftover.shape[1] == dim
            pending = (t + rng.uniform(0.05, 0.6), model(), t)
        target = sched.command_at(t)
        cmd = safety.filter(target, t)
        dt = t - t_prev
        assert np.all(np.abs(cmd - prev_cmd) <= vmax * dt + 1e-9), f"t={t}"
        assert np.all(cmd >= lower) and np.all(cmd <= upper)
        if target is not None and prev_target is not None:
            biggest_target_jump = max(biggest_target_jump, np.max(np.abs(target - prev_target)))
        prev_cmd, prev_target, t_prev = cmd, target, t
    assert sched.n_chunks >= 5
    assert biggest_target_jump > 10 * vmax.max() * 0.01  # the switches did jump
    assert safety.speed_limited > 0
