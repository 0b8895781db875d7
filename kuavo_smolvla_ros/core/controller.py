"""The control core shared by the ROS node and offline replay (pure: no rclpy, no torch).

``PolicyController`` ties the observation buffer, the chunk scheduler and the safety filter
together and decides, at every control tick, what to command and whether to ask the model for
a new chunk. It never runs the model: the driver does (the node in a worker thread, offline
replay synchronously with a simulated latency) and hands the chunk back with ``on_chunk``.

Modes (``mode``)::

    disabled --enable--> waiting --first chunk--> running (ramp-in from the measured pose)
       ^                   ^  |                      |
       |                   |  +----- inputs stale / model failure -----+--> holding
       +----disable--------+------- inputs fresh again (ramp again) <------+

- ``disabled``: nothing is published (the node starts here unless ``start_enabled``).
- ``waiting``: enabled, inputs present, waiting for the first chunk; nothing is commanded yet.
- ``running``: commands come from the scheduler through the safety filter.
- ``holding``: an input went stale or the model failed / returned NaN: the last safe command is
  repeated and no new chunk is requested. Fresh inputs resume with a new ramp from the measured
  pose; a model failure (``fault``) is cleared only by ``reset`` or a new ``enable``.
Every command returned has passed the safety filter: inside the joint limits and the speed
limit of the previous command, whatever the model said.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from kuavo_smolvla_ros.core.config import Config
from kuavo_smolvla_ros.core.observation import Observation, ObservationBuffer
from kuavo_smolvla_ros.core.safety import SafetyFilter
from kuavo_smolvla_ros.core.scheduler import ChunkRejected, ChunkScheduler

DISABLED, WAITING, RUNNING, HOLDING = "disabled", "waiting", "running", "holding"


@dataclass(frozen=True)
class InferenceRequest:
    """What the driver must run: the observation, and RTC's inputs when RTC is on."""

    observation: Observation
    episode: int
    leftover: np.ndarray | None = None
    delay_steps: int = 0

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


@dataclass
class Counters:
    ticks: int = 0
    commands: int = 0
    requests: int = 0
    chunks: int = 0
    model_failures: int = 0
    dropped_results: int = 0


class PolicyController:
    """Observation buffer + scheduler + safety filter, driven by ``tick(t)``; thread-safe.

    Inputs may arrive from any thread; ``tick`` and ``on_chunk``/``on_failure`` may run on
    different threads (control timer vs inference worker). The one lock is held only for the
    scheduler/safety bookkeeping, never while a model runs.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.buffer = ObservationBuffer(cfg)
        self.scheduler = ChunkScheduler(cfg.scheduler, cfg.robot.dim)
        self.safety = SafetyFilter(cfg.robot, cfg.safety, cfg.outputs.publish_rate_hz)
        self.counters = Counters()
        self.rtc = cfg.scheduler.merge_mode == "rtc"
        self._lock = threading.Lock()
        self._episode = 0
        self._enabled = False
        self._fault: str | None = None
        self._mode = DISABLED
        self._last_stale: list[str] = []
        self._last_request_task = ""
        self._needs_ramp = False
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

    def enable(self, on: bool) -> str:
        """Enable (start/resume with a ramp from the measured pose) or disable; returns a note."""
        with self._lock:
            if on == self._enabled and self._fault is None:
                return "already enabled" if on else "already disabled"
            self._enabled = on
            self._fault = None
            self._restart_locked()
            self._mode = WAITING if on else DISABLED
            return "enabled: waiting for inputs and the first chunk" if on else "disabled"

    def reset(self) -> None:
        """New episode: clears buffered chunks, safety state and any fault; keeps the task."""
        with self._lock:
            self._fault = None
            self._restart_locked()
            self.buffer.reset()
            self._mode = WAITING if self._enabled else DISABLED

    def _restart_locked(self) -> None:
        self._episode += 1  # answers to requests made before this point are dropped
        self.scheduler.reset()
        self.safety.reset()
        self._needs_ramp = False

    # -- results from the driver --------------------------------------------------------------
    def on_chunk(self, request: InferenceRequest, chunk: np.ndarray, t_now: float) -> int:
        """Merge a computed chunk; returns skipped steps (-1 if dropped or rejected)."""
        with self._lock:
            if request.episode != self._episode:
                self.counters.dropped_results += 1
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
            if request.episode != self._episode:
                self.scheduler.cancel_request()
                return
            self._fail_locked(error)

    def _fail_locked(self, error: str) -> None:
        self.counters.model_failures += 1
        self.scheduler.cancel_request()
        self._fault = error

    # -- the control tick ---------------------------------------------------------------------
    def tick(self, t_now: float) -> Tick:
        """One control step at ``t_now``: the safe command to publish and maybe a request."""
        with self._lock:
            self.counters.ticks += 1
            if not self._enabled:
                self._mode = DISABLED
                return Tick(None, None, DISABLED)
            stale = self.buffer.stale_inputs(t_now)
            self._last_stale = stale
            if stale or self._fault is not None:
                return self._hold_locked(t_now, stale)
            if self._mode == HOLDING:  # inputs fresh again: resume with a new chunk and ramp
                self._episode += 1
                self.scheduler.reset()
                self._needs_ramp = True
                self._mode = WAITING
            request = self._maybe_request_locked(t_now)
            target = self.scheduler.command_at(t_now)
            if self._needs_ramp or not self.safety.started:
                measured = self.buffer.state(t_now)
                if target is None or measured is None:
                    self._mode = WAITING
                    held = self.safety.filter(None, t_now)  # None before the first command
                    self.counters.commands += held is not None
                    return Tick(held, request, WAITING)
                self.safety.start_ramp(measured, t_now)
                self._needs_ramp = False
            command = self.safety.filter(target, t_now)
            self._mode = RUNNING
            self.counters.commands += command is not None
            return Tick(command, request, RUNNING)

    def _hold_locked(self, t_now: float, stale: list[str]) -> Tick:
        if self._mode == WAITING and not self.safety.started:
            return Tick(None, None, WAITING, stale)  # nothing commanded yet: nothing to hold
        self._mode = HOLDING
        command = self.safety.filter(None, t_now)
        self.counters.commands += command is not None
        return Tick(command, None, HOLDING, stale)

    def _maybe_request_locked(self, t_now: float) -> InferenceRequest | None:
        if not self.scheduler.should_request(t_now):
            return None
        obs = self.buffer.snapshot(t_now)
        if obs is None:
            return None
        leftover, delay = self.scheduler.rtc_inputs(t_now) if self.rtc else (None, 0)
        self.scheduler.mark_requested(t_now)
        self.counters.requests += 1
        self._last_request_task = obs.task
        return InferenceRequest(obs, self._episode, leftover, delay)

    # -- diagnostics --------------------------------------------------------------------------
    def status(self, t_now: float) -> dict[str, object]:
        """Numbers for /diagnostics and the periodic status line."""
        s = self.scheduler
        return {
            "mode": self._mode,
            "fault": self._fault or "",
            "stale_inputs": ",".join(self._last_stale),
            "buffered_s": round(s.buffered_s(t_now), 3),
            "latency_p50_ms": round(1e3 * s.latency_p50, 1),
            "latency_p95_ms": round(1e3 * s.latency_p95, 1),
            "chunks": self.counters.chunks,
            "requests": self.counters.requests,
            "skipped_steps": s.skipped_steps,
            "rejected_chunks": s.rejected_chunks,
            "model_failures": self.counters.model_failures,
            "clamped": self.safety.clamped,
            "speed_limited": self.safety.speed_limited,
            "holds": self.safety.holds,
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
