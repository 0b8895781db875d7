"""Policy node start-up and input edge cases, each with a node process of its own."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from ros_harness import CAMERA_TOPICS, FakeKuavo, start_node, stop_node
from sensor_msgs.msg import Image, JointState
from test_node import POSE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def test_raw_camera_with_an_unknown_encoding_is_logged_not_fatal(ros, tiny_checkpoint, tmp_path):
    log = tmp_path / "raw.log"
    topics = (
        f"[/cam_h/color/image_raw, {CAMERA_TOPICS['wrist_cam_l']}, {CAMERA_TOPICS['wrist_cam_r']}]"
    )
    proc = start_node(
        tiny_checkpoint,
        f"inputs.cameras.topics:={topics}",
        "inputs.cameras.transports:=[raw, compressed, compressed]",
        "start_enabled:=true",
        "task:=x",
        log=log,
    )
    fake = FakeKuavo(arm_pose=POSE)
    try:
        assert fake.enable_cli.wait_for_service(timeout_sec=120)
        img = Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32))
        rgb = Image(height=48, width=64, encoding="rgb8", step=192, data=bytes(48 * 64 * 3))
        for _ in range(20):
            fake.raw_pub.publish(img)
            time.sleep(0.05)
        deadline = time.monotonic() + 20
        while "yuv422" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "yuv422" in log.read_text()
        t0 = time.monotonic()
        fake.node.create_timer(1 / 30, lambda: fake.raw_pub.publish(rgb))
        fake.wait_for("/kuavo_arm_traj", 20, timeout=60, since=t0)
    finally:
        fake.close()
        assert stop_node(proc) == 0
    assert "Traceback" not in log.read_text()


def test_a_checkpoint_that_does_not_exist_stops_with_one_clear_line(ros, tmp_path):
    log = tmp_path / "bad.log"
    proc = start_node(tmp_path / "missing", log=log)
    assert proc.wait(timeout=120) == 2
    text = log.read_text()
    assert "cannot start" in text and "missing" in text
    assert "Traceback" not in text


def test_any_message_type_through_a_field_path_and_slice_feeds_the_arm(
    ros, tiny_checkpoint, tmp_path
):
    """A kuavo_msgs/sensorsData-like source (28 joints, arm at [12:26]) with a standard type,
    and a gripper JointState without names picked by index."""
    from std_msgs.msg import Float64MultiArray

    log = tmp_path / "path.log"
    proc = start_node(
        tiny_checkpoint,
        "inputs.arm.topic:=/sensors_data_raw",
        "inputs.arm.msg_type:=std_msgs/msg/Float64MultiArray",
        "inputs.arm.field:=data[12:26]",
        "inputs.arm.names:=['']",
        "inputs.gripper.topic:=/claw_no_names",
        "inputs.gripper.index:=[1, 0]",
        "start_enabled:=true",
        "task:=x",
        log=log,
    )
    fake = FakeKuavo(arm_pose=np.zeros(14))
    joint_q = np.zeros(28)
    joint_q[12:26] = POSE
    sensors = fake.node.create_publisher(Float64MultiArray, "/sensors_data_raw", 10)
    claw = fake.node.create_publisher(JointState, "/claw_no_names", 10)

    def publish():
        sensors.publish(Float64MultiArray(data=joint_q.tolist()))
        claw.publish(JointState(position=[80.0, 10.0]))  # reversed order, no names

    fake.node.create_timer(0.01, publish)
    try:
        msgs = fake.wait_for("/kuavo_arm_traj", 5, timeout=120)
        np.testing.assert_allclose(msgs[0].position, np.degrees(POSE), atol=1e-6)
        grip = fake.wait_for("/gripper/command", 1, timeout=10)[0]
        np.testing.assert_allclose(grip.position, [10.0, 80.0], atol=1e-6)
    finally:
        fake.close()
        assert stop_node(proc) == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("scheduler.merge_mode:=bogus", "choose one of"),
        ("robot.lower:=[1.0]", "robot.lower has 1 values"),
        ("scheduler.n_action_steps:=0", "n_action_steps"),
    ],
)
def test_invalid_parameters_stop_the_node_with_a_clear_message(
    ros, tiny_checkpoint, tmp_path, param, message
):
    log = tmp_path / "bad_param.log"
    proc = start_node(tiny_checkpoint, param, log=log)
    assert proc.wait(timeout=120) == 2
    text = log.read_text()
    assert "cannot start" in text and message in text and "Traceback" not in text


def test_integer_values_for_float_parameters_are_accepted(ros, tiny_checkpoint, tmp_path):
    log = tmp_path / "int.log"
    proc = start_node(tiny_checkpoint, "scheduler.publish_rate_hz:=50", log=log)
    fake = FakeKuavo(arm_pose=POSE)
    try:
        assert fake.enable_cli.wait_for_service(timeout_sec=120)
    finally:
        fake.close()
        assert stop_node(proc) == 0
    assert "commands at 50 Hz" in log.read_text()
