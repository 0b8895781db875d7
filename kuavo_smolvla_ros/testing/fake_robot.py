"""A stand-in for the Kuavo robot on real ROS 2 topics, for tests and benchmarks of the node.

It publishes what the stock robot publishes (arm JointState with URDF names among other joints,
claw state 0..100, three JPEG cameras) from a background executor, records what the node
publishes, calls its services and sets its parameters. The node under test runs in its own
process (``start_node``).

``follow=False`` (the default) is the worst case for the safety invariant: the measured pose
never moves, whatever the node commands, so any transition that jumps "to the measured pose"
shows as a jump. ``follow=True`` makes the measured pose the last command (a perfect robot).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from kuavo_smolvla_ros.core.config import KUAVO_JOINT_NAMES, Config
from kuavo_smolvla_ros.core.safety import invariant_violations
from kuavo_smolvla_ros.ros.child import stop_node  # noqa: F401 - re-exported for tests

NODE = "/kuavo_smolvla_policy"
ARM_NAMES = [n for n in KUAVO_JOINT_NAMES if "claw" not in n]
CAMERA_TOPICS = {
    "head_cam_h": "/cam_h/color/image_raw/compressed",
    "wrist_cam_l": "/cam_l/color/image_raw/compressed",
    "wrist_cam_r": "/cam_r/color/image_raw/compressed",
}
ARM_TOPIC, GRIPPER_TOPIC = "/kuavo_arm_traj", "/gripper/command"
ARM_DIMS = [*range(7), *range(8, 15)]
GRIPPER_DIMS = [7, 15]


def jpeg(seed: int, h: int = 96, w: int = 128) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _stamp_s(msg: Any) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


class FakeKuavo:
    """Publishes synthetic robot topics at fixed rates; records the node's outputs."""

    def __init__(
        self,
        arm_pose: np.ndarray | None = None,
        claw: float = 20.0,
        *,
        follow: bool = False,
        image_size: tuple[int, int] = (96, 128),
        camera_hz: float = 30.0,
        joint_hz: float = 100.0,
        frames: dict[str, bytes] | None = None,
        record: bool = True,
    ) -> None:
        """``frames``: JPEG bytes per camera (default: random ``image_size`` frames).
        ``record=False`` keeps only arrival times of the command topics (long benchmarks);
        /diagnostics messages are always kept."""
        self.node = rclpy.create_node(f"fake_kuavo_{os.getpid()}_{id(self) % 10000}")
        self.arm_pose = np.zeros(14) if arm_pose is None else np.asarray(arm_pose, float)
        self.claw = claw
        self.follow = follow
        self.record = record
        self.cameras_on = {name: True for name in CAMERA_TOPICS}
        self.joints_on = True
        self.unpaired = 0  # see published_commands
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
            (ARM_TOPIC, JointState),
            (GRIPPER_TOPIC, JointState),
            (f"{NODE}/action", JointState),
            ("/diagnostics", DiagnosticArray),
        ):
            n.create_subscription(typ, topic, self._recorder(topic), 100)
        self.enable_cli = n.create_client(SetBool, f"{NODE}/enable")
        self.reset_cli = n.create_client(Trigger, f"{NODE}/reset")
        self.param_cli = n.create_client(SetParameters, f"{NODE}/set_parameters")
        h, w = image_size
        self._frames = frames or {k: jpeg(i, h, w) for i, k in enumerate(CAMERA_TOPICS)}
        n.create_timer(1.0 / joint_hz, self._publish_joints)
        n.create_timer(1.0 / camera_hz, self._publish_cameras)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _recorder(self, topic: str):
        keep = self.record or topic == "/diagnostics"

        def cb(msg) -> None:
            with self.lock:
                self.received[topic].append((time.monotonic(), msg if keep else None))
            if self.follow and topic == ARM_TOPIC:
                self.arm_pose = np.radians(np.asarray(msg.position, float))
            elif self.follow and topic == GRIPPER_TOPIC:
                self.claw = float(np.mean(msg.position))

        return cb

    def _publish_joints(self) -> None:
        if not self.joints_on:
            return
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

    # -- what the node published ------------------------------------------------------------
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

    def published_commands(self, since: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(stamps in s, (N, 16) commands in SI units) of every robot command received: arm
        (degrees) and gripper (0..100) messages paired by their header stamp. A stamp seen on
        one topic only (the other message not received yet, at the end of a window) is left
        out; ``unpaired`` counts them."""
        arms = {_stamp_s(m): m for m in self.messages(ARM_TOPIC, since)}
        grips = {_stamp_s(m): m for m in self.messages(GRIPPER_TOPIC, since)}
        times = sorted(set(arms) & set(grips))
        self.unpaired = len(set(arms) ^ set(grips))
        cmds = np.empty((len(times), 16))
        for i, t in enumerate(times):
            cmds[i, ARM_DIMS] = np.radians(np.asarray(arms[t].position, float))
            cmds[i, GRIPPER_DIMS] = np.asarray(grips[t].position, float) / 100.0
        return np.asarray(times), cmds

    def diagnostic_status(self, since: float = 0.0) -> tuple[int, str, dict[str, str]] | None:
        """(level, message, values) of the node's latest /diagnostics status, or None."""
        for m in reversed(self.messages("/diagnostics", since)):
            for st in m.status:
                if "policy" in st.name:
                    level = st.level[0] if isinstance(st.level, bytes) else int(st.level)
                    return level, st.message, {kv.key: kv.value for kv in st.values}
        return None

    def diagnostics(self, since: float = 0.0) -> dict[str, str]:
        st = self.diagnostic_status(since)
        return {} if st is None else st[2]

    def wait_diagnostics(self, level: int, timeout: float = 60.0, contains: str = "") -> tuple:
        """Wait for a /diagnostics status of ``level`` (whose message holds ``contains``)."""
        deadline = time.monotonic() + timeout
        since = time.monotonic()
        while time.monotonic() < deadline:
            st = self.diagnostic_status(since)
            if st is not None and st[0] == level and contains in st[1]:
                return st
            time.sleep(0.1)
        raise AssertionError(
            f"no /diagnostics level {level} with {contains!r} in {timeout} s;"
            f" last: {self.diagnostic_status()}"
        )

    # -- calling the node --------------------------------------------------------------------
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

    def set_parameter(self, name: str, value: bool | str | float) -> Any:
        """Set one of the node's parameters at runtime (``ros2 param set``); the result."""
        if isinstance(value, bool):
            v = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, str):
            v = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        else:
            v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value))
        req = SetParameters.Request(parameters=[ParameterMsg(name=name, value=v)])
        return self.call(self.param_cli, req).results[0]

    def clear_records(self) -> None:
        with self.lock:
            self.received.clear()

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(timeout=5.0)
        self.node.destroy_node()


