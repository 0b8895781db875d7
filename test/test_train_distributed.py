"""Several training processes, one run: ``torchrun`` starts two CPU processes (gloo) of the real
command line on the tiny SmolVLA, as ``accelerate launch`` does on GPUs (NCCL)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import write_dataset

from kuavo_smolvla_ros import training
from kuavo_smolvla_ros.core.config import ConfigError

STEPS = 4
BATCH = 2


def torchrun(*args: str, procs: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(procs), "-m", "kuavo_smolvla_ros.training.cli", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory) -> Path:
    """Two episodes with image (not video) features: no decoder in the loader workers."""
    root = tmp_path_factory.mktemp("data") / "pick_images"
    return write_dataset(root, episodes=2, frames=12, size=32, video=False)


@pytest.mark.slow
def test_two_processes_resume_a_run_train_it_together_and_write_one_checkpoint(
    tiny_checkpoint, image_dataset, tmp_path
):
    out = tmp_path / "ddp"
    opts = training.TrainOptions(
        device="cpu", num_workers=0, progress=False, log_freq=0, val_samples=0, save_freq=2
    )
    training.finetune(tiny_checkpoint, image_dataset, out, steps=2, batch_size=BATCH, options=opts)

    proc = torchrun(
        "--checkpoint", str(tiny_checkpoint), "--dataset", str(image_dataset), "--out", str(out),
        "--device", "cpu", "--batch-size", str(BATCH), "--num-workers", "0", "--val-samples", "4",
        "--log-freq", "0", "--no-progress", "--steps", str(STEPS), "--save-freq", "2", "--resume",
    )  # fmt: skip

    # Both processes joined one process group of two and resumed from step 2.
    ranks = sorted(re.findall(r"process (\d) of (\d) on cpu", proc.stderr))
    assert ranks == [("0", "2"), ("1", "2")], proc.stderr[-3000:]
    assert proc.stderr.count("resuming from") == 1, "only the main process logs"
    run = json.loads((out / training.RUN_NAME).read_text())
    assert run["processes"] == 2 and run["distributed_type"].endswith("MULTI_CPU")

    # One checkpoint per save, written once; one loss line per step (the mean over processes).
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["000002", "000004", "last"]
    assert (ckpts / "last").resolve() == (ckpts / "000004").resolve()
    state = json.loads((ckpts / "last" / "training_state" / "training_step.json").read_text())
    assert state["step"] == STEPS
    log = [json.loads(line) for line in (out / training.LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) for r in log)
    val = json.loads((out / training.VALIDATION_NAME).read_text())
    assert len(val["rows"]) == 1 and val["rows"][0]["val_loss"]["pick_images"] > 0
    # Only the main process reports the run.
    assert proc.stdout.count("steps/s") == 1, proc.stdout


def test_gradients_are_compressed_to_bf16_only_between_machines():
    from kuavo_smolvla_ros.training.loop import grad_comm

    assert grad_comm("auto", "cuda", 2, 2) == "none"  # one machine: NVLink or PCIe
    assert grad_comm("auto", "cuda", 1) == "none"
    assert grad_comm("auto", "cuda:1", 16, 8) == "bf16"  # two machines of 8 GPUs
    assert grad_comm("auto", "cpu", 4, 2) == "none"  # gloo
    assert grad_comm("bf16", "cuda", 2, 2) == "bf16"
    assert grad_comm("fp16", "cpu", 2) == "fp16"
    for bad in ({"grad_comm": "int8"}, {"bucket_mb": 0}, {"profile_steps": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            training.TrainOptions(**bad)


@pytest.mark.slow
def test_compressed_all_reduce_rounds_the_gradients_and_the_profile_records_it(
    tiny_checkpoint, image_dataset, tmp_path
):
    """Two processes, same seed and data: fp32 against bf16 all-reduce. The first step's loss
    is the same (same weights); the later ones differ by the gradients' rounding only."""
    steps = 6
    losses = {}
    for comm in ("none", "bf16"):
        out = tmp_path / comm
        torchrun(
            "--checkpoint", str(tiny_checkpoint), "--dataset", str(image_dataset),
            "--out", str(out), "--device", "cpu", "--batch-size", str(BATCH),
            "--num-workers", "0", "--val-samples", "0", "--log-freq", "0", "--no-progress",
            "--steps", str(steps), "--grad-comm", comm, "--profile-steps", "1",
        )  # fmt: skip
        assert json.loads((out / training.RUN_NAME).read_text())["grad_comm"] == comm
        log = (out / training.LOG_NAME).read_text().splitlines()
        losses[comm] = np.array([json.loads(line)["loss"] for line in log])
        for rank in (0, 1):  # each process profiled one step, the all-reduce included
            prof = json.loads((out / f"profile_rank{rank}.json").read_text())
            assert prof["steps"] == 1 and prof["wall_s_per_step"] > 0
            assert prof["all_reduces_per_step"] >= 1
            assert "Self CPU time total" in (out / f"profile_rank{rank}.txt").read_text()
    fp32, bf16 = losses["none"], losses["bf16"]
    assert fp32[0] == bf16[0]
    assert np.any(fp32[1:] != bf16[1:]), "the bf16 hook did not take part"
    np.testing.assert_allclose(bf16, fp32, rtol=1e-4)
