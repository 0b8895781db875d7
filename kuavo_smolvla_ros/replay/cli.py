"""``kuavo-smolvla-replay``: replay a rosbag through the policy and report how its commands
compare with the recorded ones.

    kuavo-smolvla-replay BAG --checkpoint CKPT [--config YAML] [--mode live|offline]
                         [--speed X] [--out DIR] [--seed N] [--latency-ms MS|measured|REPORT]
                         [--timeline LIVE_DIR] [--task TEXT] [--device DEV] [--no-progress]

``BAG``: a ROS 2 bag (sqlite3 or mcap directory, or one ``.db3`` / ``.mcap`` file, split bags
too) or stock Kuavo ROS 1 recordings (``.bag`` files, or a directory of split ones); read with
``bag`` (kuavo_msgs from the bag's own definitions, the ``lejuClawState`` fix). Topics, fields,
joints and cameras come from the same config as the node: ``--config`` or, by default,
``config/kuavo_smolvla.yaml`` for ROS 2 bags and ``config/kuavo_ros1_stock.yaml`` for ROS 1 ones.

Modes: ``offline`` (default, ``replay.offline``): the node's core in simulated bag time, no ROS;
``live`` (``replay.live``): the ROS 2 node in a child process, the bag played with ``/clock``.
The report (``DIR/report.json``, a printed table, ``DIR/trajectories.png``): ``replay.report``.

Bad input never shows a traceback: a missing, truncated or corrupt bag, absent topics,
undecodable or unknown message types, stamps out of order and undecodable frames give one-line
messages; what can still be evaluated is reported (``"partial": true`` and ``warnings`` in the
report). Exit status: 0 a report was written (perhaps partial), 1 nothing could be evaluated,
2 a usage, config or checkpoint error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kuavo_smolvla_ros.bag import BagError, open_bag
from kuavo_smolvla_ros.core.config import ConfigError, default_config_path, load_config
from kuavo_smolvla_ros.replay.isolation import claim_out_dir
from kuavo_smolvla_ros.replay.live import replay_live
from kuavo_smolvla_ros.replay.offline import (
    DEFAULT_LATENCY_S,
    Latency,
    replay_offline,
    timeline_from_dir,
)
from kuavo_smolvla_ros.replay.plan import ReplayError, plan_inputs, replay_config
from kuavo_smolvla_ros.replay.report import make_report, print_report, write_report

__all__ = ["main"]

PROG = "kuavo-smolvla-replay"
EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2


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
    name = Path(args.bag[0]).name.split(".")[0] or "bag"
    out = Path(args.out or f"replay_{name}_{args.mode}")
    try:
        claim_out_dir(out)  # before any work: never write into (or delete) someone's files
        # The bag first: an unreadable bag or absent inputs fail before the model loads.
        with open_bag(bag) as reader:
            default = "kuavo_ros1_stock.yaml" if reader.ros1 else "kuavo_smolvla.yaml"
            cfg_path = Path(args.config) if args.config else default_config_path(default)
            cfg = load_config(cfg_path)
            plan_inputs(replay_config(cfg, args.task), reader, args.task)
        seed = args.seed if args.seed is not None else max(cfg.policy.seed, 0)
        latency = _parse_latency(args.latency_ms)
        ticks = None
        if args.timeline:
            ticks, latency = timeline_from_dir(args.timeline)
        progress = False if args.no_progress else None
        device = args.device or cfg.policy.device
        if args.mode == "offline":
            from kuavo_smolvla_ros.runners.factory import make_runner

            # In this process: simulated time needs no child to keep a control timer on time.
            runner = make_runner(cfg, checkpoint=args.checkpoint, device=device, backend="thread")
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
