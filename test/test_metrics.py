"""Replay report numbers on hand-made arrays, each checked against a value worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kuavo_smolvla_ros.core import metrics

GRIPPERS = (7, 15)


def test_report_units_are_degrees_for_arm_joints_and_0_to_100_for_grippers():
    v = np.zeros(16)
    v[0] = math.pi / 2
    v[7] = 0.25
    v[15] = 1.0
    out = metrics.to_report_units(v, GRIPPERS)
    assert out[0] == pytest.approx(90.0)
    assert out[7] == pytest.approx(25.0)
    assert out[15] == pytest.approx(100.0)
    assert metrics.to_report_units(v[None, :], GRIPPERS).shape == (1, 16)
    scale = metrics.report_scale(16, GRIPPERS, gripper_scale=50.0)
    assert scale[7] == 50.0 and scale[3] == pytest.approx(180 / math.pi)


def test_resample_interpolates_linearly_between_recorded_samples():
    t = np.array([0.0, 1.0, 2.0])
    v = np.array([[0.0, 10.0], [10.0, 10.0], [30.0, 0.0]])
    out = metrics.resample(t, v, np.array([0.0, 0.25, 1.0, 1.5, 2.0]), max_gap_s=5)
    np.testing.assert_allclose(
        out, [[0, 10], [2.5, 10], [10, 10], [20, 5], [30, 0]], rtol=0, atol=1e-12
    )


def test_resample_leaves_times_outside_the_recording_or_inside_a_gap_unscored():
    t = np.array([0.0, 0.1, 0.2, 1.2, 1.3])  # a 1 s hole between 0.2 and 1.2
    v = np.arange(5.0)[:, None]
    q = np.array([-0.05, 0.05, 0.2, 0.7, 1.2, 1.25, 1.4])
    out = metrics.resample(t, v, q, max_gap_s=0.25)[:, 0]
    assert np.isnan(out[0]) and np.isnan(out[3]) and np.isnan(out[6])
    np.testing.assert_allclose(out[[1, 2, 4, 5]], [0.5, 2.0, 3.0, 3.5])


def test_resample_sorts_its_input_and_keeps_the_last_of_duplicate_times():
    t = np.array([1.0, 0.0, 1.0])
    v = np.array([[5.0], [0.0], [10.0]])
    out = metrics.resample(t, v, np.array([0.5, 1.0]), max_gap_s=2)[:, 0]
    np.testing.assert_allclose(out, [5.0, 10.0])


def test_reference_puts_each_recorded_stream_into_its_own_dims():
    arm = (np.array([0.0, 1.0]), np.array([[0.0, 2.0], [10.0, 4.0]]), (0, 1))
    claw = (np.array([0.5, 1.0]), np.array([[50.0], [70.0]]), (2,))
    ref = metrics.reference_at([arm, claw], np.array([0.0, 0.75]), 3, max_gap_s=1)
    assert np.isnan(ref[0, 2])  # the claw recording starts later
    np.testing.assert_allclose(ref[0, :2], [0.0, 2.0])
    np.testing.assert_allclose(ref[1], [7.5, 3.5, 60.0])


def test_tracking_error_per_dim_over_scored_samples_only():
    cmd = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 4.0]])
    ref = np.array([[0.0, np.nan], [0.0, 0.0], [0.0, 0.0]])
    err = metrics.tracking_error(cmd, ref)
    # dim 0: errors 1, 3, 5 -> MAE 3, RMSE sqrt(35/3); dim 1: errors 0, 4 -> MAE 2, RMSE sqrt(8)
    np.testing.assert_allclose(err["mae"], [3.0, 2.0])
    np.testing.assert_allclose(err["rmse"], [math.sqrt(35 / 3), math.sqrt(8)])
    np.testing.assert_array_equal(err["n"], [3, 2])
    empty = metrics.tracking_error(cmd[:, :1], np.full((3, 1), np.nan))
    assert np.isnan(empty["mae"][0]) and empty["n"][0] == 0


def test_latency_is_the_first_command_after_the_merge_minus_the_observation_time():
    t_cmd = np.arange(0.0, 1.0, 0.01)
    # chunk A: obs 0.10, merged 0.155 -> first command 0.16 -> 60 ms
    # chunk B: obs 0.50, merged exactly on the 0.60 tick -> that tick ran first -> 0.61 -> 110 ms
    # chunk C: merged after the last command -> no latency
    lat = metrics.chunk_latencies([0.10, 0.50, 0.95], [0.155, 0.60, 1.5], t_cmd)
    np.testing.assert_allclose(lat[:2], [0.06, 0.11], atol=1e-9)
    assert np.isnan(lat[2])
    s = metrics.stats_ms(lat)
    assert s["n"] == 2
    assert s["p50"] == pytest.approx(85.0)
    assert s["p95"] == pytest.approx(60 + 0.95 * 50)
    assert s["max"] == pytest.approx(110.0)
    assert metrics.stats_ms(np.array([np.nan])) == {"p50": None, "p95": None, "max": None, "n": 0}


def test_switch_step_is_the_command_step_right_after_each_merge():
    t = np.array([0.0, 0.01, 0.02, 0.03, 0.04])
    cmd = np.array(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 9.0], [1.5, -2.0, 9.0], [1.5, -2.0, 0.0], [1.6, -2.0, 0.0]]
    )
    # merges: before the first command (no switch), at 0.015 (step 0.01 -> 0.02), at 0.035
    steps = metrics.switch_steps(t, cmd, np.array([-0.5, 0.015, 0.035]), dims=[0, 1])
    assert np.isnan(steps[0])
    np.testing.assert_allclose(steps[1:], [2.0, 0.1])  # dim 2 (a gripper) is not looked at


def test_rate_is_commands_per_second_over_the_commanded_span():
    assert metrics.rate_hz(np.arange(101) * 0.01) == pytest.approx(100.0)
    assert math.isnan(metrics.rate_hz(np.array([1.0])))


def test_compare_trajectories_interpolates_the_second_stream_at_the_first_ones_times():
    t_a = np.array([0.0, 0.5, 1.0])
    a = np.array([[0.0], [1.0], [2.0]])
    t_b = np.array([0.0, 1.0])
    b = np.array([[0.0], [1.0]])  # 0.5 at t=0.5
    c = metrics.compare_trajectories(t_a, a, t_b, b, max_gap_s=2)
    assert c["n"] == 3
    np.testing.assert_allclose(c["max_abs"], [1.0])
    np.testing.assert_allclose(c["rms"], [math.sqrt((0 + 0.25 + 1) / 3)])


def test_build_report_on_a_two_joint_robot_matches_hand_computation():
    names = ("j0", "claw")
    t = np.round(np.arange(0.0, 0.1, 0.01), 6)  # 10 commands at 100 Hz
    cmd = np.zeros((10, 2))
    cmd[:, 0] = np.arange(10) * 1.0  # deg, step 1 deg per tick
    cmd[5:, 0] += 3.0  # a 4 deg step at the switch into t=0.05
    cmd[:, 1] = 50.0
    ref = np.zeros((10, 2))
    ref[:, 1] = 40.0
    ref[0, 1] = np.nan
    rep = metrics.build_report(
        joint_names=names,
        gripper_indices=(1,),
        t_cmd=t,
        cmd=cmd,
        reference=ref,
        t_obs=np.array([0.0, 0.02]),
        t_arrival=np.array([-0.001, 0.045]),
        counters={"clamped": 7, "holds": 2},
    )
    err0 = cmd[:, 0]
    assert rep["mae"]["j0"] == pytest.approx(err0.mean())
    assert rep["rmse"]["j0"] == pytest.approx(math.sqrt((err0**2).mean()))
    assert rep["mae"]["claw"] == pytest.approx(10.0)
    assert rep["n_scored"] == {"j0": 10, "claw": 9}
    assert rep["mae_mean"] == {"arm_deg": pytest.approx(err0.mean()), "gripper": 10.0}
    assert rep["latency_ms"]["max"] == pytest.approx(30.0)  # 0.05 - 0.02
    assert rep["latency_ms"]["n"] == 2
    assert rep["rate_hz"] == pytest.approx(100.0)
    assert rep["max_gap_ms"] == pytest.approx(10.0)
    assert rep["max_switch_step_deg"] == pytest.approx(4.0)
    assert rep["max_step_deg"] == pytest.approx(4.0)
    assert (rep["n_commands"], rep["n_chunks"], rep["clamped"], rep["holds"]) == (10, 2, 7, 2)
    assert rep["chunks"][0]["switch_step_deg"] is None  # merged before any command
    table = metrics.format_table(rep, gripper_names=("claw",))
    assert "j0" in table and "0-100" in table and "max switch step (deg)  4.000" in table


def test_report_without_recorded_commands_has_no_error_numbers_but_the_rest():
    rep = metrics.build_report(
        joint_names=("a", "b"),
        gripper_indices=(),
        t_cmd=np.array([0.0, 0.01]),
        cmd=np.zeros((2, 2)),
        reference=None,
        t_obs=np.array([]),
        t_arrival=np.array([]),
        counters={},
    )
    assert rep["mae"] is None and rep["mae_mean"] is None
    assert rep["rate_hz"] == pytest.approx(100.0)
    assert rep["latency_ms"]["n"] == 0
    assert "no MAE/RMSE" in metrics.format_table(rep)
