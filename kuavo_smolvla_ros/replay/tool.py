"""Replay a rosbag through the policy and report how its commands compare with the recorded ones.

    kuavo-smolvla-replay BAG --checkpoint CKPT [--config YAML] [--mode live|offline]
                         [--speed X] [--out DIR] [--seed N] [--latency-ms MS|measured|REPORT]
                         [--timeline LIVE_DIR] [--task TEXT] [--device DEV] [--no-progress]

``BAG``: a ROS 2 bag (sqlite3 or mcap directory, or one ``.db3`` / ``.mcap`` file, split bags
too) or stock Kuavo ROS 1 recordings (``.bag`` files, or a directory of split ones); read with
``bagio`` (kuavo_msgs from the bag's own definitions, the ``lejuClawState`` fix). Topics, fields,
joints and cameras come from the same config as the node: ``--config`` or, by default,
``config/kuavo_smolvla.yaml`` for ROS 2 bags and ``config/kuavo_ros1_stock.yaml`` for ROS 1 ones.

Modes
-----
``offline`` (default): the node's own core (``PolicyController``: the same buffer, scheduler and
safety filter) runs over the bag's messages in simulated bag time, without ROS. Control ticks are
on an absolute grid of ``1 / publish_rate_hz`` (multiples of the period since the epoch, like
the node's timer under ``use_sim_time``); every input message is fed at its log time before the
ticks at or after it; a request is computed at once by the runner and its chunk is merged at
``t_obs + latency``: ``--latency-ms`` fixed (default 100 ms: deterministic with ``--seed``),
``measured`` (the runner's wall time, not deterministic), or the per-chunk latencies of an
earlier run's ``report.json``. ``--timeline LIVE_DIR`` reproduces a live run: its own tick
times and per-chunk latencies (``live_timeline``); the commands then agree with the live ones
to within the one-tick race described in ``test_replay.py`` (2 x speed limit x 20 ms).
Every input is decoded and fed like the node does (a frame that does not decode is skipped and
counted; the newest frame per camera is the one a request sees). A model exception holds the
last command, as in the node.

``live``: the ROS 2 node itself (``python -m kuavo_smolvla_ros.ros.node``, ``use_sim_time``,
``start_enabled``, not a dry run) in a child process; the bag is played like ``ros2 bag play
--clock``: ``/clock`` on a 5 ms grid of bag time and the node's input topics in log-time order, at
``--speed``. The node's outputs (arm and gripper commands, ``~/action``, ``~/chunk_timing``,
``/diagnostics``) are recorded into ``DIR/outputs`` (a ROS 2 mcap bag, log time = the message's
own stamp, i.e. bag time) and the report is computed from them. Live mode publishes on the
configured topic names: run it on a ROS domain of its own (``ROS_DOMAIN_ID``), never beside a
robot. Messages the node cannot subscribe to as recorded are converted first, so that no
kuavo_msgs install is needed: a state source whose type is not the configured one or not
installed (stock ROS 1 ``/sensors_data_raw`` and ``/leju_claw_state``) is published as
``sensor_msgs/JointState`` on the default config's topic (``/joint_states``, ``/gripper/state``)
with the joint names and raw units the config maps (so ``joint_q[12:26]`` becomes the 14
``zarm_*`` positions in rad, the claw stays 0..100), and the node runs with that converted
input section; ROS 1 camera and task messages are re-encoded as their ROS 2 equivalents; a
gripper command type that is not installed (``kuavo_msgs/lejuClawCommand``) is published as
``sensor_msgs/JointState`` on ``/gripper/command``. Everything else (robot, scheduler, safety,
policy) is the config's. ``DIR/live_node_params.yaml`` holds the node's exact parameters.

Report (``DIR/report.json``, a printed table, ``DIR/trajectories.png``): see ``metrics`` for the
definitions (per-joint MAE/RMSE against the recorded commands in degrees and 0..100, linear
interpolation of the recorded streams at the command times; latency observation -> first
command; rate; largest command step at a chunk switch; chunks, clamps, holds). Live counters
(clamped, holds, ...) are the node's last ``/diagnostics`` values, published after the clock
passes the bag's end (the one tick at that moment may add one hold).

Bad input never shows a traceback: a missing, truncated or corrupt bag, absent topics,
undecodable or unknown message types, stamps out of order and undecodable frames give one-line
messages; what can still be evaluated is reported (``"partial": true`` and ``warnings`` in the
report). Exit status: 0 a report was written (perhaps partial), 1 nothing could be evaluated,
2 a usage, config or checkpoint error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.bag.io import BagError, BagReader, BagWriter, open_bag, typestore_for
from kuavo_smolvla_ros.core import metrics
from kuavo_smolvla_ros.core.config import (
    NODE_NAME,
    Config,
    ConfigError,
    SourceConfig,
    command_sources,
    default_config_path,
    load_config,
    to_dict,
)
from kuavo_smolvla_ros.core.controller import InferenceRequest, PolicyController
from kuavo_smolvla_ros.core.observation import ObservationError, SourceExtractor, decode_image

__all__ = [
    "DEFAULT_LATENCY_S",
    "ChunkRecord",
    "ReplayError",
    "ReplayResult",
    "live_timeline",
    "main",
    "make_report",
    "plot_trajectories",
    "replay_live",
    "replay_offline",
    "timeline_from_dir",
    "write_report",
]

PROG = "kuavo-smolvla-replay"
DEFAULT_LATENCY_S = 0.1
TIME_EPS_S = 1e-6  # equal times: float seconds of epoch times resolve ~0.24 us
CLOCK_PERIOD_NS = 5_000_000  # /clock every 5 ms of bag time in live mode (200 Hz)
END_MARGIN_S = 1.0  # live: the clock jumps this far past the bag's end to get a last /diagnostics
JOINT_STATE = "sensor_msgs/msg/JointState"
EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2
Latency = float | str | Sequence[float]


class ReplayError(RuntimeError):
    """Nothing could be evaluated; the message says why (print it as is)."""


@dataclass(frozen=True)
class ChunkRecord:
    """One accepted chunk: observation time, merge time, skipped steps, model wall time (s)."""

    t_obs: float
    t_arrival: float
    skipped: int
    inference_s: float


@dataclass
class ReplayResult:
    """What a replay produced, in policy units and bag time (either mode)."""

    mode: str
    bag: str
    bag_format: str
    t_start: float  # first input message (s, bag time)
    t_end: float  # last input message
    cmd_t: np.ndarray  # (N,) command times
    cmd: np.ndarray  # (N, dim) commands, policy units (rad, grippers 0..1)
    chunks: list[ChunkRecord]
    reference: dict[str, tuple[np.ndarray, np.ndarray, tuple[int, ...]]]  # label: (t, v, dims)
    counters: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    partial: bool = False
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# What the bag's topics feed.


def resolve_topic(name: str) -> str:
    """``~/x`` -> ``/kuavo_smolvla_policy/x``; ``x`` -> ``/x`` (the node has no namespace)."""
    if name.startswith("~/"):
        return f"/{NODE_NAME}/{name[2:]}"
    return name if name.startswith("/") else "/" + name


def reference_sources(cfg: Config) -> dict[str, SourceConfig]:
    """The recorded commands as state-like sources in policy units (what the model should do):
    the same mapping as the converter's dataset actions (``config.command_sources``)."""
    arm, gripper = command_sources(cfg)
    return {"arm command": arm, "gripper command": gripper}


