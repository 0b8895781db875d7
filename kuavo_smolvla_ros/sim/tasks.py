"""Tasks: a language instruction, a seeded random layout and a success test each.

A task only reads the scene (``SimRobot.data``); it never drives the arm. To add one, subclass
``Task`` (``name``, ``instruction``, ``sample_layout``, ``success``), register it in ``TASKS``,
and give the expert a plan for it (``expert.plan_waypoints``). See docs/simulation.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kuavo_smolvla_ros.sim.model import BIN_INNER, BIN_WALL_H, CUBE_HALF, TABLE_TOP
from kuavo_smolvla_ros.sim.robot import SimError, SimRobot

# Where things may be placed (x forward, y left, m): inside the right arm's top-down workspace.
CUBE_X = (0.30, 0.40)
CUBE_Y = (-0.36, -0.18)
BIN_X = (0.30, 0.38)
BIN_Y = (-0.06, -0.02)
REACH_TOL = 0.03  # pinch point within this of the cube's surface counts as a touch
LIFT = 0.10


@dataclass(frozen=True)
class Layout:
    """Object placement of one episode (world frame, m)."""

    seed: int
    cube_xy: tuple[float, float]
    bin_xy: tuple[float, float]

    def to_dict(self) -> dict:
        return asdict(self)


class Task:
    name = "task"
    instruction = ""

    def sample_layout(self, seed: int) -> Layout:
        rng = np.random.default_rng(seed)
        cube = (float(rng.uniform(*CUBE_X)), float(rng.uniform(*CUBE_Y)))
        bin_xy = (float(rng.uniform(*BIN_X)), float(rng.uniform(*BIN_Y)))
        return Layout(seed, cube, bin_xy)

    def place(self, robot: SimRobot, layout: Layout) -> None:
        """Put the objects where ``layout`` says, at rest, and remember the start heights."""
        import mujoco

        m, d = robot.model, robot.data
        adr = m.joint("cube").qposadr[0]
        d.qpos[adr : adr + 7] = [*layout.cube_xy, TABLE_TOP + CUBE_HALF, 1.0, 0.0, 0.0, 0.0]
        d.qvel[m.joint("cube").dofadr[0] : m.joint("cube").dofadr[0] + 6] = 0.0
        d.mocap_pos[m.body("bin").mocapid[0]] = [*layout.bin_xy, TABLE_TOP]
        mujoco.mj_forward(m, d)
        self.cube_z0 = TABLE_TOP + CUBE_HALF

    def success(self, robot: SimRobot) -> bool:
        raise NotImplementedError


def cube_pos(robot: SimRobot) -> np.ndarray:
    return robot.data.body("cube").xpos.copy()


def pinch_pos(robot: SimRobot, side: str = "r") -> np.ndarray:
    return robot.data.site(f"{side}_pinch").xpos.copy()


def _touching(robot: SimRobot, geoms: tuple[str, ...]) -> bool:
    m, d = robot.model, robot.data
    cube = m.geom("cube").id
    ids = {m.geom(g).id for g in geoms}
    for c in d.contact[: d.ncon]:
        pair = {int(c.geom1), int(c.geom2)}
        if cube in pair and pair & ids:
            return True
    return False


RIGHT_CLAW = ("r_palm", "r_finger_a", "r_finger_b")


class Reach(Task):
    name = "reach"
    instruction = "touch the red cube with the right claw"

    def success(self, robot: SimRobot) -> bool:
        # Distance from the pinch point to the cube's box (0 inside it).
        rel = np.abs(pinch_pos(robot) - cube_pos(robot)) - CUBE_HALF
        dist = float(np.linalg.norm(np.maximum(rel, 0.0)))
        return dist < REACH_TOL or _touching(robot, RIGHT_CLAW)


class Pick(Task):
    name = "pick"
    instruction = "pick up the red cube"

    def success(self, robot: SimRobot) -> bool:
        lifted = cube_pos(robot)[2] > self.cube_z0 + LIFT
        return bool(lifted and _touching(robot, ("r_finger_a", "r_finger_b")))


class Place(Task):
    name = "place"
    instruction = "put the red cube into the blue bin"

    def success(self, robot: SimRobot) -> bool:
        d = robot.data
        rel = cube_pos(robot)[:2] - d.mocap_pos[robot.model.body("bin").mocapid[0]][:2]
        inside = bool(np.all(np.abs(rel) < BIN_INNER))
        low = cube_pos(robot)[2] < TABLE_TOP + BIN_WALL_H
        released = not _touching(robot, RIGHT_CLAW)
        return inside and low and released


TASKS: dict[str, type[Task]] = {t.name: t for t in (Reach, Pick, Place)}


def make_task(name: str) -> Task:
    if name not in TASKS:
        raise SimError(f"unknown task {name!r}: one of {', '.join(TASKS)}")
    return TASKS[name]()
