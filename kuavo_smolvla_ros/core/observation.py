"""Message fields -> the policy's 16-D state, image decoding, and a thread-safe latest-value buffer.

Pure Python (numpy + OpenCV); no rclpy. Messages are duck-typed: anything with the right
attributes works, be it a ROS 2 message, a rosbags-deserialized one or a ``SimpleNamespace``.

Data path, per input message::

    FieldPath.get / .resolve    walk ``a.b[12:26]`` on the message -> float64 1-D array
    extract_source              pick by name (``name`` list next to the field), by ``index``,
                                or take the whole field; check count and finiteness; * scale
    decode_image                CompressedImage (JPEG/PNG) or raw Image -> RGB uint8 HxWx3
    ObservationBuffer           latest value + receive time per input; stale_inputs, snapshot

Every input problem raises :class:`ObservationError` with a message meant for the operator (the
node logs it throttled and keeps running). Time is always passed in as float seconds: the node
passes its ROS clock, replay passes bag time, tests pass whatever they like.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from kuavo_smolvla_ros.core.config import Config, ConfigError, SourceConfig

__all__ = [
    "RAW_ENCODINGS",
    "STATE_SOURCES",
    "FieldPath",
    "FieldPathError",
    "Observation",
    "ObservationBuffer",
    "ObservationError",
    "SourceExtractor",
    "decode_image",
    "extract_source",
    "make_example_observation",
]

STATE_SOURCES = ("arm", "gripper")
"""The ``inputs`` sections that feed the state vector, and the names ``update_state`` accepts."""


class ObservationError(ValueError):
    """An input message (or value) is unusable; the text says what and where, for the operator."""


class FieldPathError(ConfigError, ObservationError):
    """A field path spec does not parse. A config mistake, catchable as either error type."""


# ---------------------------------------------------------------------------------------------
# Message introspection, for error messages only (never on the hot path).

_ROS2_MODULE = re.compile(r"^(\w+)\.(msg|srv|action)\._\w+$")


def _type_name(msg: Any) -> str:
    """``sensor_msgs/msg/JointState`` for ROS 2 and rosbags messages, else the class name."""
    cls = type(msg)
    msgtype = getattr(cls, "__msgtype__", None)  # rosbags dataclasses
    if isinstance(msgtype, str):
        return msgtype
    m = _ROS2_MODULE.match(cls.__module__)
    if m:
        return f"{m.group(1)}/{m.group(2)}/{cls.__name__}"
    return cls.__name__


def _field_names(obj: Any) -> list[str]:
    getter = getattr(obj, "get_fields_and_field_types", None)  # rclpy messages
    if callable(getter):
        try:
            return list(getter())
        except Exception:  # diagnostics only
            pass
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj)]
    try:
        return [k for k in vars(obj) if not k.startswith("_")]
    except TypeError:
        return [s.lstrip("_") for s in getattr(type(obj), "__slots__", ())]


def _short_list(items: Any, limit: int = 12) -> str:
    items = [str(i) for i in items]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# ---------------------------------------------------------------------------------------------
# Field paths.

_SEGMENT = re.compile(r"^([A-Za-z_]\w*)(?:\[([^\[\]]*)\])?$")


@dataclass(frozen=True)
class _Step:
    attr: str
    index: int | None = None  # ``[i]``
    start: int | None = None  # ``[start:stop]``, either side optional
    stop: int | None = None
    is_slice: bool = False

    def subscript(self) -> str:
        if self.is_slice:
            a = "" if self.start is None else str(self.start)
            b = "" if self.stop is None else str(self.stop)
            return f"[{a}:{b}]"
        return "" if self.index is None else f"[{self.index}]"


def _parse_int(text: str, spec: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise FieldPathError(
            f"field path {spec!r}: {text!r} is not an integer (use e.g. 'position[12:26]')."
        ) from None


class FieldPath:
    """A dotted attribute path with optional subscripts, parsed once and applied per message.

    Grammar: ``name(.name)*`` where each name may carry one subscript: ``[i]`` (one element;
    on an inner segment it picks a sub-message from a list) or ``[start:stop]`` (either side
    optional, negative counts from the end; last segment only). Examples: ``position``,
    ``data.position``, ``joint_data.joint_q[12:26]``, ``a.b[3]``, ``x[:7]``.

    A slice is strict: ``[12:26]`` on a 20-value field is an error, not 8 values.
    """

    __slots__ = ("_last", "_parents", "spec", "steps")

    def __init__(self, spec: str) -> None:
        if not isinstance(spec, str) or not spec.strip():
            raise FieldPathError(
                f"field path {spec!r} is empty: name a message field, e.g. 'position'."
            )
        self.spec = spec.strip()
        steps = []
        parts = self.spec.split(".")
        for n, part in enumerate(parts):
            m = _SEGMENT.match(part.strip())
            if not m:
                raise FieldPathError(
                    f"field path {self.spec!r}: cannot parse {part!r}; expected a field name"
                    " with an optional [i] or [start:stop], e.g. 'joint_data.joint_q[12:26]'."
                )
            attr, sub = m.group(1), m.group(2)
            if sub is None:
                steps.append(_Step(attr))
            elif ":" in sub:
                if sub.count(":") > 1:
                    raise FieldPathError(
                        f"field path {self.spec!r}: slice steps ('a:b:c') are not supported."
                    )
                if n != len(parts) - 1:
                    raise FieldPathError(
                        f"field path {self.spec!r}: a slice is only allowed on the last field."
                    )
                a, b = sub.split(":")
                steps.append(
                    _Step(
                        attr,
                        start=_parse_int(a, self.spec),
                        stop=_parse_int(b, self.spec),
                        is_slice=True,
                    )
                )
            else:
                idx = _parse_int(sub, self.spec)
                if idx is None:
                    raise FieldPathError(f"field path {self.spec!r}: empty subscript in {part!r}.")
                steps.append(_Step(attr, index=idx))
        self.steps: tuple[_Step, ...] = tuple(steps)
        self._parents = self.steps[:-1]
        self._last = self.steps[-1]

    def __repr__(self) -> str:
        return f"FieldPath({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldPath) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    # -- walking ---------------------------------------------------------------------------

    def _missing(self, msg: Any, obj: Any, depth: int) -> ObservationError:
        done = ".".join(s.attr + s.subscript() for s in self.steps[:depth])
        where = f"{_type_name(msg)}" + (f" field '{done}' ({_type_name(obj)})" if done else "")
        has = _field_names(obj)
        return ObservationError(
            f"field path {self.spec!r}: {where} has no field '{self.steps[depth].attr}'"
            + (f" (it has: {_short_list(has)})" if has else "")
            + "; check inputs.<source>.field and msg_type."
        )

    def _parent(self, msg: Any) -> Any:
        obj = msg
        for depth, step in enumerate(self._parents):
            try:
                obj = getattr(obj, step.attr)
            except AttributeError:
                raise self._missing(msg, obj, depth) from None
            if step.index is not None:
                try:
                    obj = obj[step.index]
                except (IndexError, TypeError, KeyError):
                    n = len(obj) if hasattr(obj, "__len__") else "no"
                    raise ObservationError(
                        f"field path {self.spec!r}: index [{step.index}] of '{step.attr}' is out of"
                        f" range in {_type_name(msg)} ({n} elements)."
                    ) from None
        return obj

    def _raw(self, msg: Any, parent: Any) -> Any:
        try:
            return getattr(parent, self._last.attr)
        except AttributeError:
            raise self._missing(msg, parent, len(self._parents)) from None

    def _to_array(self, msg: Any, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise self._not_numeric(msg, value)
            arr = value.astype(np.float64, copy=False)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            arr = np.frombuffer(value, dtype=np.uint8).astype(np.float64)
        elif isinstance(value, str):
            raise self._not_numeric(msg, value)
        else:
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise self._not_numeric(msg, value) from None
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        return arr

    def _not_numeric(self, msg: Any, value: Any) -> ObservationError:
        return ObservationError(
            f"field path {self.spec!r} in {_type_name(msg)} is a {_type_name(value)}, not numbers;"
            " point inputs.<source>.field at a numeric field or list."
        )

    def _subscript(self, msg: Any, n: int) -> slice | None:
        """The slice selecting the last step's subscript from ``n`` values (None: all)."""
        last = self._last
        if last.is_slice:
            start = 0 if last.start is None else last.start
            stop = n if last.stop is None else last.stop
            start = start + n if start < 0 else start
            stop = stop + n if stop < 0 else stop
            if not 0 <= start <= stop <= n:
                raise ObservationError(
                    f"field path {self.spec!r}: slice {last.subscript()} does not fit the"
                    f" {n} values of '{last.attr}' in {_type_name(msg)}; check the robot model's"
                    " joint layout (4Pro [12:26], Kuavo 5 [13:27], 5W [4:18])."
                )
            return slice(start, stop)
        if last.index is not None:
            i = last.index + n if last.index < 0 else last.index
            if not 0 <= i < n:
                raise ObservationError(
                    f"field path {self.spec!r}: index [{last.index}] is out of range for the"
                    f" {n} values of '{last.attr}' in {_type_name(msg)}."
                )
            return slice(i, i + 1)
        return None

    def get(self, msg: Any) -> np.ndarray:
        """The field's values as a float64 1-D array (may share memory with the message)."""
        arr = self._to_array(msg, self._raw(msg, self._parent(msg)))
        sl = self._subscript(msg, arr.shape[0])
        return arr if sl is None else arr[sl]

    def resolve(self, msg: Any, with_names: bool = False) -> tuple[np.ndarray, list[str] | None]:
        """``(values, names)``: ``names`` is the ``name`` list next to the field (the same
        object that holds the last attribute, e.g. ``JointState.name`` for ``position``,
        ``data.name`` for ``data.position``), subscripted like the values; None when absent or
        empty, or when ``with_names`` is false."""
        parent = self._parent(msg)
        arr = self._to_array(msg, self._raw(msg, parent))
        n = arr.shape[0]
        sl = self._subscript(msg, n)
        if sl is not None:
            arr = arr[sl]
        if not with_names:
            return arr, None
        names = getattr(parent, "name", None)
        if names is None or isinstance(names, str) or len(names) == 0:
            return arr, None
        if not isinstance(names, list):
            names = list(names)
        if len(names) != n:
            raise ObservationError(
                f"{_type_name(msg)} has {len(names)} names but {n} values in"
                f" '{self._last.attr}' (field path {self.spec!r}); the publisher fills them"
                " inconsistently."
            )
        return arr, (names if sl is None else names[sl])


