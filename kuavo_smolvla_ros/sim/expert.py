"""Scripted expert: IK on the MuJoCo model, then a joint-space plan executed with settling.

``plan_waypoints`` turns a task and a layout into pinch-point waypoints (right claw pointing
down, fingers closing along the world y axis) with claw commands; ``solve_ik`` (damped least
squares on the model's site Jacobian, joint limits respected) turns each into right-arm joint
angles, seeded from the previous one; ``Expert.command`` interpolates between them in joint
space at ``speed`` rad/s (below the policy node's default 1 rad/s limit, so recordings are
commands the node could also publish) and waits for the measured arm to settle before moving
on. It only sees what a privileged demonstrator would: the layout and the measured joints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kuavo_smolvla_ros.sim.model import ARM_JOINTS, BIN_WALL_H, CUBE_HALF, TABLE_TOP
from kuavo_smolvla_ros.sim.tasks import Layout

RIGHT = slice(7, 14)
# Claw pointing down (site z axis up), fingers closing along world y (site x axis = world y).
DOWN = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T  # columns: site x, y, z


@dataclass(frozen=True)
class Waypoint:
    pos: tuple[float, float, float]  # right pinch point target (world, m)
    claw: float  # right claw command 0 (open) .. 100 (closed) while moving there
    wait_s: float = 0.0  # extra hold after arriving (e.g. for the claw to close)


def plan_waypoints(task: str, layout: Layout) -> list[Waypoint]:
    cx, cy = layout.cube_xy
    bx, by = layout.bin_xy
    cz = TABLE_TOP + CUBE_HALF
    above = cz + 0.10
    if task == "reach":
        return [Waypoint((cx, cy, above), 0.0), Waypoint((cx, cy, cz + 0.005), 0.0, 0.5)]
    grasp = [
        Waypoint((cx, cy, above), 0.0),
        Waypoint((cx, cy, cz - 0.002), 0.0, 0.1),
        Waypoint((cx, cy, cz - 0.002), 100.0, 0.6),
        Waypoint((cx, cy, cz + 0.16), 100.0, 0.3),
    ]
    if task == "pick":
        return grasp
    if task == "place":
        drop = TABLE_TOP + BIN_WALL_H + CUBE_HALF + 0.03
        return [
            *grasp,
            Waypoint((bx, by, cz + 0.16), 100.0),
            Waypoint((bx, by, drop), 100.0, 0.2),
            Waypoint((bx, by, drop), 0.0, 0.6),
            Waypoint((bx, by, drop + 0.08), 0.0, 0.3),
        ]
    raise ValueError(f"no expert plan for task {task!r}")


def solve_ik(
    model,
    q_seed: np.ndarray,
    pos: np.ndarray,
    rot: np.ndarray = DOWN,
    site: str = "r_pinch",
    iters: int = 300,
    tol: float = 1e-4,
) -> tuple[np.ndarray, float]:
    """Right-arm joints (14-vector, left part unchanged) putting ``site`` at ``pos``/``rot``.

    Returns the solution and the remaining position error (m).
    """
    import mujoco

    d = mujoco.MjData(model)
    qadr = np.array([model.joint(j).qposadr[0] for j in ARM_JOINTS])
    dofs = np.array([model.joint(j).dofadr[0] for j in ARM_JOINTS])[RIGHT]
    jids = [model.joint(j).id for j in ARM_JOINTS][RIGHT]
    lo, hi = model.jnt_range[jids, 0], model.jnt_range[jids, 1]
    q = np.asarray(q_seed, float).copy()
    sid = model.site(site).id
    jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
    target_q, cur_q = np.zeros(4), np.zeros(4)
    mujoco.mju_mat2Quat(target_q, np.ascontiguousarray(rot).ravel())
    err_p = np.inf
    for _ in range(iters):
        d.qpos[qadr] = q
        mujoco.mj_kinematics(model, d)
        mujoco.mj_comPos(model, d)
        e_p = pos - d.site_xpos[sid]
        mujoco.mju_mat2Quat(cur_q, d.site_xmat[sid])
        dq_err = np.zeros(3)
        mujoco.mju_subQuat(dq_err, target_q, cur_q)  # in the site's frame
        dq_err = d.site_xmat[sid].reshape(3, 3) @ dq_err  # the Jacobian's (world) frame
        err_p = float(np.linalg.norm(e_p))
        err = np.concatenate([e_p, 0.3 * dq_err])
        if err_p < tol and np.linalg.norm(dq_err) < 1e-3:
            break
        mujoco.mj_jacSite(model, d, jacp, jacr, sid)
        jac = np.vstack([jacp[:, dofs], 0.3 * jacr[:, dofs]])
        step = jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), err)
        q[RIGHT] = np.clip(q[RIGHT] + np.clip(step, -0.2, 0.2), lo, hi)
    return q, err_p


def tilted(theta: float) -> np.ndarray:
    """``DOWN`` with the claw's tip swung forward by ``theta`` (rad) about the world y axis;
    the fingers still close along world y, so a box on the table is still grasped square."""
    c, s = np.cos(-theta), np.sin(-theta)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]) @ DOWN


TILTS = np.radians([0.0, 15.0, 30.0, 45.0])


def solve_ik_restarts(
    model, q_seed: np.ndarray, pos: np.ndarray, ready: np.ndarray, tries: int = 8
) -> tuple[np.ndarray, float]:
    """``solve_ik`` over claw tilts (straight down first) and starts (the seed, the ready
    posture, fixed pseudo-random ones): damped least squares stalls at joint limits and a new
    start gets out. Deterministic."""
    jids = [model.joint(j).id for j in ARM_JOINTS][RIGHT]
    lo, hi = model.jnt_range[jids, 0], model.jnt_range[jids, 1]
    best = (np.asarray(q_seed, float), np.inf)
    for theta in TILTS:
        rng = np.random.default_rng(0)
        for k in range(tries):
            q0 = np.asarray(q_seed if k == 0 else ready, float).copy()
            if k > 1:
                q0[RIGHT] = rng.uniform(lo, hi)
            q, e = solve_ik(model, q0, pos, tilted(theta))
            if e < best[1] - 1e-6:
                best = (q, e)
            if e < 2e-3:
                return best
    return best


class Expert:
    """Executes a task's plan: ``command(t, measured)`` -> (arm 14 rad, claws 2 in 0..100)."""

    def __init__(
        self,
        model,
        task: str,
        layout: Layout,
        q_start: np.ndarray,
        t_start: float,
        speed: float = 0.8,
        settle_tol: float = 0.03,
        max_wait_s: float = 1.5,
    ) -> None:
        self.waypoints = plan_waypoints(task, layout)
        self.speed, self.settle_tol, self.max_wait_s = speed, settle_tol, max_wait_s
        self.targets: list[np.ndarray] = []
        self.ik_error = 0.0
        q = np.asarray(q_start, float).copy()
        for wp in self.waypoints:
            q, e = solve_ik_restarts(model, q, np.array(wp.pos), np.asarray(q_start, float))
            self.ik_error = max(self.ik_error, e)
            self.targets.append(q.copy())
        self.q_from = np.asarray(q_start, float).copy()
        self.i = 0
        self.t_seg = t_start
        self.arrived: float | None = None
        self.done = False

    def _duration(self, i: int) -> float:
        step = np.abs(self.targets[i] - self.q_from).max()
        return max(step / self.speed, 0.05)

    def command(self, t: float, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = min(self.i, len(self.targets) - 1)
        wp, target = self.waypoints[i], self.targets[i]
        claw = np.array([0.0, wp.claw])
        if self.done:
            return target.copy(), claw
        dur = self._duration(i)
        a = min(max((t - self.t_seg) / dur, 0.0), 1.0)
        q = self.q_from + a * (target - self.q_from)
        if a >= 1.0:
            settled = np.abs(np.asarray(measured) - target).max() < self.settle_tol
            if self.arrived is None and (settled or t - self.t_seg > dur + self.max_wait_s):
                self.arrived = t
            if self.arrived is not None and t - self.arrived >= wp.wait_s:
                self.q_from = target.copy()
                self.i += 1
                self.t_seg = t
                self.arrived = None
                if self.i >= len(self.targets):
                    self.done = True
        return q, claw
