"""``make demo-sim``: expert demonstrations -> dataset -> fine-tuned tiny SmolVLA -> closed loop.

    python -m kuavo_smolvla_ros.sim.demo --model artifacts/tiny_smolvla --out artifacts/demo_sim

1. ``--demos`` expert episodes of ``--task`` recorded through the simulator's topics
   (``kuavo-smolvla-sim --record``), small images (128x96) at 10 Hz;
2. the scripted expert, the untrained tiny model and (after 3.) the fine-tuned one, each
   evaluated in closed loop on the same ``--eval-episodes`` seeds (``--eval-seed`` onwards, none
   of them a demonstration seed) with ``kuavo-smolvla-eval``;
3. the bags converted (``convert_bags``, as ``kuavo-smolvla-convert``) and the tiny model
   fine-tuned on them (``finetune``, as ``kuavo-smolvla-train``) on the CPU;
4. success rates printed side by side and written to ``OUT/demo_sim_summary.json``.

Recorded demos and the fine-tuned checkpoint are reused by the next run while the settings are
the same (``OUT/demo_sim_state.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from kuavo_smolvla_ros.sim.tasks import TASKS


def _say(msg: str) -> None:
    print(f"[demo-sim] {msg}", flush=True)


def _rate(r: dict) -> str:
    lo, hi = r["wilson95"]
    return (
        f"{r['successes']:>2}/{r['episodes']:<2} = {100 * r['success_rate']:3.0f} %"
        f"  [{100 * lo:3.0f}, {100 * hi:3.0f}]"
    )


def run(
    model: Path,
    out: Path,
    task: str = "reach",
    demos: int = 40,
    eval_episodes: int = 10,
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    eval_seed: int = 1000,
    time_limit_s: float = 8.0,
    width: int = 128,
    height: int = 96,
) -> dict:
    from kuavo_smolvla_ros.core.config import default_config_path, load_config
    from kuavo_smolvla_ros.sim.cli import record
    from kuavo_smolvla_ros.sim.eval import evaluate, format_table

    t_all = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(default_config_path())
    instruction = TASKS[task].instruction
    state_path = out / "demo_sim_state.json"
    want = {"task": task, "demos": demos, "seed": seed, "size": [height, width]}
    want_train = {**want, "model": str(model.resolve()), "steps": steps, "lr": lr}
    have = json.loads(state_path.read_text()) if state_path.is_file() else {}
    timings: dict[str, float] = {}

    demo_dir = out / "demos"
    t0 = time.monotonic()
    if have.get("recorded") == want and (demo_dir / "episodes.json").is_file():
        rec = json.loads((demo_dir / "episodes.json").read_text())
        _say(f"1/5 reusing {rec['saved']} recorded expert demos in {demo_dir}")
    else:
        _say(f"1/5 recording {demos} expert demos of {task!r} ({width}x{height}, 10 Hz) ...")
        shutil.rmtree(demo_dir, ignore_errors=True)
        rec = record(demos, task, demo_dir, seed=seed, width=width, height=height)
        have = {"recorded": want}
        state_path.write_text(json.dumps(have))
    timings["record"] = time.monotonic() - t0
    bags = sorted(str(p) for p in demo_dir.glob("episode_*"))

    common = dict(time_limit_s=time_limit_s, width=width, height=height, video=True)
    results: dict[str, dict] = {}
    t0 = time.monotonic()
    _say(f"2/5 closed-loop eval of the expert, seeds {eval_seed}..{eval_seed + eval_episodes - 1}")
    results["expert"] = evaluate(
        None, task, eval_episodes, eval_seed, out / "eval_expert", expert=True, **common
    )
    _say("2/5 closed-loop eval of the untrained tiny model")
    results["untrained"] = evaluate(
        str(model), task, eval_episodes, eval_seed, out / "eval_untrained", **common
    )
    timings["eval_expert_untrained"] = time.monotonic() - t0

    t0 = time.monotonic()
    ckpt_file = out / "finetuned_checkpoint.txt"
    if (
        have.get("trained") == want_train
        and ckpt_file.is_file()
        and Path(ckpt_file.read_text()).is_dir()
    ):
        ckpt = Path(ckpt_file.read_text())
        _say(f"3/5 reusing the fine-tuned checkpoint {ckpt}")
    else:
        from kuavo_smolvla_ros.training.convert import convert_bags
        from kuavo_smolvla_ros.training.options import TrainOptions
        from kuavo_smolvla_ros.training.stages import finetune

        _say(f"3/5 converting {len(bags)} bags into a LeRobot dataset ...")
        dataset, train_dir = out / "dataset", out / "finetune"
        shutil.rmtree(train_dir, ignore_errors=True)
        # frames as images, not AV1 video: decoding video dominates a CPU training step
        convert_bags(bags, dataset, cfg, task=instruction, overwrite=True, video=False)
        _say(f"4/5 fine-tuning the tiny model {steps} steps (lr {lr:g}) on the CPU ...")
        opts = TrainOptions(device="cpu", val_samples=0, log_freq=max(steps // 4, 1))
        ckpt = finetune(model, dataset, train_dir, steps=steps, lr=lr, config=cfg, options=opts)
        ckpt_file.write_text(str(ckpt))
        have["trained"] = want_train
        state_path.write_text(json.dumps(have))
    timings["convert_train"] = time.monotonic() - t0

    t0 = time.monotonic()
    _say("5/5 closed-loop eval of the fine-tuned tiny model")
    results["fine-tuned"] = evaluate(
        str(ckpt), task, eval_episodes, eval_seed, out / "eval_finetuned", **common
    )
    timings["eval_finetuned"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - t_all

    print(format_table(results["fine-tuned"]))
    print()
    print(f"closed-loop success on {task!r} ({instruction!r}), {eval_episodes} episodes,"
          f" seeds {eval_seed}..{eval_seed + eval_episodes - 1}, limit {time_limit_s:g} s:")  # fmt: skip
    print(f"  {'driver':<22} success  [95 % Wilson]")
    for name, r in results.items():
        print(f"  {name:<22} {_rate(r)}")
    print(f"  (demos: {rec['saved']} expert episodes, seeds from {seed};"
          f" fine-tune: {steps} steps; total {timings['total'] / 60:.1f} min)")  # fmt: skip
    summary = {
        "task": task,
        "instruction": instruction,
        "demos": rec["saved"],
        "demo_seeds_from": seed,
        "eval_seeds": [eval_seed, eval_seed + eval_episodes - 1],
        "steps": steps,
        "lr": lr,
        "image_size": [height, width],
        "time_limit_s": time_limit_s,
        "timings_s": timings,
        "results": {
            k: {x: v[x] for x in ("successes", "episodes", "success_rate", "wilson95")}
            for k, v in results.items()
        },
        "checkpoint": str(ckpt),
    }
    (out / "demo_sim_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="kuavo_smolvla_ros.sim.demo", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", required=True, type=Path, help="tiny checkpoint (demo model)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--task", default="reach", choices=sorted(TASKS))
    p.add_argument("--demos", type=int, default=40)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--time-limit", type=float, default=8.0)
    a = p.parse_args(argv)
    run(a.model, a.out, a.task, a.demos, a.eval_episodes, a.steps, a.lr,
        time_limit_s=a.time_limit)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
