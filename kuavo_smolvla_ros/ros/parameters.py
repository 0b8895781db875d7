"""The config dataclasses as ROS 2 parameters: declared, read back and guarded at runtime.

Every descriptor (description, unit, type, ``FloatingPointRange``/``IntegerRange``, read-only) is
generated from the dataclass fields in ``core/config.py``, so nothing here restates a default or
a bound. Only fields marked ``runtime`` in the config may change while the node runs; all other
parameters, the aliases included, are read-only, so ``ros2 param set ... checkpoint X`` is refused
with ROS's reason instead of "succeeding" and doing nothing. A runtime change is validated by
building the whole ``Config`` again (the same ``__post_init__`` checks as at start-up); a value
it refuses is refused with the config's message as the reason.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from kuavo_smolvla_ros.core.config import (
    DEPRECATED_KEYS,
    Config,
    ConfigError,
    ParamSpec,
    flatten,
    from_dict,
    parameter_fields,
    to_dict,
    unflatten,
)

ARRAY_TYPES = {
    str: Parameter.Type.STRING_ARRAY,
    int: Parameter.Type.INTEGER_ARRAY,
    float: Parameter.Type.DOUBLE_ARRAY,
    bool: Parameter.Type.BOOL_ARRAY,
}
# Top-level shortcuts for the most used parameters (``-p checkpoint:=...``); an empty value
# means "not given". They are read-only unless their target may change at runtime.
ALIASES = {"checkpoint": "policy.checkpoint", "device": "policy.device", "task": "policy.task"}
_INT_MAX = 2**63 - 1


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """A ROS parameter descriptor generated from one config field.

    Float parameters use dynamic typing so ``-p outputs.publish_rate_hz:=50`` (an integer) is
    accepted; their range is still declared, and the config check (which refuses the open end of
    a ``> 0`` bound too) decides.
    """
    d = ParameterDescriptor(
        name=spec.name, description=spec.full_description(), read_only=not spec.runtime
    )
    lo = spec.bounds.get("ge", spec.bounds.get("gt"))
    hi = spec.bounds.get("le", spec.bounds.get("lt"))
    if spec.elem is float and not spec.is_list:
        d.dynamic_typing = True
        if lo is not None or hi is not None:
            d.floating_point_range = [
                FloatingPointRange(
                    from_value=float(-sys.float_info.max if lo is None else lo),
                    to_value=float(sys.float_info.max if hi is None else hi),
                    step=0.0,
                )
            ]
    elif spec.elem is int and not spec.is_list and (lo is not None or hi is not None):
        d.integer_range = [
            IntegerRange(
                from_value=-_INT_MAX if lo is None else int(lo),
                to_value=_INT_MAX if hi is None else int(hi),
                step=1,
            )
        ]
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    return d


def alias_descriptor(alias: str, target: ParamSpec) -> ParameterDescriptor:
    return ParameterDescriptor(
        name=alias,
        description=f"Shortcut for {target.name} (if not empty): {target.description}",
        read_only=not target.runtime,
    )


def _plain(value: Any) -> Any:
    """ROS array values (array.array, numpy) -> lists, as the config expects."""
    return list(value) if isinstance(value, (list, tuple, np.ndarray, array.array)) else value


class ConfigParameters:
    """Declares the config on ``node``, reads it back (``config``) and validates runtime changes.

    ``watch(on_change)`` installs the set-parameters callback; ``on_change(changes)`` gets the
    accepted changes as ``{dotted config name: value}`` (aliases resolved) after validation.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.specs = {s.name: s for s in parameter_fields()}
        self.config = self._declare_and_read()
        self._on_change: Callable[[dict[str, Any]], None] | None = None

    def _declare_and_read(self) -> Config:
        node = self.node
        for spec in self.specs.values():
            desc = descriptor(spec)
            if spec.is_list and not spec.default:
                # An empty default cannot tell ROS its type: declare the array type explicitly.
                node.declare_parameter(spec.name, ARRAY_TYPES[spec.elem], desc)
            else:
                node.declare_parameter(spec.name, spec.default, desc)
        for alias, target in ALIASES.items():
            node.declare_parameter(alias, "", alias_descriptor(alias, self.specs[target]))
        for old, new in DEPRECATED_KEYS.items():
            node.declare_parameter(
                old,
                None,
                ParameterDescriptor(
                    name=old,
                    description=f"Deprecated name of {new} (if set).",
                    read_only=not self.specs[new].runtime,
                    dynamic_typing=True,
                ),
            )
        flat = {name: _plain(self._value_or(name, s.default)) for name, s in self.specs.items()}
        for alias, target in ALIASES.items():
            value = node.get_parameter(alias).value
            if value:
                flat[target] = value
        for old, new in DEPRECATED_KEYS.items():
            value = node.get_parameter(old).value
            if value is not None:
                node.get_logger().warning(f"{old} is deprecated: use {new} (same meaning).")
                flat[new] = value
        return from_dict(Config, unflatten(flat))

    def _value_or(self, name: str, default: Any) -> Any:
        try:
            return self.node.get_parameter(name).value
        except ParameterUninitializedException:  # a typed empty list nobody set
            return default

    def watch(self, on_change: Callable[[dict[str, Any]], None]) -> None:
        """Validate every runtime change; call ``on_change`` with the accepted ones."""
        self._on_change = on_change
        self.node.add_on_set_parameters_callback(self._on_set_parameters)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes: dict[str, Any] = {}
        for p in params:
            name = ALIASES.get(p.name, DEPRECATED_KEYS.get(p.name, p.name))
            if name not in self.specs:  # use_sim_time and other node-level parameters
                continue
            if p.name in ALIASES and p.value == "":
                continue  # an empty alias means "not given"
            changes[name] = _plain(p.value)
        if not changes:
            return SetParametersResult(successful=True)
        flat = flatten(to_dict(self.config))
        flat.update(changes)
        try:
            new = from_dict(Config, unflatten(flat))
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.config = new
        if self._on_change is not None:
            self._on_change(changes)
        return SetParametersResult(successful=True)


def declare_config(node: Node) -> Config:
    """Declare every config parameter on ``node`` and return the ``Config`` they make."""
    return ConfigParameters(node).config