@functools.lru_cache(maxsize=128)
def _cached_path(spec: str) -> FieldPath:
    return FieldPath(spec)


# ---------------------------------------------------------------------------------------------
# State sources.


class SourceExtractor:
    """``extract_source`` for one :class:`SourceConfig`, with its parsed path and a name-match
    cache (the name -> index map is rebuilt only when a message's name list changes).

    ``label`` names the source in errors ("arm", "gripper"). Thread-safe: the cache is one
    tuple swapped atomically; a race only recomputes it.
    """

    def __init__(self, src: SourceConfig, label: str = "") -> None:
        self.src = src
        self.label = label
        self.path = _cached_path(src.field)
        self._n = len(src.dims)
        self._index = np.asarray(src.index, dtype=np.intp) if src.index else None
        self._name_cache: tuple[list[str], np.ndarray] | None = None
        what = f"{label} " if label else ""
        self._what = what
        self._section = f"inputs.{label or '<source>'}"
        self._where = f"{src.topic or '?'} field '{src.field}'"

    def __call__(self, msg: Any, path: FieldPath | None = None) -> np.ndarray:
        src = self.src
        path = path or self.path
        values, names = path.resolve(msg, with_names=bool(src.names))
        if names is not None:
            picked = values[self._match(msg, names)]
            labels: tuple[str, ...] | None = src.names
        elif self._index is not None:
            n = values.shape[0]
            if int(self._index.max()) >= n or int(self._index.min()) < 0:
                raise ObservationError(
                    f"{self._section}.index {list(src.index)} is out of range for the {n} values"
                    f" from {self._where} ({_type_name(msg)})."
                )
            picked = values[self._index]
            labels = src.names or None
        else:
            if values.shape[0] != self._n:
                hint = (
                    "; the message has no joint names, so set"
                    f" {self._section}.index or a slice in {self._section}.field"
                    if src.names
                    else f"; set {self._section}.index or a slice in {self._section}.field"
                )
                raise ObservationError(
                    f"expected {self._n} {self._what}values, got {values.shape[0]} from"
                    f" {self._where} ({_type_name(msg)}){hint}."
                )
            picked = values
            labels = src.names or None
        out = picked * src.scale  # always a fresh float64 array
        if not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out))
            where = [f"{labels[i] if labels else f'[{i}]'}={picked[i]}" for i in bad[:6].tolist()]
            raise ObservationError(
                f"non-finite {self._what}values from {self._where}: {', '.join(where)}"
                + (" ..." if bad.size > 6 else "")
                + "; the state is not used until it is finite again."
            )
        return out

    def _match(self, msg: Any, names: list[str]) -> np.ndarray:
        cache = self._name_cache
        if cache is not None and cache[0] == names:
            return cache[1]
        pos = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.src.names if n not in pos]
        if missing:
            raise ObservationError(
                f"{self._what}joint names missing from {self._where} ({_type_name(msg)}):"
                f" {_short_list(missing, 40)}. The message has: {_short_list(names, 40)}. Fix"
                f" {self._section}.names, or clear it to pick values by index."
            )
        idx = np.fromiter(
            (pos[n] for n in self.src.names), dtype=np.intp, count=len(self.src.names)
        )
        self._name_cache = (list(names), idx)
        return idx


