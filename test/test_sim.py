"""The simulator over real ROS 2 topics: handshake, tracking and limits, cameras.

One simulator process (small images, real-time pace) serves this module; a probe node in the
test process publishes commands in degrees, as the policy node does, and reads what a policy
would read. All times are sim times from message stamps, never wall-clock durations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from kuavo_smolvla_ros.sim.model import ARM_JOINTS
from kuavo_smolvla_ros.sim.node import CAMERA_TOPICS, COMMAND_NAMES
from kuavo_smolvla_ros.sim.robot import SimConfig, SimRobot

pytestmark = pytest.mark.slow
LOWER = np.array([-3.1416, -0.349, -1.5708, -2.618, -1.5708, -1.309, -0.698,
                  -3.1416, -2.094, -1.5708, -2.618, -1.5708, -0.698, -0.698])  # fmt: skip
UPPER = np.array([1.5708, 2.094, 1.5708, 0.0, 1.5708, 0.698, 0.698,
                  1.5708, 0.349, 1.5708, 0.0, 1.5708, 1.309, 0.698])  # fmt: skip
LAG_90_S = 0.3  # stated lag: 90 % of a 0.3 rad step within 0.3 s of sim time
SETTLE_S, SETTLE_TOL = 0.6, 0.02  # within 0.02 rad of the command 0.6 s after it


def sim_command(**params) -> list[str]:
    cmd = [sys.executable, "-m", "kuavo_smolvla_ros.sim.cli", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    return cmd


class Probe:
    """Stands where the policy node stands: reads state and cameras, commands in degrees."""

    def __init__(self) -> None:
        self.node = rclpy.create_node("sim_probe")
        n = self.node
        self.lock = threading.Lock()
        self.clock = 0.0
        self.joints: list[tuple[float, np.ndarray]] = []
        self.images: dict[str, list[tuple[float, bytes]]] = {k: [] for k in CAMERA_TOPICS}
        self.success: list[bool] = []
        self.scene: dict | None = None
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        n.create_subscription(Clock, "/clock", self._on_clock, 10)
        n.create_subscription(JointState, "/joint_states", self._on_joints, qos_profile_sensor_data)
        n.create_subscription(Bool, "/simulator/success", lambda m: self.success.append(m.data), 10)
        n.create_subscription(String, "/simulator/scene", self._on_scene, latched)
        for name, topic in CAMERA_TOPICS.items():
            n.create_subscription(CompressedImage, topic, self._cam(name), qos_profile_sensor_data)
        self.arm_pub = n.create_publisher(JointState, "/kuavo_arm_traj", 10)
        self.reset_cli = n.create_client(Trigger, "/simulator/reset")
        self.start_cli = n.create_client(Trigger, "/simulator/start")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_clock(self, m) -> None:
        self.clock = m.clock.sec + 1e-9 * m.clock.nanosec

    def _on_joints(self, m) -> None:
        t = m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec
        q = np.array([m.position[list(m.name).index(j)] for j in ARM_JOINTS])
        with self.lock:
            self.joints.append((t, q))

    def _on_scene(self, m) -> None:
        self.scene = json.loads(m.data)

    def _cam(self, name):
        def cb(m) -> None:
            t = m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec
            with self.lock:
                self.images[name].append((t, bytes(m.data)))

        return cb

    def call(self, client, timeout: float = 60.0):
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        fut = client.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not fut.done():
            assert time.monotonic() < deadline, f"{client.srv_name} did not answer"
            time.sleep(0.01)
        return fut.result()

    def wait_sim(self, dt: float, timeout: float = 60.0) -> float:
        t_end = self.clock + dt
        deadline = time.monotonic() + timeout
        while self.clock < t_end:
            assert time.monotonic() < deadline, "the simulator clock stopped"
            time.sleep(0.01)
        return self.clock

    def joints_since(self, t: float) -> list[tuple[float, np.ndarray]]:
        with self.lock:
            return [(s, q) for s, q in self.joints if s >= t]

    def latest_image(self, name: str, since: float) -> np.ndarray:
        deadline = time.monotonic() + 30
        while True:
            with self.lock:
                imgs = [d for s, d in self.images[name] if s >= since]
            if imgs:
                return cv2.imdecode(np.frombuffer(imgs[-1], np.uint8), cv2.IMREAD_COLOR)
            assert time.monotonic() < deadline, f"no {name} image after t={since}"
            time.sleep(0.02)

    def command(self, q_rad: np.ndarray, duration_s: float) -> float:
        """Publish ``q_rad`` (degrees on the wire) at ~100 Hz for ``duration_s`` of sim time;
        returns the sim time of the first message."""
        msg = JointState(name=list(COMMAND_NAMES), position=np.degrees(q_rad).tolist())
        t0 = self.clock
        deadline = time.monotonic() + 60
        while self.clock < t0 + duration_s:
            self.arm_pub.publish(msg)
            assert time.monotonic() < deadline, "the simulator clock stopped"
            time.sleep(0.01)
        return t0

    def new_episode(self) -> float:
        assert self.call(self.reset_cli).success
        assert self.call(self.start_cli).success
        return self.wait_sim(0.2)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            sim_command(image_width=128, image_height=96, camera_rate_hz=10.0, seed=7),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    rclpy.init()
    probe = Probe()
    try:
        assert probe.reset_cli.wait_for_service(timeout_sec=60), log.read_text()
        yield probe
    finally:
        probe.close()
        rclpy.shutdown()
        proc.send_signal(2)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_handshake_start_needs_reset_then_episodes_count_seeds(sim):
    # A fresh simulator has no episode: start is refused with the reason.
    resp = sim.call(sim.start_cli)
    assert not resp.success and "reset" in resp.message
    resp = sim.call(sim.reset_cli)
    assert resp.success and "seed 7" in resp.message and "episode 0" in resp.message
    deadline = time.monotonic() + 10
    while sim.scene is None or sim.scene["phase"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sim.scene["seed"] == 7 and sim.scene["task"] == "reach"
    assert sim.scene["instruction"] and sim.scene["layout"]["cube_xy"]
    n_success = len(sim.success)
    sim.wait_sim(0.3)
    assert len(sim.success) == n_success, "no /simulator/success before start"
    resp = sim.call(sim.start_cli)
    assert resp.success
    assert not sim.call(sim.start_cli).success, "a running episode cannot be started again"
    sim.wait_sim(0.5)
    assert len(sim.success) > n_success and not any(sim.success[n_success:])
    resp = sim.call(sim.reset_cli)
    assert resp.success and "seed 8" in resp.message and "episode 1" in resp.message


def test_arm_tracks_commands_within_lag(sim):
    sim.new_episode()
    t = sim.clock
    q0 = sim.joints_since(t - 0.05)[-1][1]
    step = np.zeros(14)
    step[[7, 8, 10, 13]] = [-0.3, -0.3, -0.3, 0.3]  # right r1, r2, r4, r7
    target = q0 + step
    t_cmd = sim.command(target, SETTLE_S + 0.2)
    rows = sim.joints_since(t_cmd)
    times = np.array([s for s, _ in rows]) - t_cmd
    q = np.array([r for _, r in rows])
    moved = np.abs(q - q0)[:, [7, 8, 10, 13]] / 0.3
    t90 = times[np.argmax(np.all(moved >= 0.9, axis=1))]
    assert np.all(moved[-1] >= 0.9), "the arm did not follow the command"
    assert t90 <= LAG_90_S, f"90 % of the step took {t90:.2f} s"
    assert t90 > 0.02, "a PD arm lags its command; it does not jump"
    late = q[times >= SETTLE_S]
    assert len(late) and np.abs(late - target).max() < SETTLE_TOL
    # The left arm was commanded to stay where it was.
    assert np.abs(q[:, :7] - q0[:7]).max() < SETTLE_TOL


def test_arm_never_leaves_its_limits(sim):
    t0 = sim.new_episode()
    q0 = sim.joints_since(t0 - 0.05)[-1][1]
    beyond = q0.copy()
    beyond[[7, 8, 10, 12]] = np.radians([-250.0, 60.0, 30.0, 150.0])  # all outside
    sim.command(beyond, 1.5)
    q = np.array([r for _, r in sim.joints_since(t0)])
    assert np.all(q >= LOWER - 0.01) and np.all(q <= UPPER + 0.01)
    final = q[-1]
    # ... and it went as far as the limits allow (the test would pass on a frozen arm otherwise)
    assert final[8] > UPPER[8] - 0.05 and final[10] > UPPER[10] - 0.05
    assert final[12] > UPPER[12] - 0.05


def test_images_change_when_the_arm_or_the_object_moves(sim):
    t0 = sim.new_episode()
    q0 = sim.joints_since(t0 - 0.05)[-1][1]
    head0 = sim.latest_image("head_cam_h", t0).astype(int)
    wrist0 = sim.latest_image("wrist_cam_r", t0).astype(int)
    moved = q0.copy()
    moved[[7, 10]] += [-0.4, 0.4]
    t1 = sim.command(moved, 1.0)
    head1 = sim.latest_image("head_cam_h", t1 + 0.8).astype(int)
    wrist1 = sim.latest_image("wrist_cam_r", t1 + 0.8).astype(int)
    assert (np.abs(head1 - head0).max(axis=2) > 40).sum() > 50, "head camera sees the arm move"
    assert np.abs(wrist1 - wrist0).mean() > 5, "the wrist camera moves with the arm"
    # Same ready posture, next episode: only the objects moved (a new seed's layout).
    t2 = sim.new_episode()
    head2 = sim.latest_image("head_cam_h", t2).astype(int)
    t3 = sim.new_episode()
    head3 = sim.latest_image("head_cam_h", t3).astype(int)
    assert (np.abs(head3 - head2).max(axis=2) > 40).sum() > 5, "the cube/bin moved"


def test_same_commands_same_seed_give_the_same_physics():
    """The core is deterministic: same layout and same command sequence, same trajectory."""
    from kuavo_smolvla_ros.sim.tasks import make_task

    runs = []
    for _ in range(2):
        r = SimRobot(SimConfig(width=64, height=48))
        task = make_task("pick")
        r.reset_pose()
        task.place(r, task.sample_layout(3))
        target = r.ready + np.r_[np.zeros(7), -0.2, 0.1, 0, -0.2, 0, 0, 0]
        r.command_arm(target)
        r.command_claws([0.0, 100.0])
        r.step(50)
        runs.append((r.data.qpos.copy(), r.render("head_cam_h")))
        r.close()
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])


def test_command_latency_delays_the_arm_by_that_much_sim_time():
    r = SimRobot(SimConfig(width=64, height=48, command_latency_s=0.1))
    q0 = r.arm_positions()
    target = q0 + np.r_[np.zeros(7), -0.3, np.zeros(6)]
    r.command_arm(target)
    r.step(9)  # 0.09 s: the command has not reached the actuators yet
    assert np.abs(r.arm_positions() - q0).max() < 1e-3
    r.step(30)
    assert abs(r.arm_positions()[7] - q0[7]) > 0.1
    r.close()
