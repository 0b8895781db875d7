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


def start_error(
    measured: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    tolerance: float,
    names: tuple[str, ...] | list[str] = (),
) -> str | None:
    """Why the measured pose must not be the first command, or None when it may be.

    A pose outside the limits by more than ``tolerance`` (``safety.max_start_error``) means the
    robot is not where the profile says it can be (a wrong URDF, a wrong joint mapping, a joint
    past its stop): clamping it would command a jump. Within the tolerance the start is clamped.
    The message names the worst joint and its error.
    """
    m = np.asarray(measured, dtype=np.float64)
    if not np.isfinite(m).all():
        i = int(np.argmax(~np.isfinite(m)))
        name = names[i] if i < len(names) else f"dim {i}"
        return f"{name} measured {m[i]}: not a number"
    below = np.asarray(lower, dtype=np.float64) - m
    above = m - np.asarray(upper, dtype=np.float64)
    excess = np.maximum(np.maximum(below, above), 0.0)
    i = int(np.argmax(excess))
    if excess[i] <= tolerance:
        return None
    name = names[i] if i < len(names) else f"dim {i}"
    side, limit = ("below", lower[i]) if below[i] > 0 else ("above", upper[i])
    return (
        f"{name} measured at {m[i]:.3f} rad is {excess[i]:.3f} rad {side} its limit"
        f" {float(limit):.3f} (safety.max_start_error {tolerance:g}); move it inside the limits"
        " or fix robot.lower/upper"
    )


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
        """Start from the measured pose (clamped into the limits) and ramp to the targets.

        Only for a start from silence (after ``reset``): the first command is the measured pose
        itself, so it commands no motion. A filter that is already commanding restarts with
        :meth:`restart_ramp` instead, from its last command: nothing jumps to the measured pose.

        Raises ValueError if ``measured`` has the wrong shape or a non-finite value: starting
        from a garbage pose would command it.
        """
        m = self._vector(measured, "measured pose")
        if not np.isfinite(m).all():
            raise ValueError(f"SafetyFilter.start_ramp: measured pose is not finite: {m}.")
        if not math.isfinite(t_now):
            raise ValueError(f"SafetyFilter.start_ramp: t_now={t_now} is not finite.")
        if self._last is not None:
            self.restart_ramp(t_now)
            return
        self._start = np.clip(m, self.lower, self.upper)
        self._last = self._start.copy()
        self._t_last = float(t_now)
        self._t_start = float(t_now)

    def restart_ramp(self, t_now: float) -> None:
        """Ramp again to the targets, from the last command (resume, reset, a restarted model).

        The blend starts at the last command sent, so a robot that lagged behind its commands
        is never commanded to where it was measured in one step.
        """
        if self._last is None:
            raise ValueError("SafetyFilter.restart_ramp before start_ramp.")
        self._start = self._last.copy()
        self._t_start = float(t_now)

    def rebase(self, command: np.ndarray, t_command: float, t_now: float) -> None:
        """Continue from ``command`` sent at ``t_command`` (the last *published* command).

        A dry run computes commands without publishing them; when it ends the filter must go on
        from what the robot was last told, ramping from there at the speed limit.
        """
        c = np.clip(self._vector(command, "command"), self.lower, self.upper)
        self._last = c.copy()
        self._start = c.copy()
        self._t_last = float(t_command)
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
        with np.errstate(under="ignore"):  # a subnormal blend or step rounds to 0: harmless
            if self.ramp_time_s > 0:
                s = min(max((t_now - self._t_start) / self.ramp_time_s, 0.0), 1.0)
                if s < 1.0:
                    goal = np.clip(self._start + s * (goal - self._start), self.lower, self.upper)
            cmd, n_limited = limit_step(goal, self._last, self.max_velocity * dt)
        self.clamped += int(n_clamped > 0)
        self.speed_limited += int(n_limited > 0)
        self._last = cmd
        return cmd.copy()


