"""SmolVLA chunk latency: LeRobot 0.4.4 as shipped vs this package's runner (issue 6).

Builds the SmolVLA architecture offline (random weights, ``demo_model``; ``full`` = the real
450M model), feeds three 480x640 cameras, a 16-D state and a task, and times one chunk
(50 x 16, 10 flow steps) per call:

  (a) ``lerobot``: ``SmolVLAPolicy.predict_action_chunk`` as shipped (float32, eager), with its
      saved pre/post processors (``prepare_observation_for_inference`` -> preprocessor ->
      model -> postprocessor), exactly as LeRobot's own scripts run it.
  (b) ``runner``: the package's default runner (``load_policy`` with ``fast_path=auto``), fed
      through ``runners.run_request`` as the node feeds it -- on CUDA the fast path (bf16 + CUDA
      graphs), on the CPU the fast path's float32 code when it equals LeRobot at warm-up.
  (c) extras (``--extra``): ``eager`` (``fast_path=off``: LeRobot's path inside the runner, the
      CPU default before issue 10; default on the CPU), ``fp32`` (the fast path in float32 with
      CUDA graphs; default on CUDA: the implementation's error without bf16's), ``no-triton``.

Every variant sees the same inputs and the same seeded noise; the runners are compared with
(a) chunk by chunk (relative L2 error in robot units, max abs error, NaN count). Prints a
markdown table per model size last and writes everything as JSON to ``--out``.

    python benchmarks/inference.py --device cuda --size full --out inference_gpu.json
    python benchmarks/inference.py --device cpu --size tiny,full --out inference_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASK = "pick up the red cube and place it in the box"


def _checkpoint(size: str, where: str | None) -> tuple[Path, float]:
    """``where`` if it holds a model, else build ``size`` there (or in a temp dir)."""
    from kuavo_smolvla_ros.demo.model import build_demo_model

    path = Path(where or tempfile.mkdtemp(prefix=f"smolvla_{size}_"))
    if (path / "model.safetensors").is_file():
        return path, 0.0
    t0 = time.perf_counter()
    build_demo_model(path, size=size)
    return path, time.perf_counter() - t0


def _cases(n: int, height: int, width: int, cameras: tuple[str, ...], seed: int = 0) -> list:
    """``n`` (state, images, seed, leftover, delay) cases: random frames, states within limits."""
    from kuavo_smolvla_ros.core.config import RobotConfig

    robot = RobotConfig()
    lo, hi = np.asarray(robot.lower), np.asarray(robot.upper)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        state = rng.uniform(lo, hi)
        images = {c: rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for c in cameras}
        leftover = rng.uniform(lo, hi, size=(40, robot.dim))
        out.append((state, images, 1000 + i, leftover, int(rng.integers(1, 8))))
    return out


def _stats(times_s: list[float]) -> dict[str, float]:
    t = np.asarray(times_s) * 1e3
    return {
        "median_ms": float(np.median(t)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "n": len(t),
    }


def _errors(outs: list[np.ndarray], refs: list[np.ndarray]) -> dict[str, float]:
    rel = [float(np.linalg.norm(o - r) / np.linalg.norm(r)) for o, r in zip(outs, refs)]
    return {
        "rel_err_max": max(rel),
        "rel_err_median": float(np.median(rel)),
        "max_abs_err": max(float(np.abs(o - r).max()) for o, r in zip(outs, refs)),
        "nan_count": int(sum(int(np.isnan(o).sum()) for o in outs)),
    }


class _Gpu:
    """Peak memory of one variant (CUDA), measured from what was allocated before it."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.on = torch, device.startswith("cuda")

    def start(self) -> None:
        if self.on:
            gc.collect()
            self.torch.cuda.empty_cache()
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()

    def peak_mb(self) -> float | None:
        if not self.on:
            return None
        self.torch.cuda.synchronize()
        return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20

    def loaded(self) -> None:
        """Start-up is over: note what stays allocated, and measure the serving peak from here."""
        if self.on:
            self.torch.cuda.synchronize()
            self.peak_with_load = self.peak_mb()
            self.resident = (self.torch.cuda.memory_allocated() - self.base) / 2**20
            self.torch.cuda.reset_peak_memory_stats()

    def report(self) -> dict[str, float | None]:
        """Peak over load + serving, what stays allocated, and the peak while serving."""
        if not self.on:
            return {"peak_gpu_mb": None}
        serving = self.peak_mb()
        return {
            "peak_gpu_mb": max(self.peak_with_load, serving),
            "resident_gpu_mb": self.resident,
            "serving_peak_gpu_mb": serving,
        }


