"""The one runner interface (openpi style) and what every runner shares.

A runner turns the robot's 16-D state, RGB uint8 images keyed by robot camera name and the task
text into a ``(chunk_size, robot_dim)`` action chunk in robot units. Three implementations:
``eager.PolicyRunner`` (LeRobot's ``predict_action_chunk``), ``fast.FastRunner`` (the same
model's weights through the fast engine: bf16 + CUDA graphs on a GPU, float32 on the CPU) and
``process.ProcessRunner`` (either of them in a child process). ``factory.make_runner`` picks one
from the config; ``run_request`` is the one call that turns a controller request into a chunk
(the node, both replay modes and the benchmarks use it).

This module is numpy only (no torch): the node's process imports it even when the model runs
in a child process.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from kuavo_smolvla_ros.core import dims

if TYPE_CHECKING:
    from kuavo_smolvla_ros.core.controller import InferenceRequest


class CheckpointError(RuntimeError):
    """The checkpoint cannot be found, read or used; the message says why and what to do."""


class FastPathError(RuntimeError):
    """The fast path cannot serve this checkpoint or device; the message says why."""


@runtime_checkable
class Runner(Protocol):
    """What the node, the replay tool and the benchmarks need from a policy runner.

    Not thread-safe unless an implementation says so: one caller of ``predict_chunk`` at a time
    (the node's inference worker). ``close`` is idempotent.
    """

    chunk_size: int

    @property
    def last_inference_s(self) -> float:
        """Wall time (monotonic clock) of the last ``predict_chunk``, or of the warm-up."""
        ...

    def predict_chunk(
        self,
        state: np.ndarray,  # (robot_dim,): arm joints in rad, grippers 0..1
        images: dict[str, np.ndarray],  # robot camera name -> RGB uint8 (H, W, 3)
        task: str,  # the instruction
        *,
        seed: int | None = None,  # seeds torch right before the flow-matching noise is drawn
        inference_delay: int | None = None,  # RTC: chunk steps executed while this one runs
        prev_chunk_left_over: np.ndarray | None = None,  # RTC: the rest of the last chunk
    ) -> np.ndarray:
        """One chunk ``(chunk_size, robot_dim)`` float64 in robot units.

        The RTC inputs (robot units) are used when the runner was loaded with RTC and a
        leftover is given; a bad input raises ``DimensionError`` / ``ValueError`` naming it.
        """
        ...

    def reset(self) -> None:
        """New episode: clear the policy's internal state."""
        ...

    def close(self) -> None:
        """Release what the runner holds (a child process, ...)."""
        ...


@dataclass(frozen=True)
class Timing:
    """Where the time of one chunk went, in seconds: inputs -> tensors, model + outputs, total."""

    preprocess_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0

    @staticmethod
    def now() -> float:
        """The one clock every runner times itself with (monotonic: immune to clock steps)."""
        return time.monotonic()

    @classmethod
    def between(cls, t_start: float, t_model: float, t_end: float) -> Timing:
        """From three ``Timing.now()`` readings: start, model call, end."""
        return cls(t_model - t_start, t_end - t_model, t_end - t_start)


def check_inputs(
    state: np.ndarray, images: dict[str, np.ndarray], robot_dim: int, cameras: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every runner's input check: (state float32 (robot_dim,), the ``cameras``' frames).

    Runs before any tensor is built so a bad input gets a message that names it, not a shape
    error from deep inside the model.
    """
    state = np.asarray(state, dtype=np.float32).reshape(-1)
    if state.shape[0] != robot_dim:
        raise dims.DimensionError(
            f"state has {state.shape[0]} values, the robot profile has {robot_dim}."
        )
    if not np.all(np.isfinite(state)):
        raise ValueError("state contains NaN or Inf; refusing to run the policy on it.")
    missing = sorted(set(cameras) - set(images))
    if missing:
        raise ValueError(f"missing camera image(s) {missing}; have {sorted(images)}.")
    frames = {}
    for cam in cameras:
        img = np.asarray(images[cam])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"camera {cam!r}: expected an RGB uint8 HxWx3 image, got {img.dtype} {img.shape}."
            )
        frames[cam] = img
    return state, frames


def check_chunk(chunk: np.ndarray, chunk_size: int, robot_dim: int) -> np.ndarray:
    """Every runner's output check: the chunk must be ``(chunk_size, robot_dim)``."""
    if chunk.shape != (chunk_size, robot_dim):
        raise dims.DimensionError(
            f"the policy returned a {chunk.shape} chunk, expected ({chunk_size}, {robot_dim})."
        )
    return chunk


@dataclass(frozen=True)
class RtcInputs:
    """RTC's inputs of one request: chunk steps run during inference, the unexecuted rest."""

    delay: int
    leftover: np.ndarray  # (steps, robot_dim) float32, robot units


@dataclass(frozen=True)
class ChunkInputs:
    """One request's inputs after ``check_inputs``: what a runner's ``_forward`` computes from."""

    state: np.ndarray  # (robot_dim,) float32, robot units
    frames: dict[str, np.ndarray]  # robot camera name -> RGB uint8 HxWx3, every camera
    task: str
    seed: int | None
    rtc: RtcInputs | None  # None: a plain chunk


class ChunkRunner:
    """The one implementation of ``Runner.predict_chunk``'s contract; subclasses add ``_forward``.

    Checks the inputs (``check_inputs``), passes RTC's inputs on only when the runner does RTC
    and was given a leftover, times the call (``Timing``) and checks the chunk's shape.
    """

    chunk_size: int
    robot_dim: int
    camera_features: dict[str, str]  # robot camera name -> the model's image feature
    rtc_enabled: bool
    timing: Timing = Timing()

    @property
    def last_inference_s(self) -> float:
        """Wall time of the last ``predict_chunk`` (inputs + model + outputs), or the warm-up."""
        return self.timing.total_s

    def predict_chunk(
        self,
        state: np.ndarray,
        images: dict[str, np.ndarray],
        task: str,
        *,
        seed: int | None = None,
        inference_delay: int | None = None,
        prev_chunk_left_over: np.ndarray | None = None,
    ) -> np.ndarray:
        """One chunk ``(chunk_size, robot_dim)`` float64 in robot units (``Runner``)."""
        t_start = Timing.now()
        state, frames = check_inputs(state, images, self.robot_dim, list(self.camera_features))
        rtc = None
        if self.rtc_enabled and prev_chunk_left_over is not None and len(prev_chunk_left_over):
            left = np.asarray(prev_chunk_left_over, dtype=np.float32)
            rtc = RtcInputs(int(inference_delay or 0), left)
        chunk, t_model = self._forward(ChunkInputs(state, frames, task or "", seed, rtc))
        self.timing = Timing.between(t_start, t_model, Timing.now())
        return check_chunk(chunk, self.chunk_size, self.robot_dim)

    def _forward(self, inputs: ChunkInputs) -> tuple[np.ndarray, float]:
        """The chunk for checked inputs, and the ``Timing.now()`` at which the model started."""
        raise NotImplementedError


def run_request(runner: Runner, req: InferenceRequest, seed: int | None = None) -> np.ndarray:
    """The chunk for one controller request: the only place a request meets a runner.

    ``seed`` < 0 or None: fresh noise (the config's ``policy.seed: -1``).
    """
    obs = req.observation
    return runner.predict_chunk(
        obs.state,
        obs.images,
        obs.task,
        seed=None if seed is None or seed < 0 else int(seed),
        inference_delay=req.delay_steps,
        prev_chunk_left_over=req.leftover,
    )


def set_torch_threads(threads: int, interop: int | None = None) -> None:
    """The one place this package sets torch's thread counts (0: leave torch's default).

    ``interop`` is only honoured before torch's first parallel work, as torch requires.
    """
    if threads <= 0 and interop is None:
        return
    import torch

    if threads > 0:
        torch.set_num_threads(int(threads))
    if interop is not None:
        # Only allowed before torch's first inter-op work; later the default stays.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(int(interop))