def invariant_violations(
    commands: np.ndarray,
    times: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    max_velocity: np.ndarray | float,
    dt_cap: float,
    *,
    restarts: np.ndarray | None = None,
    atol: float = 1e-9,
    limit: int = 20,
) -> list[str]:
    """Every way a published command stream breaks the invariant; [] when it holds.

    The invariant (docs/safety.md): each command is inside ``[lower, upper]`` and moves at most
    ``max_velocity * min(t - t_prev, dt_cap)`` from the previous *published* command.
    ``restarts`` marks commands that follow a silence (the first after an enable), which only
    have to be inside the limits. Shared by the tests, the soak benchmark and replay checks.
    At most ``limit`` violations are described (one per command and kind).
    """
    cmd = np.asarray(commands, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    vmax = np.asarray(max_velocity, dtype=np.float64)
    out: list[str] = []
    if cmd.size == 0:
        return out
    bad = ~np.isfinite(cmd) | (cmd < lower - atol) | (cmd > upper + atol)
    for i in np.nonzero(bad.any(axis=1))[0]:
        j = int(np.argmax(bad[i]))
        out.append(f"command {i} (t={t[i]:.4f}) dim {j} = {cmd[i, j]!r} outside the limits")
        if len(out) >= limit:
            return out
    fresh = np.zeros(len(cmd), dtype=bool) if restarts is None else np.asarray(restarts, bool)
    for i in range(1, len(cmd)):
        if fresh[i]:
            continue
        dt = min(max(t[i] - t[i - 1], 0.0), dt_cap)
        step = np.abs(cmd[i] - cmd[i - 1])
        over = step > vmax * dt + atol
        if over.any():
            j = int(np.argmax(step - vmax * dt))
            out.append(
                f"command {i} (t={t[i]:.4f}) dim {j} moved {step[j]:.6g} in {dt:.4f} s"
                f" (cap {float(np.broadcast_to(vmax, step.shape)[j] * dt):.6g})"
            )
            if len(out) >= limit:
                break
    return out


class CommandGate:
    """The invariant, enforced in one place right before a command is published.

    ``admit(command, t)`` returns what may be published at ``t``: inside the limits and within
    ``max_velocity * min(t - t_last, dt_cap)`` of the last command it admitted (``t_last`` is
    that command's time, so two late ticks cannot each take a full step). Non-finite values
    repeat the last admitted command. After ``forget`` (the node went silent: disabled) the
    next command is only clamped into the limits; the controller makes it the measured pose.

    The controller's own safety filter already keeps to the invariant; the gate is the last
    line that holds whatever the code before it does. ``cut`` counts the commands it had to
    change (0 in a healthy run; a non-zero count is a bug upstream, shown in /diagnostics).
    """

    def __init__(
        self,
        lower: np.ndarray,
        upper: np.ndarray,
        max_velocity: np.ndarray,
        dt_cap: float,
    ) -> None:
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.max_velocity = np.asarray(max_velocity, dtype=np.float64)
        if not (math.isfinite(dt_cap) and dt_cap > 0):
            raise ValueError(f"CommandGate: dt_cap={dt_cap} must be finite and > 0.")
        self.dt_cap = float(dt_cap)
        self.admitted = 0
        self.cut = 0
        self.forget()

    @classmethod
    def for_filter(cls, f: SafetyFilter) -> CommandGate:
        """A gate with the same limits, speed limit and ``dt`` cap as a safety filter."""
        return cls(f.lower, f.upper, f.max_velocity, f.max_dt_s)

    def forget(self) -> None:
        """The node stopped publishing (disabled): the next command starts a new stream."""
        self._last: np.ndarray | None = None
        self._t_last = 0.0

    @property
    def last(self) -> np.ndarray | None:
        """The last admitted (published) command, a copy; None after ``forget``."""
        return None if self._last is None else self._last.copy()

    @property
    def t_last(self) -> float:
        return self._t_last

    def admit(self, command: np.ndarray | None, t_now: float) -> np.ndarray | None:
        """The command to publish at ``t_now`` (a new array), recorded as the last published."""
        if not math.isfinite(t_now):
            raise ValueError(f"CommandGate.admit: t_now={t_now} is not finite.")
        cmd = None if command is None else np.asarray(command, dtype=np.float64)
        if cmd is None or cmd.shape != self.lower.shape or not np.isfinite(cmd).all():
            if self._last is None:
                return None
            cmd = self._last
        out = np.clip(cmd, self.lower, self.upper)
        if self._last is not None:
            dt = min(max(t_now - self._t_last, 0.0), self.dt_cap)
            with np.errstate(under="ignore"):  # a subnormal step rounds to 0: harmless
                step = self.max_velocity * dt
                out = np.clip(out, self._last - step, self._last + step)
        if not np.array_equal(out, cmd):
            self.cut += 1
        self.admitted += 1
        self._last = out
        self._t_last = float(t_now)
        return out.copy()
