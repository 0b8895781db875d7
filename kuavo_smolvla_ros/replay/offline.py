"""Offline replay: the node's own core over a bag's messages in simulated bag time, no ROS.

The core (``PolicyController``: the same buffer, scheduler and safety filter as the node) runs
control ticks on an absolute grid of ``1 / publish_rate_hz`` (multiples of the period since the
epoch, like the node's timer under ``use_sim_time``); every input message is fed at its log time
before the ticks at or after it; a request is computed at once by the runner and its chunk is
merged at ``t_obs + latency``: fixed (default 100 ms: deterministic with a seed), ``measured``
(the runner's wall time, not deterministic), or the per-chunk latencies of an earlier run's
``report.json``. ``tick_times`` (``live_timeline`` / ``timeline_from_dir``) reproduces a live
run: its own tick times and per-chunk latencies; the commands then agree with the live ones to
within the one-tick race described in ``test_replay.py`` (2 x speed limit x 20 ms).
Every input is decoded and fed like the node does (a frame that does not decode is skipped and
counted; the newest frame per camera is the one a request sees). A model exception holds the
last command, as in the node.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.bag import BagError, open_bag
from kuavo_smolvla_ros.core.config import NODE_NAME, Config, ConfigError
from kuavo_smolvla_ros.core.controller import InferenceRequest, PolicyController
from kuavo_smolvla_ros.core.observation import decode_image
from kuavo_smolvla_ros.replay.plan import (
    MESSAGE_ERRORS,
    TIME_EPS_S,
    ChunkRecord,
    InputStats,
    Refs,
    ReplayError,
    ReplayResult,
    Route,
    bag_name,
    decode_warnings,
    feed_reference,
    message_stream,
    plan_inputs,
    progress_bar,
    ref_arrays,
    replay_config,
)
from kuavo_smolvla_ros.ros.messages import header_time
from kuavo_smolvla_ros.runners.base import Runner, run_request

__all__ = ["DEFAULT_LATENCY_S", "live_timeline", "replay_offline", "timeline_from_dir"]

DEFAULT_LATENCY_S = 0.1
Latency = float | str | Sequence[float]


class _LatencyModel:
    def __init__(self, latency: Latency) -> None:
        if isinstance(latency, str):
            if latency != "measured":
                raise ConfigError(f"latency {latency!r}: a number of seconds or 'measured'.")
            self.kind, self.values = "measured", ()
        elif isinstance(latency, (int, float)):
            if not (math.isfinite(latency) and latency >= 0):
                raise ConfigError(f"latency {latency} s must be >= 0.")
            self.kind, self.values = "fixed", (float(latency),)
        else:
            vals = tuple(float(v) for v in latency)
            if not vals or not all(v >= 0 for v in vals):  # inf: that chunk never arrives
                raise ConfigError("per-chunk latencies must be a non-empty list of values >= 0.")
            self.kind, self.values = "per_chunk", vals

    def __call__(self, i: int, inference_s: float) -> float:
        if self.kind == "measured":
            return inference_s
        return self.values[min(i, len(self.values) - 1)]

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed {1e3 * self.values[0]:g} ms"
        if self.kind == "measured":
            return "measured (the runner's wall time per chunk)"
        return f"per chunk ({len(self.values)} values from an earlier run)"


def _unique_ticks_ns(times: Sequence[float]) -> np.ndarray:
    """Sorted tick times in ns, one per microsecond: float seconds of epoch times resolve only
    ~0.24 us, so the same tick can come as two floats (a stamp and a clock reading)."""
    ns = np.sort(np.round(np.asarray(times, dtype=np.float64) * 1e9).astype(np.int64))
    if len(ns) < 2:
        return ns
    keep = np.concatenate(([True], np.diff(ns) > 1000))
    return ns[keep]


class _OfflineSim:
    """Drives one ``PolicyController`` in simulated time; see the module docstring.

    A chunk merged at ``t_arrival`` shapes the ticks strictly after it (a tick at exactly that
    time runs first), as in the node, whose timer fires the moment the clock reaches a tick.
    """

    def __init__(
        self,
        cfg: Config,
        runner: Runner,
        seed: int | None,
        latency: _LatencyModel,
        tick_times: Sequence[float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ctl = PolicyController(cfg)
        self.runner = runner
        self.seed = seed
        self.latency = latency
        self.period_ns = round(1e9 / cfg.outputs.publish_rate_hz)
        self.ticks_ns = None if tick_times is None else _unique_ticks_ns(tick_times)
        self._k = 0
        self.next_tick_ns: int | None = None
        self.pending: tuple[float, InferenceRequest, np.ndarray | None, str | None, float] | None
        self.pending = None
        self.n_requests = 0
        self.cmd_t: list[float] = []
        self.cmd: list[np.ndarray] = []
        self.chunks: list[ChunkRecord] = []
        self.failures: list[str] = []

    def start(self, t_ns: int) -> None:
        if self.ticks_ns is None:
            self.next_tick_ns = -(-t_ns // self.period_ns) * self.period_ns  # ceil to the grid
        else:
            self._k = int(np.searchsorted(self.ticks_ns, t_ns, side="left"))
            self.next_tick_ns = self._given_tick()

    def _given_tick(self) -> int | None:
        return int(self.ticks_ns[self._k]) if self._k < len(self.ticks_ns) else None

    def run_until(self, t_ns: int, inclusive: bool) -> None:
        """Every tick before ``t_ns`` (or at it, with ``inclusive``)."""
        while self.next_tick_ns is not None and (
            self.next_tick_ns < t_ns or (inclusive and self.next_tick_ns == t_ns)
        ):
            self._tick(self.next_tick_ns / 1e9)
            if self.ticks_ns is None:
                self.next_tick_ns += self.period_ns
            else:
                self._k += 1
                self.next_tick_ns = self._given_tick()

    def _deliver(self, t: float, strict: bool) -> None:
        if self.pending is None:
            return
        t_arr = self.pending[0]
        if t_arr > t + TIME_EPS_S or (strict and t_arr >= t - TIME_EPS_S):
            return
        _, req, chunk, error, inf_s = self.pending
        self.pending = None
        if chunk is None:
            self.ctl.on_failure(req, error or "model failed")
            return
        skipped = self.ctl.on_chunk(req, chunk, t_arr)
        if skipped >= 0:
            self.chunks.append(ChunkRecord(req.t_obs, t_arr, int(skipped), inf_s))

    def finish(self, t_end: float) -> None:
        """Merge a chunk that arrives after the last tick but within the bag (as live counts)."""
        self._deliver(t_end, strict=False)

    def _tick(self, t: float) -> None:
        self._deliver(t, strict=True)
        tick = self.ctl.tick(t)
        if tick.command is not None:
            self.cmd_t.append(t)
            self.cmd.append(tick.command)
        if tick.request is not None:
            self._infer(tick.request)
        self._deliver(t, strict=False)  # arrived at this very tick: merged after it

    def _infer(self, req: InferenceRequest) -> None:
        chunk, error = None, None
        try:
            chunk = run_request(self.runner, req, self.seed)
        except Exception as exc:  # a model failure holds, as in the node
            error = f"{type(exc).__name__}: {exc}"
            if error not in self.failures:
                self.failures.append(error)
        inf_s = float(self.runner.last_inference_s)
        lat = self.latency(self.n_requests, inf_s)
        self.n_requests += 1
        self.pending = (req.t_obs + lat, req, chunk, error, inf_s)


def _feed(
    ctl: PolicyController,
    route: Route,
    m: Any,
    t: float,
    stats: InputStats,
    refs: Refs,
) -> None:
    """One message into the controller's buffer (or the recorded reference), at time ``t``."""
    if route.kind == "reference":
        feed_reference(route, m, t, stats, refs)
        return
    what = f"{route.kind} {route.name} on {route.topic}"
    try:
        if route.kind == "state":
            ctl.buffer.update_state(route.name, route.extractor(m.msg), t)
        elif route.kind == "camera":
            ctl.buffer.update_image(route.name, decode_image(m.msg, route.transport), t)
        else:
            ctl.buffer.set_task(str(m.msg.data))
    except MESSAGE_ERRORS as exc:
        stats.fail(what, exc)
        return
    stats.good(what)


