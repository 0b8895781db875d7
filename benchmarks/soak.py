"""Soak: the policy node at 100 Hz for minutes with the tiny model (issues 3 and 9).

Default (issue 9): faults every ``--period`` seconds for ``--minutes``, in turn: a camera
dropout (2 s), the inference process killed (SIGKILL, then ``~/reset``), the inference process
stopped (SIGSTOP until the watchdog faults, then ``~/reset``), ``dry_run`` on for 3 s and off,
and a plain ``~/reset``, against a simulated Kuavo that does NOT follow the commands (the worst
case). Reported: commands that violate the safety invariant (target 0; checked on every command
the node published), the recovery time after each fault (end of the fault until /diagnostics is
OK "running" again), and the memory of the node and its children.

    .venv/bin/python benchmarks/soak.py --minutes 10 --out soak_faults.json

``--steady`` runs the issue-3 soak instead (no faults, tick timing):

The same set-up as ``node_timing.py`` (a real node process, a simulated Kuavo on real topics:
joints at 100 Hz, three 480x640 JPEG cameras at 30 Hz; tick times from the node's own
``KUAVO_SMOLVLA_TICK_LOG``), run for ``--minutes`` and reported in 1-minute buckets:

- memory: RSS of the node process and of its children (the inference process) at the end of
  each minute, and the growth after the first minute (linear fit over 1-s samples, MiB/min);
- ticks: count, late (period > 15 ms), missed (``round(period / 10 ms) - 1`` summed), publish
  period error p50/p99/max;
- latency drift: the node's inference time per chunk (``last_inference_ms`` and the
  scheduler's ``latency_p50_ms`` from /diagnostics, median over the minute), chunks per
  minute, holds and model failures;
- the machine's 1-minute load average.

    .venv/bin/python benchmarks/soak.py --minutes 10 --out soak.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_timing import (
    RobotSim,
    _float,
    checkpoint_for,
    machine,
    period_stats,
    process_tree_rss_mb,
    start_policy_node,
    stop_policy_node,
    wait_first_command,
)


class TickReader:
    """Reads the node's tick log incrementally (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rows: list[tuple[float, float]] = []

    def poll(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind("\n") + 1
        self.offset += len(data[:end].encode())
        for line in data[:end].splitlines():
            a, b = line.split()
            self.rows.append((float(a), float(b)))

    def ends(self, t0: float, t1: float) -> np.ndarray:
        return np.array([b for _, b in self.rows if t0 <= b < t1])


def bucket_row(i: int, r: dict[str, Any]) -> str:
    t = r["ticks"]
    return (
        f"| {i + 1} | {t.get('ticks', 0)} | {t.get('late', '-')} | {t.get('missed', '-')}"
        f" | {t.get('err_p50_ms', '-')} | {t.get('err_p99_ms', '-')} | {t.get('err_max_ms', '-')}"
        f" | {r['inference_ms']} | {r['latency_p50_ms']} | {r['chunks']} | {r['holds']}"
        f" | {r['rss_node_mb']} | {r['rss_children_mb']} | {r['load_1min']} |"
    )


HEAD = (
    "| min | ticks | late | missed | err p50 ms | err p99 ms | err max ms | forward ms"
    " | latency p50 ms | chunks | holds | RSS node MiB | RSS child MiB | load 1 min |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


FAULTS = ("camera_dropout", "child_kill", "child_stop", "dry_run_toggle", "reset")


def run_faults(args: argparse.Namespace) -> int:
    """The issue-9 soak: faults in turn, the invariant on every command, recovery, memory."""
    import rclpy

    from kuavo_smolvla_ros.core.config import Config
    from kuavo_smolvla_ros.testing.fake_robot import (
        FakeKuavo,
        check_invariant,
        inference_child,
        start_node,
        stop_node,
    )

    root = args.checkpoint_dir or Path(tempfile.mkdtemp(prefix="smolvla_soak_"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak_"))
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_for(args.size, root)
    h, w = (int(v) for v in args.image_size.lower().split("x"))
    rclpy.init()
    pose = np.linspace(-0.3, -0.05, 14)
    robot = FakeKuavo(arm_pose=pose, claw=30.0, follow=False, image_size=(h, w))
    proc = start_node(
        ckpt,
        "task:=pick up the cup",
        "policy.seed:=0",
        f"policy.timeout_s:={args.timeout_s}",
        log=workdir / "node.log",
    )
    info: dict[str, Any] = {"machine": machine(), "load_at_start": os.getloadavg(), "faults": []}
    print(f"{info['machine']}; load {info['load_at_start']}; logs in {workdir}", flush=True)
    samples: list[tuple[float, float, float]] = []
    t_start = time.monotonic()
    duration = 0.0

    def sample() -> None:
        node_mb, kids_mb = process_tree_rss_mb(proc.pid)
        samples.append((time.monotonic() - t_start, node_mb, kids_mb))
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with code {proc.returncode}")

    def wait_running(timeout: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = robot.diagnostic_status(t0)
            if st is not None and st[0] == 0 and st[1].startswith("running"):
                return time.monotonic() - t0
            time.sleep(0.1)
            if len(samples) == 0 or time.monotonic() - t_start - samples[-1][0] > 5:
                sample()
        return None

    try:
        assert robot.enable_cli.wait_for_service(timeout_sec=600), "the node did not come up"
        assert robot.enable(True).success
        if wait_running(600) is None:
            raise RuntimeError("the node never ran")
        t_begin = time.monotonic()
        end = t_begin + 60.0 * args.minutes
        k = 0
        print("| # | t s | fault | level seen | recovery s | commands so far |", flush=True)
        print("|---|---|---|---|---|---|", flush=True)
        while time.monotonic() < end:
            fault = FAULTS[k % len(FAULTS)]
            t_fault = time.monotonic()
            seen = ""
            if fault == "camera_dropout":
                robot.cameras_on["wrist_cam_l"] = False
                time.sleep(2.0)
                st = robot.diagnostic_status(t_fault + 1.0)
                seen = "WARN" if st and st[0] == 1 else str(st and st[0])
                robot.cameras_on["wrist_cam_l"] = True
            elif fault == "child_kill":
                child = inference_child(proc.pid)
                os.kill(child, signal.SIGKILL)
                robot.wait_diagnostics(2, 60, contains="code -9")
                seen = "ERROR"
                robot.reset()
            elif fault == "child_stop":
                child = inference_child(proc.pid)
                os.kill(child, signal.SIGSTOP)
                try:
                    robot.wait_diagnostics(2, args.timeout_s + 60, contains="timed out")
                    seen = "ERROR"
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGCONT)
                robot.reset()
            elif fault == "dry_run_toggle":
                robot.set_parameter("dry_run", True)
                time.sleep(3.0)
                robot.set_parameter("dry_run", False)
                seen = "OK (dry run)"
            else:
                robot.reset()
                seen = "-"
            t_end_fault = time.monotonic()
            recovery = wait_running(max(120.0, args.period))
            times, _ = robot.published_commands()
            row = {
                "fault": fault,
                "t_s": round(t_fault - t_begin, 1),
                "level_seen": seen,
                "recovery_s": None if recovery is None else round(recovery, 2),
                "fault_s": round(t_end_fault - t_fault, 2),
                "commands": len(times),
            }
            info["faults"].append(row)
            print(
                f"| {k + 1} | {row['t_s']} | {fault} | {seen} | {row['recovery_s']}"
                f" | {row['commands']} |",
                flush=True,
            )
            k += 1
            while time.monotonic() < min(end, t_fault + args.period):
                time.sleep(1.0)
                sample()
        duration = time.monotonic() - t_begin
    finally:
        times, cmds = robot.published_commands()
        rc = stop_node(proc, timeout=60)
        robot.close()
        rclpy.try_shutdown()
    bad = check_invariant(times, cmds, Config(), limit=len(times) + 1)
    s = np.array(samples)
    by_fault: dict[str, list[float]] = {}
    for r in info["faults"]:
        if r["recovery_s"] is not None:
            by_fault.setdefault(r["fault"], []).append(r["recovery_s"])
    info["summary"] = {
        "duration_s": round(duration, 1),
        "faults": len(info["faults"]),
        "commands": len(times),
        "unpaired_at_the_end": robot.unpaired,
        "invariant_violations": len(bad),
        "first_violations": bad[:5],
        "unrecovered": sum(r["recovery_s"] is None for r in info["faults"]),
        "recovery_s": {
            f: {"n": len(v), "median": round(float(np.median(v)), 2), "max": round(max(v), 2)}
            for f, v in by_fault.items()
        },
        "rss_mb_first": {"node": round(s[0, 1], 1), "children": round(s[0, 2], 1)},
        "rss_mb_last": {"node": round(s[-1, 1], 1), "children": round(s[-1, 2], 1)},
        "rss_mb_max": {"node": round(s[:, 1].max(), 1), "children": round(s[:, 2].max(), 1)},
        "exit_code": rc,
        "load_at_end": os.getloadavg(),
    }
    print(json.dumps(info["summary"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(info, indent=2))
        print(f"wrote {args.out}")
    return 0 if rc == 0 and not bad else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--steady", action="store_true", help="the issue-3 soak: no faults")
    ap.add_argument("--period", type=float, default=30.0, help="seconds between faults")
    ap.add_argument("--timeout-s", type=float, default=5.0, help="policy.timeout_s of the node")
    ap.add_argument("--size", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--variant", default="process", help="a node_timing.py variant")
    ap.add_argument("--checkpoint-dir", type=Path, default=None, help="reuses <dir>/<size>")
    ap.add_argument("--image-size", default="480x640")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.steady:
        return run_faults(args)
    root = args.checkpoint_dir or Path(tempfile.mkdtemp(prefix="smolvla_soak_"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak_"))
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_for(args.size, root)
    h, w = (int(v) for v in args.image_size.lower().split("x"))

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C: stop the node first
    robot = RobotSim(h, w)
    tick_log = workdir / "soak.ticks"
    tick_log.unlink(missing_ok=True)
    info: dict[str, Any] = {
        "machine": machine(),
        "size": args.size,
        "variant": args.variant,
        "load_at_start": os.getloadavg(),
        "minutes": [],
    }
    print(f"{info['machine']}; load {info['load_at_start']}; logs in {workdir}", flush=True)
    proc = start_policy_node(args.variant, ckpt, tick_log, workdir / "node.log")
    reader = TickReader(tick_log)
    samples: list[tuple[float, float, float]] = []  # (t, rss node, rss children)
    try:
        wait_first_command(robot, proc, timeout=600)
        time.sleep(2.0)
        start = time.monotonic()
        print(HEAD, flush=True)
        for i in range(int(np.ceil(args.minutes))):
            t0 = start + 60.0 * i
            t1 = min(start + 60.0 * (i + 1), start + 60.0 * args.minutes)
            loads = []
            while time.monotonic() < t1:
                time.sleep(min(1.0, max(0.0, t1 - time.monotonic())))
                node_mb, kids_mb = process_tree_rss_mb(proc.pid)
                samples.append((time.monotonic() - start, node_mb, kids_mb))
                loads.append(os.getloadavg()[0])
                if proc.poll() is not None:
                    raise RuntimeError(f"the node exited with code {proc.returncode}")
            time.sleep(1.2)  # the node flushes its tick log once a second
            reader.poll()
            diags = robot.diagnostics(t0, t1)
            chunks = _float([d.get("chunks", "") for d in diags])
            holds = _float([d.get("holds", "") for d in diags])
            inf = _float([d.get("last_inference_ms", "") for d in diags])
            lat = _float([d.get("latency_p50_ms", "") for d in diags])
            row = {
                "minute": i + 1,
                "ticks": period_stats(reader.ends(t0, t1)),
                "transport": period_stats(robot.arrivals(t0, t1)),
                "inference_ms": round(float(np.median(inf)), 1) if inf else None,
                "latency_p50_ms": round(float(np.median(lat)), 1) if lat else None,
                "chunks": int(chunks[-1] - chunks[0]) if len(chunks) > 1 else None,
                "holds": int(holds[-1]) if holds else None,
                "failures": max(_float([d.get("model_failures", "0") for d in diags]) or [0]),
                "modes": sorted({d.get("mode", "?") for d in diags}),
                "rss_node_mb": round(samples[-1][1], 1),
                "rss_children_mb": round(samples[-1][2], 1),
                "load_1min": round(float(np.mean(loads)), 2),
            }
            info["minutes"].append(row)
            print(bucket_row(i, row), flush=True)
        end = time.monotonic()
    finally:
        rc = stop_policy_node(proc)
        robot.close()
        rclpy.try_shutdown()
    reader.poll()
    s = np.array(samples)
    late = s[s[:, 0] >= 60.0] if len(s) and s[-1, 0] > 120 else s
    growth = {
        k: round(float(np.polyfit(late[:, 0] / 60.0, late[:, j], 1)[0]), 3)
        for j, k in ((1, "node_mb_per_min"), (2, "children_mb_per_min"))
    }
    m = info["minutes"]
    info["summary"] = {
        "duration_s": round(end - start, 1),
        "ticks": period_stats(reader.ends(start, end)),
        "transport": period_stats(robot.arrivals(start, end)),
        "rss_first_minute_mb": {"node": m[0]["rss_node_mb"], "children": m[0]["rss_children_mb"]},
        "rss_last_minute_mb": {"node": m[-1]["rss_node_mb"], "children": m[-1]["rss_children_mb"]},
        "rss_growth_after_first_minute": growth,
        "inference_ms_first_last": (m[0]["inference_ms"], m[-1]["inference_ms"]),
        "failures": m[-1]["failures"],
        "exit_code": rc,
        "load_at_end": os.getloadavg(),
    }
    print(json.dumps(info["summary"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(info, indent=2))
        print(f"wrote {args.out}")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
