"""Typed, validated configuration for the whole package, loaded from one YAML file.

The YAML file is a ROS 2 parameters file (``<node>: ros__parameters: {...}``) so the same file
feeds ``ros2 run ... --ros-args --params-file`` and the pure-Python tools (replay, training).
Nested sections map to dataclasses; ROS sees them as dotted parameter names
(``scheduler.publish_rate_hz``). Every check lives in a ``__post_init__`` and names the fields
involved and the fix, LeRobot-style.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "kuavo_smolvla_policy"
MERGE_MODES = ("latest_only", "weighted_average", "temporal_ensemble", "rtc")
CAMERA_TRANSPORTS = ("compressed", "raw")
POLICY_BACKENDS = ("process", "thread")


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which field and how to fix it."""


def _meta(description: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: a description (becomes the ROS ParameterDescriptor) and optional bounds."""
    return {"description": description, **extra}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# Kuavo biped_s45 arm limits (rad), from the robot URDF. Grippers are 0 (open) .. 1 (closed).
_L_LOWER = (-3.1416, -0.349, -1.5708, -2.618, -1.5708, -1.309, -0.698)
_L_UPPER = (1.5708, 2.094, 1.5708, 0.0, 1.5708, 0.698, 0.698)
_R_LOWER = (-3.1416, -2.094, -1.5708, -2.618, -1.5708, -0.698, -0.698)
_R_UPPER = (1.5708, 0.349, 1.5708, 0.0, 1.5708, 1.309, 0.698)
KUAVO_JOINT_NAMES = (
    *(f"zarm_l{i}_joint" for i in range(1, 8)),
    "left_claw",
    *(f"zarm_r{i}_joint" for i in range(1, 8)),
    "right_claw",
)


@dataclass(frozen=True)
class RobotConfig:
    """The robot's policy vector: order, names, limits and speed limits (SI: rad, rad/s).

    Kuavo's default is 16-D: left arm l1..l7, left gripper, right arm r1..r7, right gripper.
    A 4Pro / 5 / 5W or a dexterous hand is a change of this section, not of code.
    """

    name: str = field(default="kuavo_s45", metadata=_meta("Robot profile name (for logs)."))
    joint_names: tuple[str, ...] = field(
        default=KUAVO_JOINT_NAMES, metadata=_meta("Names of the policy dims, in policy order.")
    )
    lower: tuple[float, ...] = field(
        default=(*_L_LOWER, 0.0, *_R_LOWER, 0.0),
        metadata=_meta("Lower limit per policy dim (rad for joints, 0..1 for grippers)."),
    )
    upper: tuple[float, ...] = field(
        default=(*_L_UPPER, 1.0, *_R_UPPER, 1.0),
        metadata=_meta("Upper limit per policy dim (rad for joints, 0..1 for grippers)."),
    )
    max_velocity: tuple[float, ...] = field(
        default=(*(1.0,) * 7, 2.0, *(1.0,) * 7, 2.0),
        metadata=_meta("Speed limit per policy dim (rad/s for joints, 1/s for grippers)."),
    )
    gripper_indices: tuple[int, ...] = field(
        default=(7, 15), metadata=_meta("Policy dims that are grippers (0 open .. 1 closed).")
    )

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        _check(n > 0, "robot.joint_names is empty: list the policy dims in order.")
        _check(len(set(self.joint_names)) == n, "robot.joint_names has duplicates.")
        for key in ("lower", "upper", "max_velocity"):
            _check(
                len(getattr(self, key)) == n,
                f"robot.{key} has {len(getattr(self, key))} values but robot.joint_names has {n}:"
                " give one value per policy dim.",
            )
        for i, (lo, hi) in enumerate(zip(self.lower, self.upper)):
            _check(
                math.isfinite(lo) and math.isfinite(hi) and lo < hi,
                f"robot.lower[{i}]={lo} must be finite and below robot.upper[{i}]={hi}"
                f" ({self.joint_names[i]}).",
            )
        for i, v in enumerate(self.max_velocity):
            _check(math.isfinite(v) and v > 0, f"robot.max_velocity[{i}]={v} must be > 0.")
        for i in self.gripper_indices:
            _check(0 <= i < n, f"robot.gripper_indices has {i}, outside 0..{n - 1}.")

    @property
    def dim(self) -> int:
        return len(self.joint_names)

    @property
    def arm_indices(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.dim) if i not in self.gripper_indices)


@dataclass(frozen=True)
class SourceConfig:
    """Where some policy dims come from: a topic, a message type and a field path.

    ``field`` is a dotted path with an optional slice, e.g. ``position`` (JointState) or
    ``joint_data.joint_q[12:26]`` (kuavo_msgs/sensorsData). If the message carries a ``name``
    list and ``names`` is set, values are matched by name (other joints are ignored); otherwise
    ``index`` (or the slice) picks them by position. ``scale`` converts to policy units
    (0.01 for a 0..100 claw, pi/180 for degrees).
    """

    topic: str = ""
    msg_type: str = "sensor_msgs/msg/JointState"
    field: str = "position"
    names: tuple[str, ...] = ()
    index: tuple[int, ...] = ()
    scale: float = 1.0
    dims: tuple[int, ...] = ()

    def validate(self, section: str, robot_dim: int) -> None:
        _check(bool(self.topic), f"{section}.topic is empty.")
        _check(bool(self.dims), f"{section}.dims is empty: say which policy dims it feeds.")
        for d in self.dims:
            _check(0 <= d < robot_dim, f"{section}.dims has {d}, outside 0..{robot_dim - 1}.")
        if self.names:
            _check(
                len(self.names) == len(self.dims),
                f"{section}.names has {len(self.names)} entries for {len(self.dims)} dims.",
            )
        if self.index:
            _check(
                len(self.index) == len(self.dims),
                f"{section}.index has {len(self.index)} entries for {len(self.dims)} dims.",
            )
        _check(math.isfinite(self.scale) and self.scale != 0, f"{section}.scale must be != 0.")


def _default_arm_source() -> SourceConfig:
    return SourceConfig(
        topic="/joint_states",
        names=tuple(n for n in KUAVO_JOINT_NAMES if "claw" not in n),
        dims=(*range(0, 7), *range(8, 15)),
    )


def _default_gripper_source() -> SourceConfig:
    return SourceConfig(
        topic="/gripper/state", names=("left_claw", "right_claw"), scale=0.01, dims=(7, 15)
    )


@dataclass(frozen=True)
class CamerasConfig:
    """Cameras, by robot name. ``rename_to`` maps each to the checkpoint's image feature name."""

    names: tuple[str, ...] = ("head_cam_h", "wrist_cam_l", "wrist_cam_r")
    topics: tuple[str, ...] = (
        "/cam_h/color/image_raw/compressed",
        "/cam_l/color/image_raw/compressed",
        "/cam_r/color/image_raw/compressed",
    )
    transports: tuple[str, ...] = ("compressed", "compressed", "compressed")
    rename_to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.names)
        _check(1 <= n <= 8, "cameras.names must list 1 to 8 cameras.")
        _check(len(self.topics) == n, f"cameras.topics has {len(self.topics)} entries for {n}.")
        _check(
            len(self.transports) == n,
            f"cameras.transports has {len(self.transports)} entries for {n} cameras.",
        )
        for t in self.transports:
            _check(t in CAMERA_TRANSPORTS, f"cameras.transports: {t!r} not in {CAMERA_TRANSPORTS}.")
        _check(
            not self.rename_to or len(self.rename_to) == n,
            f"cameras.rename_to has {len(self.rename_to)} entries for {n} cameras (or leave empty).",
        )

    @property
    def rename_map(self) -> dict[str, str]:
        """Robot camera name -> checkpoint image feature name (without the prefix)."""
        if not self.rename_to:
            return {n: n for n in self.names}
        return dict(zip(self.names, self.rename_to))


