"""Write rosbags: ROS 2 (``fmt="sqlite3"`` or ``"mcap"``) and ROS 1 (``fmt="ros1"``).

ROS 1 kuavo_msgs connections carry the stock definition text and md5 exactly as Leju's
recordings do, so a written bag reproduces the real-world files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Ros2Writer
from rosbags.typesys.msg import normalize_msgtype

from kuavo_smolvla_ros.bag.errors import BagError, describe_exc
from kuavo_smolvla_ros.bag.kuavo_types import (
    BAG_FORMATS,
    KUAVO_MD5,
    KUAVO_MSGS,
    kuavo_ros1_full_definition,
    typestore_for,
)

__all__ = ["BagWriter", "write_bag"]


# Writer
# --------------------------------------------------------------------------------------------


class BagWriter:
    """Write a bag: ``fmt="sqlite3"`` / ``"mcap"`` (ROS 2 directory) or ``"ros1"`` (.bag file).

    Build messages with ``writer.typestore.types[msgtype](...)`` (``typestore_for(fmt)``) and
    call ``write(topic, msgtype, t_ns, msg)``; connections are added on first use. In ROS 1
    bags kuavo_msgs types get the stock definition text and md5 of Leju's recordings.

    ``split_s``: start a new file every this many seconds of log time (ROS 2: one directory
    with several storage files and one metadata.yaml, like ``ros2 bag record
    --max-bag-duration``; ROS 1: ``<stem>_0.bag``, ``<stem>_1.bag``... like ``rosbag record
    --split``). ``stem`` names the storage files (default: the bag's name). ``overwrite``
    replaces an existing bag (never a directory holding other files). ``paths`` lists what
    was written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fmt: str = "sqlite3",
        *,
        split_s: float | None = None,
        typestore: Any = None,
        overwrite: bool = False,
        stem: str | None = None,
    ) -> None:
        if fmt not in BAG_FORMATS:
            raise BagError(f"unknown bag format {fmt!r}: use one of {', '.join(BAG_FORMATS)}.")
        self.path = Path(path)
        self.fmt = fmt
        self.split_ns = None if split_s is None else int(split_s * 1e9)
        if self.split_ns is not None and self.split_ns <= 0:
            raise BagError("split_s must be > 0.")
        self.typestore = typestore if typestore is not None else typestore_for(fmt)
        self.stem = stem or (self.path.stem if fmt == "ros1" else self.path.name)
        self.paths: list[Path] = []
        self._overwrite = overwrite
        self._writer: Any = None
        self._conns: dict[tuple[str, str], Any] = {}
        self._part = 0
        self._part_start: int | None = None
        self._parts: list[Path] = []
        self._serialize = (
            self.typestore.serialize_ros1 if fmt == "ros1" else self.typestore.serialize_cdr
        )

    def open(self) -> BagWriter:
        targets = [self.path]
        if self.fmt == "ros1" and self.split_ns is not None:
            targets = list(self.path.parent.glob(f"{self.stem}_*.bag"))
        for t in targets:
            if t.exists() or t.is_symlink():
                if not self._overwrite:
                    raise BagError(f"{t} exists already; remove it or pass overwrite=True.")
                _remove_bag(t)
        if self.fmt != "ros1":
            self.path.mkdir(parents=True, exist_ok=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._start_part()
        return self

    def _part_path(self) -> Path:
        if self.fmt == "ros1":
            if self.split_ns is None:
                return self.path
            return self.path.with_name(f"{self.stem}_{self._part}.bag")
        return self.path / f".part{self._part}"

    def _start_part(self) -> None:
        path = self._part_path()
        if self.fmt == "ros1":
            self._writer = Ros1Writer(path)
        else:
            plugin = StoragePlugin.MCAP if self.fmt == "mcap" else StoragePlugin.SQLITE3
            self._writer = Ros2Writer(path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._parts.append(path)
        self._conns = {}
        self._part_start = None

    def _connection(self, topic: str, msgtype: str) -> Any:
        key = (topic, msgtype)
        if key not in self._conns:
            if self.fmt == "ros1" and msgtype in KUAVO_MSGS:
                conn = self._writer.add_connection(
                    topic,
                    msgtype,
                    msgdef=kuavo_ros1_full_definition(msgtype),
                    md5sum=KUAVO_MD5[msgtype],
                )
            else:
                conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._conns[key] = conn
        return self._conns[key]

    def write(self, topic: str, msgtype: str, t_ns: int, msg: Any) -> None:
        """Write one message object (of ``self.typestore``'s classes) at log time ``t_ns``."""
        if self._writer is None:
            raise BagError("BagWriter is not open (use it as a context manager).")
        msgtype = normalize_msgtype(msgtype)
        t_ns = int(t_ns)
        if self.split_ns is not None:
            if self._part_start is None:
                self._part_start = t_ns
            elif t_ns - self._part_start >= self.split_ns:
                self._writer.close()
                self._part += 1
                self._start_part()
                self._part_start = t_ns
        try:
            data = self._serialize(msg, msgtype)
        except Exception as exc:
            raise BagError(
                f"cannot serialize a {type(msg).__name__} as {msgtype} on {topic}:"
                f" {describe_exc(exc)}"
            ) from None
        self._writer.write(self._connection(topic, msgtype), t_ns, data)

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        if self.fmt == "ros1":
            self.paths = list(self._parts)
        else:
            _assemble_ros2(self.path, self._parts, self.fmt, self.stem)
            self.paths = [self.path]

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _remove_bag(path: Path) -> None:
    """Remove an existing bag (file, or a directory holding only bag files) before rewriting."""
    if path.is_dir() and not path.is_symlink():
        allowed = {".yaml", ".db3", ".mcap", ".zstd", ".db3-shm", ".db3-wal", ".bag"}
        others = [x for x in path.rglob("*") if x.is_file() and x.suffix not in allowed]
        if others:
            raise BagError(
                f"{path} exists and holds non-bag files ({others[0].name}...); not removing it."
            )
        shutil.rmtree(path)
    else:
        path.unlink()


def _assemble_ros2(path: Path, parts: list[Path], fmt: str, stem: str) -> None:
    """Move the part bags' storage files into ``path`` and write one metadata.yaml."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    suffix = ".mcap" if fmt == "mcap" else ".db3"
    metas = []
    files = []
    for i, part in enumerate(parts):
        meta = yaml.load((part / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        name = f"{stem}_{i}{suffix}" if len(parts) > 1 else f"{stem}{suffix}"
        (part / meta["relative_file_paths"][0]).rename(path / name)
        metas.append(meta)
        files.append(name)
        shutil.rmtree(part)
    info = dict(metas[0])
    topics: dict[tuple[str, str], dict[str, Any]] = {}
    for meta in metas:
        for entry in meta["topics_with_message_count"]:
            key = (entry["topic_metadata"]["name"], entry["topic_metadata"]["type"])
            if key in topics:
                topics[key]["message_count"] += entry["message_count"]
            else:
                topics[key] = {**entry}
    counted = [m for m in metas if m["message_count"]]
    start = min((m["starting_time"]["nanoseconds_since_epoch"] for m in counted), default=0)
    end = max(
        (
            m["starting_time"]["nanoseconds_since_epoch"] + m["duration"]["nanoseconds"]
            for m in counted
        ),
        default=0,
    )
    info["relative_file_paths"] = files
    info["message_count"] = sum(m["message_count"] for m in metas)
    info["starting_time"] = {"nanoseconds_since_epoch": start}
    info["duration"] = {"nanoseconds": end - start}
    info["topics_with_message_count"] = list(topics.values())
    info["files"] = [{**m["files"][0], "path": name} for m, name in zip(metas, files, strict=True)]
    with (path / "metadata.yaml").open("w") as f:
        yaml.dump({"rosbag2_bagfile_information": info}, f)


def write_bag(
    path: str | os.PathLike,
    messages: Iterable[tuple[str, str, int, Any]],
    fmt: str = "sqlite3",
    *,
    split_s: float | None = None,
    typestore: Any = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``(topic, msgtype, t_ns, msg)`` tuples (log-time order) to a bag; returns the
    written paths (one ROS 2 directory, or the ROS 1 file(s))."""
    writer = BagWriter(path, fmt, split_s=split_s, typestore=typestore, overwrite=overwrite)
    with writer:
        for topic, msgtype, t_ns, msg in messages:
            writer.write(topic, msgtype, t_ns, msg)
    return writer.paths
