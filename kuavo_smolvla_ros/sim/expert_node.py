"""The scripted expert as a ROS 2 node: it drives the simulator through the robot's topics.

It reads ``/simulator/scene`` (the layout: a privileged demonstrator) and ``/joint_states``,
plans with IK on its own copy of the MuJoCo model when an episode is reset, and answers every
joint-state message of a running episode with one ``/kuavo_arm_traj`` (degrees) and one
``/gripper/command`` (0..100) message, like a controller ticking at the state rate in sim time.
"""

from __future__ import annotations

import json
import threading

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from kuavo_smolvla_ros.sim.expert import Expert
from kuavo_smolvla_ros.sim.model import ARM_JOINTS, CLAW_NAMES, READY_DEG, build_model
from kuavo_smolvla_ros.sim.node import COMMAND_NAMES
from kuavo_smolvla_ros.sim.tasks import Layout


class ExpertNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("kuavo_sim_expert", **kwargs)
        self.model = build_model(64, 64)
        self.ready = np.radians(np.asarray(READY_DEG, float))
        self.lock = threading.Lock()
        self.expert: Expert | None = None
        self.planned_episode = -1
        self.scene: dict | None = None
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.arm_pub = self.create_publisher(JointState, "/kuavo_arm_traj", 10)
        self.claw_pub = self.create_publisher(JointState, "/gripper/command", 10)
        self.create_subscription(String, "/simulator/scene", self._on_scene, latched)
        self.create_subscription(
            JointState, "/joint_states", self._on_state, qos_profile_sensor_data
        )

    def _on_scene(self, msg: String) -> None:
        scene = json.loads(msg.data)
        with self.lock:
            self.scene = scene
            if scene["layout"] is None:
                return
            if scene["episode"] != self.planned_episode:
                lay = scene["layout"]
                layout = Layout(lay["seed"], tuple(lay["cube_xy"]), tuple(lay["bin_xy"]))
                self.expert = Expert(self.model, scene["task"], layout, self.ready, 0.0)
                self.planned_episode = scene["episode"]
            if scene["phase"] == "running" and self.expert is not None:
                self.expert.t_seg = float(scene["t_start"])

    def _on_state(self, msg: JointState) -> None:
        with self.lock:
            scene, expert = self.scene, self.expert
            if scene is None or expert is None or scene["phase"] != "running":
                return
            if scene["episode"] != self.planned_episode:
                return
            names = list(msg.name)
            measured = np.array([msg.position[names.index(n)] for n in ARM_JOINTS])
            t = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            q, claw = expert.command(t, measured)
        arm = JointState(name=list(COMMAND_NAMES), position=np.degrees(q).tolist())
        arm.header.stamp = msg.header.stamp
        cl = JointState(name=list(CLAW_NAMES), position=claw.tolist())
        cl.header.stamp = msg.header.stamp
        self.arm_pub.publish(arm)
        self.claw_pub.publish(cl)