def bench_lerobot(ckpt: Path, args, cases: list, gpu: _Gpu) -> dict[str, Any]:
    """(a): LeRobot's policy and processors, nothing of this package in the timed path."""
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.rtc.configuration_rtc import RTCConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.utils import prepare_observation_for_inference

    gpu.start()
    t0 = time.perf_counter()
    cfg = PreTrainedConfig.from_pretrained(ckpt)
    cfg.vlm_model_name, cfg.device, cfg.load_vlm_weights = str(ckpt / "vlm"), args.device, False
    policy = SmolVLAPolicy.from_pretrained(str(ckpt), config=cfg)
    policy.eval()
    overrides = {
        "device_processor": {"device": args.device},
        "tokenizer_processor": {"tokenizer_name": str(ckpt / "vlm")},
    }
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=str(ckpt), preprocessor_overrides=overrides
    )
    load_s = time.perf_counter() - t0
    gpu.loaded()
    norm = next(s for s in pre.steps if type(s).__name__ == "NormalizerProcessorStep")
    features = [k for k in cfg.image_features]

    def run(case, rtc: bool = False) -> np.ndarray:
        state, images, seed, leftover, delay = case
        obs = {"observation.state": state.astype(np.float32)}
        obs.update({f: images[f.rsplit(".", 1)[-1]].copy() for f in features})
        batch = pre(prepare_observation_for_inference(obs, torch.device(args.device), task=TASK))
        kwargs = {}
        if rtc:
            left = torch.as_tensor(leftover, dtype=torch.float32, device=args.device)
            kwargs = {
                "inference_delay": delay,
                "prev_chunk_left_over": norm._normalize_action(left, inverse=False)[None],
            }
        torch.manual_seed(seed)
        actions = post(policy.predict_action_chunk(batch, **kwargs))
        return actions[0].to(torch.float64).numpy()

    times = []
    for i in range(args.warmup + args.baseline_iters):
        t = time.perf_counter()
        run(cases[i % len(cases)])
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    refs = [run(c) for c in cases]
    result = {"load_s": load_s, **_stats(times), **gpu.report(), "refs": refs}
    if args.rtc:
        policy.config.rtc_config = RTCConfig(enabled=True, execution_horizon=10)
        policy.init_rtc_processor()
        rtc_times = []
        for i in range(args.warmup + min(args.rtc_iters, args.baseline_iters)):
            t = time.perf_counter()
            run(cases[i % len(cases)], rtc=True)
            if i >= args.warmup:
                rtc_times.append(time.perf_counter() - t)
        result["rtc"] = _stats(rtc_times)
        result["rtc_refs"] = [run(c, rtc=True) for c in cases]
    return result


def _request(case, rtc: bool = False) -> tuple[Any, int]:
    """A controller request for one case, as the node's controller makes it, and its seed."""
    from kuavo_smolvla_ros.core.controller import InferenceRequest
    from kuavo_smolvla_ros.core.observation import Observation

    state, images, seed, leftover, delay = case
    obs = Observation(state=state, images=images, task=TASK, stamp=0.0)
    if not rtc:
        return InferenceRequest(obs, episode=0), seed
    return InferenceRequest(obs, episode=0, leftover=leftover, delay_steps=delay), seed