@dataclass(frozen=True)
class InputsConfig:
    arm: SourceConfig = field(default_factory=_default_arm_source)
    gripper: SourceConfig = field(default_factory=_default_gripper_source)
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    task_topic: str = field(default="~/task", metadata=_meta("std_msgs/String task topic."))
    state_timeout_s: float = field(
        default=0.5, metadata=_meta("Joint/gripper state older than this is stale.", gt=0.0)
    )
    camera_timeout_s: float = field(
        default=0.5, metadata=_meta("A camera frame older than this is stale.", gt=0.0)
    )


@dataclass(frozen=True)
class OutputsConfig:
    """Command topics. The stock arm command is 14 positions in degrees on /kuavo_arm_traj."""

    arm_topic: str = "/kuavo_arm_traj"
    arm_names: tuple[str, ...] = tuple(f"arm_joint_{i}" for i in range(14))
    arm_in_degrees: bool = True
    gripper_topic: str = "/gripper/command"
    gripper_msg_type: str = "sensor_msgs/msg/JointState"
    gripper_field: str = "position"
    gripper_names: tuple[str, ...] = ("left_claw", "right_claw")
    gripper_scale: float = field(
        default=100.0, metadata=_meta("Policy gripper 0..1 -> command units (claw 0..100).")
    )
    action_topic: str = "~/action"


