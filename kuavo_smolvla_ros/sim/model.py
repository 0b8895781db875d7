"""MJCF of Kuavo's upper body, built from the kinematic facts (primitive shapes only).

What is in it, and why:
- ``base_link`` (the torso) fixed at z 0.82 as in Leju's scene: no legs, no balance.
- The head at its URDF origin with the pan joint left out and the pitch fixed (12 deg down, the
  posture of Leju's evaluations), carrying the head camera (URDF mount, fovy 70).
- Two 7-joint arms with the URDF's origins, axes, limits and link masses; position actuators
  with the URDF effort limits as force limits and PD gains (``ArmGains``) so the arm lags its
  command as a real arm does. Arm bodies have gravity compensation, as the real arm controller
  does; arm links are visual only (no self-collision), the claws collide.
- A two-finger claw on each link 7 (fingers slide 0..``FINGER_STROKE`` per side; 0 open, 100
  closed), a pinch site at the URDF end-effector frame, and a wrist camera (fovy 60).
- A table, a free red cube and a bin (a mocap body, so a task can place it per episode).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from kuavo_smolvla_ros.core.config import _L_LOWER, _L_UPPER, _R_LOWER, _R_UPPER
from kuavo_smolvla_ros.sim.errors import GL_HELP, SimError

# Headless rendering by default: EGL (Mesa on a CPU, the NVIDIA driver on a GPU). Set before
# mujoco is imported anywhere; MUJOCO_GL=osmesa or glfw still win when the user sets them.
os.environ.setdefault("MUJOCO_GL", "egl")

ARM_JOINTS = tuple(f"zarm_l{i}_joint" for i in range(1, 8)) + tuple(
    f"zarm_r{i}_joint" for i in range(1, 8)
)
CLAW_NAMES = ("left_claw", "right_claw")
CAMERAS = ("head_cam_h", "wrist_cam_l", "wrist_cam_r")
BASE_Z = 0.82
TABLE_TOP = 0.70  # table surface height (m): the right claw reaches it pointing down
TABLE_CENTER = (0.45, -0.10)  # x forward, y left; the right arm's side
TABLE_HALF = (0.25, 0.40)
CUBE_HALF = 0.02
BIN_INNER = 0.07  # bin inner half-width (m)
BIN_WALL_H = 0.05
FINGER_STROKE = 0.04  # finger travel per side: 0 (open, 8 cm gap) .. 0.04 (closed)
HEAD_PITCH = math.radians(25.0)  # Leju evaluates at ~12; 25 (limit 30) centres the table
READY_DEG = (30, 0, 0, -130, -90, -40, 0, 30, 0, 0, -130, 90, 40, 0)

# Per arm joint 1..7: (origin xyz, axis, effort N·m, link mass kg) from the URDF.
_ARM = (
    ((-0.0175, 0.2927, 0.4245), "0 1 0", 100.0, 0.962),
    ((0.0, 0.0, 0.0), "1 0 0", 50.0, 0.57),
    ((0.0, 0.0, 0.0), "0 0 1", 39.0, 1.65),
    ((0.02, 0.0, -0.2837), "0 1 0", 50.0, 0.429),
    ((-0.02, 0.0, -0.12704), "0 0 1", 12.0, 0.61),
    ((0.0002, 0.0, -0.10646), "1 0 0", 12.0, 0.331),
    ((0.0, 0.0, -0.0210), "0 1 0", 12.0, 0.64),
)
EFFORT = tuple(a[2] for a in _ARM)


@dataclass(frozen=True)
class ArmGains:
    """PD gains of the simulated arm controller (per joint 1..7, N·m/rad and N·m·s/rad).

    The real controller's gains are not published; these give a lag of about 50-100 ms to a
    step command (measured by test_sim), well inside the effort limits for normal motions.
    """

    kp: tuple[float, ...] = (400.0, 300.0, 200.0, 200.0, 60.0, 60.0, 60.0)
    kv: tuple[float, ...] = (40.0, 30.0, 20.0, 20.0, 4.0, 4.0, 4.0)
    armature: float = 0.05
    claw_kp: float = 600.0
    claw_force: float = 15.0  # N per finger


def _fmt(v: tuple[float, ...] | list[float]) -> str:
    return " ".join(f"{x:.6g}" for x in v)


def _arm(side: str, gains: ArmGains) -> str:
    """One arm as nested bodies (link 1 .. 7, claw), mirrored for the right side."""
    s = 1.0 if side == "l" else -1.0
    lower, upper = (_L_LOWER, _L_UPPER) if side == "l" else (_R_LOWER, _R_UPPER)
    open_tags: list[str] = []
    for i, (xyz, axis, _effort, mass) in enumerate(_ARM):
        n = i + 1
        pos = (xyz[0], s * xyz[1], xyz[2])
        vis = 'contype="0" conaffinity="0" group="1"'
        if n == 2:
            geom = f'<geom type="cylinder" size="0.05 0.15" pos="0 0 -0.15" mass="{mass}" {vis} rgba=".85 .85 .88 1"/>'
        elif n == 4:
            geom = f'<geom type="cylinder" size="0.05 0.13" pos="-0.02 0 -0.13" mass="{mass}" {vis} rgba=".85 .85 .88 1"/>'
        elif n == 7:
            geom = f'<geom type="cylinder" size="0.04 0.035" pos="0 0 -0.035" mass="{mass}" {vis} rgba=".3 .3 .35 1"/>'
        else:
            r = 0.035 if n == 6 else 0.05  # the wrist camera sits just outside link 6
            geom = f'<geom type="sphere" size="{r}" mass="{mass}" {vis} rgba=".3 .3 .35 1"/>'
        open_tags.append(
            f'<body name="zarm_{side}{n}_link" pos="{_fmt(pos)}" gravcomp="1">'
            f'<joint name="zarm_{side}{n}_joint" axis="{axis}" range="{lower[i]} {upper[i]}"'
            f' armature="{gains.armature}" damping="0.5"/>{geom}'
        )
    ee_y = -0.03 * s  # URDF end-effector frame (0, -+0.03, -0.17) in link 7
    cam_y = 0.05 * s
    half = FINGER_STROKE + 0.008
    claw = (
        # Looking down the claw (-z of link 7), fingers spread left-right, the claw at the
        # bottom of the image.
        f'<camera name="{"wrist_cam_l" if side == "l" else "wrist_cam_r"}" pos="0 {cam_y} 0"'
        f' fovy="60" xyaxes="{s:g} 0 0 0 {s:g} 0"/>'
        f'<body name="{side}_claw" pos="0 {ee_y} -0.09" gravcomp="1">'
        f'<geom name="{side}_palm" type="box" size="0.065 0.025 0.015" mass="0.2" rgba=".2 .2 .22 1"/>'
        f'<site name="{side}_pinch" pos="0 0 -0.08" size="0.006" rgba="0 1 0 0.5" group="3"/>'
        f'<body name="{side}_finger_a" pos="{half} 0 -0.055" gravcomp="1">'
        f'<joint name="{side}_finger_a" type="slide" axis="-1 0 0" range="0 {FINGER_STROKE}"'
        ' damping="2" armature="0.01"/>'
        f'<geom name="{side}_finger_a" type="box" size="0.008 0.018 0.04" mass="0.05"'
        ' friction="1.5 0.02 0.001" rgba=".15 .15 .15 1"/></body>'
        f'<body name="{side}_finger_b" pos="{-half} 0 -0.055" gravcomp="1">'
        f'<joint name="{side}_finger_b" type="slide" axis="1 0 0" range="0 {FINGER_STROKE}"'
        ' damping="2" armature="0.01"/>'
        f'<geom name="{side}_finger_b" type="box" size="0.008 0.018 0.04" mass="0.05"'
        ' friction="1.5 0.02 0.001" rgba=".15 .15 .15 1"/></body>'
        "</body>"
    )
    return "".join(open_tags) + claw + "</body>" * len(open_tags)


def _actuators(gains: ArmGains) -> str:
    out = []
    for side in ("l", "r"):
        for i in range(7):
            n, e = i + 1, EFFORT[i]
            out.append(
                f'<position name="zarm_{side}{n}" joint="zarm_{side}{n}_joint" kp="{gains.kp[i]}"'
                f' kv="{gains.kv[i]}" forcerange="{-e} {e}" ctrlrange="-3.1416 3.1416"/>'
            )
    for side in ("l", "r"):
        for f in ("a", "b"):
            out.append(
                f'<position name="{side}_finger_{f}" joint="{side}_finger_{f}" kp="{gains.claw_kp}"'
                f' kv="5" forcerange="{-gains.claw_force} {gains.claw_force}"'
                f' ctrlrange="0 {FINGER_STROKE}"/>'
            )
    return "".join(out)


def _bin() -> str:
    w, t, h = BIN_INNER, 0.006, BIN_WALL_H
    rgba = 'rgba=".15 .35 .8 1"'
    walls = [
        f'<geom type="box" size="{w + t} {w + t} {t / 2}" pos="0 0 {t / 2}" {rgba}/>',
        f'<geom type="box" size="{t / 2} {w + t} {h / 2}" pos="{w + t / 2} 0 {h / 2}" {rgba}/>',
        f'<geom type="box" size="{t / 2} {w + t} {h / 2}" pos="{-w - t / 2} 0 {h / 2}" {rgba}/>',
        f'<geom type="box" size="{w + t} {t / 2} {h / 2}" pos="0 {w + t / 2} {h / 2}" {rgba}/>',
        f'<geom type="box" size="{w + t} {t / 2} {h / 2}" pos="0 {-w - t / 2} {h / 2}" {rgba}/>',
    ]
    return f'<body name="bin" mocap="true" pos="0.45 0.2 {TABLE_TOP}">{"".join(walls)}</body>'


def build_mjcf(
    width: int = 640, height: int = 480, gains: ArmGains | None = None, timestep: float = 0.002
) -> str:
    """The scene's MJCF text; ``width``/``height`` size the offscreen buffer for the cameras."""
    g = gains or ArmGains()
    head_pos = (-0.0185, 0.0, 0.6014)
    tx, ty = TABLE_CENTER
    hx, hy = TABLE_HALF
    return f"""<mujoco model="kuavo_upper_body">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <global offwidth="{max(width, 640)}" offheight="{max(height, 480)}"/>
    <quality shadowsize="0"/>
    <headlight ambient=".45 .45 .45" diffuse=".5 .5 .5"/>
  </visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".55 .55 .52" rgb2=".45 .45 .42"
             width="64" height="64"/>
    <material name="floor" texture="grid" texrepeat="8 8"/>
  </asset>
  <worldbody>
    <light pos="0.5 0 3" dir="0 0 -1" diffuse=".5 .5 .5" castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.1" material="floor"/>
    <body name="base_link" pos="0 0 {BASE_Z}">
      <inertial pos="-0.0185 0.0003 0.193" mass="27.42" diaginertia="1 1 0.3"/>
      <geom name="torso" type="cylinder" size="0.15 0.3" pos="0 0 0.2" rgba=".9 .9 .92 1"
            contype="0" conaffinity="0"/>
      <body name="zhead_2_link" pos="{_fmt(head_pos)}" euler="0 {HEAD_PITCH} 0">
        <geom type="sphere" size="0.1" pos="0 0 0.1" rgba=".9 .9 .92 1" contype="0"
              conaffinity="0"/>
        <body name="head_camera" pos="0.1 0 0.12" euler="0 0.4887 0">
          <camera name="head_cam_h" fovy="70" xyaxes="0 -1 0 0 0 1"/>
        </body>
      </body>
      {_arm("l", g)}
      {_arm("r", g)}
    </body>
    <body name="table" pos="{tx} {ty} {TABLE_TOP / 2}">
      <geom name="table" type="box" size="{hx} {hy} {TABLE_TOP / 2}" rgba=".62 .48 .34 1"
            friction="0.8 0.01 0.001"/>
    </body>
    {_bin()}
    <body name="cube" pos="0.45 -0.2 {TABLE_TOP + CUBE_HALF}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" mass="0.05"
            rgba=".9 .1 .1 1" friction="1.5 0.02 0.001"/>
    </body>
  </worldbody>
  <contact>
    <exclude body1="table" body2="bin"/>
  </contact>
  <actuator>{_actuators(g)}</actuator>
</mujoco>
"""


def load_mujoco():
    """``import mujoco``, or ``SimError`` with one line: with ``MUJOCO_GL=osmesa`` and no
    libOSMesa the import itself fails inside PyOpenGL."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mujoco
    except Exception as exc:  # any GL loading failure means the same to the user
        err = " ".join(str(exc).split()) or type(exc).__name__
        gl = os.environ.get("MUJOCO_GL", "")
        raise SimError(GL_HELP.format(gl=gl, err=f"{type(exc).__name__}: {err}")) from None
    return mujoco


def build_model(width: int = 640, height: int = 480, gains: ArmGains | None = None):
    """A compiled ``mujoco.MjModel`` of the scene."""
    mujoco = load_mujoco()

    return mujoco.MjModel.from_xml_string(build_mjcf(width, height, gains))
