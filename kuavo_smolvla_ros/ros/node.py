"""The ROS 2 policy node: a thin shell around ``PolicyController`` (controller.py).

It only wires parameters, topics, timers and threads: every decision (what to command, when to
ask the model, how to merge chunks, what is safe) is made by the pure core.

Threads. Every ROS callback is short (parse a joint message, hand a camera message over, tick,
answer a service), so one ``SingleThreadedExecutor`` runs them all: measured here, rclpy's
``MultiThreadedExecutor`` dropped the 100 Hz timer to 14-60 Hz under 300 input messages/s,
while the single-threaded one held 100 Hz. Nothing slow ever runs on it:
- ``frame-decoder`` thread: JPEG/raw decoding of the newest frame per camera (frames.py);
- ``smolvla-inference`` thread: the model; it hands each chunk back with one call, so
  ``~/enable`` and ``~/reset`` never wait behind inference.

Safety (docs/safety.md). Every command leaves through one path, ``_publish``, and only as the
controller's gate admitted it: inside the limits and within the speed limit of the last
published command. The node's own faults (a request unanswered within ``policy.timeout_s``, an
inference process that exited, a crashed decoder or worker thread) hold the last command and
ask for nothing new until ``~/reset`` or ``~/enable``; ``/diagnostics`` says OK only while
commands follow a live chunk. The control clock is monotonic (the ROS clock in sim time), so a
wall-clock step cannot make stale inputs look fresh.

Run it with ``ros2 launch kuavo_smolvla_ros policy.launch.py``, ``ros2 run kuavo_smolvla_ros
policy_node --ros-args --params-file config/kuavo_smolvla.yaml``, or from a venv without a ROS
install: ``policy_node --ros-args -p checkpoint:=DIR -p device:=cpu``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import signal
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import SetBool, Trigger

from kuavo_smolvla_ros.core.config import (
    NODE_NAME,
    Config,
    ConfigError,
)
from kuavo_smolvla_ros.core.controller import (
    InferenceRequest,
    PolicyController,
    Tick,
    split_command,
)
from kuavo_smolvla_ros.core.frames import FrameDecoder
from kuavo_smolvla_ros.core.observation import ObservationError, SourceExtractor, short_text
from kuavo_smolvla_ros.ros.messages import import_message
from kuavo_smolvla_ros.ros.parameters import ConfigParameters
from kuavo_smolvla_ros.runners.base import Runner, run_request
from kuavo_smolvla_ros.runners.factory import make_runner

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
# ~/chunk_timing: one message per accepted chunk (replay and benchmarks read latencies from it).
CHUNK_TIMING_FIELDS = ("t_obs", "t_arrival", "skipped_steps", "inference_s")
TICK_LOG_ENV = "KUAVO_SMOLVLA_TICK_LOG"


class PolicyNode(Node):
    """Subscribes to Kuavo's joints and cameras, publishes safe 16-D commands at a fixed rate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # Parameters (descriptors, read-only flags, runtime validation): ros/parameters.py.
        self.params = ConfigParameters(self)
        self.cfg = self.params.config
        self.runner = self._load_runner()
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self.timeout_s = self._inference_timeout()
        self.controller = PolicyController(self._with_measured_latency(self.cfg), self.timeout_s)
        self._requests: queue.Queue[InferenceRequest | None] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._tick_times: list[float] = []
        # Benchmarks (benchmarks/node_timing.py, soak.py): KUAVO_SMOLVLA_TICK_LOG=FILE appends
        # one "start end" line (time.monotonic() s) per control tick, flushed once a second.
        self._tick_log_path = os.environ.get(TICK_LOG_ENV, "")
        self._tick_log: list[tuple[float, float]] = []
        self._last_status_log = 0.0
        self._dry_run = self.cfg.dry_run

        self._warned: dict[str, tuple[float, int]] = {}
        self._timeouts_seen = 0
        self._clock_jumps_seen = 0
        self._killed_pid: int | None = None  # the child the watchdog killed (maybe not reaped)
        self._stamp_offset: int | None = None
        self._dead_child_seen: int | None = None  # pid of an exited child already reported
        self._restart_child = threading.Event()
        self._codec_warnings_seen = 0
        inp = self.cfg.inputs
        self._decoder = FrameDecoder(
            self._on_frame,
            self._on_bad_frame,
            on_crash=lambda exc: self._thread_fault("frame decoder", exc),
            max_bytes=inp.max_image_bytes,
            max_side=inp.max_image_side,
            quiet_codec=True,
        )
        self._make_publishers()
        self._make_subscriptions()
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.params.watch(self._on_parameters_changed)
        self._worker = threading.Thread(target=self._work, name="smolvla-inference", daemon=True)
        self._worker.start()
        self.create_timer(1.0 / self.cfg.outputs.publish_rate_hz, self._on_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"ready: {self.cfg.robot.name}, {self.cfg.robot.dim}-D, chunk {self.runner.chunk_size}"
            f" at {self.cfg.scheduler.action_fps:g} fps, commands at"
            f" {self.cfg.outputs.publish_rate_hz:g} Hz, merge {self.cfg.scheduler.merge_mode},"
            f" {'dry run, ' if self._dry_run else ''}"
            f"{'enabled' if self.controller.enabled else 'disabled: call ~/enable'}"
        )

    # -- parameters ---------------------------------------------------------------------------
    def _on_parameters_changed(self, changes: dict[str, Any]) -> None:
        """Runtime changes, already validated by ``ConfigParameters`` (aliases resolved)."""
        for name, value in changes.items():
            if name == "policy.task":
                self._set_task(str(value), "parameter")
            elif name == "dry_run":
                self._dry_run = bool(value)

    def _with_measured_latency(self, cfg: Config) -> Config:
        """Start the latency estimate from the warm-up chunk's measured time (12 ms on an H100
        fast path, seconds on a CPU) instead of a guess; ``latency_init_s`` is the fallback."""
        measured = float(self.runner.last_inference_s or 0.0)
        if measured <= 0.0:
            return cfg
        sched = dataclasses.replace(cfg.scheduler, latency_init_s=measured)
        return dataclasses.replace(cfg, scheduler=sched)

    def _inference_timeout(self) -> float:
        """``policy.timeout_s``, or max(2 s, 10x the warm-up chunk): finite whatever happens."""
        configured = float(self.cfg.policy.timeout_s)
        if configured > 0:
            return configured
        return max(2.0, 10.0 * float(self.runner.last_inference_s or 0.0))

    def _load_runner(self) -> Runner:
        pol = self.cfg.policy
        self.get_logger().info(f"loading {pol.checkpoint} on {pol.device} ({pol.backend}) ...")
        t0 = time.perf_counter()
        runner = make_runner(self.cfg)  # process backend: the model in a child process
        self.get_logger().info(
            f"loaded in {time.perf_counter() - t0:.1f} s; one chunk takes"
            f" {1e3 * runner.last_inference_s:.0f} ms here"
        )
        return runner

    # -- topics -------------------------------------------------------------------------------
    def _make_publishers(self) -> None:
        out = self.cfg.outputs
        self._arm_pub = self.create_publisher(JointState, out.arm_topic, COMMAND_QOS)
        self._gripper_type = import_message(out.gripper_msg_type)
        self._gripper_pub = self.create_publisher(
            self._gripper_type, out.gripper_topic, COMMAND_QOS
        )
        self._action_pub = self.create_publisher(JointState, out.action_topic, COMMAND_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._chunk_pub = self.create_publisher(Float64MultiArray, "~/chunk_timing", COMMAND_QOS)

    def _make_subscriptions(self) -> None:
        inp = self.cfg.inputs
        for label in ("arm", "gripper"):
            src = getattr(inp, label)
            extractor = SourceExtractor(src, label)
            self.create_subscription(
                import_message(src.msg_type),
                src.topic,
                lambda msg, lb=label, ex=extractor: self._on_state(lb, ex, msg),
                qos_profile_sensor_data,
            )
        cams = inp.cameras
        for name, topic, transport in zip(cams.names, cams.topics, cams.transports):
            self.create_subscription(
                CompressedImage if transport == "compressed" else Image,
                topic,
                lambda msg, n=name, tr=transport: self._on_image(n, tr, msg),
                qos_profile_sensor_data,
            )
        self.create_subscription(String, inp.task_topic, self._on_task, LATCHED_QOS)

    def now_s(self) -> float:
        """The control clock in seconds: the ROS clock in sim time, else ``time.monotonic()``
        (a wall-clock step must not make stale inputs look fresh or stall the speed limit)."""
        if self._sim_time:
            return self.get_clock().now().nanoseconds * 1e-9
        return time.monotonic()

    def _bad_input(self, what: str, exc: Exception) -> None:
        """Log a bad message at most every 2 s per input (rclpy throttles per call site, which
        would let one broken topic hide another)."""
        now = time.monotonic()
        last, suppressed = self._warned.get(what, (-1e9, 0))
        if now - last < 2.0:
            self._warned[what] = (last, suppressed + 1)
            return
        self._warned[what] = (now, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        self.get_logger().warning(f"ignored {what}: {exc}{more}")

    def _on_state(self, label: str, extractor: SourceExtractor, msg: Any) -> None:
        try:
            self.controller.buffer.update_state(label, extractor(msg), self.now_s())
        except (ObservationError, ValueError) as exc:
            self._bad_input(f"{label} state on {extractor.src.topic}", exc)

    def _on_image(self, camera: str, transport: str, msg: Any) -> None:
        self._decoder.submit(camera, transport, msg, self.now_s())

    def _on_frame(self, camera: str, rgb: np.ndarray, t: float) -> None:
        self.controller.buffer.update_image(camera, rgb, t)

    def _on_bad_frame(self, camera: str, exc: Exception) -> None:
        self._bad_input(f"image from camera {camera}", exc)

    def _on_task(self, msg: String) -> None:
        self._set_task(msg.data, "topic")

    def _set_task(self, text: str, source: str) -> None:
        if self.controller.buffer.set_task(text):
            limit = self.cfg.inputs.max_task_chars
            self._bad_input(
                f"task from the {source}",
                ValueError(f"{len(text)} characters, cut to inputs.max_task_chars={limit}"),
            )
        self.get_logger().info(f"task ({source}): {short_text(text)!r}")

    def _thread_fault(self, where: str, exc: BaseException) -> None:
        """An unexpected exception in a worker thread: a fault with its message, never a
        silently dead thread."""
        why = f"{where} crashed: {type(exc).__name__}: {exc}"
        self.controller.set_fault(why)
        self.get_logger().error(f"{why}; holding until ~/reset or ~/enable")

    # -- control ------------------------------------------------------------------------------
    def _on_tick(self) -> None:
        t_start = time.monotonic()
        t = self.now_s()
        stamp = self._stamp(t)
        tick = self.controller.tick(t, publish=not self._dry_run)
        if tick.request is not None:
            try:
                self._requests.put_nowait(tick.request)
            except queue.Full:  # impossible: the controller keeps one request outstanding
                self.controller.on_failure(tick.request, "inference queue full")
        if tick.command is not None:
            self._publish(tick, stamp)
        if self.controller.counters.timeouts > self._timeouts_seen:
            self._on_timeout()
        if self.controller.counters.clock_jumps > self._clock_jumps_seen:
            self._clock_jumps_seen = self.controller.counters.clock_jumps
            self.get_logger().warning(
                f"the clock went back to {t:.3f} s (sim time: a bag loop or a restart): inputs"
                " and chunk dropped, holding the last command until fresh inputs and a new chunk"
            )
        if tick.stale:
            self.get_logger().warning(
                f"holding: stale inputs {', '.join(tick.stale)}", throttle_duration_sec=2.0
            )
        self._tick_times.append(time.monotonic())
        if self._tick_log_path:
            self._tick_log.append((t_start, self._tick_times[-1]))

    def _flush_tick_log(self) -> None:
        if self._tick_log_path and self._tick_log:
            rows, self._tick_log = self._tick_log, []
            with open(self._tick_log_path, "a") as f:
                f.writelines(f"{a:.6f} {b:.6f}\n" for a, b in rows)

    def _stamp(self, t: float) -> Time:
        """The header stamp of the commands of the tick at control time ``t``: the ROS clock
        (sim time: ``t`` itself), offset from the monotonic control clock by a constant, so
        that stamp differences are exactly the control ``dt`` the speed limit used (reading
        the two clocks separately differs by the preemption between the reads). The offset
        follows a wall-clock step larger than 0.1 s."""
        clock = self.get_clock()
        t_ns = round(t * 1e9)
        if not self._sim_time:
            offset = clock.now().nanoseconds - t_ns
            if self._stamp_offset is None or abs(offset - self._stamp_offset) > 100_000_000:
                self._stamp_offset = offset
            t_ns += self._stamp_offset
        return Time(nanoseconds=t_ns, clock_type=clock.clock_type)

    def _on_timeout(self) -> None:
        """The watchdog fired: free the worker from a hung child (SIGSTOP, deadlock) by killing
        it; the fault already holds, and ~/reset or ~/enable starts a new child."""
        self._timeouts_seen = self.controller.counters.timeouts
        self.get_logger().error(
            f"{self.controller.fault}; holding until ~/reset or ~/enable"
            " (the inference process is stopped)"
        )
        kill = getattr(self.runner, "kill", None)
        if kill is not None:
            self._killed_pid = getattr(self.runner, "pid", None)
            kill()

    def _publish(self, tick: Tick, stamp: Time) -> None:
        """The single publish path: ``~/action`` always, the robot topics only with what the
        controller's gate admitted (``tick.published``; never in a dry run)."""
        command = tick.command
        stamp = stamp.to_msg()
        names = list(self.cfg.robot.joint_names)
        action = JointState(name=names, position=command.tolist())
        action.header.stamp = stamp
        self._action_pub.publish(action)
        if not tick.published:
            return
        arm, gripper = split_command(command, self.cfg)
        out = self.cfg.outputs
        arm_msg = JointState(name=list(out.arm_names), position=arm.tolist())
        arm_msg.header.stamp = stamp
        self._arm_pub.publish(arm_msg)
        self._gripper_pub.publish(self._gripper_message(gripper, stamp))

    def _gripper_message(self, values: np.ndarray, stamp: Any) -> Any:
        """The gripper command in the configured type: ``field`` gets the values, a ``name``
        list beside it the names (JointState, kuavo_msgs/lejuClawCommand's ``data``...)."""
        out = self.cfg.outputs
        msg = self._gripper_type()
        *parents, leaf = out.gripper_field.split(".")
        holder = msg
        for p in parents:
            holder = getattr(holder, p)
        setattr(holder, leaf, [float(v) for v in values])
        if hasattr(holder, "name"):
            holder.name = list(out.gripper_names)
        if hasattr(msg, "header"):
            msg.header.stamp = stamp
        return msg

    def infer(self, req: InferenceRequest) -> np.ndarray:
        """Run the model on one request: the node's only model call (benchmarks reuse it)."""
        return run_request(self.runner, req, self.cfg.policy.seed)

    def _work(self) -> None:
        """Inference worker: one request at a time; never touches ROS objects but the clock.

        Anything unexpected becomes a fault with its message; the thread carries on.
        """
        while not self._stop.is_set():
            try:
                if not self._serve_one():
                    break
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._thread_fault("inference worker", exc)

    def _check_child(self) -> None:
        """A model process that exited, even between requests, is a fault with its exit code
        (never a silent restart); ``~/reset`` or ``~/enable`` starts a new one."""
        alive = getattr(self.runner, "alive", None)
        if alive is None or alive or self._stop.is_set() or self._restart_child.is_set():
            return
        pid = getattr(self.runner, "pid", None)
        if pid == self._dead_child_seen:
            return
        self._dead_child_seen = pid
        code = getattr(self.runner, "exitcode", None)
        why = f"the inference process (pid {pid}) exited with code {code}"
        self.controller.set_fault(why)
        self.get_logger().error(f"{why}; holding until ~/reset or ~/enable starts a new one")

    def _restart_model(self) -> None:
        """Start a new inference process (in this thread: it takes seconds); no request is
        made meanwhile."""
        self._restart_child.clear()
        self.controller.set_model_ready(False, "starting a new inference process")
        self.get_logger().info("starting a new inference process ...")
        try:
            self.runner.restart()
        except Exception as exc:
            self.controller.set_fault(f"cannot restart the inference process: {exc}")
            self.get_logger().error(f"cannot restart the inference process: {exc}")
            return
        finally:
            self.controller.set_model_ready(True)
        self.get_logger().info(f"inference process {getattr(self.runner, 'pid', '?')} ready")

    def _serve_one(self) -> bool:
        """Wait for one request and answer it; False when the worker must stop."""
        if self._restart_child.is_set():
            self._restart_model()
        try:
            req = self._requests.get(timeout=0.2)
        except queue.Empty:
            self._check_child()
            return True
        if req is None:
            return False
        try:
            chunk = self.infer(req)
        except Exception as exc:  # the model failed: hold, never crash the node
            if self._stop.is_set():  # shutting down: the runner was closed under us
                return False
            self.controller.on_failure(req, f"{type(exc).__name__}: {exc}")
            self.get_logger().error(
                f"policy failed, holding the last command until ~/reset or ~/enable: {exc}",
                throttle_duration_sec=5.0,
            )
            return True
        t_arrival = self.now_s()
        skipped = self.controller.on_chunk(req, chunk, t_arrival)
        if skipped >= 0:
            self._publish_chunk_timing(req.t_obs, t_arrival, skipped)
        if skipped < 0 and self.controller.fault:
            self.get_logger().error(f"holding: {self.controller.fault}", throttle_duration_sec=5.0)
        return True

    def _publish_chunk_timing(self, t_obs: float, t_arrival: float, skipped: int) -> None:
        """[t_obs, t_arrival, skipped_steps, inference_s] of an accepted chunk (node clock)."""
        n = len(CHUNK_TIMING_FIELDS)
        msg = Float64MultiArray(
            data=[t_obs, t_arrival, float(skipped), self.runner.last_inference_s]
        )
        msg.layout.dim = [
            MultiArrayDimension(label=",".join(CHUNK_TIMING_FIELDS), size=n, stride=n)
        ]
        self._chunk_pub.publish(msg)

    # -- services -----------------------------------------------------------------------------
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> Any:
        answer = self.controller.enable(bool(request.data), self.now_s())
        response.success, response.message = answer.ok, answer.message
        if answer.ok and request.data:
            self._ensure_model()
        if answer.ok:  # (rclpy: one severity per logging call site)
            self.get_logger().info(f"~/enable {request.data}: {response.message}")
        else:
            self.get_logger().error(f"~/enable {request.data}: {response.message}")
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        self.controller.reset()
        self.runner.reset()
        response.success = True
        response.message = "reset: buffers cleared, new episode"
        if self._ensure_model():
            response.message += "; starting a new inference process"
        self.get_logger().info(response.message)
        return response

    def _ensure_model(self) -> bool:
        """After a fault is cleared: a dead inference process is replaced (by the worker, so
        this service never blocks). True if a restart was asked for."""
        alive = getattr(self.runner, "alive", None)
        pid = getattr(self.runner, "pid", None)
        if alive is None or (alive and pid != self._killed_pid):  # killed: may not be reaped yet
            return False
        # Its death needs no report now: ~/reset or ~/enable has just cleared the fault.
        self._dead_child_seen = pid
        self.controller.set_model_ready(False, "starting a new inference process")
        self._restart_child.set()
        return True

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        self._flush_tick_log()
        t = self.now_s()
        st = self.controller.status(t)
        ticks, self._tick_times = self._tick_times[-200:], self._tick_times[-1:]
        rate = (len(ticks) - 1) / (ticks[-1] - ticks[0]) if len(ticks) > 2 else 0.0
        st["publish_rate_hz"] = round(rate, 1)
        st["last_inference_ms"] = round(1e3 * self.runner.last_inference_s, 1)
        st["timeout_s"] = round(self.timeout_s, 3)
        st["dry_run"] = self._dry_run
        st["task"] = short_text(str(st["task"]))
        st["last_request_task"] = short_text(str(st["last_request_task"]))
        st["images_refused"] = self._decoder.failed
        st["codec_warnings"] = self._decoder.codec_warnings
        st["restarts"] = getattr(self.runner, "restarts", 0)
        if self._decoder.codec_warnings > self._codec_warnings_seen:
            n = self._decoder.codec_warnings - self._codec_warnings_seen
            self._codec_warnings_seen = self._decoder.codec_warnings
            self._bad_input("camera frames", ValueError(f"{n} codec warnings (corrupt JPEG data)"))
        level, message = self.controller.health()
        if self._dry_run:
            message += " (dry run: commands on ~/action only)"
        diag = DiagnosticArray()
        diag.header.stamp = self.get_clock().now().to_msg()
        diag.status = [
            DiagnosticStatus(
                level=bytes([level]),
                name=f"{self.get_name()}: policy",
                message=message,
                hardware_id=self.cfg.robot.name,
                values=[KeyValue(key=k, value=str(v)) for k, v in st.items()],
            )
        ]
        self._diag_pub.publish(diag)
        if time.monotonic() - self._last_status_log >= 5.0:
            self._last_status_log = time.monotonic()
            self.get_logger().info(
                f"{st['mode']}: {st['publish_rate_hz']} Hz, buffer {st['buffered_s']} s,"
                f" latency p50 {st['latency_p50_ms']} ms p95 {st['latency_p95_ms']} ms,"
                f" chunks {st['chunks']}, clamped {st['clamped']}, holds {st['holds']}"
                + (f", stale {st['stale_inputs']}" if st["stale_inputs"] else "")
            )

    def shutdown(self) -> None:
        """Stop the worker; the last command stays the robot's last safe command."""
        self._stop.set()
        self._decoder.stop()
        with contextlib.suppress(queue.Full):
            self._requests.put_nowait(None)
        self.runner.close()  # ProcessRunner: stops the child process
        self._worker.join(timeout=5.0)
        self._flush_tick_log()


class _InterruptOnce:
    """The SIGINT handler rclpy chains to: a KeyboardInterrupt while spinning, nothing after.

    ``ros2 launch`` signals the node twice on Ctrl-C; Python's default handler would raise the
    second KeyboardInterrupt in the middle of the shutdown (a traceback, and an exit "killed by
    SIGINT"). Installed before ``rclpy.init`` so that rclpy's own handler calls this one.
    """

    def __init__(self) -> None:
        self.spinning = True
        self.absorbed = 0

    def __call__(self, signum: int, frame: Any) -> None:
        if self.spinning:
            self.spinning = False
            raise KeyboardInterrupt
        self.absorbed += 1


def main(args: list[str] | None = None) -> int:
    interrupt = _InterruptOnce()
    with contextlib.suppress(ValueError):  # not the main thread (tests): keep Python's
        signal.signal(signal.SIGINT, interrupt)
    rclpy.init(args=args)
    node: PolicyNode | None = None
    code = 0
    try:
        node = PolicyNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # configuration / checkpoint problems: one clear line, no traceback
        from rclpy.exceptions import NameValidationException, ParameterException

        from kuavo_smolvla_ros.core.dims import DimensionError
        from kuavo_smolvla_ros.runners.eager import CheckpointError

        expected = (ConfigError, CheckpointError, DimensionError, ParameterException)
        expected += (NameValidationException,)
        if isinstance(exc, expected):
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
            code = 2
        elif rclpy.ok():
            raise
        # else: SIGTERM/SIGINT shut the context down while the executor was building its wait
        # set (rclpy raises RCLError there instead of ExternalShutdownException): a clean stop.
    finally:
        # From here a SIGINT is absorbed (every step below is bounded): a clean exit.
        interrupt.spinning = False
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
        with contextlib.suppress(ValueError):  # rclpy restores the handler it found at init
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
