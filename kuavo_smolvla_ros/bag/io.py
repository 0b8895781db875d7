"""Read and write rosbags (ROS 1 ``.bag``, ROS 2 sqlite3 and mcap) with the ``rosbags`` library.

No rclpy: offline replay, the dataset converter, the demo bag generator and the tests use this.

Reading (``open_bag``) accepts a ROS 2 bag directory (one or several ``.db3`` / ``.mcap`` files),
a bare ``.db3`` / ``.mcap`` file, a ROS 1 ``.bag`` file, a list of ``.bag`` files (a split ROS 1
recording) or a directory of them, and a list of ROS 2 bag directories. Messages come back in
log-time order as ``BagMessage(topic, msgtype, t, msg)`` with ``t`` in float seconds, ``msgtype``
ROS 2 style (``kuavo_msgs/msg/sensorsData``) and ``msg`` a decoded message object
(``msg.position``, ``msg.header.stamp.sec``, ``msg.data`` as a numpy array for images).

Message types are built from the definitions the bag carries, so custom types (kuavo_msgs) need
no installed package. Two repairs over plain ``rosbags.highlevel.AnyReader``:

1. ROS 1 definitions whose constants are not UPPER_CASE (Kuavo's ``lejuClawState`` writes
   ``int8 kError = -1``) are legal ROS 1 but rosbags 0.11.9 parses those lines as five int8
   *fields*: the type gets five phantom bytes and another md5 (d89db751... instead of
   71c0eb8f...), and ``AnyReader`` refuses the whole bag ("hash mismatch"). Here such lines are
   parsed as constants (ROS 1 ``genmsg`` rules), which restores the layout and the md5; for the
   stock Kuavo types the known-good ``KUAVO_MSGS`` definitions are used when the md5 matches.
2. Damaged files: a ROS 1 bag whose index is missing (truncated file, or a recording that was
   killed: ``.bag.active``) is read by scanning its chunks; an MCAP file without its summary or
   footer is read by scanning its records; a ROS 2 directory without ``metadata.yaml`` is read
   from its storage files. Everything recoverable is yielded and, if data was lost, iteration
   ends with a ``BagError`` that says how many messages were read.

Errors are ``BagError`` with a message meant for the user (print it, no traceback). A message
that fails to decode is skipped and counted (``reader.skipped``), not fatal.

Topics asked for but absent from the bag are ignored (the iteration is simply empty for them);
use ``reader.require(topics)`` to turn absence into a ``BagError`` that lists what the bag has.

Writing (``BagWriter`` / ``write_bag``) produces ROS 2 bags (``fmt="sqlite3"`` or ``"mcap"``)
and ROS 1 bags (``fmt="ros1"``). ROS 1 kuavo_msgs connections carry the stock definition text
and md5 exactly as Leju's recordings do, so a written bag reproduces the real-world files.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import heapq
import os
import re
import shutil
import struct
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag1,
    ConnectionExtRosbag2,
    MessageDefinition,
    MessageDefinitionFormat,
    Nodetype,
)
from rosbags.rosbag1 import Reader as Ros1Reader
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import Reader as Ros2Reader
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Ros2Writer
from rosbags.rosbag2.reader import DirectoryReader
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.msg import denormalize_msgtype, normalize_msgtype

__all__ = [
    "BAG_FORMATS",
    "KUAVO_MD5",
    "KUAVO_MSGS",
    "BagError",
    "BagMessage",
    "BagReader",
    "BagWriter",
    "kuavo_ros1_full_definition",
    "open_bag",
    "typestore_for",
    "write_bag",
]

BAG_FORMATS = ("sqlite3", "mcap", "ros1")
_SEP = "=" * 80


class BagError(RuntimeError):
    """A bag cannot be read or written; the message says which file and why (print it as is).

    ``messages_read`` is how many messages the failing iteration had yielded (0 at open time),
    so a caller can report a partial result.
    """

    def __init__(self, message: str, *, messages_read: int = 0) -> None:
        super().__init__(message)
        self.messages_read = messages_read


class BagMessage(NamedTuple):
    """One decoded message: topic, ROS 2 style type name, log time (s) and the message."""

    topic: str
    msgtype: str
    t: float
    msg: Any


# --------------------------------------------------------------------------------------------
# kuavo_msgs definitions, verbatim as Leju's ROS 1 kuavo_msgs package ships them (the text its
# generated code embeds, comments and trailing spaces included), and the ROS 1 std/geometry
# texts genmsg embeds with them. The md5 sums are ROS 1's (checked in the tests).
# --------------------------------------------------------------------------------------------

_ROS1_HEADER = "\n".join(
    (
        "# Standard metadata for higher-level stamped data types.",
        "# This is generally used to communicate timestamped data ",
        "# in a particular coordinate frame.",
        "# ",
        "# sequence ID: consecutively increasing ID ",
        "uint32 seq",
        "#Two-integer timestamp that is expressed as:",
        "# * stamp.sec: seconds (stamp_secs) since epoch (in Python the variable is called 'secs')",
        "# * stamp.nsec: nanoseconds since stamp_secs (in Python the variable is called 'nsecs')",
        "# time-handling sugar is provided by the client library",
        "time stamp",
        "#Frame this data is associated with",
        "string frame_id",
        "",
    )
)
_ROS1_VECTOR3 = "\n".join(
    (
        "# This represents a vector in free space. ",
        "# It is only meant to represent a direction. Therefore, it does not",
        "# make sense to apply a translation to it (e.g., when applying a ",
        "# generic rigid transformation to a Vector3, tf2 will only apply the",
        "# rotation). If you want your data to be translatable too, use the",
        "# geometry_msgs/Point message instead.",
        "",
        "float64 x",
        "float64 y",
        "float64 z",
    )
)
_ROS1_QUATERNION = "\n".join(
    (
        "# This represents an orientation in free space in quaternion form.",
        "",
        "float64 x",
        "float64 y",
        "float64 z",
        "float64 w",
        "",
    )
)
_ROS1_STD_TEXTS = {
    "std_msgs/msg/Header": _ROS1_HEADER,
    "geometry_msgs/msg/Vector3": _ROS1_VECTOR3,
    "geometry_msgs/msg/Quaternion": _ROS1_QUATERNION,
}

KUAVO_MSGS: dict[str, str] = {
    "kuavo_msgs/msg/endEffectorData": "\n".join(
        (
            "string[] name  ",
            "float64[] position",
            "float64[] velocity  ",
            "float64[] effort",
            "",
            "",
        )
    ),
    "kuavo_msgs/msg/jointData": "\n".join(
        (
            "float64[] joint_q  ",
            "float64[] joint_v  ",
            "float64[] joint_vd    ",
            "float64[] joint_current  ",
            "",
        )
    ),
    "kuavo_msgs/msg/imuData": "\n".join(
        (
            "geometry_msgs/Vector3 gyro    #陀螺仪数据",
            "geometry_msgs/Vector3 acc     #加速计数据",
            "geometry_msgs/Vector3 free_acc    #无重力加速度数据",
            "geometry_msgs/Quaternion quat    #四元数数据",
            "",
        )
    ),
    "kuavo_msgs/msg/sensorsData": "\n".join(
        (
            "std_msgs/Header header",
            "time sensor_time",
            "kuavo_msgs/jointData joint_data",
            "kuavo_msgs/imuData imu_data",
            "kuavo_msgs/endEffectorData end_effector_data",
            "",
        )
    ),
    "kuavo_msgs/msg/lejuClawCommand": "\n".join(
        (
            "# kuavo_msgs/endEffectorData:",
            "# string[] name  ",
            "# float64[] position",
            "# float64[] velocity  ",
            "# float64[] effort",
            "# ",
            "# ** For the Topic Notes **",
            "# ",
            "# name     : 'left_claw' , 'right_claw'",
            "# position : 0 ~ 100, the percentage of the claw's opening angle",
            "#            0: closed, 100: open   ",
            "# velocity : 0 ~ 100, if size is 0, will use default `50.0`.",
            "# effort   : torque/current, better 1A ~ 2A, if size is 0, will use default `1.0`.",
            "# ",
            "# ** Example **",
            "# data:",
            "#   - name: ['left_claw', 'right_claw']",
            "#     position: [20.0, 20.0]",
            "#     velocity: [50.0, 50.0]",
            "#     effort: [1.0, 1.0]",
            "",
            "std_msgs/Header header",
            "kuavo_msgs/endEffectorData data",
        )
    ),
    # The constants are ROS 1 constants (mixed-case names, spaces around '='): no bytes on the
    # wire, but part of the md5. rosbags 0.11.9 alone misreads them as fields.
    "kuavo_msgs/msg/lejuClawState": "\n".join(
        (
            "std_msgs/Header header",
            "",
            "int8 kError = -1" + " " * 16,
            "int8 kUnknown = 0" + " " * 14,
            "int8 kMoving = 1" + " " * 14,
            "int8 kReached = 2" + " " * 12,
            "int8 kGrabbed = 3" + " " * 9,
            "",
            "int8[] state # 0:; left; 1: right",
            "kuavo_msgs/endEffectorData data",
        )
    ),
}

KUAVO_MD5: dict[str, str] = {
    "kuavo_msgs/msg/endEffectorData": "5703dc153b077fbca188a602cb8df8ed",
    "kuavo_msgs/msg/jointData": "ddaca6585c203ca18b9c3978db506bed",
    "kuavo_msgs/msg/imuData": "6406067cf839b39a677ae809cd04646a",
    "kuavo_msgs/msg/sensorsData": "54439d3ac2ef33d46fd7cf6d324860c3",
    "kuavo_msgs/msg/lejuClawCommand": "57c40e80f90e7a289ae0b2488552e043",
    "kuavo_msgs/msg/lejuClawState": "71c0eb8f4803a00f5667de51a2f70aac",
}


# --------------------------------------------------------------------------------------------
# Definition parsing with ROS 1 constant rules
# --------------------------------------------------------------------------------------------

_BUILTINS = (
    "bool|byte|char|int8|uint8|int16|uint16|int32|uint32|int64|uint64|float32|float64|string"
)
_CONST_RE = re.compile(rf"^\s*({_BUILTINS})\s+([A-Za-z][A-Za-z0-9_]*)\s*=(.*)$")
_UPPER_SNAKE = re.compile(r"[A-Z](?:_?[A-Z0-9]+)*")


def _const_value(typ: str, text: str) -> Any:
    if typ == "string":
        return text.strip()
    text = text.split("#", 1)[0].strip()
    if typ == "bool":
        return text.lower() in ("1", "true")
    if typ.startswith("float"):
        return float(text)
    return int(text, 0)


def _parse_msg_text(text: str, msgtype: str) -> dict[str, Any]:
    """``get_types_from_msg`` with ROS 1 constant rules (any-case names, spaces around '=')."""
    lines = text.split("\n")
    sections: list[tuple[str, int, int]] = []  # (type, first line, end line)
    name, start = normalize_msgtype(msgtype), 0
    i = 0
    while i < len(lines):
        if lines[i].strip() == _SEP:
            sections.append((name, start, i))
            head = lines[i + 1].strip() if i + 1 < len(lines) else ""
            name = normalize_msgtype(head[4:].strip()) if head.startswith("MSG:") else name
            start = i + 2
            i += 2
            continue
        i += 1
    sections.append((name, start, len(lines)))

    extra: dict[str, list[tuple[str, str, Any]]] = {}
    for sec_name, lo, hi in sections:
        found = [(j, m) for j in range(lo, hi) if (m := _CONST_RE.match(lines[j]))]
        if not any(not _UPPER_SNAKE.fullmatch(m.group(2)) for _, m in found):
            continue  # rosbags parses these itself
        consts = []
        for j, m in found:
            consts.append((m.group(2), m.group(1), _const_value(m.group(1), m.group(3))))
            lines[j] = ""
        extra[sec_name] = consts

    typs = get_types_from_msg("\n".join(lines), msgtype)
    for sec_name, consts in extra.items():
        if sec_name in typs:
            typs[sec_name] = (consts, typs[sec_name][1])
    return typs


def _types_from_connection(conn: Connection) -> dict[str, Any]:
    data = conn.msgdef.data
    if conn.msgdef.format == MessageDefinitionFormat.MSG:
        return _parse_msg_text(data, conn.msgtype)
    typs: dict[str, Any] = {}
    if data.startswith(f"{_SEP}\nIDL: "):
        for part in data.split(_SEP + "\n")[1:]:
            _, idl = part.split("\n", 1)
            typs.update(get_types_from_idl(idl))
    else:
        typs.update(get_types_from_idl(data))
    return typs


@functools.lru_cache(maxsize=1)
def _kuavo_types() -> dict[str, Any]:
    """kuavo_msgs types only (their std/geometry dependencies come from the base store)."""
    typs: dict[str, Any] = {}
    for name, text in KUAVO_MSGS.items():
        typs.update(_parse_msg_text(text, name))
    return typs


def _closure(fielddefs: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """``names`` and every type they reference, from ``fielddefs``."""
    out: dict[str, Any] = {}
    todo = [n for n in names if n in fielddefs]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = fielddefs[name]
        for _, desc in fielddefs[name][1]:
            node, detail = desc
            if node in (Nodetype.ARRAY, Nodetype.SEQUENCE):
                node, detail = detail[0]
            if node == Nodetype.NAME and detail in fielddefs and detail not in out:
                todo.append(detail)
    return out


def typestore_for(fmt: str) -> Any:
    """The typestore whose classes build messages for a bag of format ``fmt``.

    ``"ros1"``: ROS 1 Noetic types (``std_msgs/Header`` has ``seq``) plus kuavo_msgs.
    ``"sqlite3"`` / ``"mcap"``: ROS 2 Jazzy types plus kuavo_msgs (a ROS 2 port's layout).
    Build messages with ``store.types["sensor_msgs/msg/JointState"](...)``.
    """
    if fmt not in BAG_FORMATS:
        raise BagError(f"unknown bag format {fmt!r}: use one of {', '.join(BAG_FORMATS)}.")
    store = get_typestore(Stores.ROS1_NOETIC if fmt == "ros1" else Stores.ROS2_JAZZY)
    store.register(_kuavo_types())
    return store


@functools.cache
def kuavo_ros1_full_definition(msgtype: str) -> str:
    """The full ROS 1 connection definition text (``MSG:`` sections) of a kuavo_msgs type,
    byte-for-byte as genmsg builds it on the robot (dependencies depth-first)."""
    texts = {**_ROS1_STD_TEXTS, **KUAVO_MSGS}
    store = typestore_for("ros1")
    order: list[str] = []

    def visit(name: str) -> None:
        for _, desc in store.fielddefs[name][1]:
            node, detail = desc
            if node in (Nodetype.ARRAY, Nodetype.SEQUENCE):
                node, detail = detail[0]
            if node == Nodetype.NAME and detail in texts and detail not in order:
                order.append(detail)
                visit(detail)

    msgtype = normalize_msgtype(msgtype)
    if msgtype not in KUAVO_MSGS:
        raise BagError(f"{msgtype} is not a kuavo_msgs type this package knows.")
    visit(msgtype)
    parts = [KUAVO_MSGS[msgtype] + "\n"]
    for dep in order:
        parts.append(f"{_SEP}\nMSG: {denormalize_msgtype(dep)}\n{texts[dep]}\n")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Damaged-file readers
# --------------------------------------------------------------------------------------------

_U32 = struct.Struct("<I")


class _Record(NamedTuple):
    fields: dict[str, bytes]
    data_pos: int
    data_len: int  # as declared
    complete: bool  # False: the data runs past the end of the file


def _read_record(bio: Any, limit: int) -> _Record | None:
    """The ROS 1 record at the current position, or None if not even its header fits before
    ``limit``. A record whose data is cut comes back with ``complete=False``."""
    pos = bio.tell()
    if pos + 4 > limit:
        return None
    (hlen,) = _U32.unpack(bio.read(4))
    if pos + 8 + hlen > limit:
        return None
    fields = _parse_header_fields(bio.read(hlen), strict=True)
    (dlen,) = _U32.unpack(bio.read(4))
    data_pos = bio.tell()
    complete = data_pos + dlen <= limit
    bio.seek(min(data_pos + dlen, limit))
    return _Record(fields, data_pos, dlen, complete)


def _decompress_chunk(compression: str, data: bytes) -> bytes:
    if compression == "none":
        return data
    if compression == "bz2":
        return bz2.decompress(data)
    if compression == "lz4":
        from lz4.frame import decompress  # rosbags' own dependency

        return decompress(data)
    raise ValueError(f"unsupported chunk compression {compression!r}")


class _IndexSpan:
    """Start/end times (ns) of a salvage reader's ``_index`` of ``(t_ns, ...)`` tuples, sorted."""

    _index: list

    @property
    def start_time(self) -> int:
        return self._index[0][0] if self._index else 2**63 - 1

    @property
    def end_time(self) -> int:
        return self._index[-1][0] + 1 if self._index else 0


class _Ros1Scan(_IndexSpan):
    """Reads a ROS 1 bag without its index (truncated, or never closed: ``.bag.active``).

    Walks the records from the start of the file like ``rosbag reindex`` and keeps an
    in-memory index. An uncompressed chunk cut by the end of the file still gives its complete
    messages. ``damage`` tells what was lost; ``notes`` what was done.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        self.damage: str | None = None
        self.notes: list[str] = []
        self.connections: list[Connection] = []
        self._conns: dict[int, Connection] = {}
        self._index: list[tuple[int, int, int, int]] = []  # (time, chunk #, offset, conn id)
        self._chunks: list[tuple[int, int, str]] = []  # (data pos, length, compression)
        self._bio: Any = None
        self._cache: tuple[int, bytes] = (-1, b"")

    def open(self) -> None:
        self._bio = bio = self.path.open("rb")
        size = os.fstat(bio.fileno()).st_size
        if bio.readline() != b"#ROSBAG V2.0\n":
            raise ValueError("file magic is invalid (not a ROS 1 v2.0 bag)")
        lost = ""
        while (pos := bio.tell()) < size:
            try:
                rec = _read_record(bio, size)
            except (ValueError, struct.error) as exc:
                lost = f"unreadable record at byte {pos} ({exc})"
                break
            if rec is None:
                lost = f"the file ends inside a record header at byte {pos} of {size}"
                break
            op = rec.fields.get("op", b"\0")[0]
            if op == 0x05:  # chunk: connection and message records, maybe compressed
                compression = rec.fields.get("compression", b"none").decode()
                if not rec.complete and compression != "none":
                    lost = f"the file ends inside a {compression} chunk at byte {pos} of {size}"
                    break
                bio.seek(rec.data_pos)
                stored = bio.read(min(rec.data_len, size - rec.data_pos))
                try:
                    data = _decompress_chunk(compression, stored)
                    used = self._scan_chunk(data, len(self._chunks))
                except Exception as exc:  # any codec/parse error: a bad chunk
                    lost = f"chunk at byte {pos} is unreadable ({exc})"
                    break
                self._chunks.append((rec.data_pos, len(stored), compression))
                if not rec.complete:
                    lost = (
                        f"the file ends inside a chunk at byte {pos} of {size} (kept its first"
                        f" {used} bytes of complete records)"
                    )
                    break
            elif not rec.complete:
                lost = f"the file ends inside a record at byte {pos} of {size}"
                break
            elif op == 0x07:  # connection record of the index section
                bio.seek(rec.data_pos)
                self._add_connection(rec.fields, bio.read(rec.data_len))
            # bag header (0x03), index data (0x04), chunk info (0x06): not needed
        counts: dict[int, int] = {}
        for *_, cid in self._index:
            counts[cid] = counts.get(cid, 0) + 1
        self.connections = [c._replace(msgcount=counts.get(c.id, 0)) for c in self._conns.values()]
        self._index.sort()
        n, k = len(self._index), len(self._chunks)
        if lost:
            self.damage = (
                f"{self.path}: {self.reason}; {lost}: the rest of the recording is lost"
                f" ({n} messages recovered from {k} chunks)"
            )
        else:
            self.notes.append(
                f"{self.path}: {self.reason}; read by scanning its {k} chunks ({n} messages)"
            )

    def _add_connection(self, hdr: dict[str, bytes], data: bytes) -> None:
        cid = _U32.unpack(hdr["conn"])[0]
        if cid in self._conns:
            return
        fields = _parse_header_fields(data)
        latching = fields.get("latching", b"").strip()
        self._conns[cid] = Connection(
            cid,
            normalize_topic(hdr.get("topic", fields.get("topic", b"")).decode()),
            normalize_msgtype(fields["type"].decode()),
            MessageDefinition(
                MessageDefinitionFormat.MSG, fields.get("message_definition", b"").decode()
            ),
            fields.get("md5sum", b"").decode(),
            0,
            ConnectionExtRosbag1(
                fields["callerid"].decode() if "callerid" in fields else None,
                int(latching) if latching else None,
            ),
            self,
        )

    def _scan_chunk(self, data: bytes, chunk_no: int) -> int:
        """Index the complete records of a chunk; returns how many bytes they span."""
        view = _BytesReader(data)
        end = len(data)
        while (offset := view.tell()) < end:
            rec = _read_record(view, end)
            if rec is None or not rec.complete:
                return offset
            op = rec.fields.get("op", b"\0")[0]
            if op == 0x02:
                sec, nsec = struct.unpack("<II", rec.fields["time"])
                cid = _U32.unpack(rec.fields["conn"])[0]
                self._index.append((sec * 10**9 + nsec, chunk_no, offset, cid))
            elif op == 0x07:
                self._add_connection(rec.fields, data[rec.data_pos : rec.data_pos + rec.data_len])
        return end

    def messages(
        self, connections: Sequence[Connection], start: int | None, stop: int | None
    ) -> Iterator[tuple[Connection, int, bytes]]:
        wanted = {c.id: c for c in connections}
        for t, chunk_no, offset, cid in self._index:
            if cid not in wanted or (start is not None and t < start):
                continue
            if stop is not None and t >= stop:
                return
            if self._cache[0] != chunk_no:
                data_pos, dlen, compression = self._chunks[chunk_no]
                self._bio.seek(data_pos)
                self._cache = (chunk_no, _decompress_chunk(compression, self._bio.read(dlen)))
            data = self._cache[1]
            view = _BytesReader(data)
            view.seek(offset)
            rec = _read_record(view, len(data))
            if rec is None or not rec.complete:
                raise ValueError(f"message record at chunk {chunk_no} offset {offset} is cut")
            yield wanted[cid], t, data[rec.data_pos : rec.data_pos + rec.data_len]

    def close(self) -> None:
        if self._bio is not None:
            self._bio.close()
            self._bio = None


class _Sqlite3Salvage(_IndexSpan):
    """Reads what is left of a damaged rosbag2 ``.db3`` (truncated copy, crashed recorder).

    rosbags needs the whole page tree to open a database; here the messages are read by row id
    (recording order) until the first unreadable page, then served in log-time order.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        self.damage: str | None = None
        self.notes: list[str] = []
        self.connections: list[Connection] = []
        self._db: Any = None
        self._index: list[tuple[int, int, int]] = []  # (time, row id, topic id)

    def open(self) -> None:
        import sqlite3

        self._db = db = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)
        # A truncated file fails schema validation (index root pages past its end) before any
        # query runs; writable_schema skips that check (the connection stays read-only).
        db.execute("PRAGMA writable_schema=ON")
        topics = db.execute("SELECT id, name, type, serialization_format FROM topics").fetchall()
        defs: dict[str, tuple[str, str]] = {}
        with contextlib.suppress(sqlite3.Error):
            for name, enc, text in db.execute(
                "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions"
            ):
                defs[name] = (enc, text)
        lost = ""
        last = 0
        try:
            for rowid, topic_id, t in db.execute(
                "SELECT id, topic_id, timestamp FROM messages ORDER BY id"
            ):
                if not (isinstance(t, int) and isinstance(topic_id, int)):
                    lost = f"garbage after row {last}"
                    break
                self._index.append((t, rowid, topic_id))
                last = rowid
        except sqlite3.Error as exc:
            lost = f"database unreadable after row {last} ({exc})"
        counts: dict[int, int] = {}
        for _, _, tid in self._index:
            counts[tid] = counts.get(tid, 0) + 1
        fmtmap = {"ros2msg": MessageDefinitionFormat.MSG, "ros2idl": MessageDefinitionFormat.IDL}
        for tid, name, msgtype, serfmt in topics:
            enc, text = defs.get(msgtype, ("", ""))
            msgdef = MessageDefinition(fmtmap.get(enc, MessageDefinitionFormat.NONE), text)
            if msgdef.format == MessageDefinitionFormat.NONE:
                msgdef = MessageDefinition(MessageDefinitionFormat.NONE, "")
            ext = ConnectionExtRosbag2(serialization_format=serfmt, offered_qos_profiles=[])
            self.connections.append(
                Connection(tid, name, msgtype, msgdef, "", counts.get(tid, 0), ext, self)
            )
        self._index.sort()
        n = len(self._index)
        if lost:
            self.damage = f"{self.path}: {self.reason}; {lost} ({n} messages recovered)"
        else:
            self.notes.append(f"{self.path}: {self.reason}; read row by row ({n} messages)")

    def messages(
        self, connections: Sequence[Connection], start: int | None, stop: int | None
    ) -> Iterator[tuple[Connection, int, bytes]]:
        wanted = {c.id: c for c in connections}
        for t, rowid, tid in self._index:
            if tid not in wanted or (start is not None and t < start):
                continue
            if stop is not None and t >= stop:
                return
            row = self._db.execute("SELECT data FROM messages WHERE id = ?", (rowid,)).fetchone()
            yield wanted[tid], t, bytes(row[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class _BytesReader:
    """Minimal seekable reader over bytes (read/tell/seek) for record parsing."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int) -> bytes:
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos
        return self._pos


def normalize_topic(name: str) -> str:
    """Collapse repeated slashes like rosbags' ROS 1 reader (``//a/b/`` -> ``/a/b``)."""
    return ("/" if name.startswith("/") else "") + "/".join(x for x in name.split("/") if x)


def _parse_header_fields(raw: bytes, strict: bool = False) -> dict[str, bytes]:
    fields: dict[str, bytes] = {}
    i = 0
    while i + 4 <= len(raw):
        (flen,) = _U32.unpack_from(raw, i)
        key, sep, value = raw[i + 4 : i + 4 + flen].partition(b"=")
        if strict and (not sep or i + 4 + flen > len(raw)):
            raise ValueError("malformed record header")
        fields[key.decode(errors="replace")] = value
        i += 4 + flen
    return fields


class _RecoveringMcapReader(McapReader):
    """rosbags' MCAP storage reader that also reads files without summary/footer by scanning
    the records that are complete (a recorder that was killed, or a truncated copy)."""

    damage: str | None = None
    note: str | None = None

    def _open(self) -> None:
        try:
            super()._open()
        except Exception as exc:  # decide below whether the data is salvageable
            if not self.data_start:
                raise  # bad magic or header: not an MCAP we can read at all
            self._recover(exc)

    def _recover(self, exc: Exception) -> None:
        from rosbags.rosbag2.metadata import ReaderMetadata

        bio = self.bio
        assert bio is not None
        size = os.fstat(bio.fileno()).st_size
        pos, clean = self.data_start, False
        while pos + 9 <= size:
            bio.seek(pos)
            head = bio.read(9)
            op, length = head[0], struct.unpack("<Q", head[1:9])[0]
            if op == 0 or pos + 9 + length > size:
                break
            if op in (0x0F, 0x02):  # DataEnd / Footer: the data section is complete
                clean = True
                break
            pos += 9 + length
        self.schemas.clear()
        self.channels.clear()
        self.chunks.clear()
        self.connections.clear()
        self.statistics = None
        self.data_end = pos
        self.meta_scan()
        assert self.statistics is not None
        st = self.statistics
        counts = st.channel_message_counts
        self.connections = [c._replace(msgcount=counts.get(c.id, 0)) for c in self.connections]
        n = st.message_count
        self.metadata = ReaderMetadata(
            st.end_time - st.start_time + 1 if n else 0,
            st.start_time if n else 2**63 - 1,
            st.end_time + 1 if n else 0,
            n,
            None,
            None,
            None,
            None,
        )
        if clean or pos == size:
            self.note = (
                f"{self.path}: MCAP summary unreadable ({exc}); read by scanning ({n} messages)"
            )
        else:
            self.damage = (
                f"{self.path}: MCAP file is truncated ({exc}); the data after byte {pos} of"
                f" {size} is lost ({n} messages recovered)"
            )


class _DirReader(DirectoryReader):
    STORAGE_PLUGINS = {"mcap": _RecoveringMcapReader, "sqlite3": Sqlite3Reader}  # noqa: RUF012


class _Ros2Reader(Ros2Reader):
    STORAGE_PLUGINS = {  # noqa: RUF012
        "dir": _DirReader,
        ".mcap": _RecoveringMcapReader,
        ".db3": Sqlite3Reader,
    }


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One opened file or directory: its connections and a raw message iterator."""

    name: str
    reader: Any  # rosbags Ros1Reader, _Ros1Scan or _Ros2Reader
    ros1: bool
    damage: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def connections(self) -> list[Connection]:
        return list(self.reader.connections)

    def storages(self) -> list[Any]:
        storage = getattr(self.reader, "storage", None)
        if isinstance(storage, DirectoryReader):
            return list(storage.storages)
        return [storage] if storage is not None else []

    def raw(
        self, conns: Sequence[Connection], start: int | None, stop: int | None
    ) -> Iterator[tuple[Connection, int, bytes]]:
        if not conns:
            return iter(())
        storage = getattr(self.reader, "storage", None)
        if isinstance(storage, DirectoryReader) and len(storage.storages) > 1:
            # Split recording: merge the files by time (rosbags reads them one after another).
            gens = [
                DirectoryReader.messages(
                    types.SimpleNamespace(storages=[s], metadata=storage.metadata),  # type: ignore[arg-type]
                    conns,
                    start,
                    stop,
                )
                for s in storage.storages
            ]
            return heapq.merge(*gens, key=lambda x: x[1])
        if isinstance(self.reader, (_Ros1Scan, _Sqlite3Salvage)):
            return self.reader.messages(conns, start, stop)
        return self.reader.messages(conns, start=start, stop=stop)


def _describe_exc(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 400 else text[:400] + "..."


class BagReader:
    """An open bag (or set of bags read as one). Use through ``open_bag`` as a context manager.

    Attributes after opening: ``paths``, ``format`` (``"ros1"``, ``"sqlite3"``, ``"mcap"``),
    ``topics`` ({topic: (msgtype, count)}), ``start_s``, ``end_s``, ``duration_s``,
    ``message_count``, ``warnings`` (list of notes: recovered files, md5 mismatches,
    undecodable topics), ``damage`` (None, or what was lost in a damaged file), ``skipped``
    (messages that failed to decode, total) and ``skipped_by_topic``.
    """

    def __init__(self, paths: Sequence[Path], ros1: bool) -> None:
        self.paths = list(paths)
        self.ros1 = ros1
        self.format = "ros1" if ros1 else "sqlite3"
        self.warnings: list[str] = []
        self.skipped = 0
        self.skipped_by_topic: dict[str, int] = {}
        self.messages_read = 0
        self._sources: list[_Source] = []
        self._typestore: Any = None
        self._undecodable: dict[str, str] = {}  # topic -> reason
        self._open = False

    # -- opening -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        if len(self.paths) == 1:
            return str(self.paths[0])
        return f"{self.paths[0]} (+{len(self.paths) - 1} more)"

    def open(self) -> BagReader:
        if self._open:
            return self
        try:
            for path in self.paths:
                self._sources.extend(
                    [self._open_ros1(path)] if self.ros1 else self._open_ros2(path)
                )
            self._build_types()
        except BagError:
            self.close()
            raise
        except Exception as exc:  # any library error becomes a user message
            self.close()
            raise BagError(f"{self.name}: cannot read bag: {_describe_exc(exc)}") from None
        self._open = True
        return self

    def _open_ros1(self, path: Path) -> _Source:
        reader = Ros1Reader(path)
        try:
            reader.open()
            return _Source(str(path), reader, True)
        except Exception as exc:
            reason = _describe_exc(exc)
        if not _looks_like_ros1(path):
            empty = " (the file is empty)" if path.stat().st_size == 0 else ""
            raise BagError(
                f"{path}: not a ROS 1 bag{empty}: {reason}. Expected a .bag file written by"
                " rosbag record, a ROS 2 bag directory, or a .db3/.mcap file."
            )
        scan = _Ros1Scan(path, f"bag index unreadable ({reason.rstrip('.')})")
        try:
            scan.open()
        except Exception as exc2:
            scan.close()
            raise BagError(
                f"{path}: ROS 1 bag is damaged ({reason}) and its chunks cannot be scanned"
                f" either ({_describe_exc(exc2)})."
            ) from None
        src = _Source(str(path), scan, True, damage=scan.damage, notes=list(scan.notes))
        self.warnings.extend(src.notes)
        return src

    def _open_ros2(self, path: Path) -> list[_Source]:
        try:
            reader = _Ros2Reader(path)
            reader.open()
            return [self._ros2_source(path, reader)]
        except Exception as exc:
            first = exc
        if path.is_file() and path.suffix != ".db3":
            raise BagError(f"{path}: cannot open ROS 2 bag: {_explain(path, first)}")
        # A directory whose metadata.yaml or one of whose files is unusable, or a damaged .db3:
        # read each storage file on its own, salvaging damaged sqlite3 files.
        files = _storage_files(path)
        if not files:
            raise BagError(f"{path}: cannot open ROS 2 bag: {_describe_exc(first)}")
        if path.is_dir():
            self.warnings.append(
                f"{path}: bag directory unusable as a whole ({_describe_exc(first)});"
                f" reading its {len(files)} storage file(s) one by one"
            )
        sources = []
        for f in files:
            try:
                reader = _Ros2Reader(f)
                reader.open()
                sources.append(self._ros2_source(f, reader))
                continue
            except Exception as exc:
                err = exc
            if f.suffix != ".db3" or not _is_sqlite(f):
                raise BagError(f"{f}: cannot open ROS 2 bag file: {_explain(f, err)}")
            salvage = _Sqlite3Salvage(f, f"database damaged ({_describe_exc(err)})")
            try:
                salvage.open()
            except Exception as exc2:
                salvage.close()
                raise BagError(
                    f"{f}: damaged sqlite3 bag, nothing readable: {_explain(f, exc2)}"
                ) from None
            src = _Source(str(f), salvage, False, damage=salvage.damage, notes=salvage.notes)
            self.warnings.extend(src.notes)
            sources.append(src)
        return sources

    def _ros2_source(self, path: Path, reader: Any) -> _Source:
        src = _Source(str(path), reader, False)
        for storage in src.storages():
            if getattr(storage, "damage", None):
                src.damage = storage.damage
            if getattr(storage, "note", None):
                src.notes.append(storage.note)
            if isinstance(storage, McapReader):
                self.format = "mcap"
        self.warnings.extend(src.notes)
        return src

    def _build_types(self) -> None:
        conns = [c for s in self._sources for c in s.connections]
        base = typestore_for("ros1" if self.ros1 else "sqlite3")
        kuavo_ok = {
            c.msgtype
            for c in conns
            if self.ros1 and KUAVO_MD5.get(c.msgtype) == c.digest and c.msgtype in KUAVO_MSGS
        }
        merged: dict[str, Any] = {}
        if kuavo_ok:
            merged.update(_closure(base.fielddefs, kuavo_ok))
        for conn in conns:
            if (
                conn.msgtype in merged
                or conn.msgdef.format == MessageDefinitionFormat.NONE
                or not conn.msgdef.data.strip()
            ):
                continue
            try:
                typs = _types_from_connection(conn)
            except Exception as exc:
                self.warnings.append(
                    f"topic {conn.topic}: the bag's definition of {conn.msgtype} does not parse"
                    f" ({_describe_exc(exc).splitlines()[0]})"
                )
                continue
            for name, desc in typs.items():
                merged.setdefault(name, desc)
        # Types without a definition in the bag (ROS 2 Humble sqlite3 bags carry none): from
        # the standard store (ROS 1 Noetic / ROS 2 Jazzy) plus kuavo_msgs.
        missing = {c.msgtype for c in conns if c.msgtype not in merged}
        merged.update(
            {k: v for k, v in _closure(base.fielddefs, missing).items() if k not in merged}
        )
        # Fill dependencies the bag's definitions reference but do not include.
        refs = _closure({**base.fielddefs, **merged}, list(merged))
        merged.update({k: v for k, v in refs.items() if k not in merged})

        store = get_typestore(Stores.EMPTY)
        try:
            store.register(merged)
        except Exception:
            # One odd definition must not cost the whole bag: register topic by topic.
            store = get_typestore(Stores.EMPTY)
            for conn in conns:
                try:
                    store.register(_closure(merged, [conn.msgtype]))
                except Exception as exc:
                    self._undecodable[conn.topic] = (
                        f"topic {conn.topic}: type {conn.msgtype} cannot be built from the"
                        f" bag's definition ({_describe_exc(exc).splitlines()[0]})"
                    )
        self._typestore = store

        for conn in conns:
            if conn.topic in self._undecodable:
                continue
            if conn.msgtype not in store.fielddefs:
                self._undecodable[conn.topic] = (
                    f"topic {conn.topic} has message type {conn.msgtype}, which the bag does not"
                    " define and which is not a standard ROS type or a kuavo_msgs type"
                )
                continue
            try:
                store.get_msgdef(conn.msgtype)
            except Exception as exc:
                self._undecodable[conn.topic] = (
                    f"topic {conn.topic}: type {conn.msgtype} cannot be built"
                    f" ({_describe_exc(exc)})"
                )
                continue
            self._check_digest(store, conn)
        for reason in self._undecodable.values():
            self.warnings.append(reason + " (its messages are not decoded)")

    def _check_digest(self, store: Any, conn: Connection) -> None:
        if not conn.digest:
            return
        try:
            if self.ros1:
                have = store.generate_msgdef(conn.msgtype)[1]
            elif conn.digest.startswith("RIHS01_"):
                have = store.hash_rihs01(conn.msgtype)
            else:
                return
        except Exception:  # a hash we cannot compute is not worth a warning
            return
        if have != conn.digest:
            note = (
                f"topic {conn.topic}: type {conn.msgtype} hash {have} differs from the bag's"
                f" {conn.digest}; decoding with the bag's definition anyway"
            )
            if note not in self.warnings:
                self.warnings.append(note)

    def close(self) -> None:
        for src in self._sources:
            with contextlib.suppress(Exception):  # closing a half-open reader
                src.reader.close()
        self._sources = []
        self._open = False

    def __enter__(self) -> BagReader:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self._open:
            raise BagError(f"{self.name}: bag is not open (use `with open_bag(path) as bag:`).")

    @property
    def topics(self) -> dict[str, tuple[str, int]]:
        """{topic: (message type, message count)}, sorted by topic."""
        self._check()
        out: dict[str, tuple[str, int]] = {}
        for src in self._sources:
            for c in src.connections:
                msgtype, count = out.get(c.topic, (c.msgtype, 0))
                out[c.topic] = (msgtype, count + max(c.msgcount, 0))
        return dict(sorted(out.items()))

    @property
    def message_count(self) -> int:
        return sum(n for _, n in self.topics.values())

    def _times(self) -> tuple[int, int]:
        self._check()
        starts, ends = [], []
        for src in self._sources:
            r = src.reader
            if r.start_time < 2**63 - 1:
                starts.append(r.start_time)
                ends.append(r.end_time - 1)
        return (min(starts), max(ends)) if starts else (0, 0)

    @property
    def start_s(self) -> float:
        """Log time of the first message (s); 0.0 for an empty bag."""
        return self._times()[0] / 1e9

    @property
    def end_s(self) -> float:
        """Log time of the last message (s); 0.0 for an empty bag."""
        return self._times()[1] / 1e9

    @property
    def duration_s(self) -> float:
        start, end = self._times()
        return (end - start) / 1e9

    @property
    def damage(self) -> str | None:
        """What was lost if a file is damaged (iteration then ends with a BagError), else None."""
        found = [s.damage for s in self._sources if s.damage]
        return "; ".join(found) if found else None

    @property
    def typestore(self) -> Any:
        """The rosbags typestore the messages are decoded with (types from the bag)."""
        self._check()
        return self._typestore

    def missing(self, topics: Iterable[str]) -> list[str]:
        """The topics of ``topics`` that are not in the bag."""
        have = self.topics
        return [t for t in topics if t not in have]

    def require(self, topics: Iterable[str]) -> None:
        """Raise a BagError naming the missing topics and listing the bag's topics."""
        if missing := self.missing(topics):
            listing = "\n".join(f"  {t}  [{m}, {n} msgs]" for t, (m, n) in self.topics.items())
            raise BagError(
                f"{self.name}: topic(s) {', '.join(missing)} not in the bag. It has:\n"
                + (listing or "  (no topics)")
            )

    # -- messages ------------------------------------------------------------------------------

    def messages(
        self,
        topics: Iterable[str] | None = None,
        start_s: float | None = None,
        stop_s: float | None = None,
    ) -> Iterator[BagMessage]:
        """Decoded messages in log-time order, optionally only ``topics`` and only log times in
        [start_s, stop_s). Topics absent from the bag are ignored. A requested topic whose type
        cannot be decoded at all is a BagError; with ``topics=None`` such topics are left out
        (listed in ``warnings``). Messages that fail to decode are skipped and counted.

        Read errors raise BagError with ``messages_read`` set; so does the end of a damaged
        file's recovered data (``damage``).
        """
        self._check()
        wanted = None if topics is None else set(topics)
        if wanted is not None:
            for topic in sorted(wanted):
                if topic in self._undecodable:
                    raise BagError(f"{self.name}: {self._undecodable[topic]}.")
        start = None if start_s is None else round(start_s * 1e9)
        stop = None if stop_s is None else round(stop_s * 1e9)
        deser = self._typestore.deserialize_ros1 if self.ros1 else self._typestore.deserialize_cdr

        gens = []
        for src in self._sources:
            conns = [
                c
                for c in src.connections
                if c.topic not in self._undecodable and (wanted is None or c.topic in wanted)
            ]
            gens.append(src.raw(conns, start, stop))
        stream = heapq.merge(*gens, key=lambda x: x[1]) if len(gens) > 1 else gens[0]
        # A damaged file ends the stream with a BagError, unless the window ends before the loss.
        damaged = bool(self.damage) and (stop is None or stop > self._times()[1])
        return self._decode(stream, deser, damaged)

    def _decode(self, stream: Iterator[Any], deser: Any, damaged: bool) -> Iterator[BagMessage]:
        self.messages_read = 0
        last_t = None
        it = iter(stream)
        while True:
            try:
                conn, t_ns, raw = next(it)
            except StopIteration:
                break
            except BagError:
                raise
            except Exception as exc:  # storage errors become a user message
                where = f" (last good message at t={last_t:.3f} s)" if last_t is not None else ""
                raise BagError(
                    f"{self.name}: read error after {self.messages_read} messages{where}:"
                    f" {_describe_exc(exc)}. The file is probably truncated or corrupt.",
                    messages_read=self.messages_read,
                ) from None
            try:
                msg = deser(raw, conn.msgtype)
            except Exception:  # one bad message must not end a replay
                self.skipped += 1
                self.skipped_by_topic[conn.topic] = self.skipped_by_topic.get(conn.topic, 0) + 1
                continue
            last_t = t_ns / 1e9
            self.messages_read += 1
            yield BagMessage(conn.topic, conn.msgtype, last_t, msg)
        if damaged:
            raise BagError(
                f"{self.damage}. Read {self.messages_read} messages before the damaged part.",
                messages_read=self.messages_read,
            )


def _looks_like_ros1(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(13) == b"#ROSBAG V2.0\n"
    except OSError:
        return False


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\0"
    except OSError:
        return False


def _storage_files(path: Path) -> list[Path]:
    """Storage files of a ROS 2 bag: the path itself, or those metadata.yaml lists (when it
    parses), or the .db3/.mcap files in the directory."""
    if path.is_file():
        return [path]
    listed: list[Path] = []
    with contextlib.suppress(Exception):
        from ruamel.yaml import YAML

        meta = YAML(typ="safe").load((path / "metadata.yaml").read_text())
        names = meta["rosbag2_bagfile_information"]["relative_file_paths"]
        listed = [path / Path(n).name for n in names if (path / Path(n).name).is_file()]
    found = sorted((x for x in path.iterdir() if x.suffix in (".db3", ".mcap")), key=_natural_key)
    return listed or found


def _explain(path: Path, exc: BaseException) -> str:
    """The library's error as a sentence, plus what it probably means."""
    return _describe_exc(exc).rstrip(".") + "." + _ros2_hint(path, exc)


def _ros2_hint(path: Path, exc: BaseException) -> str:
    text = str(exc)
    if path.is_file() and path.stat().st_size == 0:
        return " The file is empty."
    if "magic" in text.lower() or "not a database" in text.lower() or "file is not" in text:
        return " The file is not a rosbag (wrong contents for its .db3/.mcap name)."
    if "malformed" in text.lower() or "truncated" in text.lower():
        return " The file is truncated or corrupt."
    return ""


_ROS1_SUFFIXES = (".bag", ".active")


def _natural_key(p: Path) -> list[Any]:
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)]


def _resolve(path: str | os.PathLike, notes: list[str]) -> tuple[list[Path], bool]:
    """(paths, is_ros1) for one user-given path; what was guessed goes to ``notes``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BagError(f"bag not found: {p}")
    if p.is_dir():
        if (p / "metadata.yaml").is_file():
            return [p], False
        bags = sorted((x for x in p.iterdir() if x.suffix in _ROS1_SUFFIXES), key=_natural_key)
        if bags:
            return bags, True
        files = sorted((x for x in p.iterdir() if x.suffix in (".db3", ".mcap")), key=_natural_key)
        if files:
            notes.append(
                f"{p} has no metadata.yaml (recording interrupted?); reading its"
                f" {len(files)} storage file(s) directly"
            )
            return files, False
        raise BagError(
            f"{p} is a directory but not a bag: no metadata.yaml, .db3, .mcap or .bag files in it."
        )
    if p.name == "metadata.yaml":
        return [p.parent], False
    if p.suffix in _ROS1_SUFFIXES or _looks_like_ros1(p):
        return [p], True
    if p.suffix in (".db3", ".mcap"):
        return [p], False
    raise BagError(
        f"{p}: unknown bag file type {p.suffix!r}. Give a ROS 2 bag directory, a .db3 or .mcap"
        " file, or a ROS 1 .bag file (or a list of split .bag files)."
    )


def open_bag(path: str | os.PathLike | Sequence[str | os.PathLike]) -> BagReader:
    """Open a bag for reading; use as ``with open_bag(path) as bag: ...``.

    ``path``: a ROS 2 bag directory (sqlite3 or mcap, one or several files), a single ``.db3``
    or ``.mcap`` file, a ROS 1 ``.bag`` file, a directory of ``.bag`` files, or a list of any
    of these of one ROS version (split recordings; read as one time-ordered stream).
    Raises ``BagError`` with a user-facing message.
    """
    items = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not items:
        raise BagError("no bag path given.")
    paths: list[Path] = []
    kinds: set[bool] = set()
    notes: list[str] = []
    for item in items:
        ps, ros1 = _resolve(item, notes)
        paths.extend(ps)
        kinds.add(ros1)
    if len(kinds) > 1:
        raise BagError(
            "cannot read ROS 1 and ROS 2 bags as one recording: " + ", ".join(str(p) for p in paths)
        )
    reader = BagReader(paths, kinds.pop())
    reader.warnings.extend(notes)
    return reader.open()


# --------------------------------------------------------------------------------------------
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
                f" {_describe_exc(exc)}"
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kuavo_smolvla_ros.bag.io BAG...``: print topics, types, counts, times."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("bag", nargs="+", help="bag directory, .db3/.mcap file or .bag file(s)")
    args = parser.parse_args(argv)
    try:
        with open_bag(args.bag if len(args.bag) > 1 else args.bag[0]) as bag:
            print(f"{bag.name}  [{bag.format}]  {bag.duration_s:.2f} s, {bag.message_count} msgs")
            for topic, (msgtype, n) in bag.topics.items():
                print(f"  {topic}  {msgtype}  {n}")
            for w in bag.warnings:
                print(f"  warning: {w}")
            if bag.damage:
                print(f"  damaged: {bag.damage}")
    except BagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
