"""Fine-tuning for real, end to end (issue 12): one converted dataset, the real command lines.

In one call, under ``--out``:

0. ``link``: ``nvidia-smi topo -m`` and the all-reduce bandwidth (``allreduce_gpu.py``).
1. ``model``: the random-weight SmolVLA (``build_demo_model``, ``--size full`` on a GPU).
2. ``data``: ``--episodes`` demo bags (different seeds, written in parallel) converted with the
   real converter into ONE LeRobot dataset with image features (``video=False``: no decoder).
   ``loader``: ``loader_throughput.py``: the training loader alone at 8 and 16 workers, one and
   two loaders at once: batches/s at steady state, to hold against the step time.
3. runs, each a separate process as a user would start it (``python -m``):

   - ``kuavo1``: ``kuavo-smolvla-train`` on 1 GPU, bf16, validation every ``--val-freq`` steps;
   - ``lerobot1``: LeRobot's own ``lerobot-train`` on 1 GPU, same model, data and batch;
   - ``kuavo2``: ``accelerate launch --multi_gpu --num_processes N`` of the same command;
   - ``fp32``: ``kuavo1`` again with ``--mixed-precision no`` (same seed, data, steps);
   - ``resume``: 2 processes: a run cut after its first checkpoint, resumed to the end;
   - ``--variants``: more several-GPU runs with other arguments, e.g.
     ``kuavo2_fp32comm=2:--grad-comm none`` (name=processes:arguments, ``;`` between them;
     ``NAME=value`` arguments are environment variables, e.g. ``OMP_NUM_THREADS=8``).

   ``--profile-steps N`` profiles N steps after the fifth of every kuavo run (inside the
   warm-up, left out of the rates): ``profile_rank<R>.json`` per process, in the summary.

4. ``summary.json`` and a Markdown table: samples/s, step time and its data share, bf16 vs
   fp32 loss curves, validation loss against training wall-clock.

CPU dry run (tiny model, what the GPU call runs, small)::

    .venv/bin/python benchmarks/train_gpu.py --out /tmp/tg --device cpu --size tiny \\
        --episodes 2 --duration 3 --width 64 --height 48 --steps 6 --batch-size 2 --gpus 2

GPU (2 H200 here, see docs/benchmarks.md)::

    python benchmarks/train_gpu.py --out $OUT/run --device cuda --size full --gpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHASES = (
    "link", "model", "data", "items", "loader", "kuavo1", "kuavo2", "fp32", "resume", "lerobot1"
)  # fmt: skip
TASK = "pick up the cube and place it in the box"


def say(msg: str) -> None:
    print(f"[train_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _episode(args: tuple[Path, int, float, int, int]) -> str:
    """One demo bag converted into a one-episode dataset (one process each: PNG encoding)."""
    from kuavo_smolvla_ros.demo.bag import make_demo_bag
    from kuavo_smolvla_ros.training.convert import convert_bags

    out, seed, duration, width, height = args
    bag = make_demo_bag(out / "bag", duration_s=duration, seed=seed, width=width, height=height)
    part = convert_bags([bag], out / "data", task=TASK, overwrite=True, video=False)
    shutil.rmtree(out / "bag")
    return str(part)


def make_data(a: argparse.Namespace, root: Path) -> Path:
    """Demo bags converted in parallel, joined into one dataset with image features."""
    from lerobot.datasets.aggregate import aggregate_datasets

    parts_dir, data = root / "parts", root / "data"
    for d in (parts_dir, data):
        shutil.rmtree(d, ignore_errors=True)
    jobs = [(parts_dir / f"ep{k}", k, a.duration, a.width, a.height) for k in range(a.episodes)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        parts = [Path(p) for p in pool.map(_episode, jobs)]
    say(f"{len(parts)} bags converted in {time.perf_counter() - t0:.0f} s")
    aggregate_datasets([f"local/{p.parent.name}" for p in parts], "local/data", roots=parts,
                       aggr_root=data)  # fmt: skip
    shutil.rmtree(parts_dir, ignore_errors=True)
    return data


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 900) -> dict:
    """Run a command to completion, its output into ``log``; returns rc and wall seconds."""
    say(" ".join(cmd))
    t0 = time.perf_counter()
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                timeout=timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = -9
    wall = time.perf_counter() - t0
    say(f"rc {rc} in {wall:.0f} s ({log.name})")
    if rc != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-40:]), flush=True)
    return {"rc": rc, "process_wall_s": round(wall, 1)}


def kuavo_cmd(a: argparse.Namespace, ckpt: Path, data: Path, out: Path, procs: int,
              extra: list[str]) -> list[str]:  # fmt: skip
    train = ["-m", "kuavo_smolvla_ros.training.cli", "--checkpoint", str(ckpt),
             "--dataset", str(data), "--out", str(out), "--batch-size", str(a.batch_size),
             "--steps", str(a.steps), "--device", a.device, "--log-freq", str(a.log_freq),
             "--val-samples", str(a.val_samples), "--val-fraction", str(1 / a.episodes),
             "--no-progress", *extra]  # fmt: skip
    if procs == 1:
        return [sys.executable, *train]
    if a.device == "cpu":  # accelerate launch --cpu starts one process: torchrun, gloo
        launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        return [sys.executable, *launch, *train]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
              "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no"]  # fmt: skip
    return [sys.executable, *launch, *train]


def lerobot_cmd(a: argparse.Namespace, ckpt: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lerobot.scripts.lerobot_train", f"--policy.path={ckpt}",
            f"--policy.vlm_model_name={ckpt / 'vlm'}", f"--policy.device={a.device}",
            "--policy.push_to_hub=false", f"--dataset.repo_id=local/{data.name}",
            f"--dataset.root={data}", f"--batch_size={a.batch_size}", f"--steps={a.steps}",
            f"--log_freq={a.log_freq}", "--save_checkpoint=false", "--wandb.enable=false",
            f"--output_dir={out}", "--eval_freq=0", "--seed=1000"]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reading the runs back.


def link(root: Path, gpus: int) -> dict[str, Any]:
    """The GPUs' topology and the all-reduce bandwidth between them (NCCL's transport lines)."""
    topo = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True)
    out = root / "link.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(gpus), str(REPO / "benchmarks" / "allreduce_gpu.py"), "--out", str(out)]  # fmt: skip
    env = dict(os.environ, NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS="INIT,GRAPH")
    res = run(cmd, root / "link.log", env, 120)
    text = (root / "link.log").read_text()
    channels = sorted({m for m in re.findall(r"via (\S+(?:/\S+)?)", text)})
    res |= {"topology": topo.stdout.strip().splitlines()[:6], "nccl_transports": channels}
    if out.is_file():
        res |= json.loads(out.read_text())
    return res


def read_profiles(out: Path) -> list[dict[str, Any]]:
    keep = ("rank", "steps", "wall_s_per_step", "compute_s_per_step", "nccl_s_per_step",
            "all_reduces_per_step", "compute_busy_share")  # fmt: skip
    return [{k: json.loads(f.read_text()).get(k) for k in keep}
            for f in sorted(out.glob("profile_rank*.json"))]  # fmt: skip


def read_kuavo(out: Path, batch: int, procs: int, warmup: int) -> dict[str, Any]:
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steady = [r for r in log if r["step"] > warmup]
    upd = np.array([r["update_s"] for r in steady])
    dat = np.array([r["data_s"] for r in steady])
    wall = steady[-1]["wall_s"] - log[warmup - 1]["wall_s"] if warmup else steady[-1]["wall_s"]
    val = [{"step": r["step"], "wall_s": r["wall_s"], "val_loss": r["val_loss"]}
           for r in log if "val_loss" in r]  # fmt: skip
    return {
        "steps": len(log),
        "processes": procs,
        "samples_per_s": round(batch * procs * len(steady) / wall, 2),
        "step_s_median": round(float(np.median(upd + dat)), 4),
        "update_s_median": round(float(np.median(upd)), 4),
        "data_s_mean": round(float(dat.mean()), 4),
        "data_s_max": round(float(dat.max()), 4),
        "data_share": round(float(dat.sum() / (upd.sum() + dat.sum())), 4),
        "losses": [round(r["loss"], 5) for r in log],
        "validation": val,
        "profile": read_profiles(out),
    }


_LEROBOT_LINE = re.compile(r"step:(\S+) .*?loss:(\S+) .*?updt_s:(\S+) data_s:(\S+)")


def _count(text: str) -> float:
    mult = {"K": 1e3, "M": 1e6, "B": 1e9}
    return float(text[:-1]) * mult[text[-1]] if text[-1] in mult else float(text)


def read_lerobot(log: Path, batch: int, log_freq: int, warmup: int) -> dict[str, Any]:
    rows = [(_count(s), float(lo), float(u), float(d))
            for s, lo, u, d in _LEROBOT_LINE.findall(log.read_text())]  # fmt: skip
    steady = [r for r in rows if r[0] - log_freq >= warmup]
    upd = np.array([r[2] for r in steady])
    dat = np.array([r[3] for r in steady])
    step = upd + dat  # interval means, as lerobot-train logs them
    return {
        "log_intervals": len(steady),
        "samples_per_s": round(batch / float(step.mean()), 2) if len(step) else None,
        "step_s_mean": round(float(step.mean()), 4) if len(step) else None,
        "update_s_mean": round(float(upd.mean()), 4) if len(step) else None,
        "data_s_mean": round(float(dat.mean()), 4) if len(step) else None,
        "data_share": round(float(dat.sum() / step.sum()), 4) if len(step) else None,
        "losses_at_log": [r[1] for r in rows],
    }


def item_times(data: Path, n: int = 12) -> dict[str, Any]:
    """Seconds per dataset item in one process: LeRobot's own reads against the training
    loader's (action chunks from column tensors), over the same random items."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from kuavo_smolvla_ros.training.data import read_chunks_from_columns

    delta = {"action": [i / 10 for i in range(50)]}  # SmolVLA's chunk at 10 fps
    out: dict[str, Any] = {}
    idx = np.random.default_rng(0).integers(0, 10**9, n)
    for name in ("lerobot", "kuavo"):
        ds = LeRobotDataset(f"local/{data.name}", root=data, delta_timestamps=delta)
        if name == "kuavo":
            read_chunks_from_columns(ds)
        ds[0]
        times = []
        for i in idx % len(ds):
            t0 = time.perf_counter()
            ds[int(i)]
            times.append(time.perf_counter() - t0)
        out[f"{name}_item_s_median"] = round(float(np.median(times)), 4)
    return out


