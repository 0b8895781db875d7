"""The control core shared by the ROS node and offline replay (pure: no rclpy, no torch).

``PolicyController`` ties the observation buffer, the chunk scheduler, the safety filter and the
command gate together and decides, at every control tick, what to command and whether to ask the
model for a new chunk. It never runs the model: the driver does (the node in a worker thread,
offline replay synchronously with a simulated latency) and hands the chunk back with
``on_chunk`` (or ``on_failure``).

Modes (``mode``)::

    disabled --enable--> waiting --first chunk--> running
       ^                   ^  |                      |
       |                   |  +-- stale inputs, no chunk, fault --+--> holding
       +----disable--------+---- inputs fresh again (ramp again) <----+

- ``disabled``: nothing is published (the node starts here unless ``start_enabled``).
- ``waiting``: enabled, waiting for inputs and the first chunk; nothing is commanded yet. Before
  the first command the measured pose is checked (``safety.max_start_error``): a pose outside the
  limits by more than that is a fault and nothing is ever commanded.
- ``running``: commands come from the scheduler through the safety filter.
- ``holding``: an input went stale, no chunk is buffered, or a fault: the last command is
  repeated. Fresh inputs resume with a ramp *from the last command*; a fault (the model raised,
  returned NaN, timed out, its process died) holds until ``reset`` or a new ``enable``.

The invariant (docs/safety.md). Every command marked ``published`` passed the ``CommandGate``
last: inside the joint limits and within ``max_velocity * min(t - t_last_published, dt_cap)`` of
the last published command. Transitions (enable of a node that was already commanding, reset,
resume after a hold, the end of a dry run, a restarted model) ramp from the last published
command; the one exception is the first command after an enable from silence, which is the
measured pose itself (clamped into the limits) and so commands no motion.

One request at a time. A request is outstanding from ``tick`` until its answer (``on_chunk``) or
failure (``on_failure``) comes back, whatever happened in between (reset, resume, disable); no
new request is made meanwhile, so a driver's one-slot queue can never overflow. An answer from
an older episode is dropped. An outstanding request older than ``timeout_s`` is a fault.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from kuavo_smolvla_ros.core.config import Config
from kuavo_smolvla_ros.core.observation import Observation, ObservationBuffer
from kuavo_smolvla_ros.core.safety import CommandGate, SafetyFilter, start_error
from kuavo_smolvla_ros.core.scheduler import ChunkRejected, ChunkScheduler

DISABLED, WAITING, RUNNING, HOLDING = "disabled", "waiting", "running", "holding"
# /diagnostics levels (diagnostic_msgs/DiagnosticStatus values, without importing ROS).
OK, WARN, ERROR = 0, 1, 2


@dataclass(frozen=True)
class InferenceRequest:
    """What the driver must run: the observation, and RTC's inputs when RTC is on.

    ``token`` numbers the requests (unique per controller); ``episode`` tells an answer that
    arrives after a reset, a disable or a resume to be dropped.
    """

    observation: Observation
    episode: int
    leftover: np.ndarray | None = None
    delay_steps: int = 0
    token: int = 0

    @property
    def t_obs(self) -> float:
        return self.observation.stamp


@dataclass
class Tick:
    """The outcome of one control tick."""

    command: np.ndarray | None  # safe 16-D command in SI units, None = publish nothing
    request: InferenceRequest | None  # a new chunk to compute, if any
    mode: str
    stale: list[str] = field(default_factory=list)
    published: bool = False  # the command went through the gate: publish it on the robot topics


class Answer(NamedTuple):
    """The reply to ``enable``: whether it was done, and why (for the service response)."""

    ok: bool
    message: str


@dataclass
class Counters:
    ticks: int = 0
    commands: int = 0
    published: int = 0
    requests: int = 0
    chunks: int = 0
    model_failures: int = 0
    timeouts: int = 0
    dropped_results: int = 0
    refused_enables: int = 0
    clock_jumps: int = 0  # the control clock went back (sim time: a bag loop, a restart)


class PolicyController:
    """Observation buffer + scheduler + safety filter + gate, driven by ``tick(t)``; thread-safe.

    Inputs may arrive from any thread; ``tick`` and ``on_chunk``/``on_failure`` may run on
    different threads (control timer vs inference worker). The one lock is held only for the
    scheduler/safety bookkeeping, never while a model runs.

    ``timeout_s``: an outstanding request older than this is a fault (None: no watchdog, for
    drivers that compute synchronously). ``model_ready``: False while the driver (re)starts the
    model; no request is made meanwhile.
    """

    def __init__(self, cfg: Config, timeout_s: float | None = None) -> None:
        self.cfg = cfg
        self.buffer = ObservationBuffer(cfg)
        self.scheduler = ChunkScheduler(cfg.scheduler, cfg.robot.dim)
        self.safety = SafetyFilter(cfg.robot, cfg.safety, cfg.outputs.publish_rate_hz)
        self.gate = CommandGate.for_filter(self.safety)
        self.counters = Counters()
        self.rtc = cfg.scheduler.merge_mode == "rtc"
        self.timeout_s = timeout_s
        self._max_start_error = float(cfg.safety.max_start_error)
        self._lock = threading.Lock()
        self._episode = 0
        self._enabled = False
        self._fault: str | None = None
        self._mode = DISABLED
        self._starved = False
        self._why = "disabled"
        self._last_stale: list[str] = []
        self._last_request_task = ""
        self._needs_ramp = False
        self._publishing = True
        self._outstanding: InferenceRequest | None = None
        self._t_tick = -math.inf  # the previous tick's time: a later one earlier is a jump back
        self._t_requested = 0.0
        self._timed_out_token = -1
        self._model_ready = True
        self._model_note = ""
        if cfg.start_enabled:
            self.enable(True)

    # -- state --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def fault(self) -> str | None:
        return self._fault

    @property
    def episode(self) -> int:
        return self._episode

    @property
    def outstanding(self) -> InferenceRequest | None:
        """The request whose answer has not come back yet (at most one)."""
        return self._outstanding

    def enable(self, on: bool, t_now: float | None = None) -> Answer:
        """Enable or disable. Enabling checks the measured pose when it is known at ``t_now``
        (refused if outside the limits by more than ``safety.max_start_error``), else before the
        first command. From silence the first command is the measured pose; a node that was
        commanding (holding on a fault) ramps from its last command."""
        with self._lock:
            if not on:
                if not self._enabled and self._fault is None:
                    return Answer(True, "already disabled")
                self._enabled = False
                self._fault = None
                self._restart_locked()
                self.safety.reset()
                self.gate.forget()
                self._mode, self._why = DISABLED, "disabled"
                return Answer(True, "disabled")
            if self._enabled and self._fault is None:
                return Answer(True, "already enabled")
            if not self.safety.started and t_now is not None:
                measured = self.buffer.state(t_now)
                why = None if measured is None else self._start_error(measured)
                if why is not None:
                    self.counters.refused_enables += 1
                    return Answer(False, f"refused: {why}")
            self._enabled = True
            self._fault = None
            self._restart_locked()
            self._mode, self._why = WAITING, "waiting for inputs and the first chunk"
            return Answer(True, "enabled: waiting for inputs and the first chunk")

    def reset(self) -> None:
        """New episode: clears buffered chunks, observations and any fault; keeps the task and
        the last command, from which the next chunk is ramped to."""
        with self._lock:
            self._fault = None
            self._restart_locked()
            self.buffer.reset()
            self._mode = WAITING if self._enabled else DISABLED
            self._why = "reset: waiting for inputs" if self._enabled else "disabled"

    def set_fault(self, error: str) -> None:
        """A driver-side fault (the model process died, a thread crashed): hold, ask nothing."""
        with self._lock:
            self._fail_locked(error)

    def set_model_ready(self, ready: bool, note: str = "") -> None:
        """The driver is (re)starting the model (``ready=False``): make no request meanwhile."""
        with self._lock:
            self._model_ready = bool(ready)
            self._model_note = note

    def _restart_locked(self) -> None:
        self._episode += 1  # answers to requests made before this point are dropped
        self.scheduler.reset()
        self._needs_ramp = self.safety.started

    def _start_error(self, measured: np.ndarray) -> str | None:
        return start_error(
            measured,
            self.safety.lower,
            self.safety.upper,
            self._max_start_error,
            self.cfg.robot.joint_names,
        )

    # -- results from the driver --------------------------------------------------------------
    def _settle_locked(self, request: InferenceRequest) -> bool:
        """Clear the outstanding request if this is its answer; whether it is still current."""
        if self._outstanding is not None and request.token == self._outstanding.token:
            self._outstanding = None
        return request.episode == self._episode

    def on_chunk(self, request: InferenceRequest, chunk: np.ndarray, t_now: float) -> int:
        """Merge a computed chunk; returns skipped steps (-1 if dropped or rejected)."""
        with self._lock:
            if not self._settle_locked(request) or self._fault is not None:
                self.counters.dropped_results += 1
                self.scheduler.cancel_request()
                return -1
            try:
                skipped = self.scheduler.on_chunk(chunk, request.t_obs, t_now)
            except ChunkRejected as exc:
                self._fail_locked(str(exc))
                return -1
            self.counters.chunks += 1
            return skipped

    def on_failure(self, request: InferenceRequest, error: str) -> None:
        """The model raised: hold the last safe command and ask for nothing new."""
        with self._lock:
            if not self._settle_locked(request):
                self.scheduler.cancel_request()
                return
            self._fail_locked(error)

    def _fail_locked(self, error: str) -> None:
        self.counters.model_failures += 1
        self.scheduler.cancel_request()
        if self._fault is None:
            self._fault = error

    # -- the control tick ---------------------------------------------------------------------
    def tick(self, t_now: float, publish: bool = True) -> Tick:
        """One control step at ``t_now``: the safe command and maybe a request.

        ``publish=False`` (dry run): the command is computed but not published, and the gate
        keeps the last published one; when publishing resumes the filter continues from it.
        """
        with self._lock:
            self.counters.ticks += 1
            if t_now < self._t_tick:
                self._clock_jump_locked(t_now)
            self._t_tick = t_now
            resumed = publish and not self._publishing
            self._publishing = publish
            if not self._enabled:
                self._mode, self._why = DISABLED, "disabled"
                return Tick(None, None, DISABLED)
            if resumed and self.safety.started:
                self._rebase_locked(t_now)
            self._watchdog_locked(t_now)
            stale = self.buffer.stale_inputs(t_now)
            self._last_stale = stale
            if not self.safety.started and self._fault is None:
                measured = self.buffer.state(t_now)
                why = None if measured is None else self._start_error(measured)
                if why is not None:
                    self._fail_locked(why)
            if stale or self._fault is not None:
                why = f"fault: {self._fault}" if self._fault else f"stale inputs {', '.join(stale)}"
                return self._hold_locked(t_now, stale, why, publish)
            if self._mode == HOLDING:  # inputs fresh again: resume with a new chunk and ramp
                self._restart_locked()
                self._mode = WAITING
            request = self._maybe_request_locked(t_now)
            target = self.scheduler.command_at(t_now)
            if not self.safety.started:
                measured = self.buffer.state(t_now)
                if target is None or measured is None:
                    self._mode, self._why = WAITING, self._waiting_why()
                    return Tick(None, request, WAITING)
                self.safety.start_ramp(measured, t_now)  # the first command: the measured pose
                self._needs_ramp = False
            elif self._needs_ramp:
                if target is None:
                    self._mode, self._why = WAITING, self._waiting_why()
                    cmd = self.safety.filter(None, t_now)
                    return self._emit(cmd, request, WAITING, [], t_now, publish)
                self.safety.restart_ramp(t_now)
                self._needs_ramp = False
            command = self.safety.filter(target, t_now)
            self._mode, self._starved = RUNNING, target is None
            if target is None:  # still running (no restart), but the command is held
                self._why = "holding: no chunk buffered (the model is late)"
            else:
                self._why = "running" + (" (ramping)" if self.safety.ramping(t_now) else "")
            return self._emit(command, request, RUNNING, [], t_now, publish)

    def _clock_jump_locked(self, t_now: float) -> None:
        """The control clock went back (sim time: ``ros2 bag play --loop``, a simulator
        restart). Inputs received "later" than now would count as fresh and the chunk's times
        are in the future: forget both, drop any answer in flight (it observed the old time),
        and continue from the last published command at the new time. The robot holds until
        fresh inputs and a new chunk arrive, then ramps from the held command."""
        self.counters.clock_jumps += 1
        self.buffer.reset()
        self._restart_locked()
        self._t_requested = min(self._t_requested, t_now)  # the watchdog counts from here
        last = self.gate.last if self.gate.last is not None else self.safety.last_command
        if last is not None:
            self.safety.rebase(last, t_now, t_now)

    def _waiting_why(self) -> str:
        if not self._model_ready:
            return f"waiting for the model ({self._model_note or 'starting'})"
        if self._outstanding is not None:
            return "waiting for the first chunk"
        return "waiting for inputs and the first chunk"

    def _emit(
        self,
        command: np.ndarray | None,
        request: InferenceRequest | None,
        mode: str,
        stale: list[str],
        t_now: float,
        publish: bool,
    ) -> Tick:
        """The single exit of a command: through the gate when it is published."""
        if command is None:
            return Tick(None, request, mode, stale)
        self.counters.commands += 1
        if not publish:
            return Tick(command, request, mode, stale, published=False)
        out = self.gate.admit(command, t_now)
        self.counters.published += out is not None
        return Tick(out, request, mode, stale, published=out is not None)

    def _rebase_locked(self, t_now: float) -> None:
        """A dry run ended: continue from the last *published* command, or start again from the
        measured pose (with its check) if nothing was published since the enable."""
        last = self.gate.last
        if last is None:
            self.safety.reset()
            self._needs_ramp = False
        else:
            self.safety.rebase(last, self.gate.t_last, t_now)
            self._needs_ramp = False

    def _watchdog_locked(self, t_now: float) -> None:
        req = self._outstanding
        if req is None or not self.timeout_s or req.token == self._timed_out_token:
            return
        if t_now - self._t_requested > self.timeout_s:
            self._timed_out_token = req.token
            self.counters.timeouts += 1
            self._fail_locked(
                f"inference timed out: no answer {t_now - self._t_requested:.1f} s after the"
                f" request (policy.timeout_s {self.timeout_s:g} s)"
            )

    def _hold_locked(self, t_now: float, stale: list[str], why: str, publish: bool) -> Tick:
        if not self.safety.started:  # nothing commanded yet: nothing to hold
            self._mode = HOLDING if self._fault else WAITING
            self._why = why
            return Tick(None, None, self._mode, stale)
        self._mode, self._why = HOLDING, why
        command = self.safety.filter(None, t_now)
        return self._emit(command, None, HOLDING, stale, t_now, publish)

    def _maybe_request_locked(self, t_now: float) -> InferenceRequest | None:
        if self._outstanding is not None or not self._model_ready:
            return None
        if not self.scheduler.should_request(t_now):
            return None
        obs = self.buffer.snapshot(t_now)
        if obs is None:
            return None
        leftover, delay = self.scheduler.rtc_inputs(t_now) if self.rtc else (None, 0)
        self.scheduler.mark_requested(t_now)
        self.counters.requests += 1
        self._last_request_task = obs.task
        req = InferenceRequest(obs, self._episode, leftover, delay, token=self.counters.requests)
        self._outstanding, self._t_requested = req, float(t_now)
        return req

    # -- diagnostics --------------------------------------------------------------------------
    def health(self) -> tuple[int, str]:
        """(level, message) for /diagnostics: OK only while commands follow a live chunk (or
        disabled, which commands nothing); WARN while waiting or holding for stale inputs or a
        missing chunk; ERROR on a fault."""
        with self._lock:
            if self._fault is not None:
                return ERROR, f"fault, holding until ~/reset or ~/enable: {self._fault}"
            if self._mode == DISABLED or (self._mode == RUNNING and not self._starved):
                return OK, self._why
            return WARN, f"{self._mode}: {self._why}"

    def status(self, t_now: float) -> dict[str, object]:
        """Numbers for /diagnostics and the periodic status line."""
        s = self.scheduler
        return {
            "mode": self._mode,
            "fault": self._fault or "",
            "why": self._why,
            "stale_inputs": ",".join(self._last_stale),
            "buffered_s": round(s.buffered_s(t_now), 3),
            "latency_p50_ms": round(1e3 * s.latency_p50, 1),
            "latency_p95_ms": round(1e3 * s.latency_p95, 1),
            "chunks": self.counters.chunks,
            "requests": self.counters.requests,
            "in_flight": self._outstanding is not None,
            "skipped_steps": s.skipped_steps,
            "rejected_chunks": s.rejected_chunks,
            "model_failures": self.counters.model_failures,
            "timeouts": self.counters.timeouts,
            "clock_jumps": self.counters.clock_jumps,
            "clamped": self.safety.clamped,
            "speed_limited": self.safety.speed_limited,
            "holds": self.safety.holds,
            "published": self.counters.published,
            "gate_cut": self.gate.cut,
            "task": self.buffer.task,
            "last_request_task": self._last_request_task,
        }


def split_command(command: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """16-D SI command -> (arm positions in output units, gripper commands in 0..100 units)."""
    arm = command[list(cfg.robot.arm_indices)]
    if cfg.outputs.arm_in_degrees:
        arm = np.degrees(arm)
    gripper = command[list(cfg.robot.gripper_indices)] * cfg.outputs.gripper_scale
    return arm, gripper
