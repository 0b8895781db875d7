"""Command-stream timing at 100 Hz with real forward passes on the CPU (issue 3).

Side by side in one run, same machine, same checkpoint, same robot traffic:

  sync     the policy called inside the 100 Hz timer callback (LeRobot ``select_action``
           style): ``PolicyNode`` with its ``_on_tick`` running ``predict_chunk`` inline;
  thread   the node with ``policy.backend: thread`` (a plain background inference thread in
           the node's process, torch's default thread count);
  process  the node with ``policy.backend: process`` (the default: the model in a child
           process with cores-1 torch threads at nice +10; inference_process.py).
  Alternatives measured with ``--variants all``: thread-1t (thread, torch_threads 1),
  process-nice0 (child at normal priority), process-pinned (child pinned to CPUs 1..n-1),
  process-2t (child with 2 torch threads).

Each variant is a real node process (``python -m kuavo_smolvla_ros.ros.node``; ``sync`` runs this
file's ``serve-sync``) fed over real ROS 2 topics by a simulated Kuavo in this process:
``/joint_states`` and ``/gripper/state`` at 100 Hz, three 480x640 JPEG cameras at 30 Hz.

What is measured. The node writes ``time.monotonic()`` at the start and at the end of every
control tick to ``$KUAVO_SMOLVLA_TICK_LOG`` (node.py). The *publish period* is the time
between the ends of two consecutive ticks (the commands are published at the end of a tick);
its error is ``|period - 10 ms|``. A *late tick* has a period over 1.5 x 10 ms = 15 ms; *missed
ticks* are the periods the stream skipped, ``sum(max(0, round(period / 10 ms) - 1))``. The
window starts 3 s after the first command and lasts ``--duration`` s (the model keeps being
called at the scheduler's rate the whole time). As a cross-check, the period of
``/kuavo_arm_traj`` as received by this process is reported too (it adds DDS and this
process's executor jitter). The 1-minute load average is sampled every second.

    .venv/bin/python benchmarks/node_timing.py --sizes tiny full --out node_timing.json
    .venv/bin/python benchmarks/node_timing.py --sizes full --variants all --checkpoint-dir /tmp/nt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.ros.child import stop_node
from kuavo_smolvla_ros.testing.fake_robot import CAMERA_TOPICS, FakeKuavo

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# A DDS domain of this run's own, apart from tests running on the same machine.
os.environ.setdefault("ROS_DOMAIN_ID", str(120 + os.getpid() % 100))

NOMINAL_S = 0.01  # 100 Hz
LATE_FACTOR = 1.5
TASK = "pick up the red cube and place it in the box"
NICE_ENV = "KUAVO_SMOLVLA_CHILD_NICE"
CPUS_ENV = "KUAVO_SMOLVLA_CHILD_CPUS"
SCHED_ENV = "KUAVO_SMOLVLA_CHILD_SCHED"
VARIANTS: dict[str, dict[str, Any]] = {
    "sync": {
        "mode": "sync",
        "what": "policy inside the 100 Hz timer (LeRobot select_action style), torch default",
    },
    "thread": {"mode": "thread", "what": "backend=thread: plain inference thread, torch default"},
    "thread-1t": {
        "mode": "thread",
        "params": {"policy.torch_threads": "1"},
        "what": "backend=thread, torch_threads 1",
    },
    "process": {
        "mode": "process",
        "what": "backend=process (default): child, cores-1 threads, nice +10",
    },
    "process-nice0": {
        "mode": "process",
        "env": {NICE_ENV: "0"},
        "what": "backend=process, child at nice 0",
    },
    "process-pinned": {
        "mode": "process",
        "env": {CPUS_ENV: "auto"},
        "what": "backend=process, child pinned to CPUs 1..n-1",
    },
    "process-idle": {
        "mode": "process",
        "env": {SCHED_ENV: "idle"},
        "what": "backend=process, child SCHED_IDLE",
    },
    "process-batch": {
        "mode": "process",
        "env": {SCHED_ENV: "batch"},
        "what": "backend=process, child SCHED_BATCH, nice +10",
    },
    "process-rt": {
        "mode": "process",
        "prefix": ["chrt", "-f", "10"],
        "what": "backend=process, node under chrt -f 10 (SCHED_FIFO; child reset to normal)",
    },
    "process-rt-2t": {
        "mode": "process",
        "prefix": ["chrt", "-f", "10"],
        "params": {"policy.torch_threads": "2"},
        "what": "backend=process, node under chrt -f 10, child with 2 torch threads",
    },
    "process-2t": {
        "mode": "process",
        "params": {"policy.torch_threads": "2"},
        "what": "backend=process, child with 2 torch threads",
    },
}
DEFAULT_VARIANTS = ("sync", "thread", "process", "process-rt")
# The full-size model needs ~5.6 s per chunk on this 2-core CPU, more than the 5 s a 50-step
# chunk lasts at the default 10 fps: every step would be stale on arrival and the node would
# wait forever. At 2 fps a chunk lasts 25 s, commands flow, and a chunk is requested every
# 5 s, i.e. the model runs back to back: the worst case for the control timer.
SIZE_PARAMS = {"tiny": {}, "full": {"scheduler.action_fps": "2"}}


# -- statistics ----------------------------------------------------------------------------------
def period_stats(times: np.ndarray, nominal: float = NOMINAL_S) -> dict[str, Any]:
    """Publish-period error p50/p99/max, late and missed ticks of a sorted time series (s)."""
    t = np.asarray(times, dtype=float)
    if len(t) < 2:
        return {"ticks": len(t)}
    p = np.diff(t)
    err = np.abs(p - nominal) * 1e3
    return {
        "ticks": len(t),
        "rate_hz": round((len(t) - 1) / (t[-1] - t[0]), 2),
        "err_p50_ms": round(float(np.percentile(err, 50)), 3),
        "err_p99_ms": round(float(np.percentile(err, 99)), 3),
        "err_max_ms": round(float(err.max()), 3),
        "max_period_ms": round(float(p.max() * 1e3), 2),
        "late": int((p > LATE_FACTOR * nominal).sum()),
        "missed": int(np.maximum(0, np.round(p / nominal) - 1).sum()),
    }


def read_tick_log(path: Path) -> np.ndarray:
    """(N, 2) start/end monotonic times written by the node (KUAVO_SMOLVLA_TICK_LOG)."""
    if not path.is_file() or path.stat().st_size == 0:
        return np.zeros((0, 2))
    return np.loadtxt(path, ndmin=2)


def tick_stats(log: np.ndarray, t0: float, t1: float) -> dict[str, Any]:
    sel = log[(log[:, 1] >= t0) & (log[:, 1] < t1)]
    out = period_stats(sel[:, 1])
    if len(sel):
        dur = (sel[:, 1] - sel[:, 0]) * 1e3
        out["tick_p99_ms"] = round(float(np.percentile(dur, 99)), 3)
        out["tick_max_ms"] = round(float(dur.max()), 3)
        out["expected_ticks"] = round((t1 - t0) / NOMINAL_S)
    return out


def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def process_tree_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by ``pid`` and by its descendants."""
    import psutil

    try:
        proc = psutil.Process(pid)
        own = sum(proc.cpu_times()[:2])
        kids = sum(sum(c.cpu_times()[:2]) for c in proc.children(recursive=True))
    except psutil.Error:
        return {"node": 0.0, "children": 0.0}
    return {"node": own, "children": kids}


