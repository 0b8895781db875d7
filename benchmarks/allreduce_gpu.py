"""The GPU link as DDP uses it: all-reduce time and bus bandwidth of gradient-sized tensors.

Started once per GPU by ``torchrun``; rank 0 writes ``--out`` (JSON)::

    torchrun --standalone --nproc_per_node 2 benchmarks/allreduce_gpu.py --out link.json

Bus bandwidth is NCCL's (nccl-tests) measure, ``size / time * 2 (n - 1) / n``, comparable over
process counts. The sizes span DDP's 25 MB buckets up to the full model's 400 MB of fp32
gradients (100 M trainable parameters); bf16 is what ``--grad-comm bf16`` sends.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sizes-mb", default="25,100,200,400")
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    n = dist.get_world_size()
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for mb in (int(x) for x in a.sizes_mb.split(",")):
            numel = mb * 2**20 // torch.tensor([], dtype=dtype).element_size()
            x = torch.ones(numel, dtype=dtype, device="cuda")
            for _ in range(3):
                dist.all_reduce(x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(a.iters):
                dist.all_reduce(x)
            torch.cuda.synchronize()
            t = (time.perf_counter() - t0) / a.iters
            size = numel * x.element_size()
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "mb": mb,
                    "ms": round(t * 1e3, 3),
                    "bus_gb_s": round(size / t * 2 * (n - 1) / n / 1e9, 1),
                }
            )
    if dist.get_rank() == 0:
        info = {
            "processes": n,
            "gpu": torch.cuda.get_device_name(0),
            "nccl": ".".join(map(str, torch.cuda.nccl.version())),
            "p2p_access": torch.cuda.can_device_access_peer(0, 1) if n > 1 else None,
            "rows": rows,
        }
        with open(a.out, "w") as f:
            json.dump(info, f, indent=2)
        print(json.dumps(info))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
