"""Synthetic Kuavo-like recordings for tests, the demo and fine-tuning smoke runs.

A pick-and-place motion repeats every ``PERIOD_S`` seconds, alternating arms: reach to an
object whose place is random per cycle (seeded), close the claw, lift it towards the body,
open the claw, return home. The 16-D command (policy order: left arm 7, left claw, right arm 7,
right claw; rad and 0 open .. 1 closed) is a minimum-jerk trajectory inside the Kuavo limits and
speed limits of ``RobotConfig``; the measured state follows it through a first-order lag
(``TAU_ARM_S``, ``TAU_CLAW_S``), the claw stops on the object when it grasps.

The cameras see the state: a head camera over a textured table shows both arms (a line per arm
segment, a hand blob whose fingers open and close), the object, and where it goes; the wrist
cameras pan over a texture with the arm joints, show the fingers and the object growing as the
hand approaches. So a policy fine-tuned on the bag can learn reach-to-object from images.

Two flavours, matching the two shipped configs:

- ROS 2 (``fmt="sqlite3"`` or ``"mcap"``, config/kuavo_smolvla.yaml): ``/joint_states``
  (JointState, 14 ``zarm_*`` joints in rad plus legs and head, in a fixed shuffled order),
  ``/gripper/state`` (JointState left_claw/right_claw 0..100), ``/kuavo_arm_traj`` (JointState,
  14 commanded positions in degrees, ``arm_joint_0..13``), ``/gripper/command`` (JointState
  0..100) and three ``sensor_msgs/CompressedImage`` JPEG cameras.
- ROS 1 stock (``fmt="ros1"``, config/kuavo_ros1_stock.yaml): ``/sensors_data_raw``
  (kuavo_msgs/sensorsData, arm at ``joint_data.joint_q[12:26]``), ``/kuavo_arm_traj``,
  ``/leju_claw_state`` (kuavo_msgs/lejuClawState), ``/leju_claw_command``
  (kuavo_msgs/lejuClawCommand), the same cameras; kuavo_msgs connections carry the stock
  definitions and md5 sums, like Leju's recordings.

Every message has a header stamp and is logged at that time. ``make_demo_bag`` writes to a
temporary name and renames at the end, so an interrupted run never leaves a half bag at ``out``.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.bag import BAG_FORMATS, BagError, BagWriter, typestore_for
from kuavo_smolvla_ros.core.config import KUAVO_JOINT_NAMES, RobotConfig

DEFAULT_WIDTH = 224
DEFAULT_HEIGHT = 168
T0_NS = 1_700_000_000 * 10**9  # 2023-11-14: a plausible wall-clock epoch, like a real bag
PERIOD_S = 9.0
TAU_ARM_S = 0.1
TAU_CLAW_S = 0.15
GRID_HZ = 100.0  # simulation grid; joint state and arm commands are published at this rate
DEMO_TASK = "pick up the object"  # config/kuavo_smolvla.yaml policy.task

CAMERA_TOPICS = {
    "head_cam_h": "/cam_h/color/image_raw/compressed",
    "wrist_cam_l": "/cam_l/color/image_raw/compressed",
    "wrist_cam_r": "/cam_r/color/image_raw/compressed",
}
RATES_HZ = {
    "joint_state": 100.0,
    "arm_command": 100.0,
    "claw_state": 50.0,
    "claw_command": 30.0,
    "camera": 30.0,
}
ARM_NAMES = tuple(n for n in KUAVO_JOINT_NAMES if "claw" not in n)  # l1..l7, r1..r7
ARM_DIMS = (*range(0, 7), *range(8, 15))
CLAW_DIMS = (7, 15)
LEG_NAMES = (*(f"leg_l{i}_joint" for i in range(1, 7)), *(f"leg_r{i}_joint" for i in range(1, 7)))
HEAD_NAMES = ("zhead_1_joint", "zhead_2_joint")
# Standing posture of the legs (rad): hip pitch, knee, ankle pitch slightly bent.
_LEG_POSE = np.array([0.0, 0.0, -0.3, 0.6, -0.3, 0.0] * 2)

# Cycle timeline (s within a cycle): hold, reach, close, lift, open, return, hold.
_T_REACH = (0.4, 2.8)
_T_CLOSE = (2.8, 3.8)
_T_LIFT = (3.8, 5.6)
_T_OPEN = (5.6, 6.6)
_T_RETURN = (6.6, 8.8)


# ---------------------------------------------------------------------------------------------
# Motion


@dataclass(frozen=True)
class Cycle:
    """One pick-and-place: which arm (0 left, 1 right), object place (u, v in [0, 1]), grip."""

    side: int
    u: float
    v: float
    grip: float  # commanded closure 0..1
    contact: float  # closure at which the claw stops on the object


def _arm_pose(kind: str, side: int, u: float = 0.5, v: float = 0.5) -> np.ndarray:
    """7 joint angles (rad) of one arm; ``side`` 0 left, 1 right (mirrored roll/yaw)."""
    s = 1.0 if side == 0 else -1.0
    if kind == "home":
        return np.array([-0.15, 0.12 * s, 0.0, -0.5, 0.0, 0.0, 0.0])
    if kind == "carry":
        return np.array([-0.6, 0.15 * s, 0.0, -1.6, 0.0, 0.0, 0.0])
    # reach: further forward with u, further out with v
    return np.array(
        [
            -0.55 - 0.6 * u,
            s * (0.10 + 0.35 * v),
            0.25 * (v - 0.5),
            -1.5 + 0.7 * u,
            0.3 * (u - 0.5),
            s * 0.15 * (v - 0.5),
            0.2 * (u - 0.5),
        ]
    )


def _min_jerk(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x**3 * (10.0 - 15.0 * x + 6.0 * x**2)


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    w = _min_jerk((t - window[0]) / (window[1] - window[0]))
    return a[None, :] + (b - a)[None, :] * w[:, None]


def make_cycles(n: int, seed: int) -> list[Cycle]:
    rng = np.random.default_rng([seed, 1])
    return [
        Cycle(
            side=i % 2,
            u=float(rng.uniform()),
            v=float(rng.uniform()),
            grip=float(rng.uniform(0.8, 0.95)),
            contact=float(rng.uniform(0.55, 0.7)),
        )
        for i in range(n)
    ]


@dataclass
class Trajectory:
    """The simulated recording on a ``GRID_HZ`` grid. Times are seconds from the bag start."""

    t: np.ndarray  # (N,)
    command: np.ndarray  # (N, 16) policy units
    state: np.ndarray  # (N, 16) policy units (measured, lagged)
    held: np.ndarray  # (N,) bool: object in the active hand
    cycle_index: np.ndarray  # (N,) int
    cycles: list[Cycle]

    def at(self, t: float) -> int:
        """Grid index of time ``t`` (nearest sample not after ``t``)."""
        return int(np.clip(math.floor(t * GRID_HZ + 1e-6), 0, len(self.t) - 1))


def demo_trajectory(duration_s: float = 20.0, seed: int = 0) -> Trajectory:
    """Command and measured state (16-D, policy units) of the demo motion."""
    n = round(duration_s * GRID_HZ) + 1
    t = np.arange(n) / GRID_HZ
    cycles = make_cycles(math.ceil(duration_s / PERIOD_S) + 1, seed)
    cyc = np.minimum((t // PERIOD_S).astype(int), len(cycles) - 1)
    tc = t - cyc * PERIOD_S
    rng = np.random.default_rng([seed, 2])
    command = np.zeros((n, 16))
    held = np.zeros(n, dtype=bool)
    contact = np.ones(n)
    for k, c in enumerate(cycles):
        sel = cyc == k
        if not sel.any():
            continue
        tt = tc[sel]
        home = _arm_pose("home", c.side)
        reach = _arm_pose("reach", c.side, c.u, c.v)
        carry = _arm_pose("carry", c.side)
        arm = np.where(
            (tt < _T_LIFT[0])[:, None],
            _blend(home, reach, tt, _T_REACH),
            np.where(
                (tt < _T_RETURN[0])[:, None],
                _blend(reach, carry, tt, _T_LIFT),
                _blend(carry, home, tt, _T_RETURN),
            ),
        )
        claw = np.where(
            tt < _T_OPEN[0],
            c.grip * _min_jerk((tt - _T_CLOSE[0]) / (_T_CLOSE[1] - _T_CLOSE[0])),
            c.grip * (1.0 - _min_jerk((tt - _T_OPEN[0]) / (_T_OPEN[1] - _T_OPEN[0]))),
        )
        # The idle arm sways a little around home, its claw stays open.
        other = 1 - c.side
        # (zero at the cycle ends, where the arms swap roles, so the command stays smooth)
        sway = (
            0.04
            * np.sin(2 * np.pi * (t[sel] / 4.5 + 0.3 * other))
            * np.sin(np.pi * tt / PERIOD_S) ** 2
        )
        idle = _arm_pose("home", other)[None, :] + np.outer(sway, [1, 0, 0.5, 0, 0, 0, 0])
        base_active = 0 if c.side == 0 else 8
        base_idle = 8 if c.side == 0 else 0
        rows = np.flatnonzero(sel)
        command[np.ix_(rows, range(base_active, base_active + 7))] = arm
        command[rows, base_active + 7] = claw
        command[np.ix_(rows, range(base_idle, base_idle + 7))] = idle
        command[rows, base_idle + 7] = 0.0
        in_hand = (tt >= _T_CLOSE[0] + 0.5) & (tt < _T_OPEN[0] + 0.3)
        held[rows] = in_hand
        # the claw of the active arm stops on the object while it holds it
        contact[rows] = np.where(in_hand, c.contact, 1.0)

    # Measured state: first-order lag, exact discretisation on the grid, tiny sensor noise.
    a_arm = 1.0 - math.exp(-1.0 / (GRID_HZ * TAU_ARM_S))
    a_claw = 1.0 - math.exp(-1.0 / (GRID_HZ * TAU_CLAW_S))
    alpha = np.full(16, a_arm)
    alpha[list(CLAW_DIMS)] = a_claw
    state = np.empty_like(command)
    y = command[0].copy()
    for i in range(n):
        y = y + alpha * (command[i] - y)
        for d, side in ((7, 0), (15, 1)):
            if held[i] and cycles[cyc[i]].side == side:
                y[d] = min(y[d], contact[i])
        state[i] = y
    noise = rng.normal(0.0, 2e-4, size=state.shape)
    noise[:, list(CLAW_DIMS)] = 0.0
    state = state + noise
    robot = RobotConfig()
    lo, hi = np.array(robot.lower), np.array(robot.upper)
    command = np.clip(command, lo, hi)
    state = np.clip(state, lo, hi)
    return Trajectory(t, command, state, held, cyc, cycles)


# ---------------------------------------------------------------------------------------------
# Images


def _texture(rng: np.random.Generator, h: int, w: int, base: tuple[int, int, int]) -> np.ndarray:
    import cv2

    # muted grey noise at two scales over a base colour: texture without drowning the objects
    coarse = rng.uniform(-1, 1, size=(max(h // 16, 2), max(w // 16, 2))).astype(np.float32)
    fine = rng.uniform(-1, 1, size=(max(h // 4, 2), max(w // 4, 2))).astype(np.float32)
    noise = 40 * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    noise += 12 * cv2.resize(fine, (w, h), interpolation=cv2.INTER_LINEAR)
    img = np.array(base, np.float32)[None, None, :] + noise[:, :, None]
    for _ in range(12):  # features: a few rectangles and lines
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = (
            x0 + int(rng.integers(4, max(w // 5, 5))),
            y0 + int(rng.integers(4, max(h // 5, 5))),
        )
        color = tuple(int(c) for c in rng.integers(70, 190, 3))
        if rng.uniform() < 0.5:
            cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
        else:
            cv2.line(img, (x0, y0), (x1, y1), color, 2)
    return np.clip(img, 0, 255).astype(np.uint8)


class _Renderer:
    """Draws the three camera images (BGR) from the robot state and the object."""

    def __init__(self, width: int, height: int, seed: int) -> None:
        import cv2

        self.cv2 = cv2
        self.w, self.h = width, height
        rng = np.random.default_rng([seed, 3])
        self.head_bg = _texture(rng, height, width, (60, 110, 150))  # brownish table (BGR)
        self.head_bg[: height // 6] = (self.head_bg[: height // 6] * 0.5).astype(np.uint8)
        self.wrist_bg = [_texture(rng, 2 * height, 2 * width, (150, 140, 120)) for _ in range(2)]
        self.r = max(3, int(0.045 * min(width, height)))

    def hand_px(self, arm: np.ndarray, side: int) -> tuple[float, float]:
        """Head-camera pixel of a hand from its 7 joint angles (a fixed planar projection)."""
        s_img = -1.0 if side == 0 else 1.0
        x_sh = (0.3 if side == 0 else 0.7) * self.w
        reach = float(np.clip((-arm[0] - 0.15) / 1.0, 0.0, 1.3))
        elbow = float(np.clip(-arm[3], 0.0, 2.7))
        x = x_sh + s_img * self.w * (0.02 + 0.6 * (abs(arm[1]) - 0.1)) + 0.15 * self.w * arm[2]
        y = self.h * (0.18 + 0.62 * reach - 0.10 * (elbow - 0.8))
        return x, y

    def _shoulder_px(self, side: int) -> tuple[float, float]:
        return (0.3 if side == 0 else 0.7) * self.w, 0.04 * self.h

    def head(self, state: np.ndarray, obj: tuple[float, float] | None) -> np.ndarray:
        cv2 = self.cv2
        img = self.head_bg.copy()
        if obj is not None:
            cv2.circle(img, _pt(obj), self.r, (30, 30, 220), -1)
            cv2.circle(img, _pt(obj), self.r, (10, 10, 90), 1)
        for side in (0, 1):
            arm = state[list(ARM_DIMS[7 * side : 7 * side + 7])]
            claw = state[CLAW_DIMS[side]]
            sh, hand = self._shoulder_px(side), self.hand_px(arm, side)
            elbow = (
                0.5 * (sh[0] + hand[0]) + (-1 if side == 0 else 1) * 0.06 * self.w,
                0.5 * (sh[1] + hand[1]),
            )
            cv2.line(img, _pt(sh), _pt(elbow), (170, 170, 170), max(2, self.r // 2))
            cv2.line(img, _pt(elbow), _pt(hand), (200, 200, 200), max(2, self.r // 2))
            color = (60, 200, 60) if side == 0 else (220, 120, 40)
            cv2.circle(img, _pt(hand), int(self.r * 0.9), color, -1)
            gap = self.r * (1.6 - 1.2 * claw)  # fingers: open wide at 0, together at 1
            for sgn in (-1, 1):
                p0 = (hand[0] + sgn * gap, hand[1])
                p1 = (hand[0] + sgn * gap * 0.8, hand[1] + 1.5 * self.r)
                cv2.line(img, _pt(p0), _pt(p1), color, max(1, self.r // 3))
        return img

    def wrist(
        self, side: int, state: np.ndarray, obj: tuple[float, float] | None, held: bool
    ) -> np.ndarray:
        cv2 = self.cv2
        arm = state[list(ARM_DIMS[7 * side : 7 * side + 7])]
        claw = state[CLAW_DIMS[side]]
        bg = self.wrist_bg[side]
        # pan over the texture with the joints (shoulder pitch, roll, upper-arm yaw, wrist)
        ox = 0.5 * self.w * (1.0 + np.tanh(1.2 * arm[1] + 0.8 * arm[2] + 0.6 * arm[6]))
        oy = 0.5 * self.h * (1.0 + np.tanh(1.0 * (arm[0] + 0.8) + 0.5 * arm[4]))
        x0, y0 = int(np.clip(ox, 0, self.w)), int(np.clip(oy, 0, self.h))
        img = np.ascontiguousarray(bg[y0 : y0 + self.h, x0 : x0 + self.w])
        if obj is not None:
            hand = self.hand_px(arm, side)
            if held:
                center, radius = (0.5 * self.w, 0.72 * self.h), 0.22 * min(self.w, self.h)
            else:
                dx, dy = obj[0] - hand[0], obj[1] - hand[1]
                dist = math.hypot(dx, dy) / max(self.w, self.h)
                center = (0.5 * self.w + 2.0 * dx, 0.55 * self.h + 2.0 * dy)
                radius = 0.2 * min(self.w, self.h) / (1.0 + 8.0 * dist)
            cv2.circle(img, _pt(center), max(2, int(radius)), (30, 30, 220), -1)
        gap = 0.5 * self.w * (0.55 - 0.4 * claw)  # finger gap shrinks as the claw closes
        fw = max(3, int(0.08 * self.w))
        for sgn in (-1, 1):
            xc = 0.5 * self.w + sgn * gap
            cv2.rectangle(
                img, _pt((xc - fw / 2, 0.65 * self.h)), _pt((xc + fw / 2, self.h)), (50, 50, 50), -1
            )
        return img


def _pt(p: tuple[float, float]) -> tuple[int, int]:
    return round(float(p[0])), round(float(p[1]))


def _object_px(traj: Trajectory, renderer: _Renderer, i: int) -> tuple[float, float] | None:
    """Where the object is in the head camera at grid index ``i`` (None before a cycle starts)."""
    k = int(traj.cycle_index[i])
    c = traj.cycles[k]
    if traj.held[i]:
        arm = traj.state[i, list(ARM_DIMS[7 * c.side : 7 * c.side + 7])]
        x, y = renderer.hand_px(arm, c.side)
        return x, y + 0.8 * renderer.r
    tc = traj.t[i] - k * PERIOD_S
    if tc >= _T_OPEN[0]:  # placed where it was released (carry pose)
        x, y = renderer.hand_px(_arm_pose("carry", c.side), c.side)
        return x, y + 0.8 * renderer.r
    x, y = renderer.hand_px(_arm_pose("reach", c.side, c.u, c.v), c.side)
    return x, y + 0.8 * renderer.r


# ---------------------------------------------------------------------------------------------
# Messages


def _times(rate_hz: float, duration_s: float, phase_s: float, rng: np.random.Generator):
    """Publish times (s): a fixed rate, a phase and +-0.5 ms jitter, strictly increasing."""
    n = math.floor((duration_s - phase_s) * rate_hz) + 1
    t = phase_s + np.arange(n) / rate_hz + rng.uniform(-5e-4, 5e-4, n)
    t = np.clip(t, 0.0, duration_s)
    return np.maximum.accumulate(t)


class _Factory:
    """Message constructors for one typestore (ROS 1 headers have ``seq``)."""

    def __init__(self, fmt: str) -> None:
        self.ros1 = fmt == "ros1"
        self.store = typestore_for(fmt)
        self.T = self.store.types
        self._seq: dict[str, int] = {}

    def header(self, topic: str, t_ns: int, frame_id: str) -> Any:
        stamp = self.T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
        if self.ros1:
            seq = self._seq.get(topic, 0)
            self._seq[topic] = seq + 1
            return self.T["std_msgs/msg/Header"](seq=seq, stamp=stamp, frame_id=frame_id)
        return self.T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def joint_state(self, topic, t_ns, names, position, velocity=None, effort=None) -> Any:
        n = len(names)
        return self.T["sensor_msgs/msg/JointState"](
            header=self.header(topic, t_ns, ""),
            name=list(names),
            position=np.asarray(position, np.float64),
            velocity=np.zeros(n) if velocity is None else np.asarray(velocity, np.float64),
            effort=np.zeros(n) if effort is None else np.asarray(effort, np.float64),
        )

    def image(self, topic: str, t_ns: int, frame_id: str, jpeg: bytes) -> Any:
        return self.T["sensor_msgs/msg/CompressedImage"](
            header=self.header(topic, t_ns, frame_id),
            format="bgr8; jpeg compressed bgr8",
            data=np.frombuffer(jpeg, np.uint8),
        )

    def eed(self, names, position, velocity, effort) -> Any:
        return self.T["kuavo_msgs/msg/endEffectorData"](
            name=list(names),
            position=np.asarray(position, np.float64),
            velocity=np.asarray(velocity, np.float64),
            effort=np.asarray(effort, np.float64),
        )

    def sensors_data(self, topic, t_ns, q, v, current) -> Any:
        vec = self.T["geometry_msgs/msg/Vector3"]
        stamp = self.T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
        return self.T["kuavo_msgs/msg/sensorsData"](
            header=self.header(topic, t_ns, "world"),
            sensor_time=stamp,
            joint_data=self.T["kuavo_msgs/msg/jointData"](
                joint_q=q, joint_v=v, joint_vd=np.zeros_like(q), joint_current=current
            ),
            imu_data=self.T["kuavo_msgs/msg/imuData"](
                gyro=vec(x=0.0, y=0.0, z=0.0),
                acc=vec(x=0.0, y=0.0, z=9.81),
                free_acc=vec(x=0.0, y=0.0, z=0.0),
                quat=self.T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            ),
            end_effector_data=self.eed([], [], [], []),
        )


def _claw_states(traj: Trajectory, i: int, side: int) -> int:
    """lejuClawState.state code: 1 moving, 2 reached, 3 grabbed."""
    d = CLAW_DIMS[side]
    holding = traj.held[i] and traj.cycles[traj.cycle_index[i]].side == side
    if holding and traj.command[i, d] > traj.state[i, d] + 0.05:
        return 3
    j = max(i - 1, 0)
    return 1 if abs(traj.state[i, d] - traj.state[j, d]) * GRID_HZ > 0.05 else 2


def demo_messages(
    fmt: str = "sqlite3",
    duration_s: float = 20.0,
    seed: int = 0,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    factory: _Factory | None = None,
) -> Iterator[tuple[str, str, int, Any]]:
    """``(topic, msgtype, t_ns, msg)`` of the demo recording, in log-time order.

    Streamed (one generator per topic, merged by time), so long recordings need little memory.
    """
    if fmt not in BAG_FORMATS:
        raise BagError(f"unknown bag format {fmt!r}: use one of {', '.join(BAG_FORMATS)}.")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise BagError(f"duration must be > 0 s, got {duration_s}.")
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise BagError(f"image size {width}x{height} out of range (16..4096 pixels a side).")
    f = factory or _Factory(fmt)
    traj = demo_trajectory(duration_s, seed)
    renderer = _Renderer(width, height, seed)
    rng = np.random.default_rng([seed, 4])
    # Publish times of every stream, drawn up front in a fixed order (determinism).
    phases = {"joint_state": 0.0, "arm_command": 0.004, "claw_state": 0.007, "claw_command": 0.011}
    times = {k: _times(RATES_HZ[k], duration_s, ph, rng) for k, ph in phases.items()}
    for k, cam in enumerate(CAMERA_TOPICS):
        times[cam] = _times(RATES_HZ["camera"], duration_s, 0.013 + 0.003 * k, rng)
    streams = [
        _state_stream(f, traj, times["joint_state"]),
        _arm_command_stream(f, traj, times["arm_command"]),
        _claw_state_stream(f, traj, times["claw_state"]),
        _claw_command_stream(f, traj, times["claw_command"]),
        *(_camera_stream(f, traj, renderer, cam, times[cam]) for cam in CAMERA_TOPICS),
    ]
    return _merge(streams)


def _merge(streams: list[Iterator[Any]]) -> Iterator[tuple[str, str, int, Any]]:
    """Merge ``(t_ns, item)`` streams by time; ties keep the stream order."""
    tagged = [((t_ns, k, item) for t_ns, item in stream) for k, stream in enumerate(streams)]
    for _, _, item in heapq.merge(*tagged, key=lambda x: (x[0], x[1])):
        yield item


def _ns(t: float) -> int:
    return T0_NS + round(float(t) * 1e9)


_JS = "sensor_msgs/msg/JointState"
_CLAW_NAMES = ("left_claw", "right_claw")


def _state_stream(f: _Factory, traj: Trajectory, times: np.ndarray) -> Iterator[Any]:
    """/joint_states (ROS 2: by name, shuffled) or /sensors_data_raw (ROS 1: joint_q[28])."""
    vel = np.gradient(traj.state, 1.0 / GRID_HZ, axis=0)
    perm = np.random.default_rng(7).permutation(len(ARM_NAMES) + len(LEG_NAMES) + 2)
    names = np.array([*ARM_NAMES, *LEG_NAMES, *HEAD_NAMES])[perm].tolist()
    arm = list(ARM_DIMS)
    for t in times:
        i, t_ns = traj.at(t), _ns(t)
        head = 0.05 * np.sin([0.5 * t, 0.3 * t])
        legs = _LEG_POSE + 0.005 * np.sin(2 * np.pi * 0.5 * t)
        if f.ros1:  # 0-11 legs, 12-25 arms (left 7, right 7), 26-27 head
            q = np.concatenate([legs, traj.state[i, arm], head])
            v = np.concatenate([np.zeros(12), vel[i, arm], np.zeros(2)])
            msg = f.sensors_data("/sensors_data_raw", t_ns, q, v, 0.5 * np.tanh(v))
            yield t_ns, ("/sensors_data_raw", "kuavo_msgs/msg/sensorsData", t_ns, msg)
        else:
            q = np.concatenate([traj.state[i, arm], legs, head])[perm]
            v = np.concatenate([vel[i, arm], np.zeros(14)])[perm]
            yield (
                t_ns,
                ("/joint_states", _JS, t_ns, f.joint_state("/joint_states", t_ns, names, q, v)),
            )


def _arm_command_stream(f: _Factory, traj: Trajectory, times: np.ndarray) -> Iterator[Any]:
    """/kuavo_arm_traj: 14 commanded positions in degrees, left 7 then right 7."""
    names = [f"arm_joint_{k}" for k in range(14)]
    for t in times:
        i, t_ns = traj.at(t), _ns(t)
        deg = np.degrees(traj.command[i, list(ARM_DIMS)])
        yield (
            t_ns,
            ("/kuavo_arm_traj", _JS, t_ns, f.joint_state("/kuavo_arm_traj", t_ns, names, deg)),
        )


def _claw_state_stream(f: _Factory, traj: Trajectory, times: np.ndarray) -> Iterator[Any]:
    """/gripper/state (ROS 2) or /leju_claw_state (ROS 1), 0..100."""
    vel = np.gradient(traj.state, 1.0 / GRID_HZ, axis=0)
    for t in times:
        i, t_ns = traj.at(t), _ns(t)
        pos = 100.0 * traj.state[i, list(CLAW_DIMS)]
        cvel = 100.0 * vel[i, list(CLAW_DIMS)]
        if f.ros1:
            msg = f.T["kuavo_msgs/msg/lejuClawState"](
                header=f.header("/leju_claw_state", t_ns, ""),
                state=np.array([_claw_states(traj, i, 0), _claw_states(traj, i, 1)], np.int8),
                data=f.eed(_CLAW_NAMES, pos, cvel, [1.0, 1.0]),
            )
            yield t_ns, ("/leju_claw_state", "kuavo_msgs/msg/lejuClawState", t_ns, msg)
        else:
            msg = f.joint_state("/gripper/state", t_ns, _CLAW_NAMES, pos, cvel)
            yield t_ns, ("/gripper/state", _JS, t_ns, msg)


def _claw_command_stream(f: _Factory, traj: Trajectory, times: np.ndarray) -> Iterator[Any]:
    """/gripper/command (ROS 2) or /leju_claw_command (ROS 1), 0..100."""
    for t in times:
        i, t_ns = traj.at(t), _ns(t)
        pos = 100.0 * traj.command[i, list(CLAW_DIMS)]
        if f.ros1:
            msg = f.T["kuavo_msgs/msg/lejuClawCommand"](
                header=f.header("/leju_claw_command", t_ns, ""),
                data=f.eed(_CLAW_NAMES, pos, [50.0, 50.0], [1.0, 1.0]),
            )
            yield t_ns, ("/leju_claw_command", "kuavo_msgs/msg/lejuClawCommand", t_ns, msg)
        else:
            msg = f.joint_state("/gripper/command", t_ns, _CLAW_NAMES, pos)
            yield t_ns, ("/gripper/command", _JS, t_ns, msg)


def _camera_stream(
    f: _Factory, traj: Trajectory, renderer: _Renderer, cam: str, times: np.ndarray
) -> Iterator[Any]:
    """One camera: JPEG sensor_msgs/CompressedImage of the rendered scene."""
    import cv2

    topic = CAMERA_TOPICS[cam]
    frame_id = f"{topic.split('/')[1]}_color_optical_frame"
    enc = [int(cv2.IMWRITE_JPEG_QUALITY), 90]
    for t in times:
        i, t_ns = traj.at(t), _ns(t)
        obj = _object_px(traj, renderer, i)
        if cam == "head_cam_h":
            img = renderer.head(traj.state[i], obj)
        else:
            side = 0 if cam == "wrist_cam_l" else 1
            holding = bool(traj.held[i]) and traj.cycles[traj.cycle_index[i]].side == side
            img = renderer.wrist(side, traj.state[i], obj, holding)
        ok, jpeg = cv2.imencode(".jpg", img, enc)
        if not ok:  # pragma: no cover - cv2 always encodes a uint8 BGR image
            raise BagError("JPEG encoding failed.")
        msg = f.image(topic, t_ns, frame_id, jpeg.tobytes())
        yield t_ns, (topic, "sensor_msgs/msg/CompressedImage", t_ns, msg)


def make_demo_bag(
    out: str | os.PathLike,
    fmt: str = "sqlite3",
    duration_s: float = 20.0,
    seed: int = 0,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    *,
    split_s: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the demo recording and return the path to open it with ``open_bag``.

    ROS 2 formats write the bag directory ``out`` (``out/metadata.yaml``). ``"ros1"`` writes
    the file ``out`` (``.bag`` appended if missing), or with ``split_s`` a directory ``out`` of
    ``<name>_0.bag``, ``<name>_1.bag``... An existing ``out`` is an error unless ``overwrite``.
    """
    out = Path(out)
    if fmt == "ros1" and split_s is None and out.suffix != ".bag":
        out = out.with_name(out.name + ".bag")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise BagError(f"{out} exists already; remove it or pass --overwrite.")
        _remove(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    _remove(tmp, missing_ok=True)
    name = out.stem if fmt == "ros1" else out.name
    if fmt == "ros1" and split_s is not None:
        tmp.mkdir()
        target = tmp / f"{name}.bag"
    else:
        target = tmp
    factory = _Factory(fmt)
    try:
        with BagWriter(target, fmt, split_s=split_s, typestore=factory.store, stem=name) as w:
            for topic, msgtype, t_ns, msg in demo_messages(
                fmt, duration_s, seed, width, height, factory
            ):
                w.write(topic, msgtype, t_ns, msg)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp, missing_ok=True)
        raise
    return out