@dataclass
class _Route:
    kind: str  # "state", "camera", "task", "reference"
    name: str  # arm / gripper, camera name, "task", reference label
    topic: str
    extractor: SourceExtractor | None = None
    transport: str = ""


@dataclass
class _Plan:
    routes: dict[str, list[_Route]]
    warnings: list[str]
    task_in_bag: bool

    @property
    def topics(self) -> list[str]:
        return sorted(self.routes)


def _bag_listing(reader: BagReader) -> str:
    return ", ".join(f"{t} [{m}]" for t, (m, _) in reader.topics.items()) or "no topics"


def plan_inputs(cfg: Config, reader: BagReader, task: str | None = None) -> _Plan:
    """Map the bag's topics to the config's inputs and recorded commands; check them.

    Raises ReplayError when an input the policy needs is absent or undecodable (nothing can be
    evaluated); absent or undecodable recorded commands only cost the error metrics (warning).
    """
    inp = cfg.inputs
    have = reader.topics
    warnings: list[str] = []
    routes: dict[str, list[_Route]] = {}
    required: list[tuple[str, str]] = []  # (topic, what)
    for label in ("arm", "gripper"):
        src: SourceConfig = getattr(inp, label)
        routes.setdefault(src.topic, []).append(
            _Route("state", label, src.topic, SourceExtractor(src, label))
        )
        required.append((src.topic, f"inputs.{label}"))
    for name, topic, transport in zip(
        inp.cameras.names, inp.cameras.topics, inp.cameras.transports
    ):
        routes.setdefault(topic, []).append(_Route("camera", name, topic, transport=transport))
        required.append((topic, f"camera {name}"))
    missing = [(t, what) for t, what in required if t not in have]
    if missing:
        hint = ""
        if reader.ros1 and any(t == "/joint_states" for t, _ in missing):
            stock = default_config_path("kuavo_ros1_stock.yaml")
            hint = f" For stock Kuavo ROS 1 recordings use --config {stock}."
        listed = ", ".join(f"{t} ({what})" for t, what in missing)
        raise ReplayError(
            f"{reader.name}: the policy's input topic(s) {listed} are not in the bag, so nothing"
            f" can be evaluated. The bag has: {_bag_listing(reader)}.{hint}"
        )
    task_topic = resolve_topic(inp.task_topic)
    task_in_bag = task_topic in have
    if task_in_bag:
        routes.setdefault(task_topic, []).append(_Route("task", "task", task_topic))
    elif not (task or cfg.policy.task).strip():
        raise ReplayError(
            f"no task instruction: the bag has no {task_topic} and policy.task is empty;"
            " pass --task TEXT."
        )
    for label, src in reference_sources(cfg).items():
        if src.topic not in have:
            warnings.append(
                f"the bag has no recorded {label} on {src.topic}: no MAE/RMSE for"
                f" {', '.join(cfg.robot.joint_names[d] for d in src.dims)}"
            )
            continue
        routes.setdefault(src.topic, []).append(
            _Route("reference", label, src.topic, SourceExtractor(src, label))
        )
    # Topics whose type cannot be decoded at all (unknown type, broken definition).
    for topic in list(routes):
        try:
            reader.messages([topic])
        except BagError as exc:
            kinds = {r.kind for r in routes[topic]}
            if kinds & {"state", "camera"}:
                raise ReplayError(
                    f"{exc} It is a policy input: nothing can be evaluated."
                ) from None
            warnings.append(f"{str(exc).rstrip('.')}; ignored")
            del routes[topic]
    return _Plan(routes, warnings, task_in_bag)


def _header_time(msg: Any) -> float | None:
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    if stamp is None:
        return None
    try:
        return float(stamp.sec) + 1e-9 * float(stamp.nanosec)
    except (AttributeError, TypeError, ValueError):
        return None


class _InputStats:
    """Per-input message problems, turned into warnings at the end."""

    def __init__(self) -> None:
        self.ok: dict[str, int] = {}
        self.bad: dict[str, int] = {}
        self.first_error: dict[str, str] = {}
        self.header_back: dict[str, int] = {}
        self.log_back = 0
        self._last_header: dict[str, float] = {}

    def good(self, what: str) -> None:
        self.ok[what] = self.ok.get(what, 0) + 1

    def fail(self, what: str, exc: Exception) -> None:
        self.bad[what] = self.bad.get(what, 0) + 1
        self.first_error.setdefault(what, str(exc))

    def header(self, topic: str, msg: Any) -> None:
        t = _header_time(msg)
        if t is None:
            return
        last = self._last_header.get(topic)
        if last is not None and t < last - 1e-6:
            self.header_back[topic] = self.header_back.get(topic, 0) + 1
        else:
            self._last_header[topic] = t

    def warnings(self) -> list[str]:
        out = []
        for what, n in self.bad.items():
            total = n + self.ok.get(what, 0)
            out.append(
                f"{what}: {n} of {total} messages unusable, skipped"
                f" (first: {self.first_error[what]})"
            )
        for topic, n in self.header_back.items():
            out.append(
                f"{topic}: {n} messages have a header stamp older than the previous one (stamps"
                " out of order); replay orders and times inputs by log time"
            )
        if self.log_back:
            out.append(
                f"{self.log_back} messages came with a log time before the previous message's;"
                " they were fed at the previous time"
            )
        return out


