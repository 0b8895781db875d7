"""Live replay: the ROS 2 node itself, fed a bag over ROS 2 with a simulated clock.

The node (``python -m kuavo_smolvla_ros.ros.node``, ``use_sim_time``, ``start_enabled``, not a
dry run) runs in a child process; the bag is played like ``ros2 bag play --clock``: ``/clock``
on a 5 ms grid of bag time and the node's input topics in log-time order, at ``speed``. The
node's outputs (arm and gripper commands, ``~/action``, ``~/chunk_timing``, ``/diagnostics``)
are recorded into ``DIR/outputs`` (a ROS 2 mcap bag, log time = the message's own stamp, i.e.
bag time) and the result is computed from them. Live mode publishes on the configured topic
names, so the node, the player and the recorder run on a private, automatically chosen
``ROS_DOMAIN_ID`` with localhost-only discovery (``replay/isolation.py``), whatever the shell has.

Messages the node cannot subscribe to as recorded are converted first, so that no kuavo_msgs
install is needed: a state source whose type is not the configured one or not installed (stock
ROS 1 ``/sensors_data_raw`` and ``/leju_claw_state``) is published as ``sensor_msgs/JointState``
on the default config's topic (``/joint_states``, ``/gripper/state``) with the joint names and
raw units the config maps (so ``joint_q[12:26]`` becomes the 14 ``zarm_*`` positions in rad,
the claw stays 0..100), and the node runs with that converted input section; ROS 1 camera and
task messages are re-encoded as their ROS 2 equivalents; a gripper command type that is not
installed (``kuavo_msgs/lejuClawCommand``) is published as ``sensor_msgs/JointState`` on
``/gripper/command``. Everything else (robot, scheduler, safety, policy) is the config's.
``DIR/live_node_params.yaml`` holds the node's exact parameters. Counters (clamped, holds, ...)
are the node's last ``/diagnostics`` values, published after the clock passes the bag's end (the
one tick at that moment may add one hold).

rclpy is imported inside ``replay_live`` only: the offline replay and the report need no ROS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.bag import BagError, BagReader, BagWriter, open_bag, typestore_for
from kuavo_smolvla_ros.core.config import NODE_NAME, Config, ConfigError, SourceConfig, to_dict
from kuavo_smolvla_ros.core.observation import SourceExtractor
from kuavo_smolvla_ros.replay.isolation import (
    choose_domain_id,
    claim_out_dir,
    isolation_line,
    private_ros_env,
    scoped_env,
)
from kuavo_smolvla_ros.replay.plan import (
    JOINT_STATE,
    MESSAGE_ERRORS,
    ChunkRecord,
    InputStats,
    Plan,
    Refs,
    ReplayError,
    ReplayResult,
    bag_name,
    decode_warnings,
    feed_reference,
    message_stream,
    plan_inputs,
    progress_bar,
    ref_arrays,
    replay_config,
    resolve_topic,
)
from kuavo_smolvla_ros.ros.child import node_command, stop_node
from kuavo_smolvla_ros.ros.messages import import_message, is_installed, normalize_type

__all__ = ["plan_live", "replay_live", "write_node_params"]

CLOCK_PERIOD_NS = 5_000_000  # /clock every 5 ms of bag time (200 Hz)
END_MARGIN_S = 1.0  # the clock jumps this far past the bag's end to get a last /diagnostics


@dataclass
class _Publication:
    """How one bag topic is played to the node."""

    out_topic: str
    msgtype: str  # ROS 2 type published
    encode: Callable[[Any], bytes | None]  # BagMessage -> CDR bytes
    qos: str  # "sensor" | "latched"


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
    cfg: Config, reader: BagReader, plan: Plan
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
        bag_type = normalize_type(have[src.topic][0])
        if (
            not reader.ros1
            and bag_type == normalize_type(src.msg_type)
            and is_installed(src.msg_type)
        ):
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
        if reader.ros1 or normalize_type(have[topic][0]) != typ:

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
    if not is_installed(outputs.gripper_msg_type):
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

    The node runs in a child process (log: ``out_dir/node.log``); it and this process's private
    rclpy context share a private domain id chosen here, discovery localhost only.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    from kuavo_smolvla_ros.runners.eager import resolve_checkpoint

    if not (math.isfinite(speed) and speed > 0):
        raise ConfigError(f"--speed {speed}: must be > 0.")
    checkpoint = resolve_checkpoint(checkpoint, cfg.policy.revision)  # clear error before the node
    out_dir = claim_out_dir(out_dir)  # refuses a directory holding files replay did not write
    cfg = replay_config(cfg, task)
    policy = dataclasses.replace(
        cfg.policy,
        checkpoint=str(checkpoint),
        seed=-1 if seed is None else int(seed),
        device=device or cfg.policy.device,
    )
    cfg = dataclasses.replace(cfg, policy=policy)
    outputs_bag = out_dir / "outputs"
    if outputs_bag.exists():  # an earlier replay's own recording (claim_out_dir checked)
        import shutil

        shutil.rmtree(outputs_bag)

    with open_bag(bag) as reader:
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

        # Never on the shell's ROS network: a private domain, localhost discovery (isolation.py).
        domain_id = choose_domain_id()
        ros_env = private_ros_env(domain_id)
        print(isolation_line(domain_id), file=sys.stderr, flush=True)
        ctx = rclpy.Context()
        with scoped_env(ros_env):
            rclpy.init(context=ctx, domain_id=domain_id)
        node = executor = spin_thread = proc = None
        log_file = open(log_path, "w")  # noqa: SIM115 - closed in finally
        stats = InputStats()
        refs: Refs = {}
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

            cmd = node_command("--params-file", str(params))
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=ros_env)
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
                rc = stop_node(proc)
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

    warnings += decode_warnings(skipped)
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
        bag=bag_name(bag),
        bag_format=fmt,
        t_start=float(t_first),
        t_end=float(t_last),
        cmd_t=cmd_t,
        cmd=cmd_v,
        chunks=chunks,
        reference={k: ref_arrays(v, cfg, k) for k, v in refs.items()},
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
            "ros_domain_id": domain_id,
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
        plan: Plan,
        stats: InputStats,
        refs: Refs,
        damage: list[BagError],
        proc: subprocess.Popen,
        log_path: Path,
        progress: bool | None,
    ) -> tuple[float | None, float | None]:
        """Publish everything; returns the first and last message times (None: no message)."""
        t_first = t_last = None
        next_clock = 0
        bar = progress_bar(
            max(reader.duration_s, 1e-3), "s", progress, f"live replay x{self.speed:g}"
        )
        try:
            for m, t in message_stream(reader, plan.topics, damage.append, stats):
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
        plan: Plan,
        stats: InputStats,
        refs: Refs,
    ) -> None:
        for route in plan.routes[m.topic]:
            if route.kind == "reference":
                feed_reference(route, m, t, stats, refs)
        pub = self.pubs.get(m.topic)
        if pub is None:
            return
        what = f"input {m.topic}"
        try:
            data = pub.encode(m)
        except MESSAGE_ERRORS as exc:
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