def check_invariant(
    times: np.ndarray,
    commands: np.ndarray,
    cfg: Config | None = None,
    *,
    gap_s: float = 0.5,
    slack_s: float = 2e-4,
    limit: int = 20,
) -> list[str]:
    """Invariant violations in a received command stream (``FakeKuavo.published_commands``).

    A gap longer than ``gap_s`` means the node was silent (disabled): the next command may start
    anywhere inside the limits. ``slack_s`` absorbs the microseconds between the two clock
    readings of a tick (the stamp is read right after the control time).
    """
    cfg = cfg or Config()
    rate = cfg.outputs.publish_rate_hz
    t = np.asarray(times, float)
    restarts = np.zeros(len(t), dtype=bool)
    restarts[1:] = np.diff(t) > gap_s
    lower = np.asarray(cfg.robot.lower) + cfg.safety.limit_margin
    upper = np.asarray(cfg.robot.upper) - cfg.safety.limit_margin
    vmax = np.asarray(cfg.robot.max_velocity) * cfg.safety.velocity_scale
    # dt measured by the stamps may differ from the control clock's by the slack.
    return invariant_violations(
        commands,
        t,
        lower,
        upper,
        vmax,
        2.0 / rate,
        restarts=restarts,
        atol=float(np.max(vmax)) * slack_s + 1e-9,
        limit=limit,
    )


def start_node(
    checkpoint: Path, *params: str, log: Path | None = None, env: dict | None = None
) -> subprocess.Popen:
    """The policy node in its own process, as ``policy_node --ros-args -p ...`` runs it."""
    args = [sys.executable, "-m", "kuavo_smolvla_ros.ros.node", "--ros-args"]
    args += ["-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu"]
    for p in params:
        args += ["-p", p]
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )


def inference_child(pid: int) -> int | None:
    """The node's inference process (spawned by multiprocessing), not its resource tracker."""
    for c in child_pids(pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            return c
    return None


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc): the inference process, the resource tracker."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d.name))
    return out


def process_gone(pid: int, timeout: float = 30.0) -> bool:
    """True once ``pid`` no longer runs (gone or a zombie)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.startswith("State:") and "Z" in line for line in f):
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
