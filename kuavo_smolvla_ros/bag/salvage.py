"""Readers for damaged bags: what a killed recorder or a truncated copy leaves behind.

A ROS 1 bag whose index is missing (truncated file, or a recording that was killed:
``.bag.active``) is read by scanning its chunks (``Ros1Scan``); an MCAP file without its
summary or footer is read by scanning its records (``RecoveringRos2Reader``); a damaged
rosbag2 ``.db3`` is read row by row (``Sqlite3Salvage``). Each reader keeps ``damage`` (what
was lost) and ``notes`` (what was done); ``reader.BagReader`` turns them into warnings and a
final ``BagError``.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag1,
    ConnectionExtRosbag2,
    MessageDefinition,
    MessageDefinitionFormat,
)
from rosbags.rosbag2 import Reader as Ros2Reader
from rosbags.rosbag2.reader import DirectoryReader
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader
from rosbags.typesys.msg import normalize_msgtype

__all__ = ["RecoveringRos2Reader", "Ros1Scan", "Sqlite3Salvage", "normalize_topic"]


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


class _Salvage:
    """What both salvage readers keep: ``damage`` (what was lost, or None), ``notes`` (what was
    done), the connections found, and start/end times (ns) of ``_index``, a sorted list of
    ``(t_ns, ...)`` tuples."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        self.damage: str | None = None
        self.notes: list[str] = []
        self.connections: list[Connection] = []
        self._index: list[tuple] = []

    @property
    def start_time(self) -> int:
        return self._index[0][0] if self._index else 2**63 - 1

    @property
    def end_time(self) -> int:
        return self._index[-1][0] + 1 if self._index else 0


class Ros1Scan(_Salvage):
    """Reads a ROS 1 bag without its index (truncated, or never closed: ``.bag.active``).

    Walks the records from the start of the file like ``rosbag reindex`` and keeps an
    in-memory index. An uncompressed chunk cut by the end of the file still gives its complete
    messages. ``damage`` tells what was lost; ``notes`` what was done.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, reason)
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
        view = io.BytesIO(data)
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
            view = io.BytesIO(data)
            view.seek(offset)
            rec = _read_record(view, len(data))
            if rec is None or not rec.complete:
                raise ValueError(f"message record at chunk {chunk_no} offset {offset} is cut")
            yield wanted[cid], t, data[rec.data_pos : rec.data_pos + rec.data_len]

    def close(self) -> None:
        if self._bio is not None:
            self._bio.close()
            self._bio = None


class Sqlite3Salvage(_Salvage):
    """Reads what is left of a damaged rosbag2 ``.db3`` (truncated copy, crashed recorder).

    rosbags needs the whole page tree to open a database; here the messages are read by row id
    (recording order) until the first unreadable page, then served in log-time order.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, reason)
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


class RecoveringRos2Reader(Ros2Reader):
    STORAGE_PLUGINS = {  # noqa: RUF012
        "dir": _DirReader,
        ".mcap": _RecoveringMcapReader,
        ".db3": Sqlite3Reader,
    }
