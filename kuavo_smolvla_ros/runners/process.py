"""The policy in a child process: ``ProcessRunner``, same interface as ``policy.PolicyRunner``.

Why. A SmolVLA forward on the CPU is Python-heavy (thousands of small torch calls), so in a
thread of the node it holds the GIL often and its torch threads take every core: the 100 Hz
control timer then fires late (issue 3: p99 4.2 ms, max 6.2 ms with a plain thread). Here the
model lives in a ``spawn``-ed child process with its own interpreter, so the node's inference
thread only blocks on a pipe (GIL released) and the timer keeps the GIL to itself.

How.
- The child loads the checkpoint with ``load_policy`` (warm-up included) and serves requests
  one at a time over a ``multiprocessing`` pipe. Images travel through shared memory (an
  anonymous ``memfd`` handed over once; the parent copies with ``np.copyto``, which releases
  the GIL, instead of pickling megabytes while holding it); state, task, seed and RTC inputs
  travel in the small pickled message.
- CPU share: the child runs ``torch_threads`` threads (0: one less than the usable cores, so a
  core stays free for control), under ``SCHED_OTHER`` at nice +10 whatever the parent's policy
  (a node started with ``chrt -f 10`` keeps its real-time priority, the model never gets it),
  and, on request, on a CPU subset. Overrides for benchmarks: ``KUAVO_SMOLVLA_CHILD_NICE``,
  ``KUAVO_SMOLVLA_CHILD_SCHED`` (``other``, ``batch``, ``idle``) and
  ``KUAVO_SMOLVLA_CHILD_CPUS`` (``none``, ``auto`` = every usable CPU but the first, or a list
  such as ``1,2,3``). Measured alternatives: docs/benchmarks.md, "Node timing".
- Errors: an exception in the child comes back as the same exception type when it is a builtin
  or one of this package's (``DimensionError``, ``CheckpointError``, ``ValueError``...), with the
  child's traceback as ``__cause__``; anything else becomes ``InferenceProcessError``. The child
  keeps serving. A child that exits (mid-request or between requests) makes every later
  ``predict_chunk`` raise ``InferenceProcessError`` with its exit code, never a silent restart:
  the node faults, and ``restart()`` (its ``~/reset``) starts a new child.
- Lifetime: the child is a daemon process (terminated at the parent's normal exit), exits on
  pipe EOF, and asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), which
  also reaches a stopped child, so a SIGKILLed node leaves no orphan; multiprocessing's resource
  tracker, which holds a pipe the child shares, exits on EOF once the child is gone. It ignores
  SIGINT (Ctrl-C reaches the whole process group; the parent decides). ``close()`` asks it to
  exit, then terminates / kills it; a second Ctrl-C during ``close()`` is absorbed. ``kill()``
  is the watchdog's way to free a worker blocked on a hung child.
- ``reset()`` never blocks (the executor calls it): the policy reset is sent with the next
  request.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import logging
import mmap
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core.config import Config
from kuavo_smolvla_ros.runners.base import ChunkInputs, ChunkRunner, Timing, set_torch_threads

log = logging.getLogger(__name__)

NICE_ENV = "KUAVO_SMOLVLA_CHILD_NICE"
CPUS_ENV = "KUAVO_SMOLVLA_CHILD_CPUS"
SCHED_ENV = "KUAVO_SMOLVLA_CHILD_SCHED"
DEFAULT_NICE = 10
DEFAULT_SCHED = "other"
SCHED_POLICIES = ("other", "batch", "idle")
_POLL_S = 0.5  # liveness checks while waiting for the child (the wait itself releases the GIL)


class InferenceProcessError(RuntimeError):
    """The inference process died, could not start, or raised an error of a foreign type."""


class RemoteTraceback(Exception):
    """The child's traceback text, attached as ``__cause__`` of a re-raised child error."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


ProcessTiming = Timing  # the child's own timing of a chunk, as every runner reports it


@dataclass(frozen=True)
class _ChildSpec:
    checkpoint: str
    device: str
    config: Config
    torch_threads: int
    nice: int
    sched: str
    cpus: tuple[int, ...] | None
    warmup: bool | None
    parent_pid: int


