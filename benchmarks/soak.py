"""Soak: the policy node at 100 Hz for minutes with the tiny model (issue 3).

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
import json
import os
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--size", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--variant", default="process", help="a node_timing.py variant")
    ap.add_argument("--checkpoint-dir", type=Path, default=None, help="reuses <dir>/<size>")
    ap.add_argument("--image-size", default="480x640")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
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