@dataclass(frozen=True)
class PolicyConfig:
    checkpoint: str = field(
        default="", metadata=_meta("SmolVLA checkpoint: local directory or hub id.")
    )
    device: str = field(default="auto", metadata=_meta("auto, cpu, cuda, cuda:N or mps."))
    fast_path: str = field(
        default="auto", metadata=_meta("auto (on for CUDA), on or off: bf16 + CUDA graphs.")
    )
    task: str = field(default="", metadata=_meta("Default task instruction."))
    seed: int = field(default=-1, metadata=_meta("Flow-matching noise seed; -1 for random."))
    warmup: bool = field(default=True, metadata=_meta("Run one forward pass at load."))
    torch_threads: int = field(
        default=0,
        metadata=_meta(
            "CPU threads for inference (0: torch default); leave a core for control.", ge=0
        ),
    )
    backend: str = field(
        default="process",
        metadata=_meta(
            "Where the model runs: process (a child process, no GIL contention with the"
            " control timer) or thread (in the node's process)."
        ),
    )

    def __post_init__(self) -> None:
        _check(
            self.backend in POLICY_BACKENDS,
            f"policy.backend={self.backend!r}; choose one of {POLICY_BACKENDS}.",
        )


@dataclass(frozen=True)
class SchedulerConfig:
    """How chunks become a command stream (see scheduler.py for the formulas)."""

    publish_rate_hz: float = field(
        default=100.0, metadata=_meta("Command publish rate.", gt=0.0, le=1000.0)
    )
    action_fps: float = field(
        default=10.0, metadata=_meta("Chunk step rate; must equal the dataset fps.", gt=0.0)
    )
    n_action_steps: int = field(
        default=10, metadata=_meta("Request a new chunk every this many chunk steps.", ge=1)
    )
    min_horizon_s: float = field(
        default=0.5, metadata=_meta("Request early when less than this is buffered.", ge=0.0)
    )
    merge_mode: str = field(
        default="weighted_average", metadata=_meta(f"One of {', '.join(MERGE_MODES)}.")
    )
    old_weight: float = field(
        default=0.3, metadata=_meta("weighted_average: weight of the old chunk.", ge=0.0, le=1.0)
    )
    ensemble_decay: float = field(
        default=0.01, metadata=_meta("temporal_ensemble: w_i = exp(-decay * i).", ge=0.0)
    )
    latency_init_s: float = field(
        default=0.1,
        metadata=_meta(
            "Initial latency estimate when no warm-up was measured (the node starts from the"
            " warm-up chunk's time).",
            ge=0.0,
        ),
    )
    latency_window: int = field(
        default=20, metadata=_meta("Latency estimate: window of recent chunks.", ge=1)
    )

    def __post_init__(self) -> None:
        _check(
            self.merge_mode in MERGE_MODES,
            f"scheduler.merge_mode={self.merge_mode!r}; choose one of {MERGE_MODES}.",
        )

    @property
    def step_s(self) -> float:
        return 1.0 / self.action_fps


@dataclass(frozen=True)
class SafetyConfig:
    ramp_time_s: float = field(
        default=2.0, metadata=_meta("Ramp from the measured pose at start/resume.", ge=0.0)
    )
    velocity_scale: float = field(
        default=1.0, metadata=_meta("Scales robot.max_velocity.", gt=0.0, le=10.0)
    )
    limit_margin: float = field(
        default=0.0, metadata=_meta("Keep this far (rad) inside the joint limits.", ge=0.0)
    )