def bench_runner(ckpt: Path, args, cases: list, gpu: _Gpu, mode: str) -> dict[str, Any]:
    """(b) and (c): the package's runner, start-up included (load + warm-up + capture)."""
    import torch

    from kuavo_smolvla_ros.core.config import Config, SchedulerConfig
    from kuavo_smolvla_ros.runners.base import run_request
    from kuavo_smolvla_ros.runners.eager import load_policy, warm_up
    from kuavo_smolvla_ros.runners.fast import FastRunner

    cfg = Config(scheduler=SchedulerConfig(merge_mode="rtc" if args.rtc else "weighted_average"))
    gpu.start()
    t0 = time.perf_counter()
    if mode == "default":  # what load_policy gives: fast_path=auto, warm-up (and its check)
        runner = load_policy(ckpt, args.device, cfg, warmup=True)
    elif mode == "eager":
        runner = load_policy(ckpt, args.device, cfg, warmup=True, fast_path="off")
    else:  # fp32: the fast path in float32 (graphs on CUDA); no-triton: the torch reference ops
        parts = load_policy(ckpt, args.device, cfg, warmup=False, fast_path="off").parts
        if mode == "fp32":
            runner = FastRunner(parts, dtype=torch.float32)
        else:
            runner = FastRunner(parts, triton=False)
        warm_up(runner)
    startup_s = time.perf_counter() - t0
    gpu.loaded()
    on_fast = isinstance(runner, FastRunner)
    times, pre_ms = [], []
    for i in range(args.warmup + args.iters):
        req, seed = _request(cases[i % len(cases)])
        t = time.perf_counter()
        run_request(runner, req, seed)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
            pre_ms.append(runner.timing.preprocess_s * 1e3)
    outs = [run_request(runner, *_request(c)) for c in cases]
    result = {
        "runner": type(runner).__name__,
        "fast_path": on_fast,
        "dtype": str(runner.engine.dtype) if on_fast else "torch.float32",
        "triton": bool(on_fast and runner.engine.triton),
        "startup_s": startup_s,
        **_stats(times),
        "host_prep_median_ms": float(np.median(pre_ms)),
        **gpu.report(),
        "outs": outs,
    }
    if args.rtc:
        rtc_times = []
        for i in range(args.warmup + args.rtc_iters):
            req, seed = _request(cases[i % len(cases)], rtc=True)
            t = time.perf_counter()
            run_request(runner, req, seed)
            if i >= args.warmup:
                rtc_times.append(time.perf_counter() - t)
        result["rtc"] = _stats(rtc_times)
        result["rtc_outs"] = [run_request(runner, *_request(c, rtc=True)) for c in cases]
    if on_fast:
        result["graph_captures"] = runner.captures
        result["cuda_graphs"] = runner.cuda_graphs
        if args.device.startswith("cuda") and mode != "fp32":
            try:
                result["gpu_ms"] = _gpu_breakdown(runner, profile=args.profile)
            except Exception:
                traceback.print_exc()
    del runner
    gc.collect()
    return result


