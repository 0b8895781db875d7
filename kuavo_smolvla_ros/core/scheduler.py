"""Action chunks in, a timed command stream out (pure numpy: no rclpy, no torch).

Time model. Every time is a float in seconds passed in by the caller (ROS clock, bag time or a
test's simulated time); nothing here reads a clock. A chunk ``a`` of shape ``(H, dim)`` computed
from an observation taken at ``t_obs`` says that step ``k`` is due at::

    t_k = t_obs + k * step_s,        step_s = 1 / action_fps      (step 0 = the observation time)

as in LeRobot datasets. The scheduler keeps one merged *timeline* (``times (N,)`` strictly
increasing, ``values (N, dim)``) and the command at any time is its linear interpolation, so a
100 Hz publisher can run on 10 fps chunks.

Request policy (at most one request in flight)::

    request  <=>  not in_flight and (nothing buffered
                                     or t_now - t_last_request >= n_action_steps * step_s
                                     or buffered_s(t_now) < min_horizon_s + latency_s)

Merge modes (``SchedulerConfig.merge_mode``), applied where the new chunk meets the timeline:

- ``latest_only``: the new chunk replaces everything from its first kept step on.
- ``weighted_average`` (LeRobot async inference): where the old timeline covers a new step time
  ``t``, ``v(t) = old_weight * old(t) + (1 - old_weight) * new(t)`` (``old`` interpolated at the
  new step times); new steps outside the old timeline are used as they are; old steps after the
  new chunk's end are dropped (LeRobot rebuilds its queue from the incoming chunk).
- ``temporal_ensemble`` (ACT): all chunks still running are kept; at a time ``t`` covered by
  chunks ``c_0 .. c_{m-1}`` (oldest first), ``v(t) = sum_i w_i c_i(t) / sum_i w_i`` with
  ``w_i = exp(-ensemble_decay * i)`` (``i = 0`` is the oldest, ACT's convention). The ensemble is
  evaluated on the union of the chunks' step times and interpolated linearly in between, so a
  chunk entering or leaving fades in over one grid interval instead of jumping. Chunks whose
  last step is in the past are dropped.
- ``rtc`` (Real-Time Chunking): the model already made the new chunk agree with the leftover
  (``rtc_inputs``), so the new chunk replaces the timeline like ``latest_only``.

Stale steps. A chunk arrives ``t_now - t_obs`` (the inference latency) after its observation.
Steps with ``t_k < t_now - 1 us`` are *skipped*: counted in ``skipped_steps`` and never commanded
at their own due time. The last of them is kept in the timeline as the left neighbour of
``t_now`` so that the command at ``t_now`` interpolates between it and the next (future) step;
it is still counted as skipped. A chunk whose every step is in the past brings nothing to run:
all its steps are counted as skipped and the timeline is left as it was.

Rejected chunks. A chunk with the wrong shape, a non-finite value, or an observation older than
the newest accepted chunk raises ``ChunkRejected`` (a ``ValueError``) and leaves the timeline
untouched (so a NaN never reaches a weighted average); ``rejected_chunks`` counts them and the
request is no longer in flight.

Latency estimate. ``latency_s`` is ``latency_init_s`` until a chunk arrives, then the median of
the last ``latency_window`` measured latencies ``t_now - t_obs``: a warm-up spike (the first
call compiles kernels, fills caches) is outvoted after a couple of chunks instead of trusted
forever. Skipping always uses the real arrival time, never the estimate.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from kuavo_smolvla_ros.core.config import SchedulerConfig

TIME_EPS_S = 1e-6
"""Time comparisons tolerate 1 us (float64 epoch seconds resolve about 0.24 us)."""


class ChunkRejected(ValueError):
    """``on_chunk`` refused a chunk; the message says why. The timeline is unchanged."""


def interpolate(times: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear ``values`` at query times ``t`` (any shape), held at both ends.

    ``times`` (N,) strictly increasing, ``values`` (N, dim) finite; returns ``(*t.shape, dim)``.
    Exact at the knots: ``v = (1 - f) * v_i + f * v_{i+1}`` with ``f`` in [0, 1].
    """
    t = np.asarray(t, dtype=np.float64)
    if len(times) == 1:
        return np.broadcast_to(values[0], (*t.shape, values.shape[1])).copy()
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    f = np.clip((t - times[i]) / (times[i + 1] - times[i]), 0.0, 1.0)[..., None]
    return (1.0 - f) * values[i] + f * values[i + 1]


