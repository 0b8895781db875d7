"""Policy node start-up and input edge cases, each with a node process of its own."""

from __future__ import annotations

import time

import pytest
import rclpy
from ros_harness import CAMERA_TOPICS, FakeKuavo, start_node, stop_node
from sensor_msgs.msg import Image
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
