"""The last filter before a command leaves: ramp-in, joint limits, speed limit, hold (pure numpy).

``SafetyFilter.filter(target, t_now)`` turns whatever the scheduler produced into a command that
is always inside the joint limits and never moves faster than the speed limit since the previous
command, whatever the model did (NaN, Inf, 1e308, a jump at a chunk switch)::

    if target is None or not all finite:   cmd = last                              (hold)
    else:
        g   = clip(target, lower + margin, upper - margin)                          (clamp)
        s   = clip((t_now - t_start) / ramp_time_s, 0, 1)
        g   = start + s * (g - start)                                               (ramp-in)
        dt  = clip(t_now - t_last, 0, 2 / publish_rate_hz)
        cmd = clip(g, last - v_max * dt, last + v_max * dt),  v_max = max_velocity * velocity_scale

The clamp comes before the ramp blend so the ramp moves towards a reachable target at a gradual
pace (blending towards an out-of-range target and clamping afterwards would reach the limit
early). ``start`` is the measured pose given to ``start_ramp``, clamped into the limits; it is
also the first command. ``dt`` is capped so a long gap (a stalled timer, a paused bag) never
permits a jump. Every step of the clip keeps the command between two in-limit points, so the
result stays inside the limits. No arithmetic touches a non-finite or huge target value (it is
held or clipped first), so there are no overflow warnings.

Gripper dims are ordinary dims here (limits 0..1).
"""

from __future__ import annotations

import math

import numpy as np

from kuavo_smolvla_ros.core.config import RobotConfig, SafetyConfig


def clamp_to_limits(
    cmd: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, int]:
    """``clip(cmd, lower, upper)`` and how many dims were outside. NaN passes through uncounted."""
    cmd = np.asarray(cmd, dtype=np.float64)
    out = np.clip(cmd, lower, upper)
    return out, int(np.count_nonzero((cmd < lower) | (cmd > upper)))


def limit_step(
    cmd: np.ndarray, prev: np.ndarray, max_step: np.ndarray | float
) -> tuple[np.ndarray, int]:
    """Move from ``prev`` towards ``cmd`` by at most ``max_step`` per dim; and how many dims hit it.

    ``clip(cmd, prev - max_step, prev + max_step)``: never computes ``cmd - prev``, so huge
    values cannot overflow.
    """
    cmd = np.asarray(cmd, dtype=np.float64)
    prev = np.asarray(prev, dtype=np.float64)
    max_step = np.asarray(max_step, dtype=np.float64)
    if np.any(max_step < 0) or not np.isfinite(max_step).all():
        raise ValueError(f"limit_step: max_step must be finite and >= 0, got {max_step}.")
    lo, hi = prev - max_step, prev + max_step
    out = np.clip(cmd, lo, hi)
    return out, int(np.count_nonzero((cmd < lo) | (cmd > hi)))


class SafetyFilter:
    """Ramp-in from the measured pose, clamp, speed limit and hold; formulas in the module doc.

    Counters (number of ``filter`` calls in which it happened): ``clamped`` (the target had a
    dim outside the limits), ``speed_limited`` (the speed limit cut a dim), ``holds`` (the
    target was None or non-finite and the last command was repeated).
    """

    def __init__(self, robot: RobotConfig, safety: SafetyConfig, publish_rate_hz: float) -> None:
        lower = np.asarray(robot.lower, dtype=np.float64) + safety.limit_margin
        upper = np.asarray(robot.upper, dtype=np.float64) - safety.limit_margin
        if np.any(lower > upper):
            i = int(np.argmax(lower > upper))
            raise ValueError(
                f"safety.limit_margin={safety.limit_margin} leaves no room for"
                f" {robot.joint_names[i]} (limits {robot.lower[i]}..{robot.upper[i]}):"
                " use a margin below half the joint range."
            )
        if not (math.isfinite(publish_rate_hz) and publish_rate_hz > 0):
            raise ValueError(f"publish_rate_hz={publish_rate_hz} must be > 0.")
        self.dim = robot.dim
        self.lower = lower
        self.upper = upper
        self.max_velocity = np.asarray(robot.max_velocity, dtype=np.float64) * safety.velocity_scale
        self.ramp_time_s = float(safety.ramp_time_s)
        self.max_dt_s = 2.0 / publish_rate_hz
        self.reset()

    def reset(self) -> None:
        """Stop: ``filter`` returns None until the next ``start_ramp``. Counters are zeroed."""
        self._start: np.ndarray | None = None
        self._last: np.ndarray | None = None
        self._t_start = 0.0
        self._t_last = 0.0
        self.clamped = 0
        self.holds = 0
        self.speed_limited = 0

    @property
    def started(self) -> bool:
        return self._last is not None

    @property
    def last_command(self) -> np.ndarray | None:
        """The last command returned (or the ramp start), a copy; None before ``start_ramp``."""
        return None if self._last is None else self._last.copy()

    def _vector(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"SafetyFilter: {what} has shape {x.shape}, expected ({self.dim},).")
        return x

    def start_ramp(self, measured: np.ndarray, t_now: float) -> None:
        """(Re)start from the measured pose (clamped into the limits) and ramp to the targets.

        On a restart without ``reset`` (resume after a hold) the speed limit still counts from
        the last command sent, so a robot that lagged behind its commands is met at the speed
        limit instead of with a jump to where it was measured.

        Raises ValueError if ``measured`` has the wrong shape or a non-finite value: starting
        from a garbage pose would command it.
        """
        m = self._vector(measured, "measured pose")
        if not np.isfinite(m).all():
            raise ValueError(f"SafetyFilter.start_ramp: measured pose is not finite: {m}.")
        if not math.isfinite(t_now):
            raise ValueError(f"SafetyFilter.start_ramp: t_now={t_now} is not finite.")
        self._start = np.clip(m, self.lower, self.upper)
        if self._last is None:
            self._last = self._start.copy()
            self._t_last = float(t_now)
        self._t_start = float(t_now)

    def ramping(self, t_now: float) -> bool:
        """Whether the ramp-in blend is still below 1 at ``t_now``."""
        return self.started and t_now - self._t_start < self.ramp_time_s

    def filter(self, target: np.ndarray | None, t_now: float) -> np.ndarray | None:
        """The safe command for ``target`` at ``t_now`` (a new array); None before start_ramp."""
        if self._last is None:
            return None
        if not math.isfinite(t_now):
            raise ValueError(f"SafetyFilter.filter: t_now={t_now} is not finite.")
        dt = min(max(t_now - self._t_last, 0.0), self.max_dt_s)
        self._t_last = float(t_now)
        if target is None:
            self.holds += 1
            return self._last.copy()
        goal = self._vector(target, "target")
        if not np.isfinite(goal).all():
            self.holds += 1
            return self._last.copy()

        goal, n_clamped = clamp_to_limits(goal, self.lower, self.upper)
        if self.ramp_time_s > 0:
            s = min(max((t_now - self._t_start) / self.ramp_time_s, 0.0), 1.0)
            if s < 1.0:
                goal = np.clip(self._start + s * (goal - self._start), self.lower, self.upper)
        cmd, n_limited = limit_step(goal, self._last, self.max_velocity * dt)
        self.clamped += int(n_clamped > 0)
        self.speed_limited += int(n_limited > 0)
        self._last = cmd
        return cmd.copy()