class ChunkScheduler:
    """Turns action chunks (robot units) into a command timeline; see the module docstring.

    Counters: ``n_chunks`` (accepted), ``skipped_steps`` (total), ``rejected_chunks``.
    """

    def __init__(self, cfg: SchedulerConfig, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"ChunkScheduler: dim={dim} must be >= 1.")
        self.cfg = cfg
        self.dim = int(dim)
        self.step_s = cfg.step_s
        self.reset()

    # ----------------------------------------------------------------------------------------
    # State

    def reset(self) -> None:
        """Forget everything (new episode): timeline, chunks, request, latency, counters."""
        self._times: np.ndarray | None = None
        self._values: np.ndarray | None = None
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []  # temporal_ensemble, oldest first
        self._in_flight = False
        self._t_last_request: float | None = None
        self._t_obs_newest: float | None = None
        self._latencies: deque[float] = deque(maxlen=self.cfg.latency_window)
        self._latency_s = self.cfg.latency_init_s
        self.n_chunks = 0
        self.skipped_steps = 0
        self.rejected_chunks = 0

    @property
    def in_flight(self) -> bool:
        """A request was made and its chunk (or its failure) has not come back yet."""
        return self._in_flight

    @property
    def latency_s(self) -> float:
        """Median of the last ``latency_window`` latencies (``latency_init_s`` before any)."""
        return self._latency_s

    @property
    def latency_history(self) -> tuple[float, ...]:
        """The measured latencies ``t_now - t_obs`` in the window, oldest first."""
        return tuple(self._latencies)

    def latency_percentile(self, q: float) -> float:
        """Percentile ``q`` (0..100) of the windowed latencies; ``latency_init_s`` before any."""
        if not self._latencies:
            return self.cfg.latency_init_s
        return float(np.percentile(np.fromiter(self._latencies, float), q))

    @property
    def latency_p50(self) -> float:
        return self.latency_percentile(50.0)

    @property
    def latency_p95(self) -> float:
        return self.latency_percentile(95.0)

    @property
    def active_chunks(self) -> int:
        """temporal_ensemble: chunks still contributing; other modes: 1 with a timeline, else 0."""
        if self.cfg.merge_mode == "temporal_ensemble":
            return len(self._chunks)
        return 0 if self._times is None else 1

    # ----------------------------------------------------------------------------------------
    # Requests

    def buffered_s(self, t_now: float) -> float:
        """Time left until the last step of the timeline: ``max(0, t_end - t_now)``."""
        if self._times is None:
            return 0.0
        return max(0.0, float(self._times[-1]) - t_now)

    def should_request(self, t_now: float) -> bool:
        """Whether to ask the model for a new chunk now (formula in the module docstring)."""
        if self._in_flight:
            return False
        buffered = self.buffered_s(t_now)
        if buffered <= 0.0 or self._t_last_request is None:
            return True
        period = self.cfg.n_action_steps * self.step_s
        if t_now - self._t_last_request >= period - TIME_EPS_S:
            return True
        return buffered < self.cfg.min_horizon_s + self._latency_s

    def mark_requested(self, t_now: float) -> None:
        """A request (observation snapshot + inference) starts now."""
        self._in_flight = True
        self._t_last_request = float(t_now)

    def cancel_request(self) -> None:
        """The request failed (model error, timeout); a new one may be made."""
        self._in_flight = False

    # ----------------------------------------------------------------------------------------
    # Chunks

    def _reject(self, why: str) -> ChunkRejected:
        self.rejected_chunks += 1
        return ChunkRejected(f"chunk rejected: {why}")

    def on_chunk(self, chunk: np.ndarray, t_obs: float, t_now: float) -> int:
        """Merge a chunk computed from the observation at ``t_obs``, arriving at ``t_now``.

        Returns how many of its steps were skipped because ``t_obs + k * step_s < t_now``
        (the last of those stays as interpolation anchor, see the module docstring). Raises
        ``ChunkRejected`` (a ``ValueError``) for a chunk that is not ``(H >= 1, dim)``, holds a
        NaN/Inf, or comes from an observation older than the newest accepted chunk's.
        """
        self._in_flight = False
        a = np.array(chunk, dtype=np.float64)  # a private copy
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != self.dim:
            raise self._reject(f"shape {a.shape}, expected (H >= 1, {self.dim}).")
        if not (math.isfinite(t_obs) and math.isfinite(t_now)):
            raise self._reject(f"non-finite time t_obs={t_obs}, t_now={t_now}.")
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise self._reject(
                f"non-finite value {a[tuple(bad)]} at step {bad[0]}, dim {bad[1]}"
                f" ({int(np.count_nonzero(~np.isfinite(a)))} in all); the timeline is unchanged."
            )
        if self._t_obs_newest is not None and t_obs < self._t_obs_newest - TIME_EPS_S:
            raise self._reject(
                f"observation time {t_obs:.6f} is older than the current chunk's"
                f" {self._t_obs_newest:.6f} (a late answer to an old request)."
            )

        self.n_chunks += 1
        self._t_obs_newest = float(t_obs)
        self._latencies.append(max(0.0, t_now - t_obs))
        self._latency_s = float(np.median(np.fromiter(self._latencies, float)))

        h = a.shape[0]
        times = t_obs + np.arange(h) * self.step_s
        skipped = int(np.count_nonzero(times < t_now - TIME_EPS_S))
        self.skipped_steps += skipped
        if skipped == h:
            return skipped
        first = max(skipped - 1, 0)
        self._merge(times[first:], a[first:], t_now)
        return skipped

    def _merge(self, seg_t: np.ndarray, seg_v: np.ndarray, t_now: float) -> None:
        mode = self.cfg.merge_mode
        if mode == "temporal_ensemble":
            self._chunks = [c for c in self._chunks if c[0][-1] >= t_now - TIME_EPS_S]
            self._chunks.append((seg_t, seg_v))
            times, values = self._ensemble()
        else:
            if mode == "weighted_average" and self._times is not None:
                old_t, old_v = self._times, self._values
                cover = (seg_t >= old_t[0] - TIME_EPS_S) & (seg_t <= old_t[-1] + TIME_EPS_S)
                w = self.cfg.old_weight
                seg_v = seg_v.copy()
                seg_v[cover] = w * interpolate(old_t, old_v, seg_t[cover]) + (1 - w) * seg_v[cover]
            if self._times is None:
                times, values = seg_t, seg_v
            else:  # keep the old timeline only before the new chunk starts
                keep = self._times < seg_t[0] - TIME_EPS_S
                times = np.concatenate([self._times[keep], seg_t])
                values = np.concatenate([self._values[keep], seg_v])
        # Drop what lies before the left neighbour of t_now: time only moves forward.
        i0 = max(int(np.searchsorted(times, t_now, side="right")) - 1, 0)
        self._times, self._values = times[i0:], values[i0:]

    def _ensemble(self) -> tuple[np.ndarray, np.ndarray]:
        """ACT temporal ensemble of ``self._chunks`` on the union of their step times."""
        grid = np.sort(np.concatenate([t for t, _ in self._chunks]))
        grid = grid[np.concatenate(([True], np.diff(grid) > TIME_EPS_S))]
        acc = np.zeros((len(grid), self.dim))
        wsum = np.zeros(len(grid))
        rank = np.zeros(len(grid))  # i of the next covering chunk at each grid time
        for ct, cv in self._chunks:  # oldest first
            cover = (grid >= ct[0] - TIME_EPS_S) & (grid <= ct[-1] + TIME_EPS_S)
            w = np.exp(-self.cfg.ensemble_decay * rank) * cover
            acc += w[:, None] * interpolate(ct, cv, grid)
            wsum += w
            rank += cover
        return grid, acc / wsum[:, None]  # every grid time is covered by its own chunk

    # ----------------------------------------------------------------------------------------
    # Commands

    def command_at(self, t_now: float) -> np.ndarray | None:
        """The timeline linearly interpolated at ``t_now`` (a new array).

        Before the first step: the first step. After the last step: ``None`` (nothing buffered;
        the caller holds). O(log N), no allocation beyond the result.
        """
        times = self._times
        if times is None or t_now > times[-1] + TIME_EPS_S:
            return None
        i = int(np.searchsorted(times, t_now, side="right")) - 1
        if i < 0:
            return self._values[0].copy()
        if i >= len(times) - 1:
            return self._values[-1].copy()
        f = (t_now - times[i]) / (times[i + 1] - times[i])
        return (1.0 - f) * self._values[i] + f * self._values[i + 1]

    def delay_steps(self) -> int:
        """Expected inference delay in chunk steps: ``ceil(latency_s / step_s)``."""
        return max(0, math.ceil(self._latency_s / self.step_s - 1e-9))

    def rtc_inputs(self, t_now: float) -> tuple[np.ndarray | None, int]:
        """``(prev_chunk_left_over, inference_delay)`` for LeRobot RTC's ``predict_action_chunk``.

        The leftover is the timeline sampled at chunk-step resolution from the step in progress
        at ``t_now`` (the last step due at or before ``t_now``) to the end::

            leftover[j] = v(t_s + j * step_s),  j = 0 .. floor((t_end - t_s) / step_s)

        shape ``(H_left, dim)`` in robot units (for an ``rtc`` or ``latest_only`` timeline these
        are the current chunk's own steps), or ``None`` when nothing is buffered. The delay is
        ``ceil(latency_s / step_s)``.
        """
        delay = self.delay_steps()
        times = self._times
        if times is None or t_now > times[-1] + TIME_EPS_S:
            return None, delay
        i = max(int(np.searchsorted(times, t_now, side="right")) - 1, 0)
        t_s = float(times[i])
        n = math.floor((float(times[-1]) - t_s) / self.step_s + 1e-6) + 1
        return interpolate(times, self._values, t_s + np.arange(n) * self.step_s), delay
