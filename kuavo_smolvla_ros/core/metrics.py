"""Replay report numbers (pure numpy): tracking error, latency, rate, chunk-switch steps.

Used by the replay tool (offline and live modes compute the same report from the same arrays)
and by benchmarks. Every function takes plain arrays; times are float seconds on one clock
(bag time in replay).

Units. The report is in *report units*: degrees for arm joints and 0..100 for grippers (the
units of ``/kuavo_arm_traj`` and of the claw command). ``to_report_units`` converts the policy's
16-D SI vector (rad, grippers 0..1) into them.

Alignment. The recorded command streams (the arm topic at ~100 Hz, the claw command at ~30 Hz,
each on its own times) are *linearly interpolated* at each commanded sample's time
(``resample``); nearest-timestamp matching would add up to half a recorded period of time error
(17 ms at 30 Hz, about 1 degree at 1 rad/s), linear interpolation is exact for piecewise-linear
motion. A commanded sample is scored on a dim only where that dim's recorded stream covers its
time: inside the stream's span, with the two neighbouring recorded samples at most
``max_gap_s`` apart (a dropped or paused recording is not scored, rather than bridged).

Latency. For each accepted chunk, computed from the observation taken at ``t_obs`` and merged at
``t_arrival``: ``latency = t_first_command - t_obs``, with ``t_first_command`` the first command
sent after ``t_arrival`` (the age of the observation behind the chunk when the first command it
shaped goes out; a tick at the very time of the merge ran before it, as in the node, so the
latency includes up to one control period). Offline replay simulates ``t_arrival``; live
replay records it (the node's ``~/chunk_timing``).

Chunk switch step. The step of the command stream at each switch: ``|cmd[j] - cmd[j-1]|``, max
over the given dims, with ``j`` the first command after the chunk's ``t_arrival``. The
first chunk (no previous command) has no switch. ``max_step`` is the same over every pair of
consecutive commands, for scale (the safety filter bounds both by ``max_velocity * dt``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TIME_EPS_S = 1e-6
DEFAULT_MAX_GAP_S = 0.25

__all__ = [
    "DEFAULT_MAX_GAP_S",
    "build_report",
    "chunk_latencies",
    "compare_trajectories",
    "format_table",
    "rate_hz",
    "reference_at",
    "report_scale",
    "resample",
    "stats_ms",
    "switch_steps",
    "to_report_units",
    "tracking_error",
]


def report_scale(
    dim: int, gripper_indices: Sequence[int], gripper_scale: float = 100.0
) -> np.ndarray:
    """Per-dim multipliers from policy units (rad, grippers 0..1) to report units (degrees,
    grippers 0..``gripper_scale``)."""
    scale = np.full(dim, 180.0 / math.pi)
    g = [i for i in gripper_indices if 0 <= i < dim]
    scale[g] = gripper_scale
    return scale


def to_report_units(
    values: np.ndarray, gripper_indices: Sequence[int], gripper_scale: float = 100.0
) -> np.ndarray:
    """Policy units (rad, grippers 0..1) -> report units (degrees, grippers 0..100), any shape
    ``(..., dim)``; a new array."""
    v = np.asarray(values, dtype=np.float64)
    return v * report_scale(v.shape[-1], gripper_indices, gripper_scale)


def _clean_series(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by time, one sample per time (the last one logged wins), finite times only."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if len(t) != len(v):
        raise ValueError(f"{len(t)} times for {len(v)} samples.")
    keep = np.isfinite(t)
    t, v = t[keep], v[keep]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if len(t) > 1:
        last = np.append(np.diff(t) > TIME_EPS_S, True)
        t, v = t[last], v[last]
    return t, v


def resample(
    t_src: np.ndarray, v_src: np.ndarray, t_query: np.ndarray, max_gap_s: float = DEFAULT_MAX_GAP_S
) -> np.ndarray:
    """``v_src`` (N, D) linearly interpolated at ``t_query`` (Q,) -> (Q, D); NaN where a query
    time is outside ``[t_src[0], t_src[-1]]`` or between two samples more than ``max_gap_s``
    apart. Unsorted input is sorted; for duplicate times the last sample wins."""
    t, v = _clean_series(t_src, v_src)
    q = np.asarray(t_query, dtype=np.float64).reshape(-1)
    out = np.full((len(q), v.shape[1]), np.nan)
    if len(t) == 0 or len(q) == 0:
        return out
    if len(t) == 1:
        hit = np.abs(q - t[0]) <= TIME_EPS_S
        out[hit] = v[0]
        return out
    i = np.clip(np.searchsorted(t, q, side="right") - 1, 0, len(t) - 2)
    inside = (q >= t[0] - TIME_EPS_S) & (q <= t[-1] + TIME_EPS_S)
    gap_ok = (t[i + 1] - t[i]) <= max_gap_s + TIME_EPS_S
    # a query exactly on a sample is fine even next to a long gap
    on_left = np.abs(q - t[i]) <= TIME_EPS_S
    on_right = np.abs(q - t[i + 1]) <= TIME_EPS_S
    ok = inside & (gap_ok | on_left | on_right)
    f = np.clip((q - t[i]) / (t[i + 1] - t[i]), 0.0, 1.0)[:, None]
    interp = (1.0 - f) * v[i] + f * v[i + 1]
    out[ok] = interp[ok]
    return out


def reference_at(
    streams: Sequence[tuple[np.ndarray, np.ndarray, Sequence[int]]],
    t_query: np.ndarray,
    dim: int,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
) -> np.ndarray:
    """A ``(Q, dim)`` reference from several recorded streams ``(t, values (N, k), dims)``,
    each resampled at ``t_query`` into its ``dims``; NaN where nothing covers a dim."""
    q = np.asarray(t_query, dtype=np.float64).reshape(-1)
    ref = np.full((len(q), dim), np.nan)
    for t, v, dims in streams:
        if len(t):
            ref[:, list(dims)] = resample(t, v, q, max_gap_s)
    return ref


def tracking_error(cmd: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dim ``mae``, ``rmse`` and sample count ``n`` of ``cmd - ref`` over the samples where
    both are finite (``ref`` from ``reference_at``); NaN for a dim with no sample."""
    cmd = np.asarray(cmd, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if cmd.shape != ref.shape:
        raise ValueError(f"commands {cmd.shape} and reference {ref.shape} differ in shape.")
    err = cmd - ref
    ok = np.isfinite(err)
    n = ok.sum(axis=0)
    e = np.where(ok, err, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.where(n > 0, np.abs(e).sum(axis=0) / np.maximum(n, 1), np.nan)
        rmse = np.where(n > 0, np.sqrt((e**2).sum(axis=0) / np.maximum(n, 1)), np.nan)
    return {"mae": mae, "rmse": rmse, "n": n}


def chunk_latencies(t_obs: np.ndarray, t_arrival: np.ndarray, t_cmd: np.ndarray) -> np.ndarray:
    """Per chunk: first command time after its arrival, minus its observation time (s); NaN for
    a chunk after which no command went out."""
    t_obs = np.asarray(t_obs, dtype=np.float64).reshape(-1)
    t_arr = np.asarray(t_arrival, dtype=np.float64).reshape(-1)
    tc = np.sort(np.asarray(t_cmd, dtype=np.float64).reshape(-1))
    j = np.searchsorted(tc, t_arr + TIME_EPS_S, side="right")
    out = np.full(len(t_obs), np.nan)
    has = j < len(tc)
    out[has] = tc[j[has]] - t_obs[has]
    return out


def switch_steps(
    t_cmd: np.ndarray, cmd: np.ndarray, t_arrival: np.ndarray, dims: Sequence[int]
) -> np.ndarray:
    """Per chunk: the command step ``max_d |cmd[j, d] - cmd[j-1, d]|`` (``d`` in ``dims``) at
    the first command ``j`` after its arrival; NaN where there is no previous command or no
    command after the arrival. ``t_cmd`` must be sorted."""
    tc = np.asarray(t_cmd, dtype=np.float64).reshape(-1)
    c = np.asarray(cmd, dtype=np.float64)[:, list(dims)]
    t_arr = np.asarray(t_arrival, dtype=np.float64).reshape(-1)
    j = np.searchsorted(tc, t_arr + TIME_EPS_S, side="right")
    out = np.full(len(t_arr), np.nan)
    ok = (j >= 1) & (j < len(tc))
    if ok.any() and len(dims):
        jj = j[ok]
        out[ok] = np.abs(c[jj] - c[jj - 1]).max(axis=1)
    return out


def rate_hz(t_cmd: np.ndarray) -> float:
    """Mean command rate ``(n - 1) / (t_last - t_first)``; NaN with fewer than 2 commands."""
    t = np.asarray(t_cmd, dtype=np.float64).reshape(-1)
    if len(t) < 2 or t[-1] - t[0] <= 0:
        return math.nan
    return float((len(t) - 1) / (t[-1] - t[0]))


def stats_ms(seconds: np.ndarray) -> dict[str, float | int | None]:
    """``{p50, p95, max, n}`` in milliseconds of the finite values (None when there are none)."""
    x = np.asarray(seconds, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    return {
        "p50": float(np.percentile(x, 50) * 1e3),
        "p95": float(np.percentile(x, 95) * 1e3),
        "max": float(x.max() * 1e3),
        "n": len(x),
    }


def compare_trajectories(
    t_a: np.ndarray,
    a: np.ndarray,
    t_b: np.ndarray,
    b: np.ndarray,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
) -> dict[str, Any]:
    """Two command streams (report units) on their overlap: ``b`` is interpolated at ``a``'s
    times; per-dim ``max_abs`` and ``rms`` of ``a - b`` and the number of compared samples."""
    t_a = np.asarray(t_a, dtype=np.float64)
    b_at = resample(t_b, b, t_a, max_gap_s)
    d = np.asarray(a, dtype=np.float64) - b_at
    ok = np.isfinite(d).all(axis=1)
    d = d[ok]
    if len(d) == 0:
        nan = np.full(np.asarray(a).shape[1], np.nan)
        return {"max_abs": nan, "rms": nan, "n": 0, "diff": d, "t": t_a[ok]}
    return {
        "max_abs": np.abs(d).max(axis=0),
        "rms": np.sqrt((d**2).mean(axis=0)),
        "n": len(d),
        "diff": d,
        "t": t_a[ok],
    }


# ---------------------------------------------------------------------------------------------
# The report.


def _num(x: Any) -> float | None:
    """JSON-safe float: NaN/Inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def build_report(
    *,
    joint_names: Sequence[str],
    gripper_indices: Sequence[int],
    t_cmd: np.ndarray,
    cmd: np.ndarray,
    reference: np.ndarray | None,
    t_obs: np.ndarray,
    t_arrival: np.ndarray,
    counters: Mapping[str, Any],
) -> dict[str, Any]:
    """The report's numbers. ``cmd`` and ``reference`` (from ``reference_at``, or None when
    nothing was recorded) are in report units at the sorted times ``t_cmd``; ``t_obs`` /
    ``t_arrival`` describe the accepted chunks; ``counters`` (n_chunks, clamped, holds, ...)
    are copied. Keys: mae, rmse, n_scored (per joint name), mae_mean / rmse_mean (arm in deg,
    gripper in 0..100), latency_ms, rate_hz, max_gap_ms, max_switch_step_deg,
    max_step_deg, n_commands, n_chunks, plus the counters."""
    names = list(joint_names)
    dim = len(names)
    grip = [i for i in gripper_indices if 0 <= i < dim]
    arm = [i for i in range(dim) if i not in grip]
    t_cmd = np.asarray(t_cmd, dtype=np.float64).reshape(-1)
    cmd = np.asarray(cmd, dtype=np.float64).reshape(len(t_cmd), dim)
    rep: dict[str, Any] = {}
    if reference is not None and len(t_cmd):
        err = tracking_error(cmd, reference)
        rep["mae"] = {n: _num(v) for n, v in zip(names, err["mae"])}
        rep["rmse"] = {n: _num(v) for n, v in zip(names, err["rmse"])}
        rep["n_scored"] = {n: int(v) for n, v in zip(names, err["n"])}

        def group_mean(vals: np.ndarray, idx: list[int]) -> float | None:
            v = vals[idx]
            v = v[np.isfinite(v)]
            return _num(v.mean()) if len(v) else None

        rep["mae_mean"] = {
            "arm_deg": group_mean(err["mae"], arm),
            "gripper": group_mean(err["mae"], grip),
        }
        rep["rmse_mean"] = {
            "arm_deg": group_mean(err["rmse"], arm),
            "gripper": group_mean(err["rmse"], grip),
        }
    else:
        rep["mae"] = rep["rmse"] = rep["n_scored"] = None
        rep["mae_mean"] = rep["rmse_mean"] = None
    lat = chunk_latencies(t_obs, t_arrival, t_cmd)
    rep["latency_ms"] = stats_ms(lat)
    rep["rate_hz"] = _num(rate_hz(t_cmd))
    rep["max_gap_ms"] = _num(np.diff(t_cmd).max() * 1e3) if len(t_cmd) > 1 else None
    steps = switch_steps(t_cmd, cmd, t_arrival, arm)
    finite = steps[np.isfinite(steps)]
    rep["max_switch_step_deg"] = _num(finite.max()) if len(finite) else None
    rep["max_step_deg"] = (
        _num(np.abs(np.diff(cmd[:, arm], axis=0)).max()) if len(t_cmd) > 1 and arm else None
    )
    rep["n_commands"] = len(t_cmd)
    rep["n_chunks"] = len(np.asarray(t_obs).reshape(-1))
    for k, v in counters.items():
        rep.setdefault(k, v)
    rep["chunks"] = [
        {
            "t_obs": _num(o),
            "t_arrival": _num(a),
            "latency_ms": _num(lat_i * 1e3),
            "switch_step_deg": _num(s),
        }
        for o, a, lat_i, s in zip(
            np.asarray(t_obs).reshape(-1), np.asarray(t_arrival).reshape(-1), lat, steps
        )
    ]
    return rep


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def format_table(report: Mapping[str, Any], gripper_names: Sequence[str] = ()) -> str:
    """The report as a plain-text table (per joint MAE/RMSE, then the summary numbers)."""
    lines = []
    mae, rmse, n = report.get("mae"), report.get("rmse"), report.get("n_scored")
    if mae:
        lines.append(f"{'joint':<16}{'unit':>6}{'MAE':>10}{'RMSE':>10}{'n':>8}")
        for name in mae:
            unit = "0-100" if name in gripper_names else "deg"
            lines.append(
                f"{name:<16}{unit:>6}{_fmt(mae[name]):>10}{_fmt(rmse[name]):>10}{_fmt(n[name]):>8}"
            )
        mm, rm = report["mae_mean"], report["rmse_mean"]
        lines.append(
            f"{'mean arm':<16}{'deg':>6}{_fmt(mm['arm_deg']):>10}{_fmt(rm['arm_deg']):>10}"
        )
        lines.append(
            f"{'mean gripper':<16}{'0-100':>6}{_fmt(mm['gripper']):>10}{_fmt(rm['gripper']):>10}"
        )
    else:
        lines.append("no recorded commands to compare with: no MAE/RMSE")
    lat = report.get("latency_ms") or {}
    lines.append("")
    summary = [
        (
            "latency obs->cmd (ms)",
            f"p50 {_fmt(lat.get('p50'), 1)}  p95 {_fmt(lat.get('p95'), 1)}"
            f"  max {_fmt(lat.get('max'), 1)}  (n {lat.get('n', 0)})",
        ),
        ("command rate (Hz)", _fmt(report.get("rate_hz"), 1)),
        ("max gap (ms)", _fmt(report.get("max_gap_ms"), 1)),
        ("max switch step (deg)", _fmt(report.get("max_switch_step_deg"), 3)),
        ("max step (deg)", _fmt(report.get("max_step_deg"), 3)),
        ("commands", _fmt(report.get("n_commands"))),
        ("chunks", _fmt(report.get("n_chunks"))),
        ("clamped", _fmt(report.get("clamped"))),
        ("holds", _fmt(report.get("holds"))),
    ]
    width = max(len(k) for k, _ in summary)
    lines += [f"{k:<{width}}  {v}" for k, v in summary]
    return "\n".join(lines)