@functools.lru_cache(maxsize=64)
def _cached_extractor(src: SourceConfig, label: str) -> SourceExtractor:
    return SourceExtractor(src, label)


def extract_source(
    msg: Any, src: SourceConfig, path: FieldPath | None = None, *, label: str = ""
) -> np.ndarray:
    """``len(src.dims)`` float64 values in policy units (already multiplied by ``src.scale``).

    Order of precedence:
      1. ``src.names`` set and a non-empty ``name`` list next to the field: match by name
         (other joints are ignored; missing names are an error that lists them);
      2. ``src.index`` set: those positions of the field (after its slice);
      3. otherwise the field (after its slice) must hold exactly ``len(src.dims)`` values.
    Raises :class:`ObservationError` on a wrong count, missing names or NaN/Inf. ``path``
    overrides ``src.field`` (pass a prebuilt one); ``label`` ("arm") makes errors clearer.
    The parsed path and name map are cached per ``(src, label)``; a node may as well hold a
    :class:`SourceExtractor` itself.
    """
    return _cached_extractor(src, label)(msg, path)


# ---------------------------------------------------------------------------------------------
# Images.

# encoding -> (channels, bytes per channel, cv2 conversion to RGB; None: already RGB)
RAW_ENCODINGS: dict[str, tuple[int, int, int | None]] = {
    "rgb8": (3, 1, None),
    "bgr8": (3, 1, cv2.COLOR_BGR2RGB),
    "rgba8": (4, 1, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, 1, cv2.COLOR_BGRA2RGB),
    "mono8": (1, 1, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, 1, cv2.COLOR_GRAY2RGB),
    "mono16": (1, 2, cv2.COLOR_GRAY2RGB),
    "16UC1": (1, 2, cv2.COLOR_GRAY2RGB),
}
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def _as_bytes(data: Any, what: str) -> np.ndarray:
    """A uint8 1-D view of a message's ``data`` (bytes, array.array('B'), ndarray or list)."""
    if isinstance(data, np.ndarray):
        if data.dtype in (np.uint8, np.int8):
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        raise ObservationError(f"{what}: data is a {data.dtype} array, expected bytes (uint8).")
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise ObservationError(
            f"{what}: data is a {type(data).__name__}, expected bytes."
        ) from None


