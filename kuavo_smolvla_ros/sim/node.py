"""ROS 2 shell of the simulator: the robot's topics, /clock, and the evaluation handshake.

The node ``kuavo_sim`` speaks what the real robot speaks with the package's default config:

| | topic / service | type | notes |
|---|---|---|---|
| out | ``/clock`` | rosgraph_msgs/Clock | every ``control_dt`` of sim time; run others with use_sim_time |
| out | ``/joint_states`` | sensor_msgs/JointState | 14 arm joints by URDF name, rad (+ noise) |
| out | ``/gripper/state`` | sensor_msgs/JointState | ``left_claw``, ``right_claw``, 0 open..100 closed |
| out | ``/cam_{h,l,r}/color/image_raw/compressed`` | CompressedImage | JPEG, ``image_width`` x ``image_height`` at ``camera_rate_hz`` |
| in | ``/kuavo_arm_traj`` | sensor_msgs/JointState | 14 positions in degrees (names ``arm_joint_0..13`` or URDF names) |
| in | ``/gripper/command`` | sensor_msgs/JointState | 0..100 |
| srv | ``/simulator/reset`` | std_srvs/Trigger | next seeded episode: layout placed, arm at the ready posture |
| srv | ``/simulator/start`` | std_srvs/Trigger | the episode starts: commands move the arm from now |
| out | ``/simulator/success`` | std_msgs/Bool | during an episode, 10 Hz and on change; true once the task succeeded |
| out | ``/simulator/scene`` | std_msgs/String | latched JSON: episode, seed, task, instruction, phase, layout |

Episode ``k`` (counting resets from 0) uses seed ``seed + k``. Physics runs in its own thread
at ``real_time_factor`` (0: as fast as it can); rendering happens there too, so a slow frame
slows sim time, never the other way round. Commands before ``start`` are ignored (the arm holds
the ready posture), as in Leju's protocol.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from kuavo_smolvla_ros.sim.model import ARM_JOINTS, CAMERAS, CLAW_NAMES
from kuavo_smolvla_ros.sim.robot import SimConfig, SimError, SimRobot
from kuavo_smolvla_ros.sim.tasks import Layout, make_task

CAMERA_TOPICS = {
    "head_cam_h": "/cam_h/color/image_raw/compressed",
    "wrist_cam_l": "/cam_l/color/image_raw/compressed",
    "wrist_cam_r": "/cam_r/color/image_raw/compressed",
}
COMMAND_NAMES = tuple(f"arm_joint_{i}" for i in range(14))
NODE_NAME = "kuavo_sim"


@dataclass(frozen=True)
class NodeParams:
    """The node's ROS parameters (declared once, with these defaults)."""

    task: str = "reach"
    seed: int = 0
    image_width: int = 640
    image_height: int = 480
    camera_rate_hz: float = 30.0
    state_rate_hz: float = 100.0
    real_time_factor: float = 1.0
    command_latency_s: float = 0.0
    camera_latency_s: float = 0.0
    joint_noise_rad: float = 0.0
    claw_noise: float = 0.0
    jpeg_quality: int = 90

    def sim_config(self) -> SimConfig:
        return SimConfig(
            width=self.image_width,
            height=self.image_height,
            command_latency_s=self.command_latency_s,
            camera_latency_s=self.camera_latency_s,
            joint_noise_rad=self.joint_noise_rad,
            claw_noise=self.claw_noise,
        )


PARAM_DOCS = {
    "task": "reach | pick | place",
    "seed": "seed of episode 0; episode k uses seed + k",
    "image_width": "camera image width (px)",
    "image_height": "camera image height (px)",
    "camera_rate_hz": "camera rate in sim time",
    "state_rate_hz": "joint and claw state rate in sim time",
    "real_time_factor": "sim seconds per wall second at most; 0: as fast as possible",
    "command_latency_s": "delay from a command's arrival to the actuators (sim time)",
    "camera_latency_s": "delay from rendering a frame to publishing it (stamped at render)",
    "joint_noise_rad": "std of Gaussian noise on published joint positions",
    "claw_noise": "std of Gaussian noise on published claw positions (0..100)",
    "jpeg_quality": "JPEG quality 1..100",
}


def _ns(t: float) -> int:
    return round(t * 1e9)


def _stamp(msg, t: float) -> None:
    ns = _ns(t)
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns // 1_000_000_000, ns % 1_000_000_000


