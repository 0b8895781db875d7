"""Simulator speed: physics steps/s, render ms per frame per camera, closed-loop real-time factor.

    python benchmarks/sim.py --device cpu --size tiny --out sim_cpu.json
    MUJOCO_GL=egl python benchmarks/sim.py --device cuda --size full --out sim_gpu.json

1. **Physics**: ``SimRobot`` (2 ms steps, 5 per 10 ms control period) following the scripted
   expert's pick motion, no rendering: MuJoCo steps per second and the physics-only real-time
   factor.
2. **Rendering**: each camera rendered ``--frames`` times at ``--width`` x ``--height`` (default
   640x480, the stock size) with the offscreen renderer of ``MUJOCO_GL`` (EGL: Mesa on a CPU, the
   NVIDIA driver on a GPU), and the JPEG encoding the node adds; ms per frame per camera.
3. **Closed loop**: ``kuavo-smolvla-eval`` machinery (simulator process + policy node on
   ``--device``, real ROS 2 topics, sim time) with the simulator free-running
   (``real_time_factor 0``) at the same image size and 30 Hz cameras; real-time factor = sim
   seconds / wall seconds over the episodes (handshake included). The model is ``--checkpoint``
   or the offline-built SmolVLA architecture of ``--size`` (``full`` = the real 450M model,
   random weights; on CUDA the node's fast path, ``policy.fast_path: auto``).

Prints a markdown table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_physics(seconds: float) -> dict:
    from kuavo_smolvla_ros.sim.expert import Expert
    from kuavo_smolvla_ros.sim.robot import SimConfig, SimRobot
    from kuavo_smolvla_ros.sim.tasks import make_task

    r = SimRobot(SimConfig(width=64, height=48))
    task = make_task("pick")
    layout = task.sample_layout(0)
    r.reset_pose()
    task.place(r, layout)
    ex = Expert(r.model, "pick", layout, r.arm_positions(), r.time)
    n = int(seconds / r.cfg.control_dt)
    t0 = time.perf_counter()
    for _ in range(n):
        q, c = ex.command(r.time, r.arm_positions())
        r.command_arm(q)
        r.command_claws(c)
        r.step()
    wall = time.perf_counter() - t0
    steps = n * r.cfg.substeps
    return {
        "sim_s": n * r.cfg.control_dt,
        "mj_steps": steps,
        "steps_per_s": steps / wall,
        "physics_rtf": n * r.cfg.control_dt / wall,
        "success": bool(task.success(r)),
    }


def bench_render(width: int, height: int, frames: int) -> dict:
    import cv2

    from kuavo_smolvla_ros.sim.model import CAMERAS
    from kuavo_smolvla_ros.sim.robot import SimConfig, SimRobot

    r = SimRobot(SimConfig(width=width, height=height))
    out = {}
    for cam in CAMERAS:
        r.render(cam)  # warm-up (context, textures)
        render_ms, jpeg_ms = [], []
        for i in range(frames):
            r.step()
            if i % 10 == 0:  # keep the scene moving a little
                r.command_arm(r.ready + 0.05 * np.sin(i) * np.ones(14))
            t0 = time.perf_counter()
            img = r.render(cam)
            t1 = time.perf_counter()
            cv2.imencode(".jpg", img[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), 90])
            t2 = time.perf_counter()
            render_ms.append(1e3 * (t1 - t0))
            jpeg_ms.append(1e3 * (t2 - t1))
        out[cam] = {
            "render_ms_mean": float(np.mean(render_ms)),
            "render_ms_p95": float(np.percentile(render_ms, 95)),
            "jpeg_ms_mean": float(np.mean(jpeg_ms)),
        }
    r.close()
    return out


def bench_loop(checkpoint: str, device: str, width: int, height: int, episodes: int) -> dict:
    from kuavo_smolvla_ros.sim.eval import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        rep = evaluate(
            checkpoint, "reach", episodes, 0, Path(tmp), time_limit_s=5.0, width=width,
            height=height, camera_rate_hz=30.0, real_time_factor=0.0, device=device,
            video=False, progress=False,
        )  # fmt: skip
    eps = rep["per_episode"]
    sim_s = sum(e["duration_s"] for e in eps)
    wall_s = sum(e["wall_s"] for e in eps)
    return {
        "episodes": len(eps),
        "sim_s": sim_s,
        "wall_s": wall_s,
        "loop_rtf": sim_s / wall_s if wall_s else None,
        "commands_per_sim_s": sum(e["commands"] for e in eps) / sim_s if sim_s else None,
        "holds": rep["holds"],
        "clamped": rep["clamped"],
    }


def hardware(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    if device.startswith("cuda"):
        import torch

        desc += f", {torch.cuda.get_device_name(0)}"
    return desc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="tiny", choices=("tiny", "full"))
    p.add_argument("--checkpoint", default=None, help="default: build --size offline")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=30, help="rendered frames per camera")
    p.add_argument("--physics-s", type=float, default=10.0, help="sim seconds of physics")
    p.add_argument("--episodes", type=int, default=2, help="closed-loop episodes (5 s each)")
    p.add_argument("--skip-loop", action="store_true")
    p.add_argument("--out", type=Path, default=Path("sim_bench.json"))
    a = p.parse_args(argv)
    res: dict = {"hardware": hardware(a.device), "mujoco_gl": os.environ["MUJOCO_GL"],
                 "size": [a.height, a.width], "device": a.device, "model": a.size}  # fmt: skip
    import mujoco

    res["mujoco"] = mujoco.__version__
    print(f"hardware: {res['hardware']}; MUJOCO_GL={res['mujoco_gl']}", flush=True)
    res["physics"] = bench_physics(a.physics_s)
    print(f"physics: {res['physics']['steps_per_s']:.0f} steps/s", flush=True)
    res["render"] = bench_render(a.width, a.height, a.frames)
    if not a.skip_loop:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = a.checkpoint
            if ckpt is None:
                from kuavo_smolvla_ros.demo.model import build_demo_model

                ckpt = str(build_demo_model(Path(tmp) / f"{a.size}_smolvla", size=a.size))
            res["loop"] = bench_loop(ckpt, a.device, a.width, a.height, a.episodes)
    a.out.write_text(json.dumps(res, indent=2))
    ph = res["physics"]
    print("\n| what | value |\n|---|---|")
    print(f"| physics steps/s (2 ms steps, no rendering) | {ph['steps_per_s']:.0f} |")
    print(f"| physics-only real-time factor | {ph['physics_rtf']:.1f} |")
    for cam, r in res["render"].items():
        print(f"| render {cam} {a.width}x{a.height} ms/frame (p95) | {r['render_ms_mean']:.1f}"
              f" ({r['render_ms_p95']:.1f}); JPEG {r['jpeg_ms_mean']:.1f} |")  # fmt: skip
    if "loop" in res:
        lp = res["loop"]
        print(f"| closed loop RTF ({a.size} model on {a.device}, 3 cameras at 30 Hz) |"
              f" {lp['loop_rtf']:.2f} ({lp['sim_s']:.1f} sim s in {lp['wall_s']:.1f} s) |")  # fmt: skip
    print(f"\nwritten to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
