"""The replay report: ``report.json``, a printed table and ``trajectories.png``.

See ``core.metrics`` for the definitions (per-joint MAE/RMSE against the recorded commands in
degrees and 0..100, linear interpolation of the recorded streams at the command times; latency
observation -> first command; rate; largest command step at a chunk switch; chunks, clamps,
holds). A result that misses a recorded stream is reported as ``"partial": true``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core import metrics
from kuavo_smolvla_ros.core.config import Config
from kuavo_smolvla_ros.replay.plan import ReplayResult

__all__ = ["make_report", "plot_trajectories", "print_report", "write_report"]


def make_report(result: ReplayResult, cfg: Config, max_gap_s: float = metrics.DEFAULT_MAX_GAP_S):
    """The report dict (``metrics.build_report`` plus what was replayed and how)."""
    robot = cfg.robot
    scale = metrics.report_scale(robot.dim, robot.gripper_indices, cfg.outputs.gripper_scale)
    cmd = result.cmd * scale
    streams = [(t, v * scale[list(dims)], dims) for t, v, dims in result.reference.values()]
    reference = (
        metrics.reference_at(streams, result.cmd_t, robot.dim, max_gap_s) if streams else None
    )
    chunks = result.chunks
    rep = metrics.build_report(
        joint_names=robot.joint_names,
        gripper_indices=robot.gripper_indices,
        t_cmd=result.cmd_t,
        cmd=cmd,
        reference=reference,
        t_obs=np.array([c.t_obs for c in chunks]),
        t_arrival=np.array([c.t_arrival for c in chunks]),
        counters=result.counters,
    )
    inference = metrics.stats_ms(np.array([c.inference_s for c in chunks]))
    missing_ref = rep["mae"] is None or any(v is None for v in rep["mae"].values())
    head = {
        "mode": result.mode,
        "bag": result.bag,
        "bag_format": result.bag_format,
        "t_start": result.t_start,
        "duration_s": result.t_end - result.t_start,
        "partial": bool(result.partial or missing_ref),
        "units": {"arm": "deg", "gripper": f"0..{cfg.outputs.gripper_scale:g}"},
        "alignment": "recorded commands linearly interpolated at each command time;"
        f" not scored where the recorded stream has a gap > {max_gap_s:g} s",
        "latency_definition": "first command at or after a chunk's merge minus its"
        " observation time",
        **result.info,
    }
    rep["inference_ms"] = inference
    rep["warnings"] = list(result.warnings)
    return {**head, **rep}


def plot_trajectories(
    result: ReplayResult,
    cfg: Config,
    path: str | os.PathLike,
    extra: Sequence[tuple[str, ReplayResult]] = (),
    title: str | None = None,
) -> Path:
    """``trajectories.png``: recorded vs commanded per joint over time, chunk switches marked
    (vertical lines at each chunk's merge time). ``extra``: more command streams to overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    robot = cfg.robot
    scale = metrics.report_scale(robot.dim, robot.gripper_indices, cfg.outputs.gripper_scale)
    t0 = result.t_start
    ncol = 4
    nrow = math.ceil(robot.dim / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.4 * nrow), sharex=True)
    axes = np.atleast_1d(axes).reshape(-1)

    def thin(t: np.ndarray, v: np.ndarray, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
        step = max(1, len(t) // n)
        return t[::step], v[::step]

    ref_by_dim: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for t, v, dims in result.reference.values():
        for k, d in enumerate(dims):
            ref_by_dim[d] = (np.asarray(t), np.asarray(v)[:, k] * scale[d])
    switches = [c.t_arrival - t0 for c in result.chunks]
    for d in range(robot.dim):
        ax = axes[d]
        for s in switches:
            ax.axvline(s, color="tab:red", alpha=0.25, lw=0.7)
        if d in ref_by_dim:
            t, v = thin(*ref_by_dim[d])
            ax.plot(t - t0, v, color="black", lw=1.0, label="recorded command")
        t, v = thin(result.cmd_t, result.cmd[:, d] * scale[d])
        ax.plot(t - t0, v, color="tab:blue", lw=1.0, label=f"commanded ({result.mode})")
        for k, (label, other) in enumerate(extra):
            t, v = thin(other.cmd_t, other.cmd[:, d] * scale[d])
            ax.plot(t - t0, v, color=f"C{k + 2}", lw=0.9, label=label)
        unit = "0..100" if d in robot.gripper_indices else "deg"
        ax.set_title(f"{robot.joint_names[d]} [{unit}]", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[robot.dim :]:
        ax.axis("off")
    for ax in axes[-ncol:]:
        ax.set_xlabel("bag time (s)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="tab:red", alpha=0.5, lw=0.7))
    labels.append("chunk switch")
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(labels))
    fig.suptitle(
        title or f"{Path(result.bag).name}: {result.mode} replay", fontsize=11, x=0.02, ha="left"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def write_report(
    report: dict[str, Any],
    result: ReplayResult,
    cfg: Config,
    out_dir: str | os.PathLike,
    extra: Sequence[tuple[str, ReplayResult]] = (),
    title: str | None = None,
) -> tuple[Path, Path | None]:
    """``report.json`` and ``trajectories.png`` in ``out_dir``; returns their paths (the plot
    is None if matplotlib failed, which is a warning, not an error). ``extra`` and ``title``
    go to ``plot_trajectories``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot: Path | None = None
    try:
        plot = plot_trajectories(result, cfg, out / "trajectories.png", extra, title)
    except Exception as exc:  # a plot must never cost the numbers
        report.setdefault("warnings", []).append(f"no plot: {type(exc).__name__}: {exc}")
    report["plot"] = str(plot) if plot else None
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=_json_default, allow_nan=False))
    return path, plot


def print_report(report: dict[str, Any], cfg: Config, file: Any = None) -> None:
    file = file or sys.stdout
    grip = [cfg.robot.joint_names[i] for i in cfg.robot.gripper_indices]
    head = (
        f"{report['mode']} replay of {report['bag']} ({report['bag_format']},"
        f" {report['duration_s']:.1f} s), latency: {report.get('latency', '-')}"
    )
    print(head, file=file)
    print(metrics.format_table(report, grip), file=file)
