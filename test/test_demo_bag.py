"""demo_bag: the synthetic Kuavo recording (motion, images, both topic flavours, the CLI)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from kuavo_smolvla_ros.bag import BagError, open_bag
from kuavo_smolvla_ros.core.config import RobotConfig
from kuavo_smolvla_ros.demo.bag import (
    ARM_DIMS,
    CLAW_DIMS,
    GRID_HZ,
    PERIOD_S,
    T0_NS,
    TAU_ARM_S,
    _Renderer,
    demo_messages,
    demo_trajectory,
    main,
    make_demo_bag,
)

CAMERAS = (
    "/cam_h/color/image_raw/compressed",
    "/cam_l/color/image_raw/compressed",
    "/cam_r/color/image_raw/compressed",
)
ROS2_TOPICS = {
    "/joint_states": ("sensor_msgs/msg/JointState", 100),
    "/gripper/state": ("sensor_msgs/msg/JointState", 50),
    "/kuavo_arm_traj": ("sensor_msgs/msg/JointState", 100),
    "/gripper/command": ("sensor_msgs/msg/JointState", 30),
    **{c: ("sensor_msgs/msg/CompressedImage", 30) for c in CAMERAS},
}
ROS1_TOPICS = {
    "/sensors_data_raw": ("kuavo_msgs/msg/sensorsData", 100),
    "/leju_claw_state": ("kuavo_msgs/msg/lejuClawState", 50),
    "/kuavo_arm_traj": ("sensor_msgs/msg/JointState", 100),
    "/leju_claw_command": ("kuavo_msgs/msg/lejuClawCommand", 30),
    **{c: ("sensor_msgs/msg/CompressedImage", 30) for c in CAMERAS},
}
DURATION = 2.5
W, H = 64, 48


# ---------------------------------------------------------------------------------------------
# Motion


@pytest.fixture(scope="module")
def traj():
    return demo_trajectory(2 * PERIOD_S + 1.0, seed=0)


def test_motion_stays_inside_kuavo_limits_and_speed_limits(traj):
    robot = RobotConfig()
    lo, hi = np.array(robot.lower), np.array(robot.upper)
    for x in (traj.command, traj.state):
        assert np.all(x >= lo - 1e-12) and np.all(x <= hi + 1e-12)
    speed = np.abs(np.diff(traj.command, axis=0)) * GRID_HZ
    assert np.all(speed.max(axis=0) <= np.array(robot.max_velocity))
    assert np.all(np.isfinite(traj.state))


def test_motion_is_a_task_both_arms_reach_and_grasp(traj):
    for side in (0, 1):
        arm = traj.command[:, list(ARM_DIMS[7 * side : 7 * side + 7])]
        assert np.ptp(arm[:, 0]) > 0.4  # shoulder reaches out and comes back
        assert traj.command[:, CLAW_DIMS[side]].max() > 0.75  # claw closes
        assert traj.command[:, CLAW_DIMS[side]].min() == 0.0  # and opens
    # the task repeats: one cycle per period, arms alternating
    assert [c.side for c in traj.cycles[:3]] == [0, 1, 0]
    assert traj.held.any()


def test_measured_state_follows_command_with_a_small_lag(traj):
    arm = list(ARM_DIMS)
    cmd, state = traj.command[:, arm], traj.state[:, arm]
    err_now = np.abs(state - cmd).mean()
    lag = round(TAU_ARM_S * GRID_HZ)
    err_lagged = np.abs(state[lag:] - cmd[:-lag]).mean()
    assert err_lagged < 0.5 * err_now
    assert np.abs(state - cmd).max() < 0.15


def test_claw_stops_on_the_object_while_holding_it(traj):
    held = np.flatnonzero(traj.held)
    first_grasp = held[: np.argmax(np.diff(held) > 1)]  # the first contiguous run
    i = first_grasp[len(first_grasp) // 2]
    c = traj.cycles[traj.cycle_index[i]]
    d = CLAW_DIMS[c.side]
    assert traj.state[i, d] == pytest.approx(c.contact, abs=1e-9)
    assert traj.command[i, d] > traj.state[i, d] + 0.05


def test_motion_is_deterministic_per_seed():
    a, b, c = demo_trajectory(3.0, 1), demo_trajectory(3.0, 1), demo_trajectory(3.0, 2)
    np.testing.assert_array_equal(a.state, b.state)
    assert not np.allclose(a.command, c.command)


# ---------------------------------------------------------------------------------------------
# Images


def test_images_depend_visibly_on_arm_joints_and_claw(traj):
    r = _Renderer(W, H, seed=0)
    s = traj.state[0].copy()
    obj = (0.2 * W, 0.7 * H)
    head, wrist = r.head(s, obj), r.wrist(0, s, obj, False)
    np.testing.assert_array_equal(head, r.head(s.copy(), obj))  # deterministic

    def diff(a, b):
        return np.abs(a.astype(int) - b.astype(int)).mean()

    moved = s.copy()
    moved[0] -= 0.8  # left shoulder forward
    assert diff(head, r.head(moved, obj)) > 1.0
    assert diff(wrist, r.wrist(0, moved, obj, False)) > 1.0
    closed = s.copy()
    closed[7] = 0.9  # left claw
    assert diff(head, r.head(closed, obj)) > 0.2
    assert diff(wrist, r.wrist(0, closed, obj, False)) > 1.0
    assert diff(head, r.head(s, (0.8 * W, 0.5 * H))) > 0.2  # the object's place


# ---------------------------------------------------------------------------------------------
# Bags


@pytest.fixture(scope="module", params=["sqlite3", "mcap", "ros1"])
def demo(request, tmp_path_factory):
    fmt = request.param
    path = make_demo_bag(
        tmp_path_factory.mktemp(fmt) / "demo", fmt, duration_s=DURATION, seed=3, width=W, height=H
    )
    with open_bag(path) as bag:
        msgs = list(bag.messages())
        info = (bag.format, bag.topics, bag.warnings, bag.skipped)
    return fmt, path, msgs, info


def test_demo_bag_has_the_config_topics_at_their_rates(demo):
    fmt, path, _, (bag_fmt, topics, warnings, skipped) = demo
    assert bag_fmt == fmt
    assert warnings == [] and skipped == 0
    expected = ROS1_TOPICS if fmt == "ros1" else ROS2_TOPICS
    assert set(topics) == set(expected)
    for topic, (msgtype, rate) in expected.items():
        assert topics[topic][0] == msgtype
        assert abs(topics[topic][1] - rate * DURATION) <= 2, topic
    if fmt == "ros1":
        assert path.suffix == ".bag"
    else:
        assert (path / "metadata.yaml").is_file()


def test_demo_bag_is_in_time_order_with_stamps_equal_to_log_time(demo):
    _, _, msgs, _ = demo
    ts = [m.t for m in msgs]
    assert ts == sorted(ts)
    assert ts[0] >= T0_NS / 1e9
    for m in msgs:
        stamp = m.msg.header.stamp.sec + m.msg.header.stamp.nanosec * 1e-9
        assert stamp == pytest.approx(m.t, abs=1e-6)


def _grid(m) -> int:
    """The trajectory sample a message was made from (its stamp, in exact nanoseconds)."""
    rel_ns = m.msg.header.stamp.sec * 10**9 + m.msg.header.stamp.nanosec - T0_NS
    return max(0, int(np.floor(rel_ns * GRID_HZ / 1e9 + 1e-6)))


def test_demo_bag_values_match_the_trajectory(demo):
    _, _, msgs, _ = demo
    traj = demo_trajectory(DURATION, seed=3)
    arm = list(ARM_DIMS)
    seen = set()
    for m in msgs:
        i = _grid(m)
        if m.topic == "/kuavo_arm_traj":  # degrees, arm_joint_0..13
            assert list(m.msg.name) == [f"arm_joint_{k}" for k in range(14)]
            np.testing.assert_allclose(m.msg.position, np.degrees(traj.command[i, arm]), atol=1e-9)
        elif m.topic == "/joint_states":  # by name, shuffled, extra joints
            pos = dict(zip(m.msg.name, m.msg.position, strict=True))
            assert len(pos) == 28 and list(m.msg.name)[:2] != ["zarm_l1_joint", "zarm_l2_joint"]
            got = [pos[f"zarm_{s}{k}_joint"] for s in "lr" for k in range(1, 8)]
            np.testing.assert_allclose(got, traj.state[i, arm], atol=1e-9)
        elif m.topic == "/sensors_data_raw":
            q = np.asarray(m.msg.joint_data.joint_q)
            assert q.shape == (28,)
            np.testing.assert_allclose(q[12:26], traj.state[i, arm], atol=1e-9)
        elif m.topic == "/gripper/state":
            assert list(m.msg.name) == ["left_claw", "right_claw"]
            np.testing.assert_allclose(m.msg.position, 100 * traj.state[i, list(CLAW_DIMS)])
        elif m.topic == "/gripper/command":
            np.testing.assert_allclose(m.msg.position, 100 * traj.command[i, list(CLAW_DIMS)])
        elif m.topic == "/leju_claw_state":
            assert list(m.msg.data.name) == ["left_claw", "right_claw"]
            np.testing.assert_allclose(m.msg.data.position, 100 * traj.state[i, list(CLAW_DIMS)])
            assert set(np.asarray(m.msg.state).tolist()) <= {1, 2, 3}
        elif m.topic == "/leju_claw_command":
            np.testing.assert_allclose(m.msg.data.position, 100 * traj.command[i, list(CLAW_DIMS)])
        else:
            continue
        seen.add(m.topic)
    assert len(seen) == 4


def test_demo_bag_images_are_jpeg_of_the_requested_size(demo):
    _, _, msgs, _ = demo
    frames = {c: [] for c in CAMERAS}
    for m in msgs:
        if m.topic in frames:
            img = cv2.imdecode(np.asarray(m.msg.data), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (H, W, 3)
            assert "jpeg" in m.msg.format
            frames[m.topic].append(img)
    # The first cycle moves the left arm: the head and left wrist pictures change with it (the
    # idle right arm's wrist view barely does).
    for topic in CAMERAS[:2]:
        first, last = frames[topic][0].astype(int), frames[topic][-1].astype(int)
        assert np.abs(first - last).mean() > 1.0, topic


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_the_make_demo_layout(tmp_path, capsys):
    assert main([str(tmp_path / "demo_bag")]) == 0  # defaults: 20 s, sqlite3
    assert (tmp_path / "demo_bag" / "metadata.yaml").is_file()
    assert "wrote" in capsys.readouterr().out
    with open_bag(tmp_path / "demo_bag") as bag:
        assert 19.9 < bag.duration_s <= 20.0
    assert [p.name for p in tmp_path.iterdir()] == ["demo_bag"]  # no temporary leftovers

    assert main([str(tmp_path / "demo_bag")]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main([str(tmp_path / "demo_bag"), "--duration", "1", "--overwrite"]) == 0
    with open_bag(tmp_path / "demo_bag") as bag:
        assert bag.duration_s < 1.01


@pytest.mark.timing
def test_cli_writes_the_default_20_s_demo_bag_in_under_15_s(tmp_path):
    t0 = time.monotonic()
    assert main([str(tmp_path / "demo_bag")]) == 0
    assert time.monotonic() - t0 < 15.0


def test_cli_ros1_appends_bag_suffix_and_split_writes_a_directory(tmp_path):
    args = ["--duration", "1.5", "--width", "32", "--height", "24"]
    assert main([str(tmp_path / "stock"), "--format", "ros1", *args]) == 0
    assert (tmp_path / "stock.bag").is_file()
    assert main([str(tmp_path / "split"), "--format", "ros1", "--split-s", "0.5", *args]) == 0
    parts = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert parts == ["split_0.bag", "split_1.bag", "split_2.bag"]
    with open_bag(tmp_path / "split") as split, open_bag(tmp_path / "stock.bag") as single:
        assert split.topics == single.topics


def test_demo_messages_are_deterministic_and_validated_eagerly():
    a = list(demo_messages("ros1", 0.5, seed=4, width=32, height=24))
    b = list(demo_messages("ros1", 0.5, seed=4, width=32, height=24))
    assert [(x[0], x[2]) for x in a] == [(x[0], x[2]) for x in b]
    jpeg = [bytes(x[3].data) for x in a if "cam" in x[0]]
    assert jpeg == [bytes(x[3].data) for x in b if "cam" in x[0]]
    with pytest.raises(BagError, match="unknown bag format"):
        demo_messages("ros2", 1.0)  # before any iteration


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(BagError, match="duration"):
        make_demo_bag(tmp_path / "x", duration_s=0)
    with pytest.raises(BagError, match="image size"):
        make_demo_bag(tmp_path / "x", width=4)
    assert not (tmp_path / "x").exists()