class SimNode(Node):
    """The simulated Kuavo on ROS topics; ``recorder`` (optional) sees every message in/out."""

    def __init__(
        self,
        params: NodeParams | None = None,
        recorder: Callable[[str, str, float, object], None] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(NODE_NAME, **kwargs)
        defaults = params or NodeParams()
        values = {}
        for name, doc in PARAM_DOCS.items():
            from rcl_interfaces.msg import ParameterDescriptor

            self.declare_parameter(
                name, getattr(defaults, name), ParameterDescriptor(description=doc, read_only=True)
            )
            values[name] = self.get_parameter(name).value
        self.params = NodeParams(**values)
        p = self.params
        if p.camera_rate_hz <= 0 or p.state_rate_hz <= 0 or p.real_time_factor < 0:
            raise SimError("camera_rate_hz and state_rate_hz must be > 0, real_time_factor >= 0")
        if not 1 <= p.jpeg_quality <= 100:
            raise SimError("jpeg_quality must be in 1..100")
        self.task = make_task(p.task)
        self.robot = SimRobot(p.sim_config(), rng_seed=p.seed)
        # Fail now, with one line, if there is no GL; the physics thread renders with its own
        # context (an EGL context is current in one thread only).
        self.robot.renderer()
        self.robot.close()
        self.recorder = recorder
        self.lock = threading.Lock()
        self.episode = -1
        self.phase = "idle"  # idle -> ready (reset) -> running (start)
        self.layout: Layout | None = None
        self.t_start: float | None = None
        self.succeeded_at: float | None = None
        self._frames: deque[tuple[float, str, bytes]] = deque()
        self._next_state = 0.0
        self._next_cam = 0.0
        self._next_success = 0.0
        self._last_success: bool | None = None

        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.joint_pub = self.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.claw_pub = self.create_publisher(JointState, "/gripper/state", qos_profile_sensor_data)
        self.cam_pubs = {
            c: self.create_publisher(CompressedImage, CAMERA_TOPICS[c], qos_profile_sensor_data)
            for c in CAMERAS
        }
        self.success_pub = self.create_publisher(Bool, "/simulator/success", 10)
        self.scene_pub = self.create_publisher(String, "/simulator/scene", latched)
        self.create_subscription(JointState, "/kuavo_arm_traj", self._on_arm, 10)
        self.create_subscription(JointState, "/gripper/command", self._on_claw, 10)
        self.create_service(Trigger, "/simulator/reset", self._srv_reset)
        self.create_service(Trigger, "/simulator/start", self._srv_start)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sim-physics", daemon=True)
        self._publish_scene()

    # -- lifecycle ---------------------------------------------------------------------------
    def start_loop(self) -> None:
        self._thread.start()

    def stop_loop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    @property
    def running(self) -> bool:
        """The physics thread is alive (it stops, and says why, on an error)."""
        return self._thread.is_alive()

    # -- handshake ---------------------------------------------------------------------------
    def reset_episode(self) -> str:
        with self.lock:
            self.episode += 1
            seed = self.params.seed + self.episode
            self.layout = self.task.sample_layout(seed)
            self.robot.reset_pose()
            self.task.place(self.robot, self.layout)
            self.phase, self.t_start, self.succeeded_at = "ready", None, None
            self._last_success = None
            self._frames.clear()
            self._next_state = self._next_cam = self.robot.time  # fresh state/images now
            self._publish_scene()
        return f"episode {self.episode} seed {seed} task {self.task.name}: {self.task.instruction}"

    def start_episode(self) -> tuple[bool, str]:
        with self.lock:
            if self.phase != "ready":
                return False, f"cannot start in phase {self.phase!r}: call /simulator/reset first"
            self.phase, self.t_start = "running", self.robot.time
            self._next_success = self.robot.time
            self._publish_scene()
        return True, f"episode {self.episode} started at t={self.t_start:.2f}"

    def _srv_reset(self, _req, resp):
        resp.message = self.reset_episode()
        resp.success = True
        return resp

    def _srv_start(self, _req, resp):
        resp.success, resp.message = self.start_episode()
        return resp

    def _publish_scene(self) -> None:
        scene = {
            "episode": self.episode,
            "seed": None if self.layout is None else self.layout.seed,
            "task": self.task.name,
            "instruction": self.task.instruction,
            "phase": self.phase,
            "t_start": self.t_start,
            "layout": None if self.layout is None else self.layout.to_dict(),
        }
        self.scene_pub.publish(String(data=json.dumps(scene)))

    # -- commands ----------------------------------------------------------------------------
    def _on_arm(self, msg: JointState) -> None:
        try:
            q = self._arm_from(msg)
            with self.lock:
                if self.recorder is not None:
                    self.recorder(
                        "/kuavo_arm_traj", "sensor_msgs/msg/JointState", self.robot.time, msg
                    )
                if self.phase == "running":
                    self.robot.command_arm(q)
        except SimError as exc:
            self.get_logger().error(f"/kuavo_arm_traj: {exc}", throttle_duration_sec=2.0)

    def _arm_from(self, msg: JointState) -> np.ndarray:
        pos = np.asarray(msg.position, float)
        names = list(msg.name)
        for wanted in (COMMAND_NAMES, ARM_JOINTS):
            if names and set(wanted) <= set(names) and len(names) == len(pos):
                return np.radians(pos[[names.index(n) for n in wanted]])
        if len(pos) != 14:
            raise SimError(f"needs 14 positions in degrees (left 7, right 7), got {len(pos)}")
        return np.radians(pos)

    def _on_claw(self, msg: JointState) -> None:
        try:
            pos = np.asarray(msg.position, float)
            names = list(msg.name)
            if names and set(CLAW_NAMES) <= set(names) and len(names) == len(pos):
                c = pos[[names.index(n) for n in CLAW_NAMES]]
            elif len(pos) == 2:
                c = pos
            else:
                raise SimError(f"needs left_claw and right_claw (0..100), got {len(pos)} values")
            with self.lock:
                if self.recorder is not None:
                    self.recorder(
                        "/gripper/command", "sensor_msgs/msg/JointState", self.robot.time, msg
                    )
                if self.phase == "running":
                    self.robot.command_claws(c)
        except SimError as exc:
            self.get_logger().error(f"/gripper/command: {exc}", throttle_duration_sec=2.0)

    # -- the physics loop --------------------------------------------------------------------
    def _loop(self) -> None:
        p = self.params
        wall0, sim0 = time.monotonic(), self.robot.time
        try:
            while not self._stop.is_set() and rclpy.ok(context=self.context):
                with self.lock:
                    self.robot.step()
                    t = self.robot.time
                    self._publish(t)
                if p.real_time_factor > 0:
                    ahead = (t - sim0) / p.real_time_factor - (time.monotonic() - wall0)
                    if ahead > 0:
                        time.sleep(ahead)
                    elif ahead < -0.5:  # fell behind (slow frames): do not sprint to catch up
                        wall0, sim0 = time.monotonic(), t
        except Exception as exc:  # a dead physics thread must say why, once
            self.error = f"simulator loop stopped: {type(exc).__name__}: {exc}"
            self.get_logger().fatal(self.error)
        finally:
            self.robot.close()

    def _publish(self, t: float) -> None:
        p, r = self.params, self.robot
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = _ns(t) // 1_000_000_000, _ns(t) % 1_000_000_000
        self.clock_pub.publish(msg)
        eps = 1e-9
        if t + eps >= self._next_state:
            self._next_state += 1.0 / p.state_rate_hz
            js = JointState(name=list(ARM_JOINTS), position=r.arm_positions(noisy=True).tolist())
            js.velocity = r.arm_velocities().tolist()
            _stamp(js, t)
            claw = JointState(name=list(CLAW_NAMES), position=r.claw_positions(noisy=True).tolist())
            _stamp(claw, t)
            self.joint_pub.publish(js)
            self.claw_pub.publish(claw)
            self._record("/joint_states", "sensor_msgs/msg/JointState", t, js)
            self._record("/gripper/state", "sensor_msgs/msg/JointState", t, claw)
        if t + eps >= self._next_cam:
            self._next_cam += 1.0 / p.camera_rate_hz
            for cam in CAMERAS:
                self._frames.append((t, cam, self._jpeg(r.render(cam))))
        while self._frames and self._frames[0][0] + p.camera_latency_s <= t + eps:
            t_img, cam, data = self._frames.popleft()
            img = CompressedImage(format="jpeg", data=data)
            img.header.frame_id = f"{CAMERA_TOPICS[cam].split('/')[1]}_color_optical_frame"
            _stamp(img, t_img)
            self.cam_pubs[cam].publish(img)
            self._record(CAMERA_TOPICS[cam], "sensor_msgs/msg/CompressedImage", t, img)
        if self.phase == "running":
            ok = self.task.success(r)
            if ok and self.succeeded_at is None:
                self.succeeded_at = t
            ok = self.succeeded_at is not None
            if ok != self._last_success or t + eps >= self._next_success:
                self._next_success = t + 0.1
                self._last_success = ok
                self.success_pub.publish(Bool(data=ok))

    def _jpeg(self, rgb: np.ndarray) -> bytes:
        import cv2

        ok, buf = cv2.imencode(
            ".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), self.params.jpeg_quality]
        )
        if not ok:  # pragma: no cover - cv2 always encodes a uint8 image
            raise SimError("JPEG encoding failed")
        return buf.tobytes()

    def _record(self, topic: str, msgtype: str, t: float, msg) -> None:
        if self.recorder is not None:
            self.recorder(topic, msgtype, t, msg)


def make_overrides(values: dict) -> list[Parameter]:
    return [Parameter(k, value=v) for k, v in values.items()]


def main(args: list[str] | None = None) -> int:
    """``kuavo-smolvla-sim`` without ``--record``: the node, until Ctrl-C."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    node = None
    try:
        try:
            node = SimNode()
        except SimError as exc:
            print(f"kuavo-smolvla-sim: cannot start: {exc}", file=sys.stderr, flush=True)
            return 2
        node.start_loop()
        node.get_logger().info(
            f"simulating task {node.task.name!r} ({node.params.image_width}x"
            f"{node.params.image_height} cameras at {node.params.camera_rate_hz:g} Hz);"
            " call /simulator/reset then /simulator/start"
        )
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop_loop()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