def _messages(
    reader: BagReader,
    topics: Sequence[str],
    on_damage: Callable[[BagError], None],
    stats: _InputStats,
) -> Iterator[tuple[Any, float]]:
    """The bag's messages on ``topics`` with their log time, which never goes back: a message
    out of order is counted (``stats.log_back``) and replayed at the previous time. A read error
    or damage ends the stream (reported through ``on_damage``)."""
    t_prev: float | None = None
    try:
        for m in reader.messages(topics):
            t = m.t
            if t_prev is not None and t < t_prev:
                stats.log_back += 1
                t = t_prev
            t_prev = t
            yield m, t
    except BagError as exc:
        on_damage(exc)


def _progress(total: float, unit: str, enabled: bool | None, desc: str) -> Any:
    from tqdm import tqdm

    # None: on for a terminal (tqdm's own check), off in logs and pipes.
    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        disable=None if enabled is None else not enabled,
        leave=False,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} {unit} [{elapsed}<{remaining}]"
        if unit == "s"
        else None,
    )


def _replay_config(cfg: Config, task: str | None) -> Config:
    policy = cfg.policy if task is None else dataclasses.replace(cfg.policy, task=task)
    return dataclasses.replace(cfg, policy=policy, start_enabled=True, dry_run=False)


# ---------------------------------------------------------------------------------------------
# Offline mode.


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
        runner: Any,
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
        obs = req.observation
        chunk, error = None, None
        try:
            chunk = self.runner.predict_chunk(
                obs.state,
                obs.images,
                obs.task,
                seed=self.seed,
                inference_delay=req.delay_steps,
                prev_chunk_left_over=req.leftover,
            )
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
    route: _Route,
    m: Any,
    t: float,
    stats: _InputStats,
    refs: dict[str, tuple[list[float], list[np.ndarray]]],
) -> None:
    """One message into the controller's buffer (or the recorded reference), at time ``t``."""
    if route.kind == "reference":
        _feed_reference(route, m, t, stats, refs)
        return
    what = f"{route.kind} {route.name} on {route.topic}"
    try:
        if route.kind == "state":
            ctl.buffer.update_state(route.name, route.extractor(m.msg), t)
        elif route.kind == "camera":
            ctl.buffer.update_image(route.name, decode_image(m.msg, route.transport), t)
        else:
            ctl.buffer.set_task(str(m.msg.data))
    except (ObservationError, ValueError, AttributeError, TypeError) as exc:
        stats.fail(what, exc)
        return
    stats.good(what)


def _feed_reference(
    route: _Route,
    m: Any,
    t: float,
    stats: _InputStats,
    refs: dict[str, tuple[list[float], list[np.ndarray]]],
) -> None:
    what = f"recorded {route.name} on {route.topic}"
    try:
        values = route.extractor(m.msg)
    except (ObservationError, ValueError, AttributeError, TypeError) as exc:
        stats.fail(what, exc)
        return
    stats.good(what)
    ts, vs = refs.setdefault(route.name, ([], []))
    ts.append(t)
    vs.append(values)


def _nothing_evaluated(
    ctl: PolicyController, t_end: float, n_msgs: int, stats: _InputStats
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
    runner: Any,
    cfg: Config,
    *,
    seed: int | None = 0,
    latency_s: Latency = DEFAULT_LATENCY_S,
    task: str | None = None,
    progress: bool | None = None,
    tick_times: Sequence[float] | None = None,
) -> ReplayResult:
    """Run the node's core over ``bag`` in simulated time (module docstring, "offline").

    ``runner``: a ``PolicyRunner`` (``policy.load_policy``) or anything with its
    ``predict_chunk`` / ``last_inference_s``. ``latency_s``: seconds, ``"measured"``, or one
    value per chunk in request order (the last one repeats). ``tick_times``: control ticks at
    these bag times instead of the ``publish_rate_hz`` grid (with ``live_timeline`` of a live
    result: the live run's own ticks and latencies, to reproduce it). Raises ``ReplayError``
    when nothing could be evaluated and ``BagError`` when the bag cannot be opened.
    """
    cfg = _replay_config(cfg, task)
    lat = _LatencyModel(latency_s)
    if hasattr(runner, "reset"):
        runner.reset()
    with _open(bag) as reader:
        plan = plan_inputs(cfg, reader, task)
        warnings = list(reader.warnings) + plan.warnings
        sim = _OfflineSim(cfg, runner, seed, lat, tick_times)
        stats = _InputStats()
        refs: dict[str, tuple[list[float], list[np.ndarray]]] = {}
        damage: list[BagError] = []
        total = sum(reader.topics[t][1] for t in plan.topics)
        bar = _progress(total, "msg", progress, "offline replay")
        t_first = t_last = None
        n_msgs = 0
        try:
            for m, t in _messages(reader, plan.topics, damage.append, stats):
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
    warnings += _decode_warnings(skipped)
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
        bag=_bag_name(bag),
        bag_format=fmt,
        t_start=float(t_first),
        t_end=float(t_last),
        cmd_t=np.asarray(sim.cmd_t),
        cmd=np.asarray(sim.cmd),
        chunks=sim.chunks,
        reference={k: _ref_arrays(v, cfg, k) for k, v in refs.items()},
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
    with _open(d / "outputs") as reader:
        stamps = [_header_time(m.msg) for m in reader.messages([topic])]
    cmd_t = [t for t in stamps if t is not None and lo <= t <= hi]
    return _timeline(cmd_t, chunks)