def _nothing_evaluated(
    ctl: PolicyController, t_end: float, n_msgs: int, stats: InputStats
) -> ReplayError:
    last = ctl.buffer.last_update
    never = [k for k, v in last.items() if v is None]
    stale = ctl.buffer.stale_inputs(t_end) if n_msgs else []
    if n_msgs == 0:
        why = "no message of the policy's inputs could be read"
    elif never:
        why = f"these inputs never had a usable message: {', '.join(never)}"
        for k in never:
            key = f"camera {k.split(':', 1)[1]} " if k.startswith("camera:") else f"state {k} "
            first = next((e for w, e in stats.first_error.items() if w.startswith(key)), None)
            if first:
                why += f" ({k}: {first.rstrip('.')})"
    elif ctl.fault:
        why = f"the model failed: {ctl.fault}"
    elif stale:
        why = f"the inputs were never all fresh together (stale at the end: {', '.join(stale)})"
    else:
        why = "the bag is too short for a first chunk"
    return ReplayError(f"no command was produced, nothing to evaluate: {why}.")


def replay_offline(
    bag: str | os.PathLike | Sequence[str | os.PathLike],
    runner: Runner,
    cfg: Config,
    *,
    seed: int | None = 0,
    latency_s: Latency = DEFAULT_LATENCY_S,
    task: str | None = None,
    progress: bool | None = None,
    tick_times: Sequence[float] | None = None,
) -> ReplayResult:
    """Run the node's core over ``bag`` in simulated time (module docstring, "offline").

    ``runner``: a ``runners.base.Runner`` (``load_policy``, ``make_runner``).
    ``latency_s``: seconds, ``"measured"``, or one
    value per chunk in request order (the last one repeats). ``tick_times``: control ticks at
    these bag times instead of the ``publish_rate_hz`` grid (with ``live_timeline`` of a live
    result: the live run's own ticks and latencies, to reproduce it). Raises ``ReplayError``
    when nothing could be evaluated and ``BagError`` when the bag cannot be opened.
    """
    cfg = replay_config(cfg, task)
    lat = _LatencyModel(latency_s)
    runner.reset()
    with open_bag(bag) as reader:
        plan = plan_inputs(cfg, reader, task)
        warnings = list(reader.warnings) + plan.warnings
        sim = _OfflineSim(cfg, runner, seed, lat, tick_times)
        stats = InputStats()
        refs: Refs = {}
        damage: list[BagError] = []
        total = sum(reader.topics[t][1] for t in plan.topics)
        bar = progress_bar(total, "msg", progress, "offline replay")
        t_first = t_last = None
        n_msgs = 0
        try:
            for m, t in message_stream(reader, plan.topics, damage.append, stats):
                t_ns = round(t * 1e9)
                if t_first is None:
                    t_first = t
                    sim.start(t_ns)
                sim.run_until(t_ns, inclusive=False)
                stats.header(m.topic, m.msg)
                for route in plan.routes[m.topic]:
                    _feed(sim.ctl, route, m, t, stats, refs)
                t_last = t
                n_msgs += 1
                bar.update(1)
            if t_last is not None:
                sim.run_until(round(t_last * 1e9), inclusive=True)
                sim.finish(t_last)
        finally:
            bar.close()
        skipped = dict(reader.skipped_by_topic)
        fmt = reader.format
    warnings += decode_warnings(skipped)
    warnings += stats.warnings()
    warnings += [f"model failure (held the last command): {e}" for e in sim.failures]
    partial = False
    if damage:
        warnings.append(f"the bag ends early: {damage[0]}")
        partial = True
    if not sim.cmd:
        raise _nothing_evaluated(sim.ctl, t_last or 0.0, n_msgs, stats)
    result = ReplayResult(
        mode="offline",
        bag=bag_name(bag),
        bag_format=fmt,
        t_start=float(t_first),
        t_end=float(t_last),
        cmd_t=np.asarray(sim.cmd_t),
        cmd=np.asarray(sim.cmd),
        chunks=sim.chunks,
        reference={k: ref_arrays(v, cfg, k) for k, v in refs.items()},
        counters=_controller_counters(sim.ctl),
        warnings=warnings,
        partial=partial,
        info={
            "seed": seed,
            "latency": lat.describe(),
            "ticks": "given" if tick_times is not None else "grid",
            "task": sim.ctl.buffer.task,
        },
    )
    return result