def process_tree_rss_mb(pid: int) -> tuple[float, float]:
    """(RSS of ``pid``, RSS of its descendants) in MiB."""
    import psutil

    try:
        proc = psutil.Process(pid)
        own = proc.memory_info().rss
        kids = sum(c.memory_info().rss for c in proc.children(recursive=True))
    except psutil.Error:
        return 0.0, 0.0
    return own / 2**20, kids / 2**20


# -- the simulated robot (this process) ----------------------------------------------------------
def camera_jpeg(seed: int, h: int, w: int) -> bytes:
    """A smooth synthetic scene (gradients, boxes, a little noise): a realistic JPEG size."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1)
    img = img.astype(np.uint8)
    for _ in range(12):
        x, y = int(rng.integers(0, w - 100)), int(rng.integers(0, h - 100))
        dx, dy = int(rng.integers(20, 150)), int(rng.integers(20, 150))
        cv2.rectangle(img, (x, y), (x + dx, y + dy), rng.integers(0, 255, 3).tolist(), -1)
    img = cv2.add(img, rng.integers(0, 12, img.shape, dtype=np.uint8))
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


class RobotSim(FakeKuavo):
    """The shared simulated Kuavo (``kuavo_smolvla_ros.testing.fake_robot``) with realistic
    camera frames; keeps only arrival times of the commands (long runs) and the diagnostics."""

    def __init__(self, height: int = 480, width: int = 640) -> None:
        frames = {k: camera_jpeg(i, height, width) for i, k in enumerate(CAMERA_TOPICS)}
        super().__init__(
            arm_pose=np.linspace(-0.3, -0.05, 14), claw=20.0, frames=frames, record=False
        )

    def arrivals(self, t0: float, t1: float) -> np.ndarray:
        times = self.stamps("/kuavo_arm_traj", t0)
        return times[times < t1]

    def diagnostics(self, t0: float, t1: float) -> list[dict[str, str]]:  # type: ignore[override]
        with self.lock:
            msgs = [m for t, m in self.received["/diagnostics"] if t0 <= t < t1]
        return [
            {kv.key: kv.value for kv in st.values}
            for m in msgs
            for st in m.status
            if "policy" in st.name
        ]

    def reset_records(self) -> None:
        self.clear_records()


# -- the node under test -------------------------------------------------------------------------
def can_run(variant: str) -> bool:
    """False for a variant whose command prefix (chrt -f: real-time) is not permitted here."""
    prefix = VARIANTS[variant].get("prefix")
    if not prefix:
        return True
    try:
        return subprocess.run([*prefix, "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def start_policy_node(
    variant: str,
    checkpoint: Path,
    tick_log: Path,
    log_path: Path,
    extra_params: dict[str, str] | None = None,
) -> subprocess.Popen:
    spec = VARIANTS[variant]
    env = dict(os.environ, KUAVO_SMOLVLA_TICK_LOG=str(tick_log), **spec.get("env", {}))
    args = list(spec.get("prefix", []))
    if spec["mode"] == "sync":
        args += [sys.executable, str(Path(__file__).resolve()), "serve-sync", "--ros-args"]
    else:
        args += [sys.executable, "-m", "kuavo_smolvla_ros.ros.node", "--ros-args"]
    params = {
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "task": TASK,
        "start_enabled": "true",
        "policy.seed": "0",
        "policy.backend": "thread" if spec["mode"] == "sync" else spec["mode"],
        **spec.get("params", {}),
        **(extra_params or {}),
    }
    for k, v in params.items():
        args += ["-p", f"{k}:={v}"]
    out = open(log_path, "w")  # noqa: SIM115 - closed when the process is stopped
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def stop_policy_node(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    return stop_node(proc, timeout)


def wait_first_command(robot: RobotSim, proc: subprocess.Popen, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with code {proc.returncode}")
        with robot.lock:
            if robot.arm_times:
                return robot.arm_times[0]
        time.sleep(0.1)
    raise RuntimeError(f"no command on /kuavo_arm_traj within {timeout:.0f} s")


def _float(values: list[str]) -> list[float]:
    out = []
    for v in values:
        with contextlib.suppress(ValueError):
            out.append(float(v))
    return out


def run_variant(
    variant: str,
    checkpoint: Path,
    robot: RobotSim,
    duration: float,
    workdir: Path,
    extra_params: dict[str, str] | None = None,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    tick_log = workdir / f"{variant}.ticks"
    log_path = workdir / f"{variant}.log"
    tick_log.unlink(missing_ok=True)
    robot.reset_records()
    t_launch = time.monotonic()
    proc = start_policy_node(variant, checkpoint, tick_log, log_path, extra_params)
    loads: list[float] = []
    try:
        first = wait_first_command(robot, proc, timeout=300)
        startup_s = first - t_launch
        time.sleep(3.0)
        t0 = time.monotonic()
        cpu0 = process_tree_cpu_s(proc.pid)
        while time.monotonic() < t0 + duration:
            time.sleep(1.0)
            loads.append(os.getloadavg()[0])
            if proc.poll() is not None:
                raise RuntimeError(f"the node exited with code {proc.returncode}")
        t1 = time.monotonic()
        cpu = process_tree_cpu_s(proc.pid)
        cpu_pct = {k: round(100 * (cpu[k] - cpu0.get(k, 0.0)) / (t1 - t0), 1) for k in cpu}
        rss = process_tree_rss_mb(proc.pid)
    finally:
        rc = stop_policy_node(proc)
    diags = robot.diagnostics(t0, t1 + 1.0)
    inf_ms = _float([d.get("last_inference_ms", "") for d in diags])
    chunks = _float([d.get("chunks", "") for d in diags])
    modes = sorted({d.get("mode", "?") for d in diags})
    result = {
        "variant": variant,
        "what": VARIANTS[variant]["what"],
        "duration_s": round(t1 - t0, 1),
        "startup_s": round(startup_s, 1),
        "node": tick_stats(read_tick_log(tick_log), t0, t1),
        "transport": period_stats(robot.arrivals(t0, t1)),
        "inference_ms_median": round(float(np.median(inf_ms)), 1) if inf_ms else None,
        "chunks_in_window": int(chunks[-1] - chunks[0]) if len(chunks) > 1 else None,
        "modes": modes,
        "cpu_percent": cpu_pct,
        "rss_mb": {"node": round(rss[0], 1), "children": round(rss[1], 1)},
        "load_1min": {
            "mean": round(float(np.mean(loads)), 2),
            "max": round(float(np.max(loads)), 2),
        },
        "exit_code": rc,
    }
    return result


# -- the synchronous baseline: the policy inside the timer callback ------------------------------
def serve_sync(argv: list[str]) -> int:
    """``PolicyNode`` whose control tick runs the model inline, as LeRobot's record/eval loops
    call ``select_action`` (the command stream stops for the whole forward pass)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from kuavo_smolvla_ros.ros.node import PolicyNode

    class SyncLoopNode(PolicyNode):
        def _on_tick(self) -> None:
            t_start = time.monotonic()
            tick = self.controller.tick(self.now_s())
            req = tick.request
            if req is not None:
                try:
                    chunk = self.infer(req)
                    self.controller.on_chunk(req, chunk, self.now_s())
                except Exception as exc:
                    self.controller.on_failure(req, f"{type(exc).__name__}: {exc}")
            if tick.command is not None:
                self._publish(tick.command)
            self._tick_times.append(time.monotonic())
            if self._tick_log_path:
                self._tick_log.append((t_start, self._tick_times[-1]))

    rclpy.init(args=argv)
    node = SyncLoopNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# -- main ----------------------------------------------------------------------------------------
