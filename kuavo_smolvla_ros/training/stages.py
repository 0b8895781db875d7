"""Fine-tune SmolVLA on Kuavo's 16-D data with LeRobot's training pieces: one task, or several
tasks in order with earlier data mixed back in.

Everything that trains is LeRobot 0.4's: ``make_dataset`` (delta_timestamps from the policy
config), ``make_policy`` (pretrained weights, camera ``rename_map``), ``make_pre_post_processors``
(the checkpoint's saved processors with the dataset's stats), the policy's optimizer and scheduler
presets, ``lerobot_train.update_policy`` (one step under accelerate), ``save_checkpoint`` /
``load_training_state`` (``lerobot-train``'s checkpoint layout and resume). This package adds
what LeRobot's ``train()`` cannot do for us: the refusals of ``checks`` before the model is built,
and stages (``Stage``): each starts from the previous stage's last checkpoint with fresh optimizer
and scheduler presets; ``mix`` samples earlier stages' data with given weights; normalization
stats are aggregated over every dataset seen so far. After each stage a validation loss (fixed
seed, same samples every time) is computed on every task so far: ``<out>/validation.json`` and a
printed table show forgetting.

Layout of ``--out``: one dataset -> ``OUT/checkpoints/<step>/pretrained_model`` (+ ``last``
symlink), ``OUT/train_log.jsonl``, ``OUT/validation.json``; stages -> the same under
``OUT/stage_<k>/``, and ``OUT/validation.json`` with one row per stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import Config
from kuavo_smolvla_ros.runners.eager import read_policy_config, resolve_checkpoint, resolve_device
from kuavo_smolvla_ros.training.checks import StagesError, check_output_dir, plan_stages
from kuavo_smolvla_ros.training.data import loader_settings, open_dataset
from kuavo_smolvla_ros.training.loop import (
    grad_comm,
    local_world_size,
    make_accelerator,
    mixed_precision,
    process_device,
    run_stage,
    validation_loss,
    world_size,
)
from kuavo_smolvla_ros.training.options import (
    RUN_NAME,
    VALIDATION_NAME,
    StageResult,
    TrainOptions,
    TrainResult,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One fine-tuning stage: a dataset, its language instruction, steps and replay mix.

    ``task`` replaces the dataset's own task text for every frame when set. ``mix`` maps an
    earlier stage (its ``name`` or ``dataset`` as written) to the fraction of each batch drawn
    from it; this stage's dataset gets the rest (``1 - sum``), unless it is named too.
    """

    dataset: str
    task: str | None = None
    steps: int | None = None
    mix: Mapping[str, float] = field(default_factory=dict)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.task or Path(self.dataset).name


def load_stages(path: str | Path) -> list[Stage]:
    """Read a stages YAML: a list (or ``stages:`` list) of {dataset, task, steps, mix, name}."""
    p = Path(path)
    if not p.is_file():
        raise StagesError(f"stages file {p} does not exist.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise StagesError(f"{p} is not valid YAML: {exc}") from None
    if isinstance(raw, dict) and "stages" in raw:
        raw = raw["stages"]
    if not isinstance(raw, list) or not raw:
        raise StagesError(f"{p}: expected a non-empty list of stages (or 'stages: [...]').")
    known = {f.name for f in dataclasses.fields(Stage)}
    stages = []
    for i, entry in enumerate(raw, 1):
        where = f"{p} stage {i}"
        if not isinstance(entry, dict):
            raise StagesError(f"{where}: expected a mapping with 'dataset', got {entry!r}.")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise StagesError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}.")
        if not entry.get("dataset"):
            raise StagesError(f"{where}: 'dataset' is missing.")
        mix = entry.get("mix") or {}
        if not isinstance(mix, dict):
            raise StagesError(f"{where}: 'mix' must map earlier datasets to weights, got {mix!r}.")
        stages.append(
            Stage(
                dataset=_beside(p, str(entry["dataset"])),
                task=entry.get("task"),
                steps=entry.get("steps"),
                mix={_beside(p, str(k)): v for k, v in mix.items()},
                name=entry.get("name"),
            )
        )
    return stages


def _beside(stages_file: Path, dataset: str) -> str:
    """A dataset path relative to the stages file, made absolute (others stay as written)."""
    here = stages_file.parent / dataset
    if not Path(dataset).is_absolute() and (here / "meta" / "info.json").is_file():
        return str(here.resolve())
    return dataset


def format_validation(validation: Mapping[str, Any]) -> str:
    """The per-task validation losses as a text table (rows: after stage, columns: task)."""
    heads = [f"{t['name']} [{t['split']}]" for t in validation["tasks"]]
    widths = [max(len(h), 8) for h in heads]
    first = max([len("after stage"), *(len(r["stage"]) for r in validation["rows"])])
    lines = [
        "validation loss (rows: after stage; columns: task [split])",
        "  ".join(["after stage".ljust(first), *(h.rjust(w) for h, w in zip(heads, widths))]),
    ]
    for row in validation["rows"]:
        cells = []
        for t, w in zip(validation["tasks"], widths):
            v = row["val_loss"].get(t["name"])
            cells.append(("-" if v is None else f"{v:.4f}").rjust(w))
        lines.append("  ".join([row["stage"].ljust(first), *cells]))
    return "\n".join(lines)