def _remove(path: Path, missing_ok: bool = False) -> None:
    if path.is_dir() and not path.is_symlink():
        names = {p.suffix for p in path.rglob("*") if p.is_file()}
        if names - {".yaml", ".db3", ".mcap", ".bag", ".db3-shm", ".db3-wal"}:
            raise BagError(f"{path} holds files that are not part of a bag; not removing it.")
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    elif not missing_ok:
        raise BagError(f"{path} does not exist.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kuavo-smolvla-make-demo-bag",
        description="Write a synthetic Kuavo-like pick-and-place recording (rosbag) for tests,"
        " the demo and fine-tuning smoke runs.",
    )
    parser.add_argument("out", help="output bag directory (ROS 2) or .bag file (ros1)")
    parser.add_argument("--format", default="sqlite3", choices=BAG_FORMATS, dest="fmt",
                        help="sqlite3 or mcap: ROS 2 topics (config/kuavo_smolvla.yaml); ros1:"
                        " stock Kuavo topics and kuavo_msgs (config/kuavo_ros1_stock.yaml)")  # fmt: skip
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="image width")
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT, help="image height")
    parser.add_argument("--split-s", type=float, default=None,
                        help="start a new bag file every this many seconds")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        path = make_demo_bag(
            args.out,
            args.fmt,
            args.duration,
            args.seed,
            args.width,
            args.height,
            split_s=args.split_s,
            overwrite=args.overwrite,
        )
    except BagError as exc:
        print(f"kuavo-smolvla-make-demo-bag: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {path} ({args.fmt}, {args.duration:g} s, {args.width}x{args.height} images,"
        f" task {DEMO_TASK!r}) in {time.monotonic() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
