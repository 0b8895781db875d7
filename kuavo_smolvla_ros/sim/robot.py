"""The simulated robot: stepping, actuation, joint mapping, latency, noise and cameras.

No rclpy here: the ROS node, the expert's tests, the evaluation and the benchmark drive this
class with plain numbers. Units at this boundary are the robot's own: arm joints in rad in
``ARM_JOINTS`` order (left 1..7, right 1..7), claws 0 (open) .. 100 (closed).

Command latency: a command given at sim time t reaches the actuators at t + ``command_latency_s``
(a FIFO in sim time). Camera latency is the ROS node's business (it publishes a frame rendered
at t when the clock passes t + ``camera_latency_s``, stamped t).
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from kuavo_smolvla_ros.sim.errors import GL_HELP, SimError
from kuavo_smolvla_ros.sim.model import (
    ARM_JOINTS,
    CAMERAS,
    FINGER_STROKE,
    READY_DEG,
    ArmGains,
    build_model,
    load_mujoco,
)


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings (sim-time seconds, image pixels); validated here, shared by the CLI."""

    width: int = 640
    height: int = 480
    timestep: float = 0.002
    control_dt: float = 0.01  # physics advanced per loop iteration; /clock resolution
    command_latency_s: float = 0.0
    camera_latency_s: float = 0.0
    joint_noise_rad: float = 0.0
    claw_noise: float = 0.0  # 0..100 units
    gains: ArmGains = field(default_factory=ArmGains)
    ready_deg: tuple[float, ...] = READY_DEG

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise SimError(f"image size {self.width}x{self.height} is outside 16..4096 px.")
        if not (0 < self.timestep <= 0.01):
            raise SimError(f"timestep {self.timestep} s must be in (0, 0.01].")
        if self.control_dt < self.timestep:
            raise SimError("control_dt must be at least one physics timestep.")
        for k in ("command_latency_s", "camera_latency_s", "joint_noise_rad", "claw_noise"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v >= 0):
                raise SimError(f"{k}={v} must be finite and >= 0.")
        if len(self.ready_deg) != 14:
            raise SimError("ready_deg needs 14 values (left l1..l7, right r1..r7).")

    @property
    def substeps(self) -> int:
        return max(1, round(self.control_dt / self.timestep))


