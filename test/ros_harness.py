"""A stand-in for the Kuavo robot on real ROS 2 topics, for tests of the policy node.

It publishes what the stock robot publishes (arm JointState with URDF names among other joints,
claw state 0..100, three JPEG cameras) from a background executor, records what the node
publishes, and calls its services. The node under test runs in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from kuavo_smolvla_ros.core.config import KUAVO_JOINT_NAMES

NODE = "/kuavo_smolvla_policy"
ARM_NAMES = [n for n in KUAVO_JOINT_NAMES if "claw" not in n]
CAMERA_TOPICS = {
    "head_cam_h": "/cam_h/color/image_raw/compressed",
    "wrist_cam_l": "/cam_l/color/image_raw/compressed",
    "wrist_cam_r": "/cam_r/color/image_raw/compressed",
}
REPO = Path(__file__).resolve().parents[1]


def jpeg(seed: int, h: int = 96, w: int = 128) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


class FakeKuavo:
    """Publishes synthetic robot topics at fixed rates; records the node's outputs."""

    def __init__(self, arm_pose: np.ndarray | None = None, claw: float = 20.0) -> None:
        self.node = rclpy.create_node(f"fake_kuavo_{os.getpid()}")
        self.arm_pose = np.zeros(14) if arm_pose is None else np.asarray(arm_pose, float)
        self.claw = claw
        self.cameras_on = {name: True for name in CAMERA_TOPICS}
        self.bad_image: dict[str, bytes] = {}
        self.arm_override: JointState | None = None
        self.lock = threading.Lock()
        self.received: dict[str, list] = defaultdict(list)
        n = self.node
        self.joint_pub = n.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.claw_pub = n.create_publisher(JointState, "/gripper/state", qos_profile_sensor_data)
        self.cam_pubs = {
            k: n.create_publisher(CompressedImage, t, qos_profile_sensor_data)
            for k, t in CAMERA_TOPICS.items()
        }
        self.raw_pub = n.create_publisher(Image, "/cam_h/color/image_raw", qos_profile_sensor_data)
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.task_pub = n.create_publisher(String, f"{NODE}/task", latched)
        for topic, typ in (
            ("/kuavo_arm_traj", JointState),
            ("/gripper/command", JointState),
            (f"{NODE}/action", JointState),
            ("/diagnostics", DiagnosticArray),
        ):
            n.create_subscription(typ, topic, self._recorder(topic), 50)
        self.enable_cli = n.create_client(SetBool, f"{NODE}/enable")
        self.reset_cli = n.create_client(Trigger, f"{NODE}/reset")
        self._frames = {k: jpeg(i) for i, k in enumerate(CAMERA_TOPICS)}
        self._i = 0
        n.create_timer(0.01, self._publish_joints)
        n.create_timer(1 / 30, self._publish_cameras)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _recorder(self, topic: str):
        def cb(msg) -> None:
            with self.lock:
                self.received[topic].append((time.monotonic(), msg))

        return cb

    def _publish_joints(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        if self.arm_override is not None:
            self.arm_override.header.stamp = stamp
            self.joint_pub.publish(self.arm_override)
        else:
            names = ["leg_l1_joint", *reversed(ARM_NAMES), "zhead_1_joint"]
            pos = [0.3, *reversed(self.arm_pose.tolist()), -0.2]
            msg = JointState(name=names, position=pos)
            msg.header.stamp = stamp
            self.joint_pub.publish(msg)
        claw = JointState(name=["left_claw", "right_claw"], position=[self.claw, self.claw])
        claw.header.stamp = stamp
        self.claw_pub.publish(claw)

    def _publish_cameras(self) -> None:
        for name, pub in self.cam_pubs.items():
            if not self.cameras_on[name]:
                continue
            msg = CompressedImage(format="jpeg", data=self.bad_image.get(name, self._frames[name]))
            msg.header.stamp = self.node.get_clock().now().to_msg()
            pub.publish(msg)

    # -- helpers for tests ----------------------------------------------------------------------
    def messages(self, topic: str, since: float = 0.0) -> list:
        with self.lock:
            return [m for t, m in self.received[topic] if t >= since]

    def stamps(self, topic: str, since: float = 0.0) -> np.ndarray:
        with self.lock:
            return np.array([t for t, _ in self.received[topic] if t >= since])

    def wait_for(self, topic: str, count: int = 1, timeout: float = 60.0, since: float = 0.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.messages(topic, since)
            if len(msgs) >= count:
                return msgs
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {count} messages on {topic}")

    def call(self, client, request, timeout: float = 30.0):
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), f"{client.srv_name} did not answer"
        return future.result()

    def enable(self, on: bool = True):
        return self.call(self.enable_cli, SetBool.Request(data=on))

    def reset(self):
        return self.call(self.reset_cli, Trigger.Request())

    def set_task(self, text: str) -> None:
        self.task_pub.publish(String(data=text))

    def diagnostics(self, since: float = 0.0) -> dict[str, str]:
        msgs = self.messages("/diagnostics", since)
        for m in reversed(msgs):
            for st in m.status:
                if "policy" in st.name:
                    return {kv.key: kv.value for kv in st.values}
        return {}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def start_node(checkpoint: Path, *params: str, log: Path | None = None) -> subprocess.Popen:
    """The policy node in its own process, as ``policy_node --ros-args -p ...`` runs it."""
    args = [sys.executable, "-m", "kuavo_smolvla_ros.ros.node", "--ros-args"]
    args += ["-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu"]
    for p in params:
        args += ["-p", p]
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))


def stop_node(proc: subprocess.Popen) -> int:
    proc.send_signal(2)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