@dataclass(frozen=True)
class Config:
    """Everything the node, replay and training need; one YAML file."""

    robot: RobotConfig = field(default_factory=RobotConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    dry_run: bool = field(default=False, metadata=_meta("Compute but publish only ~/action."))
    start_enabled: bool = field(
        default=False, metadata=_meta("Start enabled (default: wait for ~/enable).")
    )

    def __post_init__(self) -> None:
        d = self.robot.dim
        self.inputs.arm.validate("inputs.arm", d)
        self.inputs.gripper.validate("inputs.gripper", d)
        covered = sorted((*self.inputs.arm.dims, *self.inputs.gripper.dims))
        _check(
            covered == list(range(d)),
            f"inputs.arm.dims + inputs.gripper.dims = {covered} must cover each of the"
            f" {d} policy dims exactly once.",
        )
        _check(
            len(self.outputs.arm_names) == len(self.robot.arm_indices),
            f"outputs.arm_names has {len(self.outputs.arm_names)} names for"
            f" {len(self.robot.arm_indices)} arm joints.",
        )
        _check(
            len(self.outputs.gripper_names) == len(self.robot.gripper_indices),
            f"outputs.gripper_names has {len(self.outputs.gripper_names)} names for"
            f" {len(self.robot.gripper_indices)} grippers.",
        )


def command_sources(cfg: Config) -> tuple[SourceConfig, SourceConfig]:
    """The recorded commands (``outputs.*`` topics) read back as sources in policy units: the
    arm command by ``outputs.arm_names`` (degrees -> rad when ``arm_in_degrees``) and the gripper
    command divided by ``gripper_scale``. Dataset actions (convert) and the replay reference
    both come from here, so they cannot disagree."""
    out, robot = cfg.outputs, cfg.robot
    arm = SourceConfig(
        topic=out.arm_topic,
        msg_type="sensor_msgs/msg/JointState",
        field="position",
        names=tuple(out.arm_names),
        scale=math.pi / 180.0 if out.arm_in_degrees else 1.0,
        dims=robot.arm_indices,
    )
    gripper = SourceConfig(
        topic=out.gripper_topic,
        msg_type=out.gripper_msg_type,
        field=out.gripper_field,
        names=tuple(out.gripper_names),
        scale=1.0 / out.gripper_scale,
        dims=robot.gripper_indices,
    )
    return arm, gripper


# ---------------------------------------------------------------------------------------------
# Dict <-> dataclass plumbing (also used by the node to declare ROS parameters).


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}.")
        return from_dict(tp, value, where)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        if inner is str:  # [''] is how an empty string list is written on the ROS command line
            value = [v for v in value if v != ""]
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    return value


def _check_bounds(cls: type, obj: Any, prefix: str) -> None:
    for f in fields(cls):
        v = getattr(obj, f.name)
        where = f"{prefix}{f.name}"
        m = f.metadata
        if "gt" in m:
            _check(v > m["gt"], f"{where}={v} must be > {m['gt']}.")
        if "ge" in m:
            _check(v >= m["ge"], f"{where}={v} must be >= {m['ge']}.")
        if "le" in m:
            _check(v <= m["le"], f"{where}={v} must be <= {m['le']}.")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors (typos are common)."""
    hints = _field_types(cls)
    names = {f.name for f in fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + u for u in unknown)}; known: {sorted(names)}."
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    _check_bounds(cls, obj, prefix)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Nested plain dict (lists, not tuples), as it would stand in the YAML."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(obj)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, the ROS parameter naming of nested YAML."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def parameter_specs() -> list[tuple[str, Any, str, dict[str, Any], type]]:
    """(dotted name, default, description, bounds, element type) for every leaf: what the node
    declares. The element type is the field's type, or its items' type for lists (so an empty
    list default still declares a typed ROS parameter)."""
    specs: list[tuple[str, Any, str, dict[str, Any], type]] = []

    def walk(cls: type, obj: Any, prefix: str) -> None:
        hints = _field_types(cls)
        for f in fields(cls):
            v = getattr(obj, f.name)
            if _is_dataclass_type(hints[f.name]):
                walk(hints[f.name], v, f"{prefix}{f.name}.")
                continue
            desc = f.metadata.get("description", "")
            bounds = {k: f.metadata[k] for k in ("gt", "ge", "le") if k in f.metadata}
            default = list(v) if isinstance(v, tuple) else v
            hint = hints[f.name]
            elem = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
            specs.append((prefix + f.name, default, desc, bounds, elem))

    walk(Config, Config(), "")
    return specs


def _ros_section(raw: dict[str, Any], path: str) -> dict[str, Any]:
    """Accept a ROS params file (``node: ros__parameters: ...``, ``/**`` too) or a bare dict."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping.")
    for key in (NODE_NAME, f"/{NODE_NAME}", "/**"):
        if key in raw and isinstance(raw[key], dict) and "ros__parameters" in raw[key]:
            return raw[key]["ros__parameters"] or {}
    for v in raw.values():
        if isinstance(v, dict) and "ros__parameters" in v:
            return v["ros__parameters"] or {}
    return raw


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Load and validate the YAML config; ``overrides`` are dotted keys (``policy.device``)."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist.")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from None
        data = _ros_section(raw, str(p))
        if any("." in k for k in data):
            data = unflatten(flatten(data))
    if overrides:
        flat = flatten(data)
        flat.update(overrides)
        data = unflatten(flat)
    return from_dict(Config, data)


def default_config_path(name: str = "kuavo_smolvla.yaml") -> Path:
    """The config shipped with the package (source tree, colcon share dir or wheel)."""
    here = Path(__file__).resolve().parents[1]  # the package folder, above core/
    for cand in (here.parent / "config" / name, here / "config" / name):
        if cand.is_file():
            return cand
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("kuavo_smolvla_ros")) / "config" / name
    except Exception:
        return here.parent / "config" / name