def train_stages(
    checkpoint: str | Path,
    stages: Sequence[Stage],
    out: str | Path,
    config: Config | None = None,
    options: TrainOptions | None = None,
    *,
    flat: bool = False,
) -> TrainResult:
    """Fine-tune ``checkpoint`` through ``stages`` in order; ``flat`` puts a single stage in
    ``out`` itself (no ``stage_1``). Every dataset is checked before the first step."""
    cfg = config or Config()
    opts = options or TrainOptions()
    if not stages:
        raise StagesError("no stages to train.")
    if flat and len(stages) != 1:
        raise StagesError("flat=True needs exactly one stage.")
    out = Path(out)
    device = resolve_device(opts.device)
    ckpt = resolve_checkpoint(checkpoint, cfg.policy.revision)
    policy_cfg = read_policy_config(ckpt, device)
    ck = dims.CheckpointDims.from_policy_config(policy_cfg, dims.state_proj_in_features(ckpt))
    horizon = (
        opts.action_horizon
        if opts.action_horizon is not None
        else len(policy_cfg.action_delta_indices)
    )
    plans = plan_stages(stages, ck, cfg, opts, horizon)
    # Every process checks before any of them writes: only the main process creates files,
    # after a barrier (the process group itself forms without one).
    check_output_dir(out, opts.resume)
    comm = grad_comm(opts.grad_comm, device, world_size(), local_world_size())
    accelerator = make_accelerator(
        device, mixed_precision(opts.mixed_precision, device), comm, opts.bucket_mb
    )
    device = process_device(accelerator, device)
    main = accelerator.is_main_process
    log.info(
        "process %d of %d on %s (%s)",
        accelerator.process_index,
        accelerator.num_processes,
        device,
        accelerator.distributed_type,
    )
    if not main:  # one voice: the main process logs, validates and writes (LeRobot: root)
        for name in ("kuavo_smolvla_ros", ""):
            logging.getLogger(name).setLevel(logging.WARNING)
    accelerator.wait_for_everyone()  # every process has checked ``out`` before it changes
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_NAME).write_text(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "stages": [dataclasses.asdict(s) | {"mix": dict(s.mix)} for s in stages],
                    "options": dataclasses.asdict(opts),
                    "processes": accelerator.num_processes,
                    "distributed_type": str(accelerator.distributed_type),
                    "mixed_precision": accelerator.mixed_precision,
                    "grad_comm": comm if accelerator.num_processes > 1 else "none",
                },
                indent=2,
            )
        )
    accelerator.wait_for_everyone()
    validation: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "tasks": [
            {
                "name": p.source.label,
                "dataset": str(p.source.ref),
                "task": p.source.task,
                "split": p.source.val_split,
            }
            for p in plans
        ],
        "rows": [],
    }
    val_path = out / VALIDATION_NAME
    old_rows: dict[str, Any] = {}
    if opts.resume and val_path.is_file():
        old_rows = {r["stage"]: r for r in json.loads(val_path.read_text()).get("rows", [])}
    results: list[StageResult] = []
    src = ckpt
    for plan in plans:
        stage_dir = out if flat else out / f"stage_{plan.index}"
        result, policy, pre, train_cfg = run_stage(
            plan, src, stage_dir, device, accelerator, opts, cfg
        )
        src = result.checkpoint
        row_key = f"stage_{plan.index}"
        if result.steps_per_s is None and row_key in old_rows:
            result.val_loss = dict(old_rows[row_key]["val_loss"])
        elif opts.val_samples and main:
            t0 = time.perf_counter()
            for earlier in plans[: plan.index]:
                s = earlier.source
                ds = open_dataset(train_cfg, s, s.val_episodes or s.train_episodes, opts)
                result.val_loss[s.label] = validation_loss(
                    policy,
                    pre,
                    ds,
                    batch_size=opts.batch_size,
                    max_samples=opts.val_samples,
                    seed=opts.seed,
                    accelerator=accelerator,
                    num_workers=loader_settings(opts, device)["num_workers"],
                )
            log.info("validation of %d task(s) in %.1f s", plan.index, time.perf_counter() - t0)
        if accelerator.num_processes > 1:  # every process returns the same result
            result.val_loss = _from_main(result.val_loss)
        results.append(result)
        validation["rows"].append(
            {
                "stage": row_key,
                "label": plan.stage.label,
                "checkpoint": str(result.checkpoint),
                "steps": result.steps,
                "steps_per_s": result.steps_per_s,
                "val_loss": result.val_loss,
            }
        )
        if main:
            val_path.write_text(json.dumps(validation, indent=2))
        if opts.val_samples:
            log.info("\n%s", format_validation(validation))
        del policy, pre
        accelerator.free_memory()
        accelerator.wait_for_everyone()
    return TrainResult(results, validation)


def _from_main(value: Any) -> Any:
    """The main process's ``value`` on every process (a picklable object)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def finetune(
    checkpoint: str | Path,
    dataset_root: str | Path,
    out: str | Path,
    steps: int,
    config: Config | None = None,
    batch_size: int = 8,
    lr: float | None = None,
    *,
    task: str | None = None,
    options: TrainOptions | None = None,
) -> Path:
    """Fine-tune on one dataset; returns the final ``pretrained_model`` dir (``load_policy`` it).

    ``options`` gives every other knob; ``steps``, ``batch_size`` and ``lr`` override it.
    """
    opts = dataclasses.replace(options or TrainOptions(), steps=steps, batch_size=batch_size, lr=lr)
    result = train_stages(
        checkpoint, [Stage(dataset=str(dataset_root), task=task)], out, config, opts, flat=True
    )
    return result.checkpoint