def usable_cpus() -> list[int]:
    """CPUs this process may run on (affinity mask), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def default_threads(cpus: tuple[int, ...] | None = None) -> int:
    """Inference threads: all of an explicit CPU set (control runs elsewhere), else one less
    than the usable CPUs, so that a core stays free for the control timer; at least one."""
    if cpus:
        return len(cpus)
    return max(1, len(usable_cpus()) - 1)


def _resolve_cpus(cpus: str | tuple[int, ...] | None) -> tuple[int, ...] | None:
    if cpus is None or isinstance(cpus, tuple):
        return cpus
    text = cpus.strip().lower()
    if text in ("", "none", "off"):
        return None
    if text == "auto":
        avail = usable_cpus()
        return tuple(avail[1:]) if len(avail) > 1 else None
    return tuple(int(c) for c in text.replace(" ", "").split(",") if c)


# -- errors across the pipe ----------------------------------------------------------------------
def _error_message(exc: BaseException) -> tuple:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ("error", type(exc).__module__, type(exc).__qualname__, str(exc), tb)


def _rebuild_error(module: str, qualname: str, message: str, tb: str) -> Exception:
    """The child's exception as the same type where that is safe and cheap, else ours.

    Only builtins and this package's modules are resolved: importing anything else (torch...)
    in the node's inference thread would hold the GIL for seconds.
    """
    cls: Any = None
    if module == "builtins":
        cls = getattr(builtins, qualname, None)
    elif module.startswith("kuavo_smolvla_ros.") and "." not in qualname:
        with contextlib.suppress(Exception):
            cls = getattr(importlib.import_module(module), qualname, None)
    exc: Exception | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        with contextlib.suppress(Exception):
            exc = cls(message)
    if exc is None or str(exc) != message:
        exc = InferenceProcessError(f"{qualname}: {message}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


# -- the child -----------------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone, even in the middle of a forward pass."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL from the kernel when the parent dies (Linux), even if this process is stopped."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(0)


def _setup_child(spec: _ChildSpec) -> None:
    _die_with_parent(spec.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "sched_setscheduler"):  # explicit: never inherit a real-time policy
        policy = {"other": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy[spec.sched], os.sched_param(0))
    if spec.cpus:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, spec.cpus)
    with contextlib.suppress(AttributeError, OSError):  # absolute, whatever the parent's is
        os.setpriority(os.PRIO_PROCESS, 0, spec.nice)
    threading.Thread(
        target=_watch_parent, args=(spec.parent_pid,), name="parent-watch", daemon=True
    ).start()
    set_torch_threads(spec.torch_threads, interop=1)


def _serve(conn: Any, spec: _ChildSpec) -> None:
    """The child's main: load, say ready, then answer requests until close or EOF."""
    try:
        _setup_child(spec)
        from kuavo_smolvla_ros.runners.eager import load_policy

        runner = load_policy(
            spec.checkpoint, device=spec.device, config=spec.config, warmup=spec.warmup
        )
    except BaseException as exc:  # load errors go back to the parent as its exceptions
        with contextlib.suppress(Exception):
            conn.send(_error_message(exc))
        return
    import torch

    info = {
        "chunk_size": runner.chunk_size,
        "robot_dim": runner.robot_dim,
        "camera_features": dict(runner.camera_features),
        "rtc_enabled": runner.rtc_enabled,
        "device": str(runner.device),
        "checkpoint": str(runner.checkpoint),
        "last_inference_s": runner.last_inference_s,
        "torch_threads": torch.get_num_threads(),
        "nice": os.nice(0),
        "sched": spec.sched,
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        conn.send(("ready", info))
    except (EOFError, OSError):
        return  # the parent went away while we were loading
    shm: mmap.mmap | None = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed its end or died
        if msg[0] == "close":
            return
        if msg[0] == "shm":
            fd = recv_handle(conn)
            if shm is not None:
                shm.close()
            shm = mmap.mmap(fd, msg[1])
            os.close(fd)
            continue
        try:
            req = msg[1]
            if req["reset"]:
                runner.reset()
            images = req["images"]
            if images is None:  # in shared memory: (camera, shape, offset)
                images = {
                    cam: np.ndarray(shape, np.uint8, buffer=shm, offset=off)
                    for cam, shape, off in req["layout"]
                }
            chunk = runner.predict_chunk(
                req["state"],
                images,
                req["task"],
                seed=req["seed"],
                inference_delay=req["inference_delay"],
                prev_chunk_left_over=req["leftover"],
            )
            t = runner.timing
            reply = ("ok", chunk, (t.preprocess_s, t.inference_s, t.total_s))
        except Exception as exc:
            reply = _error_message(exc)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


# -- the parent ----------------------------------------------------------------------------------
def _stop_child(proc: Any, conn: Any, timeout: float) -> None:
    """Ask the child to exit; terminate, then kill it if it does not. Idempotent."""
    if proc.is_alive():
        with contextlib.suppress(Exception):
            conn.send(("close",))
        proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout)
    with contextlib.suppress(Exception):
        conn.close()