class SimRobot:
    """One MuJoCo scene with Kuavo's upper body; ``step()`` advances ``control_dt`` of sim time."""

    def __init__(self, cfg: SimConfig | None = None, rng_seed: int = 0) -> None:
        mujoco = load_mujoco()

        self.cfg = cfg or SimConfig()
        self.model = build_model(self.cfg.width, self.cfg.height, self.cfg.gains)
        self.model.opt.timestep = self.cfg.timestep
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._qadr = np.array([m.joint(j).qposadr[0] for j in ARM_JOINTS])
        self._dadr = np.array([m.joint(j).dofadr[0] for j in ARM_JOINTS])
        self._arm_act = np.array([m.actuator(j.replace("_joint", "")).id for j in ARM_JOINTS])
        self._finger_q = {
            s: [m.joint(f"{s}_finger_{f}").qposadr[0] for f in "ab"] for s in ("l", "r")
        }
        self._finger_act = {s: [m.actuator(f"{s}_finger_{f}").id for f in "ab"] for s in "lr"}
        self.lower = m.jnt_range[[m.joint(j).id for j in ARM_JOINTS], 0].copy()
        self.upper = m.jnt_range[[m.joint(j).id for j in ARM_JOINTS], 1].copy()
        self.ready = np.radians(np.asarray(self.cfg.ready_deg, float))
        self._pending: deque[tuple[float, str, np.ndarray]] = deque()
        self._noise = np.random.default_rng(rng_seed)
        self.arm_target = self.ready.copy()
        self.claw_target = np.zeros(2)
        self._renderer = None
        self.reset_pose()

    # -- state ------------------------------------------------------------------------------
    @property
    def time(self) -> float:
        return float(self.data.time)

    def reset_pose(self, arm: np.ndarray | None = None) -> None:
        """Arm at ``arm`` (default: the ready posture) at rest, claws open, commands cleared."""
        import mujoco

        q = self.ready if arm is None else np.clip(np.asarray(arm, float), self.lower, self.upper)
        self.data.qpos[self._qadr] = q
        self.data.qvel[self._dadr] = 0.0
        for s in "lr":
            self.data.qpos[self._finger_q[s]] = 0.0
        self._pending.clear()
        self.arm_target = q.copy()
        self.claw_target = np.zeros(2)
        self._apply()
        mujoco.mj_forward(self.model, self.data)

    def arm_positions(self, noisy: bool = False) -> np.ndarray:
        q = self.data.qpos[self._qadr].copy()
        if noisy and self.cfg.joint_noise_rad > 0:
            q += self._noise.normal(0.0, self.cfg.joint_noise_rad, q.shape)
        return q

    def arm_velocities(self) -> np.ndarray:
        return self.data.qvel[self._dadr].copy()

    def claw_positions(self, noisy: bool = False) -> np.ndarray:
        """Claw opening as 0 (open) .. 100 (closed), the mean of the two fingers."""
        c = np.array(
            [100.0 * self.data.qpos[self._finger_q[s]].mean() / FINGER_STROKE for s in "lr"]
        )
        if noisy and self.cfg.claw_noise > 0:
            c += self._noise.normal(0.0, self.cfg.claw_noise, 2)
        return np.clip(c, 0.0, 100.0)

    # -- commands ---------------------------------------------------------------------------
    def command_arm(self, q: np.ndarray) -> None:
        """Joint targets (rad, 14 values); clipped to the limits, applied after the latency."""
        q = np.asarray(q, float).reshape(14)
        if not np.all(np.isfinite(q)):
            raise SimError("arm command holds NaN/Inf; ignored")
        self._queue("arm", np.clip(q, self.lower, self.upper))

    def command_claws(self, c: np.ndarray) -> None:
        """Claw targets 0 (open) .. 100 (closed), left then right."""
        c = np.asarray(c, float).reshape(2)
        if not np.all(np.isfinite(c)):
            raise SimError("claw command holds NaN/Inf; ignored")
        self._queue("claw", np.clip(c, 0.0, 100.0))

    def _queue(self, kind: str, value: np.ndarray) -> None:
        self._pending.append((self.time + self.cfg.command_latency_s, kind, value))

    def _apply(self) -> None:
        ctrl = self.data.ctrl
        ctrl[self._arm_act] = self.arm_target
        for i, s in enumerate("lr"):
            ctrl[self._finger_act[s]] = FINGER_STROKE * self.claw_target[i] / 100.0

    def step(self, n: int = 1) -> None:
        """Advance ``n`` control periods (``n * control_dt`` of sim time)."""
        import mujoco

        eps = 0.5 * self.cfg.timestep
        for _ in range(n):
            for _ in range(self.cfg.substeps):
                while self._pending and self._pending[0][0] <= self.time + eps:
                    _, kind, value = self._pending.popleft()
                    if kind == "arm":
                        self.arm_target = value
                    else:
                        self.claw_target = value
                self._apply()
                mujoco.mj_step(self.model, self.data)

    # -- cameras ----------------------------------------------------------------------------
    def renderer(self):
        """The offscreen renderer (created once); ``SimError`` with one line if GL is missing."""
        if self._renderer is None:
            import warnings

            import mujoco

            try:
                with warnings.catch_warnings():  # glfw warns twice before failing without X
                    warnings.simplefilter("ignore")
                    self._renderer = mujoco.Renderer(self.model, self.cfg.height, self.cfg.width)
            except Exception as exc:  # any GL failure means the same to the user
                err = " ".join(str(exc).split()) or type(exc).__name__
                gl = os.environ.get("MUJOCO_GL", "")
                raise SimError(GL_HELP.format(gl=gl, err=f"{type(exc).__name__}: {err}")) from None
        return self._renderer

    def render(self, camera: str) -> np.ndarray:
        """RGB uint8 (height, width, 3) from ``camera`` (one of ``CAMERAS``)."""
        if camera not in CAMERAS:
            raise SimError(f"unknown camera {camera!r}: one of {', '.join(CAMERAS)}")
        r = self.renderer()
        r.update_scene(self.data, camera=camera)
        return r.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
