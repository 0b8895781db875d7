"""ROS 2 message types by name, and the header stamp of any message.

Shared by the node (subscriptions and publishers of configured types) and the live replay
(which types it can publish as recorded). It imports message packages only when asked, and no
rclpy, so the offline replay can use it without a ROS install.
"""

from __future__ import annotations

import importlib
from typing import Any

from kuavo_smolvla_ros.core.config import ConfigError

__all__ = ["header_time", "import_message", "is_installed", "normalize_type"]


def normalize_type(type_name: str) -> str:
    """``pkg/Type`` or ``pkg/msg/Type`` -> ``pkg/msg/Type`` (ROS 1 bags name types without
    ``msg``); anything else is returned unchanged."""
    parts = type_name.split("/")
    return f"{parts[0]}/msg/{parts[-1]}" if len(parts) >= 2 else type_name


def import_message(type_name: str) -> type:
    """``sensor_msgs/msg/JointState`` -> the installed message class (clear error if absent)."""
    parts = type_name.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ConfigError(f"message type {type_name!r} is not of the form pkg/msg/Type.")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError):
        raise ConfigError(
            f"message type {type_name!r} is not installed here: build/source its package"
            " (e.g. a ROS 2 port of kuavo_msgs) or use sensor_msgs/msg/JointState."
        ) from None


def is_installed(type_name: str) -> bool:
    """Whether ``import_message`` finds ``type_name`` here."""
    try:
        import_message(type_name)
    except ConfigError:
        return False
    return True


def header_time(msg: Any) -> float | None:
    """``msg.header.stamp`` in float seconds; None when the message has no (readable) stamp."""
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    if stamp is None:
        return None
    try:
        return float(stamp.sec) + 1e-9 * float(stamp.nanosec)
    except (AttributeError, TypeError, ValueError):
        return None
