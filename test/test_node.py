"""The policy node in its own process, driven over real ROS 2 topics by a fake Kuavo."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from ros_harness import FakeKuavo, start_node, stop_node
from sensor_msgs.msg import JointState

pytestmark = pytest.mark.slow

POSE = np.linspace(-0.3, -0.05, 14)  # measured arm pose, rad, inside every limit
MAX_STEP_DEG = np.degrees(1.0 * 2 / 100) + 1e-6  # max_velocity 1 rad/s, dt clipped to 2 ticks


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="module")
def node_log(tmp_path_factory):
    return tmp_path_factory.mktemp("node") / "node.log"


@pytest.fixture(scope="module")
def robot(ros, tiny_checkpoint, node_log):
    fake = FakeKuavo(arm_pose=POSE, claw=30.0)
    proc = start_node(
        tiny_checkpoint,
        "task:=pick up the cup",
        "safety.ramp_time_s:=1.0",
        "policy.seed:=0",
        log=node_log,
    )
    try:
        assert fake.enable_cli.wait_for_service(timeout_sec=120), "node did not come up"
        yield fake
    finally:
        fake.close()
        rc = stop_node(proc)
        assert rc == 0, node_log.read_text()[-3000:]


def _arm(msgs) -> np.ndarray:
    return np.array([m.position for m in msgs])


def _enable_fresh(robot: FakeKuavo) -> float:
    robot.enable(False)
    time.sleep(0.2)
    t0 = time.monotonic()
    assert robot.enable(True).success
    return t0


def test_starts_disabled_and_publishes_nothing_until_enabled(robot):
    time.sleep(1.0)
    assert robot.messages("/kuavo_arm_traj") == []
    t0 = _enable_fresh(robot)
    msgs = robot.wait_for("/kuavo_arm_traj", 100, timeout=60, since=t0)
    assert msgs[0].name == [f"arm_joint_{i}" for i in range(14)]
    assert all(len(m.position) == 14 for m in msgs)


@pytest.mark.timing
def test_commands_come_at_the_configured_rate(robot):
    """Wall-clock rate: ``make test-timing`` only (a loaded machine may miss it)."""
    _enable_fresh(robot)
    robot.wait_for("/kuavo_arm_traj", 20, timeout=60)
    t0 = time.monotonic()
    time.sleep(3.0)
    stamps = robot.stamps("/kuavo_arm_traj", t0)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 70 <= rate <= 110, f"publish rate {rate:.1f} Hz, configured 100"


def test_every_tick_publishes_one_command_on_each_topic_in_degrees(robot):
    """The node's own counters: each published command is one arm, one gripper and one
    ~/action message with one stamp (no wall-clock rate here)."""
    _enable_fresh(robot)
    robot.wait_for("/kuavo_arm_traj", 20, timeout=60)
    t0 = time.monotonic()
    robot.wait_for("/kuavo_arm_traj", 150, timeout=60, since=t0)
    d0 = robot.diagnostics(t0)
    time.sleep(2.5)  # two diagnostics periods
    d1 = robot.diagnostics(t0 + 1.5)
    assert int(d1["published"]) > int(d0["published"]) > 0
    assert d1["gate_cut"] == "0"

    def by_stamp(topic):
        return {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in robot.messages(topic, t0)}

    actions = by_stamp("/kuavo_smolvla_policy/action")
    arms, grips = by_stamp("/kuavo_arm_traj"), by_stamp("/gripper/command")
    common = sorted(set(actions) & set(arms) & set(grips))
    assert len(common) > 100, "one tick publishes all three with one stamp"
    assert len(common) >= 0.95 * len(arms), "no arm command without its gripper and action"
    action, arm, grip = actions[common[-1]], arms[common[-1]], grips[common[-1]]
    assert len(action.position) == 16
    si = np.array(action.position)
    np.testing.assert_allclose(np.degrees(si[[*range(7), *range(8, 15)]]), arm.position, atol=1e-6)
    assert grip.name == ["left_claw", "right_claw"]
    np.testing.assert_allclose(np.array(grip.position), 100 * si[[7, 15]], atol=1e-6)


def test_enable_ramps_in_from_the_measured_pose_within_the_speed_limit(robot):
    t0 = _enable_fresh(robot)
    msgs = robot.wait_for("/kuavo_arm_traj", 150, timeout=60, since=t0)
    arm = _arm(msgs)
    np.testing.assert_allclose(arm[0], np.degrees(POSE), atol=MAX_STEP_DEG)
    steps = np.abs(np.diff(arm, axis=0))
    assert steps.max() <= MAX_STEP_DEG, f"largest step {steps.max():.3f} deg"
    grip = _arm(robot.messages("/gripper/command", t0))
    np.testing.assert_allclose(grip[0], 30.0, atol=2.0 * 2 / 100 * 100 + 1e-6)


def test_stale_camera_holds_then_fresh_camera_resumes_with_a_ramp(robot):
    _enable_fresh(robot)
    robot.wait_for("/kuavo_arm_traj", 50, timeout=60)
    robot.cameras_on["wrist_cam_l"] = False
    time.sleep(1.5)  # camera_timeout_s is 0.5
    t_hold = time.monotonic()
    held = _arm(robot.wait_for("/kuavo_arm_traj", 20, timeout=60, since=t_hold))
    assert np.ptp(held, axis=0).max() == 0.0, "a hold repeats the same command"
    _level, _message, diag = robot.wait_diagnostics(1, contains="stale inputs")
    assert diag["mode"] == "holding" and "camera:wrist_cam_l" in diag["stale_inputs"]
    before = int(diag["holds"])
    assert int(robot.wait_diagnostics(1, contains="stale inputs")[2]["holds"]) > before

    robot.cameras_on["wrist_cam_l"] = True
    t_resume = time.monotonic()
    msgs = robot.wait_for("/kuavo_arm_traj", 100, timeout=60, since=t_resume)
    deadline = time.monotonic() + 30
    while robot.diagnostics(t_resume).get("mode") != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert robot.diagnostics(t_resume)["mode"] == "running"
    arm = _arm(robot.messages("/kuavo_arm_traj", t_resume))
    assert np.abs(np.diff(arm, axis=0)).max() <= MAX_STEP_DEG
    assert msgs


def test_disable_stops_commands_and_reset_starts_a_new_episode(robot):
    _enable_fresh(robot)
    robot.wait_for("/kuavo_arm_traj", 20, timeout=60)
    assert robot.reset().success
    assert robot.enable(False).success
    time.sleep(0.5)
    t0 = time.monotonic()
    time.sleep(1.0)
    assert robot.messages("/kuavo_arm_traj", t0) == []
    assert robot.diagnostics(t0)["mode"] == "disabled"


def test_a_task_change_reaches_the_model(robot):
    _enable_fresh(robot)
    robot.set_task("wave hello")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if robot.diagnostics(time.monotonic() - 1.5).get("last_request_task") == "wave hello":
            break
        time.sleep(0.2)
    assert robot.diagnostics()["last_request_task"] == "wave hello"


def test_malformed_messages_are_logged_and_survived(robot, node_log):
    _enable_fresh(robot)
    robot.wait_for("/kuavo_arm_traj", 20, timeout=60)
    robot.bad_image["head_cam_h"] = b"\xff\xd8 this is not a jpeg"
    robot.arm_override = JointState(name=["zarm_l1_joint"], position=[0.1])
    time.sleep(2.0)
    robot.bad_image.clear()
    robot.arm_override = None
    log = node_log.read_text()
    assert "ignored image from camera head_cam_h" in log
    assert "ignored arm state" in log and "zarm_l2_joint" in log
    assert "Traceback" not in log
    t0 = time.monotonic()
    robot.wait_for("/kuavo_arm_traj", 50, timeout=60, since=t0)  # still alive, still safe