def live_timeline(result: ReplayResult) -> tuple[np.ndarray, list[float]]:
    """``(tick_times, latencies)`` of a live result for ``replay_offline``: the ticks that
    published a command or made a request, each chunk's ``t_arrival - t_obs``, then ``inf``
    (a request still in flight when the bag ended never arrives)."""
    return _timeline(result.cmd_t, [(c.t_obs, c.t_arrival) for c in result.chunks])


def _timeline(
    cmd_t: Sequence[float], chunks: Sequence[tuple[float, float]]
) -> tuple[np.ndarray, list[float]]:
    ns = _unique_ticks_ns(np.concatenate([np.asarray(cmd_t, float), [o for o, _ in chunks]]))
    return ns / 1e9, [a - o for o, a in chunks] + [math.inf]


def timeline_from_dir(live_dir: str | os.PathLike) -> tuple[np.ndarray, list[float]]:
    """``live_timeline`` of a finished live run from its output directory (``report.json`` and
    the ``outputs`` bag)."""
    d = Path(live_dir)
    try:
        rep = json.loads((d / "report.json").read_text())
        chunks = [(float(c["t_obs"]), float(c["t_arrival"])) for c in rep["chunks"]]
        topic = rep.get("action_topic") or f"/{NODE_NAME}/action"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"--timeline {d}: not the output directory of a live replay ({exc})."
        ) from None
    if rep.get("mode") != "live" or not chunks:
        raise ConfigError(
            f"--timeline {d}: not a live replay with chunks (mode {rep.get('mode')})."
        )
    lo = float(rep["t_start"]) - TIME_EPS_S
    hi = float(rep["t_start"]) + float(rep["duration_s"]) + TIME_EPS_S
    with open_bag(d / "outputs") as reader:
        stamps = [header_time(m.msg) for m in reader.messages([topic])]
    cmd_t = [t for t in stamps if t is not None and lo <= t <= hi]
    return _timeline(cmd_t, chunks)


def _controller_counters(ctl: PolicyController) -> dict[str, int]:
    s, f, c = ctl.scheduler, ctl.safety, ctl.counters
    return {
        "clamped": int(f.clamped),
        "holds": int(f.holds),
        "speed_limited": int(f.speed_limited),
        "requests": int(c.requests),
        "model_failures": int(c.model_failures),
        "skipped_steps": int(s.skipped_steps),
        "rejected_chunks": int(s.rejected_chunks),
    }