def _ref_arrays(
    v: tuple[list[float], list[np.ndarray]], cfg: Config, label: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    dims = tuple(reference_sources(cfg)[label].dims)
    return np.asarray(v[0]), np.asarray(v[1]).reshape(len(v[0]), len(dims)), dims


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


def _decode_warnings(skipped_by_topic: dict[str, int]) -> list[str]:
    return [
        f"{topic}: {n} messages could not be decoded (corrupt data), skipped"
        for topic, n in skipped_by_topic.items()
    ]


def _bag_name(bag: Any) -> str:
    if isinstance(bag, (str, os.PathLike)):
        return str(bag)
    return ", ".join(str(b) for b in bag)


@contextlib.contextmanager
def _open(bag: Any) -> Iterator[BagReader]:
    reader = open_bag(bag)
    try:
        yield reader
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------
# Live mode.


@dataclass
class _Publication:
    """How one bag topic is played to the node."""

    out_topic: str
    msgtype: str  # ROS 2 type published
    encode: Callable[[Any], bytes | None]  # BagMessage -> CDR bytes
    qos: str  # "sensor" | "latched"


def _importable(msgtype: str) -> bool:
    from kuavo_smolvla_ros.ros.node import import_message

    try:
        import_message(msgtype)
    except ConfigError:
        return False
    return True


def _norm(msgtype: str) -> str:
    parts = msgtype.split("/")
    return f"{parts[0]}/msg/{parts[-1]}" if len(parts) >= 2 else msgtype


class _Ros2Encoder:
    """Builds ROS 2 (Jazzy) messages with rosbags and serializes them to CDR."""

    def __init__(self) -> None:
        self.store = typestore_for("sqlite3")
        self.T = self.store.types

    def _cdr(self, msg: Any, msgtype: str) -> bytes:
        return bytes(self.store.serialize_cdr(msg, msgtype))

    def header(self, src_msg: Any, t: float) -> Any:
        stamp = getattr(getattr(src_msg, "header", None), "stamp", None)
        if stamp is not None:
            sec, nsec = int(stamp.sec), int(stamp.nanosec)
        else:
            ns = round(t * 1e9)
            sec, nsec = ns // 10**9, ns % 10**9
        frame = str(getattr(getattr(src_msg, "header", None), "frame_id", "") or "")
        time_t = self.T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec)
        return self.T["std_msgs/msg/Header"](stamp=time_t, frame_id=frame)

    def joint_state(self, src_msg: Any, t: float, names: Sequence[str], pos: np.ndarray) -> bytes:
        msg = self.T[JOINT_STATE](
            header=self.header(src_msg, t),
            name=list(names),
            position=np.asarray(pos, dtype=np.float64),
            velocity=np.zeros(0),
            effort=np.zeros(0),
        )
        return self._cdr(msg, JOINT_STATE)

    def image(self, src_msg: Any, t: float, transport: str) -> bytes:
        data = np.frombuffer(bytes(np.asarray(src_msg.data, dtype=np.uint8)), dtype=np.uint8)
        if transport == "compressed":
            typ = "sensor_msgs/msg/CompressedImage"
            msg = self.T[typ](header=self.header(src_msg, t), format=str(src_msg.format), data=data)
        else:
            typ = "sensor_msgs/msg/Image"
            msg = self.T[typ](
                header=self.header(src_msg, t),
                height=int(src_msg.height),
                width=int(src_msg.width),
                encoding=str(src_msg.encoding),
                is_bigendian=int(src_msg.is_bigendian),
                step=int(src_msg.step),
                data=data,
            )
        return self._cdr(msg, typ)

    def string(self, text: str) -> bytes:
        return self._cdr(self.T["std_msgs/msg/String"](data=text), "std_msgs/msg/String")


def plan_live(
    cfg: Config, reader: BagReader, plan: _Plan
) -> tuple[Config, dict[str, _Publication], list[str]]:
    """The node's config and how each input topic is played (module docstring, "live")."""
    enc = _Ros2Encoder()
    have = reader.topics
    notes: list[str] = []
    pubs: dict[str, _Publication] = {}
    inputs = cfg.inputs
    defaults = Config().inputs
    used = {t for t in plan.routes}
    new_sources: dict[str, SourceConfig] = {}

    for label in ("arm", "gripper"):
        src: SourceConfig = getattr(inputs, label)
        bag_type = _norm(have[src.topic][0])
        if not reader.ros1 and bag_type == _norm(src.msg_type) and _importable(src.msg_type):
            pubs[src.topic] = _Publication(
                src.topic, src.msg_type, _passthrough(reader, src.topic), "sensor"
            )
            continue
        names = src.names or tuple(cfg.robot.joint_names[d] for d in src.dims)
        out_topic = src.topic if bag_type == JOINT_STATE else getattr(defaults, label).topic
        while out_topic in used and out_topic != src.topic:
            out_topic += "_replay"
        used.add(out_topic)
        extractor = SourceExtractor(src, label)
        scale = src.scale

        def encode(m: Any, ex=extractor, names=names, scale=scale) -> bytes:
            return enc.joint_state(m.msg, m.t, names, ex(m.msg) / scale)

        pubs[src.topic] = _Publication(out_topic, JOINT_STATE, encode, "sensor")
        new_sources[label] = SourceConfig(
            topic=out_topic,
            msg_type=JOINT_STATE,
            field="position",
            names=tuple(names),
            index=(),
            scale=scale,
            dims=src.dims,
        )
        notes.append(
            f"live: {src.topic} ({have[src.topic][0]}) is played as {JOINT_STATE} on"
            f" {out_topic} ({', '.join(names[:2])}, ...) for inputs.{label}"
        )
    cams = inputs.cameras
    for topic, transport in zip(cams.topics, cams.transports):
        typ = (
            "sensor_msgs/msg/CompressedImage"
            if transport == "compressed"
            else "sensor_msgs/msg/Image"
        )
        if reader.ros1 or _norm(have[topic][0]) != typ:

            def encode(m: Any, tr=transport) -> bytes:
                return enc.image(m.msg, m.t, tr)

            pubs[topic] = _Publication(topic, typ, encode, "sensor")
        else:
            pubs[topic] = _Publication(topic, typ, _passthrough(reader, topic), "sensor")
    if plan.task_in_bag:
        topic = resolve_topic(inputs.task_topic)
        pubs[topic] = _Publication(
            topic, "std_msgs/msg/String", lambda m: enc.string(str(m.msg.data)), "latched"
        )

    node_inputs = dataclasses.replace(inputs, **new_sources)
    outputs = cfg.outputs
    if not _importable(outputs.gripper_msg_type):
        new_topic = Config().outputs.gripper_topic
        notes.append(
            f"live: {outputs.gripper_msg_type} is not installed here; the node publishes its"
            f" gripper command as {JOINT_STATE} on {new_topic}"
        )
        outputs = dataclasses.replace(
            outputs,
            gripper_topic=new_topic,
            gripper_msg_type=JOINT_STATE,
            gripper_field="position",
        )
    node_cfg = dataclasses.replace(cfg, inputs=node_inputs, outputs=outputs)
    return node_cfg, pubs, notes


def _passthrough(reader: BagReader, topic: str) -> Callable[[Any], bytes]:
    store = reader.typestore

    def encode(m: Any) -> bytes:
        return bytes(store.serialize_cdr(m.msg, m.msgtype))

    return encode


def write_node_params(cfg: Config, path: Path) -> Path:
    """The node's parameters file (``--params-file``) for ``cfg``, with ``use_sim_time``."""
    import yaml

    params = to_dict(cfg)
    params["use_sim_time"] = True
    path.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": params}}, sort_keys=False))
    return path