def compare_precisions(bf16: list[float], fp32: list[float], window: int) -> dict[str, Any]:
    """Loss curves of the same run in bf16 and fp32: per-step and moving-average differences."""
    n = min(len(bf16), len(fp32))
    b, f = np.asarray(bf16[:n]), np.asarray(fp32[:n])
    k = np.ones(window) / window
    bs, fs = np.convolve(b, k, "valid"), np.convolve(f, k, "valid")
    return {
        "steps": n,
        "max_abs_diff_per_step": round(float(np.abs(b - f).max()), 5),
        "median_rel_diff_per_step": round(float(np.median(np.abs(b - f) / np.abs(f))), 5),
        f"max_rel_diff_moving_avg_{window}": round(float(np.max(np.abs(bs - fs) / np.abs(fs))), 5),
        "final_moving_avg": [round(float(bs[-1]), 5), round(float(fs[-1]), 5)],
    }


def resume_check(a: argparse.Namespace, ckpt: Path, data: Path, root: Path) -> dict[str, Any]:
    """Several processes: a run, its last checkpoint removed, resumed to the end."""
    out = root / "resume"
    shutil.rmtree(out, ignore_errors=True)
    steps = a.resume_steps or a.steps
    a = argparse.Namespace(**{**vars(a), "steps": steps})
    cmd = kuavo_cmd(
        a, ckpt, data, out, a.gpus, ["--save-freq", str(steps // 2), "--val-samples", "0"]
    )
    first = run(cmd, root / "resume_a.log", None, a.timeout)
    res: dict[str, Any] = {"first_rc": first["rc"]}
    if first["rc"] != 0:
        return res
    ckpts, log_path = out / "checkpoints", out / "train_log.jsonl"
    full = [json.loads(x)["loss"] for x in log_path.read_text().splitlines()]
    shutil.rmtree(sorted(d for d in ckpts.iterdir() if d.name != "last")[-1])
    (ckpts / "last").unlink()
    (ckpts / "last").symlink_to(sorted(d.name for d in ckpts.iterdir())[-1])
    second = run([*cmd, "--resume"], root / "resume_b.log", None, a.timeout)
    res["resume_rc"] = second["rc"]
    if second["rc"] == 0:
        log = [json.loads(x) for x in log_path.read_text().splitlines()]
        state = json.loads((ckpts / "last" / "training_state" / "training_step.json").read_text())
        half = steps // 2
        res |= {
            "steps_logged_once_each": [r["step"] for r in log] == list(range(1, steps + 1)),
            "final_step": state["step"],
            "loss_second_half_uninterrupted": round(float(np.mean(full[half:])), 5),
            "loss_second_half_resumed": round(float(np.mean([r["loss"] for r in log][half:])), 5),
        }
    return res


def hardware(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        n = torch.cuda.device_count()
        return f"{n}x {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    import platform

    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", choices=("tiny", "full"), default="full")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per demo bag")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lerobot-steps", type=int, default=None, help="default: --steps")
    p.add_argument("--resume-steps", type=int, default=None, help="default: --steps")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the rates")
    p.add_argument("--log-freq", type=int, default=10)
    p.add_argument("--val-freq", type=int, default=20)
    p.add_argument("--val-samples", type=int, default=64)
    p.add_argument("--gpus", type=int, default=2, help="processes of the several-GPU runs")
    p.add_argument("--phases", default=",".join(PHASES), help=f"subset of {PHASES}")
    p.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    p.add_argument("--variants", default="",
                   help="more several-GPU runs: name=processes:arguments;...")  # fmt: skip
    p.add_argument("--profile-steps", type=int, default=0, help="per kuavo run (after step 5)")
    p.add_argument("--side-by-side", action="store_true",
                   help="kuavo1 on GPU 0 and lerobot1 on GPU 1 at the same time")  # fmt: skip
    a = p.parse_args(argv)
    phases = a.phases.split(",")
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    summary_path = root / "summary.json"
    summary: dict[str, Any] = {
        "hardware": hardware(a.device),
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
    }

    def save() -> None:
        summary_path.write_text(json.dumps(summary, indent=2))
        if os.environ.get("SUMMARY_COPY"):  # a copy that survives the caller's time limit
            Path(os.environ["SUMMARY_COPY"]).write_text(summary_path.read_text())

    if "link" in phases and a.device.startswith("cuda"):
        summary["link"] = link(root, a.gpus)
        say(f"link: {json.dumps(summary['link'])[:1500]}")
        save()
    ckpt = root / "model"
    if "model" in phases:
        from kuavo_smolvla_ros.demo.model import build_demo_model

        t0 = time.perf_counter()
        shutil.rmtree(ckpt, ignore_errors=True)
        build_demo_model(ckpt, size=a.size)
        say(f"{a.size} model in {time.perf_counter() - t0:.0f} s")
    data = root / "data"
    if "data" in phases:
        make_data(a, root)
    info = json.loads((data / "meta" / "info.json").read_text())
    summary["dataset"] = {k: info[k] for k in ("total_episodes", "total_frames", "fps")}
    summary["dataset"]["image"] = [a.height, a.width]
    save()

    if "items" in phases:
        summary["items"] = item_times(data)
        say(f"items: {summary['items']}")
        save()
    if "loader" in phases:
        out = root / "loader.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / "loader_throughput.py"), "--dataset",
               str(data), "--workers", "8,16", "--copies", f"1,{a.gpus}", "--batch-size",
               str(a.batch_size), "--device", a.device, "--out", str(out)]  # fmt: skip
        summary["loader"] = run(cmd, root / "loader.log", None, a.timeout)
        if out.is_file():
            summary["loader"] |= json.loads(out.read_text())
        save()
    runs: dict[str, Any] = summary.setdefault("runs", {})

    variants: dict[str, tuple[int, list[str]]] = {}
    for spec in filter(None, a.variants.split(";")):
        vname, rest = spec.split("=", 1)
        procs_text, _, args_text = rest.partition(":")
        variants[vname.strip()] = (int(procs_text), args_text.split())

    def one_run(name: str, gpu: int) -> dict[str, Any]:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu)) if a.device != "cpu" else None
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        if name == "lerobot1":
            steps = a.lerobot_steps or a.steps
            freq = max(steps // 3, 1)  # three logged intervals, the first one left out
            la = argparse.Namespace(**{**vars(a), "steps": steps, "log_freq": freq})
            res = run(lerobot_cmd(la, ckpt, data, out), root / f"{name}.log", env, a.timeout)
            if res["rc"] == 0:
                res |= read_lerobot(root / f"{name}.log", a.batch_size, freq, freq)
            return res
        procs, extra = variants.get(name, (a.gpus if name == "kuavo2" else 1, []))
        env_vars = dict(x.split("=", 1) for x in extra if re.fullmatch(r"[A-Z_]+=.*", x))
        extra = [x for x in extra if x.split("=", 1)[0] not in env_vars]
        extra = [*extra, "--profile-steps", str(a.profile_steps)]
        if name in ("kuavo1", "kuavo2"):  # loss against time: the headline runs
            extra += ["--val-freq", str(a.val_freq)]
        else:  # fp32 and the variants: speed (and loss) only
            extra += ["--val-samples", "0"] + (
                ["--mixed-precision", "no"] if name == "fp32" else []
            )
        cmd = kuavo_cmd(a, ckpt, data, out, procs, extra)
        env = dict(os.environ, **env_vars)
        if procs == 1 and a.device != "cpu":  # one process: one GPU; several: every GPU
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        res = run(cmd, root / f"{name}.log", env, a.timeout)
        if res["rc"] == 0:
            res |= read_kuavo(out, a.batch_size, procs, a.warmup)
        return res

    order = [n for n in ("kuavo2", "kuavo1", "fp32", "resume", "lerobot1") if n in phases]
    pos = order.index("kuavo1") + 1 if "kuavo1" in order else 0
    order[pos:pos] = list(variants)  # right after the 1-GPU run they are compared with
    if a.side_by_side and "kuavo1" in order and "lerobot1" in order:
        # the two 1-GPU runs at once, one GPU each (separate cards, 32 cores between them)
        order.remove("lerobot1")
    for name in order:
        if name == "resume":
            runs[name] = resume_check(a, ckpt, data, root)
        elif name == "kuavo1" and a.side_by_side and "lerobot1" in phases:
            with ThreadPoolExecutor(2) as pool:
                mine, theirs = pool.map(one_run, ("kuavo1", "lerobot1"), (0, 1))
            runs["kuavo1"], runs["lerobot1"] = mine, theirs
            runs["kuavo1"]["side_by_side_with"] = "lerobot1"
        else:
            runs[name] = one_run(name, 0)
        save()
    if "kuavo1" in runs and "fp32" in runs and "losses" in runs["fp32"]:
        summary["bf16_vs_fp32"] = compare_precisions(
            runs["kuavo1"].get("losses", []), runs["fp32"]["losses"], max(a.steps // 10, 1)
        )
    save()
    print_table(summary)
    return 0


def print_table(s: dict[str, Any]) -> None:
    print(f"\n### {s['hardware']}; dataset {s.get('dataset')}")
    print(
        "| run | processes | samples/s | step s (median) | update s | data s (mean/max) | data share |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in s.get("runs", {}).items():
        if name == "resume" or "samples_per_s" not in r:
            continue
        step = r.get("step_s_median", r.get("step_s_mean"))
        upd = r.get("update_s_median", r.get("update_s_mean"))
        dmax = r.get("data_s_max", "-")
        print(f"| {name} | {r.get('processes', 1)} | {r['samples_per_s']} | {step} | {upd} |"
              f" {r['data_s_mean']} / {dmax} | {r['data_share']} |")  # fmt: skip
    for name in ("kuavo1", "kuavo2"):
        v = s.get("runs", {}).get(name, {}).get("validation")
        if v:
            print(f"{name} val loss vs wall s: " + ", ".join(
                f"{x['wall_s']:.0f}s:{x['val_loss']:.3f}" for x in v))  # fmt: skip
    print("bf16 vs fp32:", s.get("bf16_vs_fp32"))
    print("resume:", s.get("runs", {}).get("resume"))


if __name__ == "__main__":
    raise SystemExit(main())