class ProcessRunner(ChunkRunner):
    """A SmolVLA checkpoint served by a child process; a ``base.Runner``.

    Inputs are checked here (``ChunkRunner``), before they cross the pipe; ``last_inference_s``
    is the round trip as this process sees it, the child's own split is in ``child_timing``.

    Blocks in the constructor until the child has loaded (and warmed up) the model; load
    errors (``CheckpointError``, ``DimensionError``...) are raised here as in ``load_policy``.
    One caller at a time (the node's inference worker); ``reset`` may be called from any
    thread and never waits.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cpu",
        config: Config | None = None,
        *,
        torch_threads: int | None = None,
        nice: int | None = None,
        sched: str | None = None,
        cpus: str | tuple[int, ...] | None = None,
        warmup: bool | None = None,
    ) -> None:
        cfg = config or Config()
        if cpus is None:
            cpus = os.environ.get(CPUS_ENV, "none")
        cpu_set = _resolve_cpus(cpus)
        if nice is None:
            nice = int(os.environ.get(NICE_ENV, DEFAULT_NICE))
        sched = (sched or os.environ.get(SCHED_ENV, "") or DEFAULT_SCHED).lower()
        if sched not in SCHED_POLICIES:
            raise ValueError(f"scheduling policy {sched!r}; choose one of {SCHED_POLICIES}")
        threads = torch_threads if torch_threads is not None else cfg.policy.torch_threads
        if threads <= 0:
            threads = default_threads(cpu_set)
        self._spec = _ChildSpec(
            checkpoint=str(checkpoint),
            device=device,
            config=cfg,
            torch_threads=int(threads),
            nice=int(nice),
            sched=sched,
            cpus=cpu_set,
            warmup=warmup,
            parent_pid=os.getpid(),
        )
        self._lock = threading.Lock()  # one request at a time over the pipe
        self._flag_lock = threading.Lock()
        self._reset_pending = False
        self._closed = False
        self._shm: mmap.mmap | None = None
        self._shm_size = 0
        self._shm_sent = False
        self.timing = self.child_timing = ProcessTiming()
        self.restarts = 0
        self._proc: Any = None
        self._conn: Any = None
        self._finalizer: Any = None
        self._start()

    # -- child lifecycle ----------------------------------------------------------------------
    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_serve, args=(child_conn, self._spec), name="smolvla-inference", daemon=True
        )
        proc.start()
        child_conn.close()
        self._proc, self._conn = proc, parent_conn
        self._finalizer = weakref.finalize(self, _stop_child, proc, parent_conn, 2.0)
        self._shm_sent = False
        try:
            kind, *rest = self._receive("loading the policy")
        except BaseException:
            self._finalizer()
            raise
        if kind != "ready":
            self._finalizer()
            raise InferenceProcessError(f"unexpected first message {kind!r} from the child")
        info = rest[0]
        self.info = info
        self.chunk_size = int(info["chunk_size"])
        self.robot_dim = int(info["robot_dim"])
        self.camera_features = dict(info["camera_features"])
        self.rtc_enabled = bool(info["rtc_enabled"])
        self.device = info["device"]
        self.checkpoint = Path(info["checkpoint"])
        self.timing = self.child_timing = ProcessTiming(total_s=float(info["last_inference_s"]))

    def _receive(self, what: str) -> tuple:
        """The child's next message; child errors are raised, a dead child too."""
        proc, conn = self._proc, self._conn
        while True:
            try:
                if conn.poll(_POLL_S):
                    msg = conn.recv()
                    break
            except (EOFError, OSError, ValueError):
                msg = None
                break
            if self._closed or not proc.is_alive():
                msg = None
                break
        if msg is None:
            proc.join(1.0)
            code = proc.exitcode
            if self._closed:
                raise InferenceProcessError(f"inference process closed while {what}")
            raise InferenceProcessError(
                f"the inference process (pid {proc.pid}) died while {what}"
                f" (exit code {code}{', killed by the OOM killer?' if code == -9 else ''})"
            )
        if msg[0] == "error":
            raise _rebuild_error(*msg[1:])
        return msg

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        """The child's exit code once it has exited (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.exitcode

    def kill(self) -> None:
        """SIGKILL the child now (works on a stopped child); a waiting request then raises."""
        if self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._proc.kill()

    def restart(self) -> None:
        """A new child (the old one is stopped first); blocks while it loads the model."""
        with self._lock:
            if self._closed:
                raise InferenceProcessError("restart on a closed ProcessRunner")
            self._finalizer()
            self.restarts += 1
            self._start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the child (waits up to ``timeout`` per step: ask, terminate, kill).

        A KeyboardInterrupt while waiting (the second Ctrl-C of ``ros2 launch``, which signals
        the node twice) is absorbed: the child is killed and close returns normally.
        """
        self._closed = True
        if self._proc is not None:
            try:
                _stop_child(self._proc, self._conn, timeout)
            except KeyboardInterrupt:
                with contextlib.suppress(BaseException):
                    self._proc.kill()
                    self._proc.join(timeout)
            self._finalizer.detach()
        if self._shm is not None:
            with contextlib.suppress(BufferError):
                self._shm.close()
            self._shm = None

    def __enter__(self) -> ProcessRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the interface ------------------------------------------------------------------------
    def reset(self) -> None:
        """New episode: the policy's queues are cleared before the next request (never waits)."""
        with self._flag_lock:
            self._reset_pending = True

    def _forward(self, inputs: ChunkInputs) -> tuple[np.ndarray, float]:
        """The child's chunk for checked inputs (``ChunkRunner.predict_chunk``)."""
        with self._lock:
            if self._closed:
                raise InferenceProcessError("predict_chunk on a closed ProcessRunner")
            if not self._proc.is_alive():
                self._proc.join(0.1)
                code = self._proc.exitcode
                raise InferenceProcessError(
                    f"the inference process (pid {self._proc.pid}) exited with code {code}"
                    f"{' (killed by the OOM killer?)' if code == -9 else ''};"
                    " ~/reset starts a new one"
                )
            with self._flag_lock:
                reset, self._reset_pending = self._reset_pending, False
            rtc = inputs.rtc
            req = {
                "state": inputs.state,
                "task": inputs.task,
                "seed": inputs.seed,
                "inference_delay": None if rtc is None else rtc.delay,
                "leftover": None if rtc is None else rtc.leftover,
                "reset": reset,
                "images": None,
                "layout": None,
            }
            t_model = Timing.now()
            if hasattr(os, "memfd_create"):
                req["layout"] = self._write_images(inputs.frames)
            else:  # no memfd: pickled in the message
                req["images"] = inputs.frames
            try:
                self._conn.send(("predict", req))
            except (OSError, ValueError) as exc:
                raise InferenceProcessError(f"cannot reach the inference process: {exc}") from None
            _, chunk, timing = self._receive("computing a chunk")
            self.child_timing = ProcessTiming(*timing)
            return chunk, t_model

    def _write_images(self, arrays: dict[str, np.ndarray]) -> list[tuple]:
        """Copy the frames into shared memory (``np.copyto`` releases the GIL); the layout."""
        layout, offset = [], 0
        for cam, a in arrays.items():
            layout.append((cam, a.shape, offset))
            offset += (a.nbytes + 63) // 64 * 64
        if self._shm is None or offset > self._shm_size or not self._shm_sent:
            self._new_shm(max(offset, self._shm_size))
        for (_, shape, off), a in zip(layout, arrays.values()):
            view = np.ndarray(shape, np.uint8, buffer=self._shm, offset=off)
            np.copyto(view, a)
            del view
        return layout

    def _new_shm(self, size: int) -> None:
        size = max(size, mmap.PAGESIZE)
        fd = os.memfd_create("kuavo_smolvla_images")  # anonymous: nothing to leak on a crash
        try:
            os.ftruncate(fd, size)
            shm = mmap.mmap(fd, size)
            self._conn.send(("shm", size))
            send_handle(self._conn, fd, self._proc.pid)
        finally:
            os.close(fd)
        if self._shm is not None:
            with contextlib.suppress(BufferError):
                self._shm.close()
        self._shm, self._shm_size, self._shm_sent = shm, size, True