def _gpu_breakdown(fast: Any, reps: int = 20, profile: bool = False) -> dict[str, float]:
    """GPU time (CUDA events) of the whole captured chunk and of each phase captured alone."""
    import torch

    eng = fast.engine
    cap = next(iter(fast._captured.values()))
    inp = cap.inputs

    def timed(fn) -> float:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return replay_ms(graph)

    def replay_ms(graph) -> float:
        graph.replay()
        ends = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(reps)
        ]
        for a, b in ends:
            a.record()
            graph.replay()
            b.record()
        torch.cuda.synchronize()
        return float(np.median([a.elapsed_time(b) for a, b in ends]))

    with torch.no_grad(), torch.cuda.device(fast.torch_device):
        out = {
            "images_graph": replay_ms(cap.graphs["images"]),
            "rest_graph": replay_ms(cap.graphs[False]),
        }
        img = eng.image_embeddings(inp.images)
        embs, pad = eng.embed_prefix(inp, img)
        cache = eng.fill_cache(embs, pad)
        ctx = eng.expert_context(cache, pad)
        out["vlm_fill_cache"] = timed(lambda: eng.fill_cache(embs, pad))
        out["expert_context"] = timed(lambda: eng.expert_context(cache, pad))
        out["one_flow_step"] = timed(lambda: eng.velocity(inp.noise, eng.time_emb[0], ctx))
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as prof

            with prof(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as pr:
                cap.graphs["images"].replay()
                cap.graphs[False].replay()
                torch.cuda.synchronize()
            print(pr.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
    return out


def _device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name (as lscpu prints it) and the usable cores."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def run_size(size: str, where: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Every variant on one model size; returns the results with their markdown table."""
    import torch

    from kuavo_smolvla_ros.demo.model import DEFAULT_CAMERAS

    cuda = args.device.startswith("cuda")
    iters = args.iters or (200 if cuda else (20 if size == "tiny" else 3))
    baseline_iters = args.baseline_iters or (30 if cuda else iters)
    sized = argparse.Namespace(**vars(args))
    sized.iters, sized.baseline_iters = iters, baseline_iters
    sized.rtc_iters = max(1, iters // 2) if cuda else max(1, iters // 3)
    n_cases = args.cases if cuda or size == "tiny" else min(args.cases, 2)

    ckpt, build_s = _checkpoint(size, where)
    cases = _cases(n_cases, args.height, args.width, DEFAULT_CAMERAS)
    gpu = _Gpu(args.device)
    meta = {
        "device": _device_name(args.device),
        "size": size,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "cameras": f"{len(DEFAULT_CAMERAS)} x {args.height}x{args.width}",
        "checkpoint_build_s": build_s,
        "iters": iters,
        "load_1min_start": os.getloadavg()[0],
    }
    print(f"# {meta['device']}, SmolVLA {size}, {meta['cameras']}", flush=True)

    results: dict[str, Any] = {"meta": meta}
    a = bench_lerobot(ckpt, sized, cases, gpu)
    results["lerobot"] = a
    print(f"(a) lerobot: median {a['median_ms']:.1f} ms", flush=True)
    b = bench_runner(ckpt, sized, cases, gpu, "default")
    results["runner"] = b
    print(
        f"(b) runner ({b['runner']}, {b['dtype']}): median {b['median_ms']:.2f} ms,"
        f" startup {b['startup_s']:.1f} s, GPU breakdown (ms): {b.get('gpu_ms')}",
        flush=True,
    )
    variants = [("runner", b)]
    extra = args.extra if args.extra is not None else ("fp32" if cuda else "eager")
    for mode in extra.split(","):
        if not mode:
            continue
        name = {"fp32": "runner-fp32-graph" if cuda else "engine-fp32"}.get(mode, f"runner-{mode}")
        try:
            c = bench_runner(ckpt, sized, cases, gpu, mode)
            results[name] = c
            variants.append((name, c))
            print(f"{name}: median {c['median_ms']:.2f} ms, GPU {c.get('gpu_ms')}", flush=True)
        except Exception:  # keep (a) and (b) when a diagnostic variant fails
            traceback.print_exc()
    for _, v in variants:
        v["vs_lerobot"] = _errors(v.pop("outs"), a["refs"])
        if args.rtc:
            v["rtc"]["vs_lerobot"] = _errors(v.pop("rtc_outs"), a["rtc_refs"])
        v["speedup"] = a["median_ms"] / v["median_ms"]
    a.pop("refs")
    a.pop("rtc_refs", None)
    meta["load_1min_end"] = os.getloadavg()[0]

    rows = [("(a) lerobot predict_action_chunk, fp32 eager", a, None)]
    for i, (n, v) in enumerate(variants):
        what = f"{v['runner']}, {v['dtype'].replace('torch.', '')}"
        rows.append((f"({'bcdef'[i]}) {n} [{what}]", v, v))
    lines = [
        f"### {meta['device']} - SmolVLA {size}, {meta['cameras']}, chunk 50x16, 10 steps",
        "| variant | median ms | p99 ms | speed-up | peak GPU MB (all / serving) | start-up s"
        " | rel err | max abs err | NaN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v, err in rows:
        mem = "-"
        if v.get("peak_gpu_mb") is not None:
            mem = f"{v['peak_gpu_mb']:.0f} / {v['serving_peak_gpu_mb']:.0f}"
        su = f"{v['startup_s']:.1f}" if "startup_s" in v else f"{v['load_s']:.1f} (load)"
        e = err["vs_lerobot"] if err else None
        lines.append(
            f"| {name} | {v['median_ms']:.2f} | {v['p99_ms']:.2f} | "
            f"{a['median_ms'] / v['median_ms']:.1f}x | {mem} | {su} | "
            + (
                f"{e['rel_err_max']:.2e} | {e['max_abs_err']:.2e} | {e['nan_count']} |"
                if e
                else "ref | ref | - |"
            )
        )
    if args.rtc:
        for name, v, err in rows:
            e = err["rtc"]["vs_lerobot"] if err else None
            lines.append(
                f"| {name}, RTC | {v['rtc']['median_ms']:.2f} | {v['rtc']['p99_ms']:.2f} | "
                f"{a['rtc']['median_ms'] / v['rtc']['median_ms']:.1f}x | | | "
                + (
                    f"{e['rel_err_max']:.2e} | {e['max_abs_err']:.2e} | {e['nan_count']} |"
                    if e
                    else "ref | ref | - |"
                )
            )
    results["table"] = lines
    return results


def run_paired(size: str, where: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """The CPU default's speed-up, robust to a busy machine: ``load_policy``'s default runner
    and LeRobot's eager path (``PolicyRunner``, bit for bit ``predict_action_chunk``) on the
    same loaded weights, timed alternately (ABBA) on the same requests through ``run_request``,
    so load from other processes hits both alike; the speed-up is the median of per-pair ratios,
    of wall time and of this process's CPU time (with ``--threads 1`` the work itself: a busy
    machine stretches wall time, not the CPU seconds a chunk needs).
    """
    import torch

    from kuavo_smolvla_ros.core.config import Config
    from kuavo_smolvla_ros.demo.model import DEFAULT_CAMERAS
    from kuavo_smolvla_ros.runners.base import run_request
    from kuavo_smolvla_ros.runners.eager import PolicyRunner, load_policy

    ckpt, _ = _checkpoint(size, where)
    cases = _cases(max(2, args.cases), args.height, args.width, DEFAULT_CAMERAS)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    default = load_policy(ckpt, args.device, Config())  # fast_path auto, warm-up + its check
    startup_s = time.perf_counter() - t0
    eager = PolicyRunner(default.parts)
    pairs = args.paired
    times: dict[str, list[float]] = {"default": [], "eager": []}
    cpu: dict[str, list[float]] = {"default": [], "eager": []}
    diffs = []
    for i in range(pairs + 1):  # the first pair is warm-up
        req, seed = _request(cases[i % len(cases)])
        order = [("default", default), ("eager", eager)]
        outs = {}
        for name, runner in order if i % 2 else order[::-1]:
            t, c = time.perf_counter(), time.process_time()
            outs[name] = run_request(runner, req, seed)
            if i:
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
        diffs.append(float(np.abs(outs["default"] - outs["eager"]).max()))
    ratios = [e / d for e, d in zip(times["eager"], times["default"])]
    cpu_ratios = [e / d for e, d in zip(cpu["eager"], cpu["default"])]
    out = {
        "size": size,
        "device": _device_name(args.device),
        "default_runner": type(default).__name__,
        "default_startup_s": startup_s,
        "pairs": pairs,
        "eager_median_ms": 1e3 * float(np.median(times["eager"])),
        "default_median_ms": 1e3 * float(np.median(times["default"])),
        "speedup_median_of_ratios": float(np.median(ratios)),
        "speedup_min_max": (float(min(ratios)), float(max(ratios))),
        "eager_cpu_median_s": float(np.median(cpu["eager"])),
        "default_cpu_median_s": float(np.median(cpu["default"])),
        "cpu_speedup_median_of_ratios": float(np.median(cpu_ratios)),
        "cpu_speedup_min_max": (float(min(cpu_ratios)), float(max(cpu_ratios))),
        "torch_threads": torch.get_num_threads(),
        # The least disturbed chunk of each: closest to an idle machine's time.
        "eager_min_ms": 1e3 * min(times["eager"]),
        "default_min_ms": 1e3 * min(times["default"]),
        "eager_cpu_min_s": min(cpu["eager"]),
        "default_cpu_min_s": min(cpu["default"]),
        "wall_s": times,
        "cpu_s": cpu,
        "max_abs_diff": max(diffs),
        "load_1min": (load0, os.getloadavg()[0]),
    }
    print(
        f"paired {size}: default {out['default_runner']} {out['default_median_ms']:.0f} ms,"
        f" eager {out['eager_median_ms']:.0f} ms, speed-up {out['speedup_median_of_ratios']:.2f}x"
        f" ({out['speedup_min_max'][0]:.2f}-{out['speedup_min_max'][1]:.2f}); CPU s"
        f" {out['default_cpu_median_s']:.2f} vs {out['eager_cpu_median_s']:.2f}:"
        f" {out['cpu_speedup_median_of_ratios']:.2f}x; min ms {out['default_min_ms']:.0f} vs"
        f" {out['eager_min_ms']:.0f}, max abs diff"
        f" {out['max_abs_diff']:.1e}, load {out['load_1min'][0]:.1f}->{out['load_1min'][1]:.1f}",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--size", default="full", help="tiny, full, or both in one run: tiny,full (default full)"
    )
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument(
        "--checkpoint", help="existing checkpoint dir(s), or where to build them (comma list)"
    )
    p.add_argument("--iters", type=int, default=None, help="timed chunks per variant")
    p.add_argument("--baseline-iters", type=int, default=None, help="timed chunks of (a)")
    p.add_argument("--warmup", type=int, default=None, help="untimed chunks first")
    p.add_argument("--cases", type=int, default=4, help="inputs/noise seeds for the error check")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--no-rtc", dest="rtc", action="store_false", help="skip the RTC rows")
    p.add_argument(
        "--extra",
        default=None,
        help="comma list of extra variants: eager (default on the CPU), fp32 (default on"
        " CUDA), no-triton",
    )
    p.add_argument("--profile", action="store_true", help="print the chunk's top GPU kernels")
    p.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="N",
        help="only the CPU default's speed-up: N alternating pairs of the default runner and"
        " LeRobot's eager path on the same weights (robust to other load on the machine)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from kuavo_smolvla_ros.runners.base import set_torch_threads

    set_torch_threads(args.threads)
    if args.warmup is None:
        args.warmup = 3 if args.device.startswith("cuda") else 1
    sizes = [x for x in args.size.split(",") if x]
    if any(x not in ("tiny", "full") for x in sizes):
        p.error(f"--size {args.size!r}: choose tiny, full or tiny,full")
    where = (args.checkpoint or "").split(",")
    where += [""] * (len(sizes) - len(where))
    if args.paired:
        results = {size: run_paired(size, w or None, args) for size, w in zip(sizes, where)}
        print("\n| model | default runner | wall ms: default / LeRobot eager | speed-up (range)"
              " | CPU s: default / LeRobot eager | speed-up (range) | max abs diff | pairs"
              " | threads | load avg |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results.values():
            lo, hi = r["speedup_min_max"]
            clo, chi = r["cpu_speedup_min_max"]
            print(
                f"| {r['size']} | {r['default_runner']} | {r['default_median_ms']:.0f} /"
                f" {r['eager_median_ms']:.0f} | {r['speedup_median_of_ratios']:.2f}x"
                f" ({lo:.2f}-{hi:.2f}) | {r['default_cpu_median_s']:.2f} /"
                f" {r['eager_cpu_median_s']:.2f} | {r['cpu_speedup_median_of_ratios']:.2f}x"
                f" ({clo:.2f}-{chi:.2f}) | {r['max_abs_diff']:.1e} | {r['pairs']} |"
                f" {r['torch_threads']} | {r['load_1min'][0]:.1f}-{r['load_1min'][1]:.1f} |"
            )
    else:
        results = {size: run_size(size, w or None, args) for size, w in zip(sizes, where)}
        for r in results.values():
            print("\n" + "\n".join(r["table"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
