"""Can the training loader keep up? Batches per second of ``kuavo-smolvla-train``'s loader
alone (no model), at steady state: after its start-up queue has drained.

The loader is the training one: LeRobot's dataset with the 50-step action chunk read from column
tensors, the uint8 image hand-over, ``loader_settings`` (workers, prefetch, pinned memory).
``--copies 2`` runs two loaders at once, as two training processes on one machine do. Compare
the rate with the training step: at 0.25 s a step, one process needs 4 batches/s::

    python benchmarks/loader_throughput.py --dataset data/kuavo_pick --workers 8,16 --copies 1,2
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import time
from typing import Any


def one_loader(dataset: str, workers: int, batch: int, batches: int, device: str) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from torch.utils.data import DataLoader, RandomSampler

    from kuavo_smolvla_ros.training.data import (
        Uint8Images,
        loader_settings,
        read_chunks_from_columns,
    )
    from kuavo_smolvla_ros.training.options import TrainOptions

    root = os.path.abspath(dataset)
    delta = {"action": [i / 10 for i in range(50)]}
    ds = LeRobotDataset(f"local/{os.path.basename(root)}", root=root, delta_timestamps=delta)
    read_chunks_from_columns(ds)
    images = Uint8Images(ds.meta.camera_keys)
    settings = loader_settings(TrainOptions(num_workers=workers), device)
    gen = torch.Generator().manual_seed(0)
    sampler = RandomSampler(ds, num_samples=batch * batches * 4, generator=gen)
    loader = DataLoader(
        ds, batch_size=batch, sampler=sampler, collate_fn=images.collate, **settings
    )
    it = iter(loader)
    queued = workers * (settings["prefetch_factor"] or 0)
    for _ in range(queued + 1):  # start-up and the queue the workers filled meanwhile
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        if device.startswith("cuda"):
            images.restore({k: v.to(device, non_blocking=True) for k, v in b.items()
                            if k in images.keys})  # fmt: skip
    rate = batches / (time.perf_counter() - t0)
    del it, loader  # stops the persistent workers before this process exits
    gc.collect()
    return {"workers": workers, "prefetch": settings["prefetch_factor"], "batches_per_s": rate}


def _child(job: tuple, results: Any) -> None:
    results.put(one_loader(*job))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="LeRobot dataset root")
    p.add_argument("--workers", default="8,16")
    p.add_argument("--copies", default="1,2", help="loaders at once (training processes)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=60, help="timed, after the start-up queue")
    p.add_argument("--device", default="cpu", help="cuda: also the copy and uint8 restore")
    p.add_argument("--out", help="JSON results")
    a = p.parse_args()
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("fork")  # nothing imported yet: each copy as a fresh training process
    for copies in (int(x) for x in a.copies.split(",")):
        for workers in (int(x) for x in a.workers.split(",")):
            job = (a.dataset, workers, a.batch_size, a.batches, a.device)
            results = ctx.Queue()  # not a Pool: its daemonic processes cannot start workers
            procs = [ctx.Process(target=_child, args=(job, results)) for _ in range(copies)]
            for proc in procs:
                proc.start()
            res = [results.get() for _ in procs]
            for proc in procs:
                proc.join()
            rates = [r["batches_per_s"] for r in res]
            row = {"copies": copies, "workers": workers, "prefetch": res[0]["prefetch"],
                   "batches_per_s_each": [round(r, 2) for r in rates]}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"cores": os.cpu_count(), "batch_size": a.batch_size, "rows": rows}, f)


if __name__ == "__main__":
    main()
