"""Kuavo rosbags -> a LeRobot dataset for fine-tuning: one episode per bag, the task text per bag.

ROS 2 bags (sqlite3, mcap) and stock ROS 1 ``.bag`` files are read with ``bagio`` and mapped
with the same config and the same code as the node and the replay tool
(``observation.extract_source`` / ``decode_image``), so training sees what deployment will feed:

  ``observation.state`` (16)   ``inputs.arm`` + ``inputs.gripper``: rad, grippers 0..1
  ``action`` (16)              the commands: ``outputs.arm_topic`` positions (degrees -> rad when
                               ``outputs.arm_in_degrees``, matched by ``outputs.arm_names``) on
                               the robot's arm dims, ``outputs.gripper_topic`` field /
                               ``outputs.gripper_scale`` on the gripper dims (Leju: claw / 100)
  ``observation.images.<cam>`` ``inputs.cameras`` decoded to RGB, stored as video (AV1)

Alignment: frames on a grid at ``fps`` (default ``scheduler.action_fps``; the training refuses a
dataset whose fps differs from it) from the latest first message to the earliest last message of
all these streams; every stream contributes its message nearest in log time to each frame time.
Each bag is read twice: numbers and camera times first, then only the chosen camera frames are
decoded and written as they complete, so memory stays small for long recordings.
``meta/kuavo_convert.json`` records each episode's bag, start time, task and stale-input counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import (
    Config,
    ConfigError,
    SourceConfig,
    command_sources,
    load_config,
)

log = logging.getLogger(__name__)

SIDECAR = "meta/kuavo_convert.json"


class ConvertError(RuntimeError):
    """A bag cannot be converted with this config; the message says why and what to change."""


def pick_vcodec(requested: str = "libsvtav1") -> str:
    """``requested`` if PyAV can encode it here, else h264 (LeRobot's encoders go through PyAV)."""
    import av

    for codec in (requested, "libsvtav1", "h264"):
        name = {"h264": "libx264", "hevc": "libx265"}.get(codec, codec)
        try:
            av.codec.Codec(name, "w")
            return codec
        except Exception:
            continue
    raise ConvertError("PyAV has none of the video encoders libsvtav1 / h264 here.")


# ---------------------------------------------------------------------------------------------
# Pass 1: numbers and camera times.


@dataclass
class _Stream:
    """One input stream of a bag: log times and (for numeric streams) values per message."""

    role: str  # "state", "action" or "camera"
    name: str  # arm / gripper / camera name
    src: SourceConfig | None
    timeout_s: float
    times: list[float] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    failed: int = 0
    first_error: str = ""
    transport: str = ""

    @property
    def topic(self) -> str:
        return self.src.topic if self.src is not None else self.name


@dataclass
class _Episode:
    bag: str
    start_s: float
    grid: np.ndarray  # absolute log times of the frames
    state: np.ndarray
    action: np.ndarray
    cam_index: dict[str, np.ndarray]  # camera -> index of the chosen message, per frame
    stale: dict[str, int]


_CONFIG_FIELDS = {
    ("state", "arm"): "inputs.arm",
    ("state", "gripper"): "inputs.gripper",
    ("action", "arm"): "outputs.arm_topic, outputs.arm_names, outputs.arm_in_degrees",
    ("action", "gripper"): (
        "outputs.gripper_topic, gripper_msg_type, gripper_field, gripper_names, gripper_scale"
    ),
    ("camera", ""): "inputs.cameras",
}


def _streams(cfg: Config) -> list[_Stream]:
    cams = cfg.inputs.cameras
    arm_cmd, grip_cmd = command_sources(cfg)  # the recorded commands are the actions
    t_state, t_cam = cfg.inputs.state_timeout_s, cfg.inputs.camera_timeout_s
    streams = [
        _Stream("state", "arm", cfg.inputs.arm, t_state),
        _Stream("state", "gripper", cfg.inputs.gripper, t_state),
        _Stream("action", "arm", arm_cmd, math.inf),
        _Stream("action", "gripper", grip_cmd, math.inf),
    ]
    for name, topic, transport in zip(cams.names, cams.topics, cams.transports):
        src = SourceConfig(topic=topic, msg_type="sensor_msgs/msg/CompressedImage", dims=(0,))
        streams.append(_Stream("camera", name, src, t_cam, transport=transport))
    return streams


def _nearest(times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the message nearest in time to each grid time (ties: the earlier one)."""
    right = np.clip(np.searchsorted(times, grid, side="left"), 1, len(times) - 1)
    left = right - 1
    take_right = (times[right] - grid) < (grid - times[left])
    return np.where(take_right, right, left)


def _scan(reader: Any, bag: str, cfg: Config, fps: float) -> tuple[_Episode, dict[str, tuple]]:
    """Pass 1: numeric values and camera log times; returns the episode plan and image shapes."""
    from kuavo_smolvla_ros.core.observation import ObservationError, decode_image, extract_source

    streams = _streams(cfg)
    topics = sorted({s.topic for s in streams})
    try:
        reader.require(topics)
    except Exception as exc:
        hint = ""
        if any(t.startswith("/sensors_data_raw") for t in reader.topics):
            hint = "\nThis looks like a stock ROS 1 recording: use config/kuavo_ros1_stock.yaml."
        raise ConvertError(f"{exc}\nThe config needs these topics: {topics}.{hint}") from None
    by_topic: dict[str, list[_Stream]] = {}
    for s in streams:
        by_topic.setdefault(s.topic, []).append(s)
    shapes: dict[str, tuple] = {}
    for m in reader.messages(topics):
        for s in by_topic[m.topic]:
            if s.role == "camera":
                s.times.append(m.t)
                if s.name not in shapes:
                    try:
                        shapes[s.name] = decode_image(m.msg, s.transport).shape
                    except ObservationError as exc:
                        s.first_error = s.first_error or str(exc)
                continue
            try:
                values = extract_source(m.msg, s.src, label=s.name)
            except ObservationError as exc:
                s.failed += 1
                s.first_error = s.first_error or str(exc)
                continue
            s.times.append(m.t)
            s.values.append(values)
    for s in streams:
        if len(s.times) < 2:
            why = f": {s.first_error}" if s.first_error else ""
            raise ConvertError(
                f"{bag}: {s.role} {s.name} ({s.topic}) has {len(s.times)} usable messages{why}"
                f" (configured by {_CONFIG_FIELDS[s.role, s.name if s.role != 'camera' else '']})"
            )
        if s.failed:
            log.warning("%s: %d messages of %s skipped (%s)", bag, s.failed, s.topic, s.first_error)
    missing_shapes = [s.name for s in streams if s.role == "camera" and s.name not in shapes]
    if missing_shapes:
        raise ConvertError(f"{bag}: no decodable image on camera(s) {missing_shapes}.")

    start = max(s.times[0] for s in streams)
    stop = min(s.times[-1] for s in streams)
    n = math.floor((stop - start) * fps + 1e-6) + 1 if stop > start else 0
    if n < 2:
        raise ConvertError(
            f"{bag}: the input streams overlap for {max(stop - start, 0):.2f} s only (from"
            f" {start:.2f} to {stop:.2f} s): nothing to convert."
        )
    grid = start + np.arange(n) / fps
    robot_dim = cfg.robot.dim
    state = np.zeros((n, robot_dim))
    action = np.zeros((n, robot_dim))
    cam_index: dict[str, np.ndarray] = {}
    stale: dict[str, int] = {}
    for s in streams:
        times = np.asarray(s.times)
        if np.any(np.diff(times) < 0):
            raise ConvertError(f"{bag}: {s.topic} log times go backwards.")
        idx = _nearest(times, grid)
        n_stale = int(np.sum(np.abs(times[idx] - grid) > s.timeout_s))
        if n_stale:
            stale[f"{s.role}.{s.name}"] = n_stale
            log.warning(
                "%s: %d of %d frames use %s data older than %.2f s (a gap in %s)",
                bag,
                n_stale,
                n,
                s.name,
                s.timeout_s,
                s.topic,
            )
        if s.role == "camera":
            cam_index[s.name] = idx
            continue
        values = np.stack(s.values)[idx]
        target = state if s.role == "state" else action
        target[:, list(s.src.dims)] = values
    return _Episode(bag, float(start), grid, state, action, cam_index, stale), shapes


# ---------------------------------------------------------------------------------------------
# Pass 2: the chosen camera frames, written frame by frame.


def _write_frames(
    reader: Any, ep: _Episode, ds: Any, cfg: Config, task: str, shapes: dict[str, tuple]
) -> int:
    import cv2

    from kuavo_smolvla_ros.core.observation import ObservationError, decode_image

    cams = cfg.inputs.cameras
    topic_cam = dict(zip(cams.topics, cams.names))
    transports = dict(zip(cams.names, cams.transports))
    wanted = {c: set(ep.cam_index[c].tolist()) for c in cams.names}
    counters = dict.fromkeys(cams.names, -1)
    images: dict[str, dict[int, np.ndarray]] = {c: {} for c in cams.names}
    last_good: dict[str, np.ndarray] = {}
    n = len(ep.grid)
    next_frame = 0
    bad = 0

    def flush() -> None:
        nonlocal next_frame
        while next_frame < n and all(
            int(ep.cam_index[c][next_frame]) in images[c] for c in cams.names
        ):
            k = next_frame
            frame: dict[str, Any] = {
                dims.STATE_KEY: ep.state[k].astype(np.float32),
                dims.ACTION_KEY: ep.action[k].astype(np.float32),
                "task": task,
            }
            for c in cams.names:
                frame[dims.IMAGE_PREFIX + c] = images[c][int(ep.cam_index[c][k])]
            ds.add_frame(frame)
            next_frame += 1
            if next_frame < n:  # drop images no later frame uses
                for c in cams.names:
                    keep = int(ep.cam_index[c][next_frame])
                    for i in [i for i in images[c] if i < keep]:
                        del images[c][i]

    for m in reader.messages(list(topic_cam)):
        cam = topic_cam[m.topic]
        counters[cam] += 1
        i = counters[cam]
        if i not in wanted[cam]:
            continue
        try:
            rgb = decode_image(m.msg, transports[cam])
        except ObservationError as exc:
            if cam not in last_good:
                raise ConvertError(f"{ep.bag}: camera {cam}: {exc}") from None
            bad += 1
            rgb = last_good[cam]
        h, w = shapes[cam][:2]
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        last_good[cam] = rgb
        images[cam][i] = rgb
        flush()
    if next_frame != n:
        raise ConvertError(
            f"{ep.bag}: the camera messages changed between two reads ({next_frame} of {n}"
            " frames written)."
        )
    if bad:
        log.warning("%s: %d undecodable camera frames replaced by the previous one", ep.bag, bad)
    return n


# ---------------------------------------------------------------------------------------------
# The dataset.


def _features(cfg: Config, shapes: dict[str, tuple], video: bool) -> dict[str, dict[str, Any]]:
    names = list(cfg.robot.joint_names)
    feats: dict[str, dict[str, Any]] = {
        dims.STATE_KEY: {"dtype": "float32", "shape": (cfg.robot.dim,), "names": names},
        dims.ACTION_KEY: {"dtype": "float32", "shape": (cfg.robot.dim,), "names": names},
    }
    for cam in cfg.inputs.cameras.names:
        h, w = shapes[cam][:2]
        feats[dims.IMAGE_PREFIX + cam] = {
            "dtype": "video" if video else "image",
            "shape": (int(h), int(w), 3),
            "names": ["height", "width", "channels"],
        }
    return feats


def _tasks(task: str | Sequence[str] | None, n: int, cfg: Config) -> list[str]:
    if task is None or isinstance(task, str):
        text = task if task is not None else cfg.policy.task
        if not text:
            raise ConvertError("no task text: pass task (--task) or set policy.task in the config.")
        return [text] * n
    tasks = list(task)
    if len(tasks) == 1:
        return tasks * n
    if len(tasks) != n or not all(tasks):
        raise ConvertError(f"{len(tasks)} task texts for {n} bags: give one, or one per bag.")
    return tasks


def convert_bags(
    bags: Sequence[str | Path] | str | Path,
    out_root: str | Path,
    config: Config | None = None,
    task: str | Sequence[str] | None = None,
    fps: float | None = None,
    *,
    repo_id: str | None = None,
    vcodec: str = "libsvtav1",
    image_size: tuple[int, int] | None = None,
    overwrite: bool = False,
    image_writer_threads: int = 4,
    video: bool = True,
) -> Path:
    """Convert ``bags`` (one episode each) into a LeRobot dataset at ``out_root``; returns it.

    ``task``: one text for every bag or one per bag (default ``config.policy.task``). ``fps``
    defaults to ``config.scheduler.action_fps``. ``image_size`` (width, height) resizes the
    cameras; by default the first bag's image size is kept. ``video=False`` stores the cameras
    as PNG images in the parquet files instead of video: several times larger on disk, but
    training reads them without decoding video (no FFmpeg for torchcodec, no PyAV seeks).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from kuavo_smolvla_ros.bag import open_bag

    cfg = config or Config()
    bags = [bags] if isinstance(bags, (str, Path)) else list(bags)
    if not bags:
        raise ConvertError("no bags to convert.")
    fps = float(cfg.scheduler.action_fps if fps is None else fps)
    if not (fps > 0 and abs(fps - round(fps)) < 1e-9):
        raise ConvertError(f"fps={fps:g}: LeRobot datasets need a whole number of frames/s.")
    if abs(fps - cfg.scheduler.action_fps) > 1e-9:
        log.warning(
            "converting at %g fps but scheduler.action_fps is %g: set it to %g before training",
            fps,
            cfg.scheduler.action_fps,
            fps,
        )
    tasks = _tasks(task, len(bags), cfg)
    out_root = Path(out_root)
    if out_root.exists():
        if not overwrite:
            raise ConvertError(f"{out_root} exists; remove it or pass overwrite (--overwrite).")
        if not (out_root / "meta" / "info.json").is_file() and any(out_root.iterdir()):
            raise ConvertError(f"{out_root} is not a LeRobot dataset; not overwriting it.")
        shutil.rmtree(out_root)
    vcodec = pick_vcodec(vcodec) if video else "libsvtav1"  # unused without video

    ds = None
    sidecar: dict[str, Any] = {"fps": fps, "vcodec": vcodec, "episodes": []}
    try:
        for k, (bag, text) in enumerate(zip(bags, tasks)):
            t0 = time.perf_counter()
            with open_bag(bag) as reader:
                ep, shapes = _scan(reader, str(bag), cfg, fps)
                if image_size is not None:
                    shapes = {c: (image_size[1], image_size[0], 3) for c in shapes}
                if ds is None:
                    ds = LeRobotDataset.create(
                        repo_id or f"local/{out_root.name}",
                        fps=round(fps),
                        features=_features(cfg, shapes, video),
                        root=out_root,
                        robot_type=cfg.robot.name,
                        use_videos=video,
                        vcodec=vcodec,
                        image_writer_threads=image_writer_threads,
                    )
                feats = ds.meta.features
                shapes = {
                    c: tuple(feats[dims.IMAGE_PREFIX + c]["shape"])
                    for c in cfg.inputs.cameras.names
                }
                n = _write_frames(reader, ep, ds, cfg, text, shapes)
            ds.save_episode()
            sidecar["episodes"].append(
                {
                    "episode_index": k,
                    "bag": str(Path(bag).resolve()),
                    "task": text,
                    "start_s": ep.start_s,
                    "frames": n,
                    "stale_frames": ep.stale,
                }
            )
            log.info(
                "%s -> episode %d: %d frames (%.1f s at %g fps) in %.1f s",
                bag,
                k,
                n,
                n / fps,
                fps,
                time.perf_counter() - t0,
            )
    except BaseException:
        if ds is not None:
            ds.stop_image_writer()
            ds.finalize()
        shutil.rmtree(out_root, ignore_errors=True)  # no half-written dataset left behind
        raise
    ds.stop_image_writer()
    ds.finalize()
    (out_root / SIDECAR).write_text(json.dumps(sidecar, indent=2))
    return out_root


# ---------------------------------------------------------------------------------------------
# CLI.


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="kuavo-smolvla-convert",
        description="Convert Kuavo rosbags (ROS 2 db3/mcap, ROS 1 .bag) into a LeRobot dataset,"
        " one episode per bag.",
    )
    p.add_argument("bags", nargs="+", help="bag directories / files, one episode each")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--config", help="package YAML (topics, fields, cameras); ROS 1 stock bags:"
                   " config/kuavo_ros1_stock.yaml")  # fmt: skip
    p.add_argument("--task", action="append", help="task text: once for all bags, or per bag")
    p.add_argument("--fps", type=float, default=None, help="default: scheduler.action_fps")
    p.add_argument("--repo-id", default=None, help="dataset repo id (default local/<out name>)")
    p.add_argument("--vcodec", default="libsvtav1", choices=("libsvtav1", "h264", "hevc"))
    p.add_argument("--image-size", type=_size, default=None, help="WIDTHxHEIGHT resize")
    p.add_argument("--images", action="store_true",
                   help="store cameras as PNG images, not video (no decoder needed to train)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from kuavo_smolvla_ros.bag import BagError

    try:
        cfg = load_config(a.config) if a.config else Config()
        root = convert_bags(
            a.bags,
            a.out,
            cfg,
            task=a.task,
            fps=a.fps,
            repo_id=a.repo_id,
            vcodec=a.vcodec,
            image_size=a.image_size,
            overwrite=a.overwrite,
            video=not a.images,
        )
    except (ConvertError, ConfigError, BagError) as exc:
        print(f"kuavo-smolvla-convert: {exc}", file=sys.stderr)
        return 2
    info = json.loads((root / "meta" / "info.json").read_text())
    print(
        f"wrote {root}: {info['total_episodes']} episodes, {info['total_frames']} frames at"
        f" {info['fps']} fps"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
