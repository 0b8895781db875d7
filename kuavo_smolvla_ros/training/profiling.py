"""``--profile-steps``: where a training step's time goes, from ``torch.profiler``.

A few steps after the first five (cuDNN's and the allocator's warm-up) are recorded on every
process. Each writes ``profile_rank<R>.txt`` (the operators by their own device time, then by
their own CPU time) and ``profile_rank<R>.json``: the steps' wall time against the GPU time of
the compute kernels and of the collectives (NCCL), which tells a GPU-bound step (compute busy
close to the wall time) from one held up by the CPU, the data or the gradient all-reduce.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SKIP_STEPS = 5  # steps before the recording starts


def _device_us(event: Any) -> float:
    """An operator's own device time in microseconds (the attribute's name changed in 2.4)."""
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else getattr(event, "self_cuda_time_total", 0.0))


class StepProfiler:
    """Records ``steps`` training steps of one process, starting after ``SKIP_STEPS``."""

    def __init__(self, steps: int, out_dir: Path, rank: int, cuda: bool) -> None:
        self.steps = steps
        self.out_dir = Path(out_dir)
        self.rank = rank
        self.cuda = cuda
        self._prof: Any = None
        self._done = 0
        self._t0 = 0.0

    def before_step(self, step: int) -> None:
        """Call before each step with the number of steps already done in this run."""
        if self.steps <= 0 or self._prof is not None or self._done or step < SKIP_STEPS:
            return
        import torch
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        if self.cuda:
            torch.cuda.synchronize()
        with warnings.catch_warnings():  # one recording, no cycles: nothing is cleared
            warnings.filterwarnings("ignore", message=".*Profiler clears events")
            self._prof = profile(activities=acts)
            self._prof.__enter__()
        self._t0 = time.perf_counter()

    def after_step(self) -> None:
        if self._prof is None:
            return
        self._done += 1
        if self._done >= self.steps:
            self._finish()

    def close(self) -> None:
        """Ends a recording that the run outlived (fewer steps left than asked for)."""
        if self._prof is not None:
            self._finish()

    def _finish(self) -> None:
        import torch
        from torch.autograd import DeviceType

        if self.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._t0
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        events = prof.key_averages()
        # GPU work is the device-side events (kernels, copies); an operator's own "device time"
        # repeats its kernels', and annotations (DDP's forward, nccl:all_reduce) span them.
        kernels = [
            e
            for e in events
            if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)
        ]
        device = sum(_device_us(e) for e in kernels) / 1e6
        nccl = sum(_device_us(e) for e in kernels if "nccl" in e.key.lower()) / 1e6
        reduces = sum(e.count for e in events if e.key.startswith("c10d::allreduce"))
        summary = {
            "rank": self.rank,
            "steps": self._done,
            "wall_s_per_step": round(wall / self._done, 4),
            "compute_s_per_step": round((device - nccl) / self._done, 4),
            # NCCL kernels run beside the compute and include their wait for the other ranks
            "nccl_s_per_step": round(nccl / self._done, 4),
            "all_reduces_per_step": reduces / self._done,  # gradient buckets (and the loss)
            "compute_busy_share": round((device - nccl) / wall, 3) if self.cuda else None,
            "top_device_ops": [
                {"op": e.key[:80], "s_per_step": round(_device_us(e) / 1e6 / self._done, 5)}
                for e in sorted(kernels, key=_device_us, reverse=True)[:15]
            ],
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.out_dir / f"profile_rank{self.rank}"
        by_device = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        text = events.table(sort_by=by_device, row_limit=40)
        if self.cuda:
            text += "\n" + events.table(sort_by="self_cpu_time_total", row_limit=25)
        stem.with_suffix(".txt").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps(summary, indent=2))
        log.info(
            "profile of %d steps: %.3f s a step, GPU compute %.3f s, all-reduce %.3f s -> %s",
            self._done,
            summary["wall_s_per_step"],
            summary["compute_s_per_step"],
            summary["nccl_s_per_step"],
            stem.with_suffix(".txt"),
        )