def checkpoint_for(size: str, root: Path) -> Path:
    from kuavo_smolvla_ros.demo.model import build_demo_model

    path = root / size
    if not (path / "model.safetensors").is_file():
        print(f"building the {size} model in {path} ...", flush=True)
        build_demo_model(path, size=size)
    return path


def fmt_row(r: dict[str, Any]) -> str:
    n, tr = r["node"], r["transport"]
    return (
        f"| {r['size']} | {r['variant']} | {n.get('err_p50_ms', '-')} | {n.get('err_p99_ms', '-')}"
        f" | {n.get('err_max_ms', '-')} | {n.get('late', '-')} / {max(n.get('ticks', 1) - 1, 0)}"
        f" | {n.get('missed', '-')} | {tr.get('err_p99_ms', '-')} / {tr.get('late', '-')}"
        f" | {r['inference_ms_median']} | {r['chunks_in_window']}"
        f" | {r['load_1min']['mean']} ({r['load_1min']['max']}) |"
    )


TABLE_HEAD = (
    "| model | variant | err p50 ms | err p99 ms | err max ms | late / periods | missed |"
    " topic err p99 ms / late | forward ms | chunks | load 1 min mean (max) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve-sync":
        return serve_sync(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    ap.add_argument("--duration-tiny", type=float, default=30.0, help="window, s (tiny)")
    ap.add_argument("--duration-full", type=float, default=60.0, help="window, s (full)")
    ap.add_argument("--checkpoint-dir", type=Path, default=None, help="reuses <dir>/tiny, /full")
    ap.add_argument("--image-size", default="480x640", help="camera HxW")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (variants interleaved)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results")
    ap.add_argument("--workdir", type=Path, default=None, help="node logs and tick logs")
    args = ap.parse_args(argv)
    variants = list(VARIANTS) if args.variants == ["all"] else args.variants
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)} or all")
    root = args.checkpoint_dir or Path(tempfile.mkdtemp(prefix="smolvla_timing_"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="node_timing_"))
    workdir.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in args.image_size.lower().split("x"))

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C: stop the node first
    robot = RobotSim(h, w)
    info = {"machine": machine(), "load_at_start": os.getloadavg(), "results": []}
    print(f"{info['machine']}; load {info['load_at_start']}; logs in {workdir}", flush=True)
    print(TABLE_HEAD, flush=True)
    try:
        for size in args.sizes:
            ckpt = checkpoint_for(size, root)
            duration = args.duration_tiny if size == "tiny" else args.duration_full
            for rnd in range(args.repeat):
                for variant in variants:
                    if not can_run(variant):
                        print(f"skipped {variant}: {VARIANTS[variant]['prefix']} not permitted")
                        continue
                    try:
                        r = run_variant(
                            variant,
                            ckpt,
                            robot,
                            duration,
                            workdir / f"{size}{rnd}",
                            SIZE_PARAMS[size],
                        )
                    except RuntimeError as exc:  # e.g. no usable chunk: report, go on
                        print(f"| {size} | {variant} | failed: {exc} |", flush=True)
                        info["results"].append(
                            {"size": size, "variant": variant, "error": str(exc)}
                        )
                        continue
                    r["size"], r["round"] = size, rnd
                    info["results"].append(r)
                    print(fmt_row(r), json.dumps(r["cpu_percent"]), flush=True)
    finally:
        robot.close()
        rclpy.try_shutdown()
    info["load_at_end"] = os.getloadavg()
    print("\n" + TABLE_HEAD)
    for r in info["results"]:
        print(
            fmt_row(r) if "error" not in r else f"| {r['size']} | {r['variant']} | {r['error']} |"
        )
    if args.out:
        args.out.write_text(json.dumps(info, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