class _Recorder:
    """Raw subscriptions to the node's outputs; messages kept as (topic, type, CDR bytes)."""

    def __init__(self, node: Any, topics: dict[str, str]) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from kuavo_smolvla_ros.ros.node import import_message

        self.lock = threading.Lock()
        self.msgs: list[tuple[str, str, bytes]] = []
        self.last_diag_raw: bytes | None = None
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.subs = []
        for topic, msgtype in topics.items():
            self.subs.append(
                node.create_subscription(
                    import_message(msgtype), topic, self._cb(topic, msgtype), qos, raw=True
                )
            )

    def _cb(self, topic: str, msgtype: str) -> Callable[[bytes], None]:
        def cb(raw: bytes) -> None:
            with self.lock:
                self.msgs.append((topic, msgtype, bytes(raw)))

        return cb

    def snapshot(self) -> list[tuple[str, str, bytes]]:
        with self.lock:
            return list(self.msgs)


def _stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _log_tail(path: Path, n: int = 8) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def replay_live(
    bag: str | os.PathLike | Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike,
    cfg: Config,
    out_dir: str | os.PathLike,
    *,
    speed: float = 1.0,
    seed: int | None = 0,
    device: str | None = None,
    task: str | None = None,
    progress: bool | None = None,
    startup_timeout_s: float = 300.0,
) -> ReplayResult:
    """Play ``bag`` to the real node over ROS 2 with a simulated clock (module docstring,
    "live"); record its outputs into ``out_dir/outputs`` and return them as a ReplayResult.

    The node runs in a child process (log: ``out_dir/node.log``); this process joins the ROS
    domain of the environment (``ROS_DOMAIN_ID``) with a private rclpy context.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    from kuavo_smolvla_ros.ros.node import import_message
    from kuavo_smolvla_ros.runners.eager import resolve_checkpoint

    if not (math.isfinite(speed) and speed > 0):
        raise ConfigError(f"--speed {speed}: must be > 0.")
    checkpoint = resolve_checkpoint(checkpoint)  # a clear error before the node starts
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = _replay_config(cfg, task)
    policy = dataclasses.replace(
        cfg.policy,
        checkpoint=str(checkpoint),
        seed=-1 if seed is None else int(seed),
        device=device or cfg.policy.device,
    )
    cfg = dataclasses.replace(cfg, policy=policy)
    outputs_bag = out_dir / "outputs"
    if outputs_bag.exists():
        import shutil

        shutil.rmtree(outputs_bag)

    with _open(bag) as reader:
        plan = plan_inputs(cfg, reader, task)
        node_cfg, pubs, notes = plan_live(cfg, reader, plan)
        warnings = list(reader.warnings) + plan.warnings
        params = write_node_params(node_cfg, out_dir / "live_node_params.yaml")
        log_path = out_dir / "node.log"
        out = node_cfg.outputs
        action_topic = resolve_topic(out.action_topic)
        chunk_topic = f"/{NODE_NAME}/chunk_timing"
        record = {
            resolve_topic(out.arm_topic): JOINT_STATE,
            resolve_topic(out.gripper_topic): out.gripper_msg_type,
            action_topic: JOINT_STATE,
            chunk_topic: "std_msgs/msg/Float64MultiArray",
            "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
        }

        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        node = executor = spin_thread = proc = None
        log_file = open(log_path, "w")  # noqa: SIM115 - closed in finally
        stats = _InputStats()
        refs: dict[str, tuple[list[float], list[np.ndarray]]] = {}
        damage: list[BagError] = []
        t_first = t_last = None
        try:
            node = rclpy.create_node(f"kuavo_smolvla_replay_{os.getpid()}", context=ctx)
            recorder = _Recorder(node, record)
            latched = QoSProfile(
                depth=1,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
            )
            from rosgraph_msgs.msg import Clock

            clock_pub = node.create_publisher(Clock, "/clock", 10)
            publishers = {
                topic: node.create_publisher(
                    import_message(p.msgtype),
                    p.out_topic,
                    latched if p.qos == "latched" else qos_profile_sensor_data,
                )
                for topic, p in pubs.items()
            }
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(node)
            spin_thread = threading.Thread(target=executor.spin, daemon=True)
            spin_thread.start()

            cmd = [sys.executable, "-m", "kuavo_smolvla_ros.ros.node", "--ros-args"]
            cmd += ["--params-file", str(params)]
            proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
            _wait_for_node(proc, node, publishers, clock_pub, record, log_path, startup_timeout_s)

            player = _Player(clock_pub, publishers, pubs, speed)
            t_first, t_last = player.play(
                reader, plan, stats, refs, damage, proc, log_path, progress
            )
            if t_last is not None:
                # Past the end in one jump: the node's 1 s diagnostics timer fires once more.
                end_ns = round(t_last * 1e9)
                player.clock(end_ns)
                player.clock(end_ns + int(END_MARGIN_S * 1e9) + CLOCK_PERIOD_NS)
                _wait_for_diagnostics(recorder, t_last, proc, timeout_s=15.0)
        finally:
            if proc is not None:
                rc = _stop_process(proc)
                if rc not in (0, -signal.SIGINT, 130):
                    warnings.append(f"the policy node exited with code {rc} (see {log_path})")
            if executor is not None:
                executor.shutdown(timeout_sec=2.0)
            if node is not None:
                node.destroy_node()
            with contextlib.suppress(Exception):
                rclpy.shutdown(context=ctx)
            if spin_thread is not None:
                spin_thread.join(timeout=5.0)
            log_file.close()
        skipped = dict(reader.skipped_by_topic)
        fmt = reader.format

    warnings += _decode_warnings(skipped)
    warnings += stats.warnings()
    warnings += _node_log_warnings(log_path)
    partial = False
    if damage:
        warnings.append(f"the bag ends early: {damage[0]}")
        partial = True
    if t_first is None:
        raise ReplayError("no message of the policy's inputs could be read; nothing to evaluate.")
    recorded = _decode_recorded(recorder.snapshot())
    _write_outputs_bag(recorded, outputs_bag)
    cmd_t, cmd_v, chunks, counters = _live_arrays(
        recorded, action_topic, chunk_topic, t_first, t_last, node_cfg.robot.dim
    )
    task_used = counters.pop("task", None)
    if len(cmd_t) == 0:
        raise ReplayError(
            "the node published no command during the replay, nothing to evaluate"
            f" ({'; '.join(warnings[-3:]) or 'see ' + str(log_path)})."
        )
    return ReplayResult(
        mode="live",
        bag=_bag_name(bag),
        bag_format=fmt,
        t_start=float(t_first),
        t_end=float(t_last),
        cmd_t=cmd_t,
        cmd=cmd_v,
        chunks=chunks,
        reference={k: _ref_arrays(v, cfg, k) for k, v in refs.items()},
        counters=counters,
        warnings=warnings,
        partial=partial,
        info={
            "seed": seed,
            "speed": speed,
            "latency": "live (the node's inference, in bag time)",
            "task": task_used,
            "notes": notes,
            "action_topic": action_topic,
            "outputs_bag": str(outputs_bag),
            "node_log": str(log_path),
            "node_params": str(params),
        },
    )


class _Player:
    """Plays a bag like ``ros2 bag play --clock``: ``/clock`` on a grid of ``CLOCK_PERIOD_NS``
    of bag time and the input messages in log-time order, paced at ``speed`` x real time."""

    def __init__(
        self,
        clock_pub: Any,
        publishers: dict[str, Any],
        pubs: dict[str, _Publication],
        speed: float,
    ) -> None:
        from rosgraph_msgs.msg import Clock

        self.clock_pub = clock_pub
        self.publishers = publishers
        self.pubs = pubs
        self.speed = speed
        self._clock_msg = Clock()
        self._wall0 = time.monotonic()
        self._t0_ns = 0

    def clock(self, ns: int) -> None:
        self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = ns // 10**9, ns % 10**9
        self.clock_pub.publish(self._clock_msg)

    def _pace(self, ns: int) -> None:
        delay = self._wall0 + (ns - self._t0_ns) / 1e9 / self.speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def play(
        self,
        reader: BagReader,
        plan: _Plan,
        stats: _InputStats,
        refs: dict[str, tuple[list[float], list[np.ndarray]]],
        damage: list[BagError],
        proc: subprocess.Popen,
        log_path: Path,
        progress: bool | None,
    ) -> tuple[float | None, float | None]:
        """Publish everything; returns the first and last message times (None: no message)."""
        t_first = t_last = None
        next_clock = 0
        bar = _progress(max(reader.duration_s, 1e-3), "s", progress, f"live replay x{self.speed:g}")
        try:
            for m, t in _messages(reader, plan.topics, damage.append, stats):
                t_ns = round(t * 1e9)
                if t_first is None:
                    t_first, self._t0_ns, self._wall0 = t, t_ns, time.monotonic()
                    next_clock = -(-t_ns // CLOCK_PERIOD_NS) * CLOCK_PERIOD_NS
                    self.clock(t_ns)
                while next_clock <= t_ns:
                    self._pace(next_clock)
                    self.clock(next_clock)
                    next_clock += CLOCK_PERIOD_NS
                self._pace(t_ns)
                stats.header(m.topic, m.msg)
                self._message(m, t, plan, stats, refs)
                t_last = t
                bar.update(max(0.0, (t_ns - self._t0_ns) / 1e9 - bar.n))
                if proc.poll() is not None:
                    raise ReplayError(
                        f"the policy node exited during the replay (code {proc.returncode}):"
                        f" {_log_tail(log_path)}"
                    )
        finally:
            bar.close()
        return t_first, t_last

    def _message(
        self,
        m: Any,
        t: float,
        plan: _Plan,
        stats: _InputStats,
        refs: dict[str, tuple[list[float], list[np.ndarray]]],
    ) -> None:
        for route in plan.routes[m.topic]:
            if route.kind == "reference":
                _feed_reference(route, m, t, stats, refs)
        pub = self.pubs.get(m.topic)
        if pub is None:
            return
        what = f"input {m.topic}"
        try:
            data = pub.encode(m)
        except (ObservationError, ValueError, AttributeError, TypeError) as exc:
            stats.fail(what, exc)  # what the node would have refused anyway
            return
        stats.good(what)
        self.publishers[m.topic].publish(data)


def _wait_for_node(
    proc: subprocess.Popen,
    node: Any,
    publishers: dict[str, Any],
    clock_pub: Any,
    record: dict[str, str],
    log_path: Path,
    timeout_s: float,
) -> None:
    """Until the node runs and every input and output is matched (the model loads first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            if proc.returncode == 2:  # the node's own "cannot start: <config/checkpoint error>"
                why = [ln for ln in _log_tail(log_path, 40).split(" | ") if "cannot start" in ln]
                raise ConfigError(
                    "the policy node refused to start: "
                    + (why[-1].split("cannot start: ", 1)[-1] if why else _log_tail(log_path))
                )
            raise ReplayError(
                f"the policy node did not start (exit code {proc.returncode}):"
                f" {_log_tail(log_path)}"
            )
        ready = clock_pub.get_subscription_count() > 0 and all(
            p.get_subscription_count() > 0 for p in publishers.values()
        )
        ready = ready and all(node.count_publishers(t) > 0 for t in record if t != "/diagnostics")
        if ready:
            time.sleep(0.2)  # let discovery settle on both sides
            return
        if time.monotonic() > deadline:
            raise ReplayError(
                f"the policy node did not come up within {timeout_s:.0f} s: {_log_tail(log_path)}"
            )
        time.sleep(0.1)


def _wait_for_diagnostics(
    recorder: _Recorder, t_end: float, proc: subprocess.Popen, timeout_s: float
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.serialization import deserialize_message

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        for topic, _, raw in reversed(recorder.snapshot()):
            if topic != "/diagnostics":
                continue
            msg = deserialize_message(raw, DiagnosticArray)
            if msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec >= t_end - 1e-6:
                time.sleep(0.2)
                return
            break
        time.sleep(0.05)


def _decode_recorded(raw: list[tuple[str, str, bytes]]) -> list[tuple[str, str, int, Any]]:
    """(topic, type, log time ns, rosbags message), sorted; log time = the message's stamp."""
    store = typestore_for("sqlite3")
    out = []
    for topic, msgtype, data in raw:
        try:
            msg = store.deserialize_cdr(data, msgtype)
        except Exception:  # a message we cannot read back is not worth the replay
            continue
        stamp = getattr(getattr(msg, "header", None), "stamp", None)
        if stamp is not None:
            t_ns = int(stamp.sec) * 10**9 + int(stamp.nanosec)
        elif msgtype.endswith("Float64MultiArray") and len(msg.data) >= 2:
            t_ns = round(float(msg.data[1]) * 1e9)
        else:
            continue
        out.append((topic, msgtype, t_ns, msg))
    out.sort(key=lambda x: x[2])
    return out


def _write_outputs_bag(recorded: list[tuple[str, str, int, Any]], path: Path) -> None:
    with BagWriter(path, "mcap", typestore=typestore_for("mcap")) as w:
        for topic, msgtype, t_ns, msg in recorded:
            w.write(topic, msgtype, t_ns, msg)


_COUNTERS = (
    "clamped",
    "holds",
    "speed_limited",
    "requests",
    "model_failures",
    "skipped_steps",
    "rejected_chunks",
)


def _live_arrays(
    recorded: list[tuple[str, str, int, Any]],
    action_topic: str,
    chunk_topic: str,
    t_start: float,
    t_end: float,
    dim: int,
) -> tuple[np.ndarray, np.ndarray, list[ChunkRecord], dict[str, Any]]:
    lo, hi = t_start - 1e-6, t_end + 1e-6
    cmd_t, cmd = [], []
    chunks: list[ChunkRecord] = []
    counters: dict[str, Any] = {}
    for topic, _, t_ns, msg in recorded:
        t = t_ns / 1e9
        if topic == action_topic:
            if lo <= t <= hi and len(msg.position) == dim:
                cmd_t.append(t)
                cmd.append(np.asarray(msg.position, dtype=np.float64))
        elif topic == chunk_topic:
            d = [float(x) for x in msg.data]
            if len(d) >= 4 and lo <= d[1] <= hi:
                chunks.append(ChunkRecord(d[0], d[1], int(d[2]), d[3]))
        elif topic == "/diagnostics":
            for st in msg.status:
                if st.name.endswith(": policy"):
                    values = {kv.key: kv.value for kv in st.values}
                    counters = {k: int(float(values[k])) for k in _COUNTERS if k in values}
                    if "task" in values:
                        counters["task"] = values["task"]
    order = np.argsort(cmd_t, kind="stable")
    cmd_arr = np.asarray(cmd, dtype=np.float64).reshape(len(cmd_t), dim)[order]
    chunks.sort(key=lambda c: c.t_arrival)
    return np.asarray(cmd_t)[order], cmd_arr, chunks, counters


def _node_log_warnings(path: Path, limit: int = 5) -> list[str]:
    """The node's own warnings (ignored inputs, model errors), at most ``limit``."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    # Stale-input holds are counted in the report (and the clock jump past the bag's end
    # makes one); the node's other warnings name bad inputs or model errors.
    picked = [
        ln
        for ln in lines
        if ("[WARN]" in ln or "[ERROR]" in ln) and "holding: stale inputs" not in ln
    ]
    out = [f"node: {ln.split(']: ', 1)[-1]}" for ln in picked[:limit]]
    if len(picked) > limit:
        out.append(f"node: {len(picked) - limit} more warnings in {path}")
    return out


# ---------------------------------------------------------------------------------------------
# Report.


def make_report(result: ReplayResult, cfg: Config, max_gap_s: float = metrics.DEFAULT_MAX_GAP_S):
    """The report dict (``metrics.build_report`` plus what was replayed and how)."""
    robot = cfg.robot
    scale = metrics.report_scale(robot.dim, robot.gripper_indices, cfg.outputs.gripper_scale)
    cmd = result.cmd * scale
    streams = [(t, v * scale[list(dims)], dims) for t, v, dims in result.reference.values()]
    reference = (
        metrics.reference_at(streams, result.cmd_t, robot.dim, max_gap_s) if streams else None
    )
    chunks = result.chunks
    rep = metrics.build_report(
        joint_names=robot.joint_names,
        gripper_indices=robot.gripper_indices,
        t_cmd=result.cmd_t,
        cmd=cmd,
        reference=reference,
        t_obs=np.array([c.t_obs for c in chunks]),
        t_arrival=np.array([c.t_arrival for c in chunks]),
        counters=result.counters,
    )
    inference = metrics.stats_ms(np.array([c.inference_s for c in chunks]))
    missing_ref = rep["mae"] is None or any(v is None for v in rep["mae"].values())
    head = {
        "mode": result.mode,
        "bag": result.bag,
        "bag_format": result.bag_format,
        "t_start": result.t_start,
        "duration_s": result.t_end - result.t_start,
        "partial": bool(result.partial or missing_ref),
        "units": {"arm": "deg", "gripper": f"0..{cfg.outputs.gripper_scale:g}"},
        "alignment": "recorded commands linearly interpolated at each command time;"
        f" not scored where the recorded stream has a gap > {max_gap_s:g} s",
        "latency_definition": "first command at or after a chunk's merge minus its"
        " observation time",
        **result.info,
    }
    rep["inference_ms"] = inference
    rep["warnings"] = list(result.warnings)
    return {**head, **rep}


def plot_trajectories(
    result: ReplayResult,
    cfg: Config,
    path: str | os.PathLike,
    extra: Sequence[tuple[str, ReplayResult]] = (),
    title: str | None = None,
) -> Path:
    """``trajectories.png``: recorded vs commanded per joint over time, chunk switches marked
    (vertical lines at each chunk's merge time). ``extra``: more command streams to overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    robot = cfg.robot
    scale = metrics.report_scale(robot.dim, robot.gripper_indices, cfg.outputs.gripper_scale)
    t0 = result.t_start
    ncol = 4
    nrow = math.ceil(robot.dim / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.4 * nrow), sharex=True)
    axes = np.atleast_1d(axes).reshape(-1)

    def thin(t: np.ndarray, v: np.ndarray, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
        step = max(1, len(t) // n)
        return t[::step], v[::step]

    ref_by_dim: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for t, v, dims in result.reference.values():
        for k, d in enumerate(dims):
            ref_by_dim[d] = (np.asarray(t), np.asarray(v)[:, k] * scale[d])
    switches = [c.t_arrival - t0 for c in result.chunks]
    for d in range(robot.dim):
        ax = axes[d]
        for s in switches:
            ax.axvline(s, color="tab:red", alpha=0.25, lw=0.7)
        if d in ref_by_dim:
            t, v = thin(*ref_by_dim[d])
            ax.plot(t - t0, v, color="black", lw=1.0, label="recorded command")
        t, v = thin(result.cmd_t, result.cmd[:, d] * scale[d])
        ax.plot(t - t0, v, color="tab:blue", lw=1.0, label=f"commanded ({result.mode})")
        for k, (label, other) in enumerate(extra):
            t, v = thin(other.cmd_t, other.cmd[:, d] * scale[d])
            ax.plot(t - t0, v, color=f"C{k + 2}", lw=0.9, label=label)
        unit = "0..100" if d in robot.gripper_indices else "deg"
        ax.set_title(f"{robot.joint_names[d]} [{unit}]", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[robot.dim :]:
        ax.axis("off")
    for ax in axes[-ncol:]:
        ax.set_xlabel("bag time (s)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="tab:red", alpha=0.5, lw=0.7))
    labels.append("chunk switch")
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(labels))
    fig.suptitle(
        title or f"{Path(result.bag).name}: {result.mode} replay", fontsize=11, x=0.02, ha="left"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def write_report(
    report: dict[str, Any],
    result: ReplayResult,
    cfg: Config,
    out_dir: str | os.PathLike,
    extra: Sequence[tuple[str, ReplayResult]] = (),
    title: str | None = None,
) -> tuple[Path, Path | None]:
    """``report.json`` and ``trajectories.png`` in ``out_dir``; returns their paths (the plot
    is None if matplotlib failed, which is a warning, not an error). ``extra`` and ``title``
    go to ``plot_trajectories``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot: Path | None = None
    try:
        plot = plot_trajectories(result, cfg, out / "trajectories.png", extra, title)
    except Exception as exc:  # a plot must never cost the numbers
        report.setdefault("warnings", []).append(f"no plot: {type(exc).__name__}: {exc}")
    report["plot"] = str(plot) if plot else None
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=_json_default, allow_nan=False))
    return path, plot


def print_report(report: dict[str, Any], cfg: Config, file: Any = None) -> None:
    file = file or sys.stdout
    grip = [cfg.robot.joint_names[i] for i in cfg.robot.gripper_indices]
    head = (
        f"{report['mode']} replay of {report['bag']} ({report['bag_format']},"
        f" {report['duration_s']:.1f} s), latency: {report.get('latency', '-')}"
    )
    print(head, file=file)
    print(metrics.format_table(report, grip), file=file)


# ---------------------------------------------------------------------------------------------
# CLI.


def _parse_latency(text: str) -> Latency:
    if text == "measured":
        return "measured"
    try:
        return float(text) / 1e3
    except ValueError:
        pass
    path = Path(text)
    if path.is_dir():
        path = path / "report.json"
    try:
        rep = json.loads(path.read_text())
        lat = [c["t_arrival"] - c["t_obs"] for c in rep["chunks"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"--latency-ms {text!r}: not a number, 'measured', or a replay report.json with"
            f" chunks ({type(exc).__name__}: {exc})."
        ) from None
    if not lat:
        raise ConfigError(f"--latency-ms {text!r}: that report has no chunks.")
    return lat


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Replay a rosbag through the SmolVLA policy (offline: the node's core in"
        " simulated time; live: the node over ROS 2) and report how its commands compare with"
        " the recorded ones.",
    )
    p.add_argument("bag", nargs="+", help="ROS 2 bag dir / .db3 / .mcap, or ROS 1 .bag file(s)")
    p.add_argument("--checkpoint", required=True, help="SmolVLA checkpoint dir or hub id")
    p.add_argument(
        "--config",
        help="package YAML (default: config/kuavo_smolvla.yaml; for ROS 1 .bag input"
        " config/kuavo_ros1_stock.yaml)",
    )
    p.add_argument(
        "--mode",
        choices=("offline", "live"),
        default="offline",
        help="offline (default): the node's core in simulated bag time, no ROS; live: the"
        " ROS 2 node in a child process, the bag played with /clock",
    )
    p.add_argument("--speed", type=float, default=1.0, help="live: playback speed factor")
    p.add_argument("--out", help="output directory (default: ./replay_<bag>_<mode>)")
    p.add_argument(
        "--seed", type=int, default=None, help="noise seed (default: policy.seed, or 0 if unset)"
    )
    p.add_argument(
        "--latency-ms",
        default=str(DEFAULT_LATENCY_S * 1e3),
        help="offline: simulated inference latency: milliseconds (default 100), 'measured',"
        " or an earlier replay's report.json / output dir (its per-chunk latencies)",
    )
    p.add_argument(
        "--timeline",
        metavar="LIVE_DIR",
        help="offline: reproduce a live replay (its --out): its control ticks and per-chunk"
        " latencies instead of the grid and --latency-ms",
    )
    p.add_argument("--task", help="task instruction (default: the bag's task topic, policy.task)")
    p.add_argument("--device", help="cpu, cuda, ... (default: policy.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kuavo_smolvla_ros.core.dims import DimensionError
    from kuavo_smolvla_ros.runners.eager import CheckpointError

    def err(msg: str) -> None:
        print(f"{PROG}: {msg}", file=sys.stderr)

    bag: Any = args.bag if len(args.bag) > 1 else args.bag[0]
    try:
        # The bag first: an unreadable bag or absent inputs fail before the model loads.
        with _open(bag) as reader:
            default = "kuavo_ros1_stock.yaml" if reader.ros1 else "kuavo_smolvla.yaml"
            cfg_path = Path(args.config) if args.config else default_config_path(default)
            cfg = load_config(cfg_path)
            plan_inputs(_replay_config(cfg, args.task), reader, args.task)
        seed = args.seed if args.seed is not None else max(cfg.policy.seed, 0)
        latency = _parse_latency(args.latency_ms)
        ticks = None
        if args.timeline:
            ticks, latency = timeline_from_dir(args.timeline)
        name = Path(args.bag[0]).name.split(".")[0] or "bag"
        out = Path(args.out or f"replay_{name}_{args.mode}")
        progress = False if args.no_progress else None
        device = args.device or cfg.policy.device
        if args.mode == "offline":
            from kuavo_smolvla_ros.runners.eager import load_policy

            if cfg.policy.torch_threads > 0:
                import torch

                torch.set_num_threads(cfg.policy.torch_threads)
            runner = load_policy(args.checkpoint, device=device, config=cfg)
            result = replay_offline(
                bag,
                runner,
                cfg,
                seed=seed,
                latency_s=latency,
                task=args.task,
                progress=progress,
                tick_times=ticks,
            )
        else:
            result = replay_live(
                bag,
                args.checkpoint,
                cfg,
                out,
                speed=args.speed,
                seed=seed,
                device=device,
                task=args.task,
                progress=progress,
            )
        result.info.update({"checkpoint": str(args.checkpoint), "config": str(cfg_path)})
        report = make_report(result, cfg)
        report_path, plot = write_report(report, result, cfg, out)
    except (ReplayError, BagError) as exc:
        err(str(exc))
        return EXIT_NOTHING
    except (ConfigError, CheckpointError, DimensionError, OSError) as exc:
        err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    for n in report.get("notes") or []:
        print(f"note: {n}", file=sys.stderr)
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print_report(report, cfg)
    print(f"report: {report_path}")
    if plot:
        print(f"plot:   {plot}")
    if report["partial"]:
        print("partial report: see the warnings above", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
