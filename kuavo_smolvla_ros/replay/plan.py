"""What a replay reads and returns: the bag's topics mapped to the node's inputs, the message
stream in log-time order, and the result types both modes share.

Topics, fields, joints and cameras come from the same config as the node. A policy input that is
absent or undecodable is a ``ReplayError`` (nothing can be evaluated); an absent recorded command
only costs the error metrics (a warning). Log time never goes back: a message out of order is
counted and fed at the previous time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kuavo_smolvla_ros.bag import BagError, BagReader
from kuavo_smolvla_ros.core.config import (
    NODE_NAME,
    Config,
    SourceConfig,
    command_sources,
    default_config_path,
)
from kuavo_smolvla_ros.core.observation import ObservationError, SourceExtractor
from kuavo_smolvla_ros.ros.messages import header_time

__all__ = [
    "ChunkRecord",
    "Plan",
    "ReplayError",
    "ReplayResult",
    "plan_inputs",
    "reference_sources",
    "resolve_topic",
]

TIME_EPS_S = 1e-6  # equal times: float seconds of epoch times resolve ~0.24 us
JOINT_STATE = "sensor_msgs/msg/JointState"
# A recorded message that cannot be turned into values: skipped and counted, never a traceback.
MESSAGE_ERRORS = (ObservationError, ValueError, AttributeError, TypeError)
Refs = dict[str, tuple[list[float], list[np.ndarray]]]  # recorded commands: label -> (t, values)


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
class Route:
    kind: str  # "state", "camera", "task", "reference"
    name: str  # arm / gripper, camera name, "task", reference label
    topic: str
    extractor: SourceExtractor | None = None
    transport: str = ""


@dataclass
class Plan:
    routes: dict[str, list[Route]]
    warnings: list[str]
    task_in_bag: bool

    @property
    def topics(self) -> list[str]:
        return sorted(self.routes)


def _bag_listing(reader: BagReader) -> str:
    return ", ".join(f"{t} [{m}]" for t, (m, _) in reader.topics.items()) or "no topics"


def plan_inputs(cfg: Config, reader: BagReader, task: str | None = None) -> Plan:
    """Map the bag's topics to the config's inputs and recorded commands; check them.

    Raises ReplayError when an input the policy needs is absent or undecodable (nothing can be
    evaluated); absent or undecodable recorded commands only cost the error metrics (warning).
    """
    inp = cfg.inputs
    have = reader.topics
    warnings: list[str] = []
    routes: dict[str, list[Route]] = {}
    required: list[tuple[str, str]] = []  # (topic, what)
    for label in ("arm", "gripper"):
        src: SourceConfig = getattr(inp, label)
        routes.setdefault(src.topic, []).append(
            Route("state", label, src.topic, SourceExtractor(src, label))
        )
        required.append((src.topic, f"inputs.{label}"))
    for name, topic, transport in zip(
        inp.cameras.names, inp.cameras.topics, inp.cameras.transports
    ):
        routes.setdefault(topic, []).append(Route("camera", name, topic, transport=transport))
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
        routes.setdefault(task_topic, []).append(Route("task", "task", task_topic))
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
            Route("reference", label, src.topic, SourceExtractor(src, label))
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
    return Plan(routes, warnings, task_in_bag)


class InputStats:
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
        t = header_time(msg)
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


def message_stream(
    reader: BagReader,
    topics: Sequence[str],
    on_damage: Callable[[BagError], None],
    stats: InputStats,
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


def progress_bar(total: float, unit: str, enabled: bool | None, desc: str) -> Any:
    """A tqdm bar; ``enabled`` None: on for a terminal, off in logs and pipes."""
    from tqdm import tqdm

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


def replay_config(cfg: Config, task: str | None) -> Config:
    """The config a replay runs: enabled from the start, publishing, ``task`` if given."""
    policy = cfg.policy if task is None else dataclasses.replace(cfg.policy, task=task)
    return dataclasses.replace(cfg, policy=policy, start_enabled=True, dry_run=False)


def feed_reference(route: Route, m: Any, t: float, stats: InputStats, refs: Refs) -> None:
    """One recorded command into ``refs`` (both modes score against these)."""
    what = f"recorded {route.name} on {route.topic}"
    try:
        values = route.extractor(m.msg)
    except MESSAGE_ERRORS as exc:
        stats.fail(what, exc)
        return
    stats.good(what)
    ts, vs = refs.setdefault(route.name, ([], []))
    ts.append(t)
    vs.append(values)


def ref_arrays(
    v: tuple[list[float], list[np.ndarray]], cfg: Config, label: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``(t, values (N, len(dims)), dims)`` of one recorded stream, for ``ReplayResult``."""
    dims = tuple(reference_sources(cfg)[label].dims)
    return np.asarray(v[0]), np.asarray(v[1]).reshape(len(v[0]), len(dims)), dims


def decode_warnings(skipped_by_topic: dict[str, int]) -> list[str]:
    return [
        f"{topic}: {n} messages could not be decoded (corrupt data), skipped"
        for topic, n in skipped_by_topic.items()
    ]


def bag_name(bag: Any) -> str:
    if isinstance(bag, (str, os.PathLike)):
        return str(bag)
    return ", ".join(str(b) for b in bag)