def _decode_compressed(msg: Any) -> np.ndarray:
    fmt = str(getattr(msg, "format", "") or "")
    what = f"CompressedImage (format {fmt!r})" if fmt else "CompressedImage"
    if "compresseddepth" in fmt.lower():
        raise ObservationError(
            f"{what}: compressedDepth images are not camera images; subscribe to the colour"
            " stream, or to a raw mono16 image with transport 'raw'."
        )
    buf = _as_bytes(getattr(msg, "data", None), what)
    if buf.size == 0:
        raise ObservationError(f"{what}: data is empty.")
    try:
        bgr = cv2.imdecode(buf, _IMREAD_FLAGS)
    except cv2.error:
        bgr = None
    if bgr is None or bgr.size == 0:
        head = bytes(buf[:4]).hex()
        raise ObservationError(
            f"{what}: {buf.size} bytes that OpenCV cannot decode as JPEG or PNG (starts with"
            f" 0x{head}); check the topic and cameras.transports."
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_raw(msg: Any, use_cv_bridge: bool) -> np.ndarray:
    encoding = str(getattr(msg, "encoding", ""))
    what = f"Image ({encoding or 'no encoding'})"
    spec = RAW_ENCODINGS.get(encoding) or RAW_ENCODINGS.get(encoding.lower())
    if spec is None:
        return _decode_raw_cv_bridge(msg, encoding, use_cv_bridge)
    channels, itemsize, conversion = spec
    try:
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
    except (AttributeError, TypeError, ValueError):
        raise ObservationError(f"{what}: height, width and step must be integers.") from None
    if height <= 0 or width <= 0:
        raise ObservationError(f"{what}: empty image ({width}x{height}).")
    row = width * channels * itemsize
    step = step or row  # some publishers leave step 0 for tightly packed rows
    if step < row:
        raise ObservationError(
            f"{what}: step {step} is smaller than width*bytes per pixel = {row}."
        )
    buf = _as_bytes(getattr(msg, "data", None), what)
    if buf.size != step * height:
        raise ObservationError(
            f"{what}: data has {buf.size} bytes, expected step*height = {step}*{height} ="
            f" {step * height} for {width}x{height}."
        )
    rows = buf.reshape(height, step)[:, :row]  # a view; drops the row padding
    if itemsize == 2:
        order = ">" if bool(getattr(msg, "is_bigendian", False)) else "<"
        mono16 = np.ascontiguousarray(rows).view(f"{order}u2").reshape(height, width)
        # 0..65535 -> 0..255, rounded (65535 -> 255, 257 -> 1).
        img = ((mono16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    else:
        img = rows.reshape(height, width, channels)
    if conversion is None:
        return np.array(img)  # rgb8: copy, so the result never aliases the message buffer
    return cv2.cvtColor(np.ascontiguousarray(img), conversion)


@functools.lru_cache(maxsize=1)
def _cv_bridge() -> Any:
    """A working ROS 2 ``CvBridge`` or None.

    The PyPI ``cv-bridge`` is an old ROS 1 port that breaks on NumPy 2; rather than guess the
    origin from paths, the bridge must decode a tiny bgr8 image correctly once, else it is off.
    """
    try:
        from cv_bridge import CvBridge  # type: ignore[import-not-found]

        bridge = CvBridge()
        probe = _ProbeImage()
        out = bridge.imgmsg_to_cv2(probe, desired_encoding="rgb8")
        if np.asarray(out).tolist() != [[[3, 2, 1], [6, 5, 4]]]:
            return None
        return bridge
    except Exception:  # any failure means "no usable cv_bridge"
        return None


class _ProbeImage:
    """A 1x2 bgr8 sensor_msgs/Image look-alike for the cv_bridge self-test."""

    height, width, encoding, is_bigendian, step = 1, 2, "bgr8", 0, 6
    data = bytes([1, 2, 3, 4, 5, 6])

    class header:  # an attribute of a message look-alike
        frame_id = ""


def _decode_raw_cv_bridge(msg: Any, encoding: str, use_cv_bridge: bool) -> np.ndarray:
    known = ", ".join(RAW_ENCODINGS)
    bridge = _cv_bridge() if use_cv_bridge else None
    if bridge is not None:
        try:
            out = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
            out = out[:, : int(msg.width)]  # cv_bridge keeps row padding as extra columns
            if out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8 and out.size:
                return np.array(out)  # own the pixels
        except Exception as exc:  # cv_bridge errors are varied
            raise ObservationError(
                f"Image: encoding {encoding!r} is not supported here ({known}) and cv_bridge"
                f" could not convert it: {exc}"
            ) from None
    raise ObservationError(
        f"Image: unsupported encoding {encoding!r}; supported: {known}"
        " (install ROS 2 cv_bridge for others, or publish rgb8/bgr8)."
    )


class ImageTooLarge(ObservationError):
    """A camera message above the size caps, refused before any decoding."""


def short_text(text: str, limit: int = 60) -> str:
    """A task text for logs and /diagnostics: the first ``limit`` characters, then "..."."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF header, or None if there is none to read."""
    data = buf[: 1 << 20].tobytes()  # the frame header comes before the scan data
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = (data[i + 5] << 8) | data[i + 6]
            w = (data[i + 7] << 8) | data[i + 8]
            return w, h
        if marker == 0xDA:  # start of scan without a frame header
            return None
        i += 2 + length
    return None


def image_size(msg: Any, transport: str) -> tuple[int, int] | None:
    """(width, height) read from the message header alone (raw fields, JPEG SOF, PNG IHDR)."""
    if transport == "raw":
        try:
            return int(msg.width), int(msg.height)
        except (AttributeError, TypeError, ValueError):
            return None
    buf = _as_bytes(getattr(msg, "data", None), "CompressedImage")
    head = buf[:24].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(buf)
    return None


def check_image_size(msg: Any, transport: str, max_bytes: int, max_side: int) -> None:
    """Refuse a camera message above the caps before decoding it (a 4000x4000 JPEG would take
    ~100 ms and 48 MB to decode, a crafted one much more). Raises :class:`ImageTooLarge`."""
    n = len(getattr(msg, "data", b"") or b"")
    if n > max_bytes:
        raise ImageTooLarge(
            f"{n} bytes, above inputs.max_image_bytes={max_bytes}; refused before decoding."
        )
    size = image_size(msg, transport)
    if size is not None and max(size) > max_side:
        raise ImageTooLarge(
            f"{size[0]}x{size[1]} px, above inputs.max_image_side={max_side}; refused before"
            " decoding."
        )


def decode_image(
    msg: Any,
    transport: str,
    *,
    use_cv_bridge: bool = True,
    max_bytes: int | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode a camera message to a fresh, writable RGB uint8 array of shape (H, W, 3).

    ``transport="compressed"``: ``sensor_msgs/CompressedImage`` (``format``, ``data``), JPEG or
    PNG through ``cv2.imdecode``, BGR -> RGB. ``transport="raw"``: ``sensor_msgs/Image``
    (``height``, ``width``, ``encoding``, ``step``, ``data``, ``is_bigendian``) with encodings
    rgb8, bgr8, rgba8, bgra8, mono8 (8UC1), mono16 (16UC1, scaled to 8 bit); row padding
    (``step`` > width * bytes per pixel) is dropped.

    The built-in decoder handles those formats identically on every machine (the robot, a
    laptop converting bags). Other raw encodings (yuv422, bayer_*, ...) go through ROS 2's
    ``cv_bridge`` when it is importable and passes a self-test (``use_cv_bridge=False`` turns
    that off). Undecodable data, size mismatches and unknown encodings raise
    :class:`ObservationError`. With ``max_bytes`` / ``max_side`` a message above either cap is
    refused before decoding (:class:`ImageTooLarge`).
    """
    if max_bytes is not None or max_side is not None:
        check_image_size(msg, transport, max_bytes or 1 << 62, max_side or 1 << 30)
    if transport == "compressed":
        return _decode_compressed(msg)
    if transport == "raw":
        return _decode_raw(msg, use_cv_bridge)
    raise ObservationError(f"unknown camera transport {transport!r}; use 'compressed' or 'raw'.")


# ---------------------------------------------------------------------------------------------
# The observation and its buffer.


@dataclass(frozen=True)
class Observation:
    """One consistent input set for the policy.

    ``state``: (robot.dim,) float64 in policy units, a private copy. ``images``: robot camera
    name -> RGB uint8 (H, W, 3), read-only arrays shared with the buffer (copy before changing
    them in place; ``torch.from_numpy`` warns on read-only arrays, ``torch.tensor`` does not).
    ``task``: the instruction. ``stamp``: the time the snapshot was taken (``t_now``), which the
    scheduler uses as the observation time of the chunk computed from it.
    """

    state: np.ndarray
    images: dict[str, np.ndarray]
    task: str
    stamp: float


def _check_time(t: float, what: str) -> float:
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ObservationError(f"{what} must be a number of seconds, got {t!r}.") from None
    if not math.isfinite(t):
        raise ObservationError(f"{what} must be finite, got {t}.")
    return t


class ObservationBuffer:
    """Latest state, camera frames and task, with receive times; thread-safe.

    Subscription callbacks write (``update_state``, ``update_image``, ``set_task``); the control
    timer and the inference worker read (``state``, ``stale_inputs``, ``snapshot``). One lock,
    held only to copy or assign. Decoding and extraction happen before, outside the lock.

    An input is stale when it never arrived or when ``t_now - t_received`` exceeds
    ``inputs.state_timeout_s`` (arm, gripper) or ``inputs.camera_timeout_s`` (cameras). A
    receive time later than ``t_now`` counts as fresh; on a clock jump backwards (sim time
    restart, bag loop) :meth:`reset` it (``PolicyController.tick`` does). Stale names:
    ``"arm"``, ``"gripper"``, ``"camera:<robot camera name>"``, and ``"task"`` while the task
    text is empty.

    ``update_image`` keeps the array it is given (no copy): hand over a fresh one, as
    :func:`decode_image` returns, and do not change it afterwards.
    """

    def __init__(self, cfg: Config) -> None:
        inputs = cfg.inputs
        self._dim = cfg.robot.dim
        self._dims = {
            name: np.asarray(getattr(inputs, name).dims, dtype=np.intp) for name in STATE_SOURCES
        }
        self._cameras = tuple(inputs.cameras.names)
        self._state_timeout = float(inputs.state_timeout_s)
        self._camera_timeout = float(inputs.camera_timeout_s)
        self._lock = threading.Lock()
        self._state = np.full(self._dim, np.nan)
        self._state_t: dict[str, float | None] = dict.fromkeys(STATE_SOURCES)
        self._images: dict[str, np.ndarray | None] = dict.fromkeys(self._cameras)
        self._image_t: dict[str, float | None] = dict.fromkeys(self._cameras)
        self._max_task = int(inputs.max_task_chars)
        self._task = cfg.policy.task.strip()[: self._max_task]
        self.tasks_cut = 0

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self._cameras

    # -- writers ---------------------------------------------------------------------------

    def update_state(self, source: str, values: np.ndarray, t: float) -> None:
        """Store ``values`` (as returned by :func:`extract_source`) at ``inputs.<source>.dims``."""
        dims = self._dims.get(source)
        if dims is None:
            raise ObservationError(
                f"unknown state source {source!r}; expected one of {', '.join(STATE_SOURCES)}."
            )
        t = _check_time(t, f"{source} receive time")
        v = np.asarray(values, dtype=np.float64)
        if v.shape != dims.shape:
            raise ObservationError(
                f"{source}: got {v.size} values of shape {v.shape}, expected {dims.size}"
                f" for policy dims {dims.tolist()}."
            )
        if not np.isfinite(v).all():
            raise ObservationError(f"{source}: non-finite values {v.tolist()}.")
        with self._lock:
            self._state[dims] = v
            self._state_t[source] = t

    def update_image(self, camera: str, rgb: np.ndarray, t: float) -> None:
        """Store the latest RGB uint8 (H, W, 3) frame of robot camera ``camera``."""
        if camera not in self._images:
            raise ObservationError(
                f"unknown camera {camera!r}; inputs.cameras.names has {', '.join(self._cameras)}."
            )
        t = _check_time(t, f"camera:{camera} receive time")
        if (
            not isinstance(rgb, np.ndarray)
            or rgb.dtype != np.uint8
            or rgb.ndim != 3
            or rgb.shape[2] != 3
            or rgb.shape[0] == 0
            or rgb.shape[1] == 0
        ):
            desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ObservationError(
                f"camera:{camera}: expected an RGB uint8 (H, W, 3) image, got {desc}."
            )
        frozen = rgb.view()
        frozen.flags.writeable = False
        with self._lock:
            self._images[camera] = frozen
            self._image_t[camera] = t

    def set_task(self, text: str) -> bool:
        """Set the language instruction (surrounding whitespace dropped; empty = missing).

        A text longer than ``inputs.max_task_chars`` is cut to it (a 100 KB task would go into
        every request and log line); returns True when it was cut.
        """
        if not isinstance(text, str):
            raise ObservationError(f"task must be text, got {type(text).__name__}.")
        text = text.strip()
        cut = len(text) > self._max_task
        with self._lock:
            self._task = text[: self._max_task]
            self.tasks_cut += cut
        return cut

    def reset(self) -> None:
        """Forget state and images (they must arrive again before the next snapshot).

        The task is kept: it is an operator setting (latched topic or ``policy.task``) that a
        disable/enable cycle or a clock jump does not invalidate, and it may not be re-sent.
        """
        with self._lock:
            self._state[:] = np.nan
            for name in self._state_t:
                self._state_t[name] = None
            for cam in self._cameras:
                self._images[cam] = None
                self._image_t[cam] = None

    # -- readers ---------------------------------------------------------------------------

    @property
    def task(self) -> str:
        with self._lock:
            return self._task

    @property
    def last_update(self) -> dict[str, float | None]:
        """Receive time of each input (None: never), keyed like :meth:`stale_inputs` names."""
        with self._lock:
            out: dict[str, float | None] = dict(self._state_t)
            out.update({f"camera:{c}": self._image_t[c] for c in self._cameras})
        return out

    def _stale_locked(self, t_now: float) -> list[str]:
        stale = [
            name
            for name, t in self._state_t.items()
            if t is None or not t_now - t <= self._state_timeout
        ]
        stale.extend(
            f"camera:{c}"
            for c in self._cameras
            if (t := self._image_t[c]) is None or not t_now - t <= self._camera_timeout
        )
        if not self._task:
            stale.append("task")
        return stale

    def stale_inputs(self, t_now: float) -> list[str]:
        """Inputs never received, older than their timeout, or (task) empty; [] when all good."""
        t_now = _check_time(t_now, "t_now")
        with self._lock:
            return self._stale_locked(t_now)

    def state(self, t_now: float) -> np.ndarray | None:
        """The measured (robot.dim,) state, or None until arm and gripper are both fresh.

        Used to start the ramp-in from where the arms are; a stale pose is not trusted.
        """
        t_now = _check_time(t_now, "t_now")
        with self._lock:
            for t in self._state_t.values():
                if t is None or not t_now - t <= self._state_timeout:
                    return None
            return self._state.copy()

    def snapshot(self, t_now: float) -> Observation | None:
        """All inputs at ``t_now`` as one :class:`Observation`, or None if any is stale."""
        t_now = _check_time(t_now, "t_now")
        with self._lock:
            if self._stale_locked(t_now):
                return None
            state = self._state.copy()
            images = {c: img for c, img in self._images.items() if img is not None}
            task = self._task
        return Observation(state=state, images=images, task=task, stamp=t_now)


def make_example_observation(
    cfg: Config | None = None, seed: int = 0, image_size: tuple[int, int] = (480, 640)
) -> Observation:
    """A random but valid :class:`Observation` for ``cfg`` (openpi ``make_*_example`` style).

    State uniform within the robot limits, one random RGB frame of ``image_size`` (H, W) per
    camera, ``cfg.policy.task`` (or a stock instruction) and stamp 0.0.
    """
    cfg = cfg or Config()
    rng = np.random.default_rng(seed)
    lower = np.asarray(cfg.robot.lower, dtype=np.float64)
    upper = np.asarray(cfg.robot.upper, dtype=np.float64)
    state = lower + rng.random(cfg.robot.dim) * (upper - lower)
    h, w = image_size
    images = {
        name: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        for name in cfg.inputs.cameras.names
    }
    return Observation(
        state=state, images=images, task=cfg.policy.task or "pick up the object", stamp=0.0
    )
