"""Read rosbags (ROS 1 ``.bag``, ROS 2 sqlite3 and mcap) with the ``rosbags`` library.

``open_bag`` accepts a ROS 2 bag directory (one or several ``.db3`` / ``.mcap`` files), a bare
``.db3`` / ``.mcap`` file, a ROS 1 ``.bag`` file, a list of ``.bag`` files (a split ROS 1
recording) or a directory of them, and a list of ROS 2 bag directories. Messages come back in
log-time order as ``BagMessage(topic, msgtype, t, msg)`` with ``t`` in float seconds, ``msgtype``
ROS 2 style (``kuavo_msgs/msg/sensorsData``) and ``msg`` a decoded message object
(``msg.position``, ``msg.header.stamp.sec``, ``msg.data`` as a numpy array for images).

Message types are built from the definitions the bag carries, so custom types (kuavo_msgs) need
no installed package. Two repairs over plain ``rosbags.highlevel.AnyReader``: the
``lejuClawState`` constants (``kuavo_types``; for the stock Kuavo types the known-good
``KUAVO_MSGS`` definitions are used when the md5 matches), and damaged files (``salvage``):
everything recoverable is yielded and, if data was lost, iteration ends with a ``BagError``
that says how many messages were read.

Errors are ``BagError`` with a message meant for the user (print it, no traceback). A message
that fails to decode is skipped and counted (``reader.skipped``), not fatal. Topics asked for
but absent from the bag are ignored (the iteration is simply empty for them); use
``reader.require(topics)`` to turn absence into a ``BagError`` that lists what the bag has.

``python -m kuavo_smolvla_ros.bag BAG...`` prints topics, types, counts and times.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag1 import Reader as Ros1Reader
from rosbags.rosbag2.reader import DirectoryReader
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.typesys import Stores, get_typestore

from kuavo_smolvla_ros.bag.errors import BagError, describe_exc
from kuavo_smolvla_ros.bag.kuavo_types import (
    KUAVO_MD5,
    KUAVO_MSGS,
    type_closure,
    types_from_connection,
    typestore_for,
)
from kuavo_smolvla_ros.bag.salvage import RecoveringRos2Reader, Ros1Scan, Sqlite3Salvage

__all__ = ["BagMessage", "BagReader", "open_bag"]


class BagMessage(NamedTuple):
    """One decoded message: topic, ROS 2 style type name, log time (s) and the message."""

    topic: str
    msgtype: str
    t: float
    msg: Any


# Reader
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One opened file or directory: its connections and a raw message iterator."""

    name: str
    reader: Any  # rosbags Ros1Reader, Ros1Scan or RecoveringRos2Reader
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
        if isinstance(self.reader, (Ros1Scan, Sqlite3Salvage)):
            return self.reader.messages(conns, start, stop)
        return self.reader.messages(conns, start=start, stop=stop)


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
            raise BagError(f"{self.name}: cannot read bag: {describe_exc(exc)}") from None
        self._open = True
        return self

    def _open_ros1(self, path: Path) -> _Source:
        reader = Ros1Reader(path)
        try:
            reader.open()
            return _Source(str(path), reader, True)
        except Exception as exc:
            reason = describe_exc(exc)
        if not _looks_like_ros1(path):
            empty = " (the file is empty)" if path.stat().st_size == 0 else ""
            raise BagError(
                f"{path}: not a ROS 1 bag{empty}: {reason}. Expected a .bag file written by"
                " rosbag record, a ROS 2 bag directory, or a .db3/.mcap file."
            )
        return self._salvage(
            Ros1Scan(path, f"bag index unreadable ({reason.rstrip('.')})"),
            lambda exc: (
                f"{path}: ROS 1 bag is damaged ({reason}) and its chunks cannot be"
                f" scanned either ({describe_exc(exc)})."
            ),
        )

    def _salvage(
        self, reader: Ros1Scan | Sqlite3Salvage, failed: Callable[[Exception], str]
    ) -> _Source:
        """Open a salvage reader (``failed(exc)``: the BagError text if even that fails)."""
        try:
            reader.open()
        except Exception as exc:
            reader.close()
            raise BagError(failed(exc)) from None
        ros1 = isinstance(reader, Ros1Scan)
        src = _Source(str(reader.path), reader, ros1, damage=reader.damage, notes=reader.notes)
        self.warnings.extend(src.notes)
        return src

    def _open_ros2(self, path: Path) -> list[_Source]:
        try:
            reader = RecoveringRos2Reader(path)
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
            raise BagError(f"{path}: cannot open ROS 2 bag: {describe_exc(first)}")
        if path.is_dir():
            self.warnings.append(
                f"{path}: bag directory unusable as a whole ({describe_exc(first)});"
                f" reading its {len(files)} storage file(s) one by one"
            )
        sources = []
        for f in files:
            try:
                reader = RecoveringRos2Reader(f)
                reader.open()
                sources.append(self._ros2_source(f, reader))
                continue
            except Exception as exc:
                err = exc
            if f.suffix != ".db3" or not _is_sqlite(f):
                raise BagError(f"{f}: cannot open ROS 2 bag file: {_explain(f, err)}")
            salvage = Sqlite3Salvage(f, f"database damaged ({describe_exc(err)})")
            sources.append(
                self._salvage(
                    salvage,
                    lambda exc, f=f: (
                        f"{f}: damaged sqlite3 bag, nothing readable: {_explain(f, exc)}"
                    ),
                )
            )
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
            merged.update(type_closure(base.fielddefs, kuavo_ok))
        for conn in conns:
            if (
                conn.msgtype in merged
                or conn.msgdef.format == MessageDefinitionFormat.NONE
                or not conn.msgdef.data.strip()
            ):
                continue
            try:
                typs = types_from_connection(conn)
            except Exception as exc:
                self.warnings.append(
                    f"topic {conn.topic}: the bag's definition of {conn.msgtype} does not parse"
                    f" ({describe_exc(exc).splitlines()[0]})"
                )
                continue
            for name, desc in typs.items():
                merged.setdefault(name, desc)
        # Types without a definition in the bag (ROS 2 Humble sqlite3 bags carry none): from
        # the standard store (ROS 1 Noetic / ROS 2 Jazzy) plus kuavo_msgs.
        missing = {c.msgtype for c in conns if c.msgtype not in merged}
        merged.update(
            {k: v for k, v in type_closure(base.fielddefs, missing).items() if k not in merged}
        )
        # Fill dependencies the bag's definitions reference but do not include.
        refs = type_closure({**base.fielddefs, **merged}, list(merged))
        merged.update({k: v for k, v in refs.items() if k not in merged})

        store = get_typestore(Stores.EMPTY)
        try:
            store.register(merged)
        except Exception:
            # One odd definition must not cost the whole bag: register topic by topic.
            store = get_typestore(Stores.EMPTY)
            for conn in conns:
                try:
                    store.register(type_closure(merged, [conn.msgtype]))
                except Exception as exc:
                    self._undecodable[conn.topic] = (
                        f"topic {conn.topic}: type {conn.msgtype} cannot be built from the"
                        f" bag's definition ({describe_exc(exc).splitlines()[0]})"
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
                    f"topic {conn.topic}: type {conn.msgtype} cannot be built ({describe_exc(exc)})"
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
                    f" {describe_exc(exc)}. The file is probably truncated or corrupt.",
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
    return describe_exc(exc).rstrip(".") + "." + _ros2_hint(path, exc)


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
