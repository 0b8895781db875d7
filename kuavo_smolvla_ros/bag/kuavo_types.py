"""kuavo_msgs message layouts and typestores that read and write them (no installed package).

The definitions are verbatim as Leju's ROS 1 kuavo_msgs package ships them, with the ROS 1
std/geometry texts genmsg embeds, and their ROS 1 md5 sums (checked in the tests).

The ``lejuClawState`` fix: ROS 1 definitions whose constants are not UPPER_CASE (Kuavo's
``lejuClawState`` writes ``int8 kError = -1``) are legal ROS 1 but rosbags 0.11.9 parses those
lines as five int8 *fields*: the type gets five phantom bytes and another md5 (d89db751...
instead of 71c0eb8f...), and ``AnyReader`` refuses the whole bag ("hash mismatch").
``parse_msg_text`` parses such lines as constants (ROS 1 ``genmsg`` rules), which restores the
layout and the md5.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from rosbags.interfaces import Connection, MessageDefinitionFormat, Nodetype
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.msg import denormalize_msgtype, normalize_msgtype

from kuavo_smolvla_ros.bag.errors import BagError

__all__ = [
    "BAG_FORMATS",
    "KUAVO_MD5",
    "KUAVO_MSGS",
    "kuavo_ros1_full_definition",
    "parse_msg_text",
    "typestore_for",
]

BAG_FORMATS = ("sqlite3", "mcap", "ros1")
DEF_SEP = "=" * 80  # separates the MSG: sections of a ROS 1 connection definition


# kuavo_msgs definitions, verbatim as Leju's ROS 1 kuavo_msgs package ships them (the text its
# generated code embeds, comments and trailing spaces included), and the ROS 1 std/geometry
# texts genmsg embeds with them. The md5 sums are ROS 1's (checked in the tests).

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


# Definition parsing with ROS 1 constant rules.

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


def parse_msg_text(text: str, msgtype: str) -> dict[str, Any]:
    """``get_types_from_msg`` with ROS 1 constant rules (any-case names, spaces around '=')."""
    lines = text.split("\n")
    sections: list[tuple[str, int, int]] = []  # (type, first line, end line)
    name, start = normalize_msgtype(msgtype), 0
    i = 0
    while i < len(lines):
        if lines[i].strip() == DEF_SEP:
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


def types_from_connection(conn: Connection) -> dict[str, Any]:
    data = conn.msgdef.data
    if conn.msgdef.format == MessageDefinitionFormat.MSG:
        return parse_msg_text(data, conn.msgtype)
    typs: dict[str, Any] = {}
    if data.startswith(f"{DEF_SEP}\nIDL: "):
        for part in data.split(DEF_SEP + "\n")[1:]:
            _, idl = part.split("\n", 1)
            typs.update(get_types_from_idl(idl))
    else:
        typs.update(get_types_from_idl(data))
    return typs


@functools.lru_cache(maxsize=1)
def kuavo_types() -> dict[str, Any]:
    """kuavo_msgs types only (their std/geometry dependencies come from the base store)."""
    typs: dict[str, Any] = {}
    for name, text in KUAVO_MSGS.items():
        typs.update(parse_msg_text(text, name))
    return typs


def type_closure(fielddefs: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
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
    store.register(kuavo_types())
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
        parts.append(f"{DEF_SEP}\nMSG: {denormalize_msgtype(dep)}\n{texts[dep]}\n")
    return "".join(parts)
