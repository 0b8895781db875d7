"""``make demo``: the tiny SmolVLA learns the demo bag's motion and replays it through the node.

    python -m kuavo_smolvla_ros.demo.pipeline --model DIR --bag DIR --out DIR [--steps N] [--lr X]

1. **Untrained, offline**: the tiny random-weight checkpoint (``--model``) replayed over the
   demo bag with the node's core in simulated time: its open-loop error against the recorded
   commands.
2. **Fine-tune** (``train.finetune`` on the bag converted by ``convert.convert_bags``): ``--steps``
   steps on the CPU (the GPU when there is one). Kept in ``OUT/finetune`` and reused by the next
   run while the bag, model and settings are the same (``OUT/demo_state.json``).
3. **Fine-tuned, live**: the real ROS 2 node runs the fine-tuned checkpoint while the bag plays
   with a simulated clock; its recorded outputs give the demo's report (``OUT/live``: report.json,
   trajectories.png with the untrained commands overlaid, outputs bag, node log).
4. **Fine-tuned, offline**: the same open-loop replay as step 1, so the two errors compare like
   for like (same simulated latency, seed and ticks). Printed side by side and written to
   ``OUT/demo_summary.json``.

Without the fine-tuning modules (``--no-finetune``, or ``train`` / ``convert`` not importable)
the demo replays the untrained model live and says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from kuavo_smolvla_ros.bag import BagError
from kuavo_smolvla_ros.core.config import Config, ConfigError, default_config_path, load_config
from kuavo_smolvla_ros.replay.live import replay_live
from kuavo_smolvla_ros.replay.offline import replay_offline
from kuavo_smolvla_ros.replay.plan import ReplayError, ReplayResult
from kuavo_smolvla_ros.replay.report import make_report, print_report, write_report

PROG = "kuavo_smolvla_ros.demo.pipeline"
DEFAULT_STEPS = 300
DEFAULT_LR = 3e-3  # the tiny random model learns the demo in 300 CPU steps (preset: 1e-4)
SEED = 0


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _offline(checkpoint: Path, bag: Path, cfg: Config) -> tuple[ReplayResult, dict[str, Any]]:
    from kuavo_smolvla_ros.runners.eager import load_policy

    runner = load_policy(checkpoint, device=cfg.policy.device, config=cfg)
    res = replay_offline(bag, runner, cfg, seed=SEED, progress=None)
    res.info["checkpoint"] = str(checkpoint)
    return res, make_report(res, cfg)


def _finetune(model: Path, bag: Path, out: Path, cfg: Config, steps: int, lr: float) -> Path | None:
    """The fine-tuned checkpoint (trained now, or reused), or None if training is unavailable."""
    try:
        from kuavo_smolvla_ros.training import TrainOptions, finetune
        from kuavo_smolvla_ros.training.convert import convert_bags
    except ImportError as exc:  # the fine-tuning modules are optional for the demo
        _say(f"fine-tuning is not available here ({exc}); replaying the untrained model")
        return None
    state_path = out / "demo_state.json"
    want = {
        "bag": str(bag.resolve()),
        "bag_mtime": (bag / "metadata.yaml").stat().st_mtime if bag.is_dir() else None,
        "model": str(model.resolve()),
        "steps": steps,
        "lr": lr,
    }
    with_state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    ckpt = Path(with_state.get("checkpoint", ""))
    if with_state.get("inputs") == want and (ckpt / "config.json").is_file():
        _say(f"2/4 reusing the fine-tuned checkpoint {ckpt} (same bag, model and settings)")
        return ckpt
    dataset, train_dir = out / "dataset", out / "finetune"
    for d in (dataset, train_dir):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.monotonic()
    _say(f"2/4 fine-tuning: converting {bag} into a LeRobot dataset ...")
    convert_bags(bag, dataset, cfg, overwrite=True)
    _say(f"converted in {time.monotonic() - t0:.0f} s; fine-tuning {steps} steps (lr {lr:g}) ...")
    t0 = time.monotonic()
    opts = TrainOptions(device=cfg.policy.device, val_samples=0, log_freq=max(steps // 3, 1))
    ckpt = finetune(model, dataset, train_dir, steps=steps, lr=lr, config=cfg, options=opts)
    _say(f"fine-tuned in {time.monotonic() - t0:.0f} s -> {ckpt}")
    state_path.write_text(json.dumps({"inputs": want, "checkpoint": str(ckpt)}, indent=2))
    return Path(ckpt)


def _row(label: str, rep: dict[str, Any]) -> list[str]:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    mae, rmse = rep.get("mae_mean") or {}, rep.get("rmse_mean") or {}
    return [label, f(mae.get("arm_deg")), f(rmse.get("arm_deg")), f(mae.get("gripper"))]


def comparison_table(untrained: dict[str, Any], tuned: dict[str, Any] | None, steps: int) -> str:
    head = ["open-loop error vs recorded", "MAE arm deg", "RMSE arm deg", "MAE claw 0-100"]
    rows = [head, _row("untrained tiny model", untrained)]
    if tuned is not None:
        rows.append(_row(f"fine-tuned ({steps} steps)", tuned))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def run(
    model: Path,
    bag: Path,
    out: Path,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    speed: float = 1.0,
    finetune: bool = True,
    config: Path | None = None,
) -> dict[str, Any]:
    cfg = load_config(config or default_config_path())
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    _say(f"1/4 untrained model {model}: offline replay of {bag}")
    untrained_res, untrained = _offline(model, bag, cfg)
    write_report(untrained, untrained_res, cfg, out / "untrained_offline")

    tuned_ckpt = _finetune(model, bag, out, cfg, steps, lr) if finetune else None
    if not finetune:
        _say("2/4 fine-tuning skipped (--no-finetune)")
    live_ckpt = tuned_ckpt or model

    _say(f"3/4 live replay through the ROS 2 node ({live_ckpt}), x{speed:g} ...")
    live_res = replay_live(bag, live_ckpt, cfg, out / "live", speed=speed, seed=SEED)
    live_res.info["checkpoint"] = str(live_ckpt)
    live = make_report(live_res, cfg)
    title = "fine-tuned" if tuned_ckpt else "untrained"
    report_path, plot = write_report(
        live,
        live_res,
        cfg,
        out / "live",
        extra=[("untrained (offline)", untrained_res)],
        title=f"{bag.name}: {title} tiny SmolVLA, live through the node",
    )

    tuned = None
    if tuned_ckpt is not None:
        _say("4/4 fine-tuned model: offline replay (open-loop error, like step 1)")
        tuned_res, tuned = _offline(tuned_ckpt, bag, cfg)
        write_report(tuned, tuned_res, cfg, out / "finetuned_offline")

    print()
    print_report(live, cfg)
    print()
    print(comparison_table(untrained, tuned, steps))
    if tuned is not None:
        print(
            "(offline replay of the bag the model was fine-tuned on, 100 ms simulated latency,"
            f" seed {SEED}: the demo shows the loop closing, not generalization)"
        )
    summary = {
        "live_report": str(report_path),
        "plot": str(plot),
        "untrained_offline": {
            "mae_mean": untrained["mae_mean"],
            "rmse_mean": untrained["rmse_mean"],
        },
        "finetuned_offline": None
        if tuned is None
        else {"mae_mean": tuned["mae_mean"], "rmse_mean": tuned["rmse_mean"], "steps": steps},
        "live": {k: live[k] for k in ("mae_mean", "latency_ms", "rate_hz", "n_chunks", "holds")},
        "seconds": round(time.monotonic() - t_start, 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"report: {report_path}")
    print(f"plot:   {plot}")
    print(f"(demo took {summary['seconds']:.0f} s; summary in {out / 'demo_summary.json'})")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path, help="tiny checkpoint (demo_model)")
    p.add_argument("--bag", required=True, type=Path, help="demo bag (demo_bag)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="fine-tuning steps")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="fine-tuning learning rate")
    p.add_argument("--speed", type=float, default=1.0, help="live playback speed")
    p.add_argument("--config", type=Path, help="package YAML (default config/kuavo_smolvla.yaml)")
    p.add_argument("--no-finetune", action="store_true", help="replay the untrained model only")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from kuavo_smolvla_ros.core.dims import DimensionError
    from kuavo_smolvla_ros.runners.eager import CheckpointError

    try:
        run(
            a.model,
            a.bag,
            a.out,
            steps=a.steps,
            lr=a.lr,
            speed=a.speed,
            finetune=not a.no_finetune,
            config=a.config,
        )
    except (ReplayError, BagError, ConfigError, CheckpointError, DimensionError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
