"""Typed, validated configuration for the whole package, loaded from one YAML file.

The YAML file is a ROS 2 parameters file (``/**: ros__parameters: {...}``, so it applies under
any namespace) and the same file feeds ``ros2 run ... --ros-args --params-file`` and the
pure-Python tools (replay, training). Nested sections map to dataclasses; ROS sees them as dotted
parameter names (``scheduler.action_fps``).

The dataclasses are the one source of defaults, units, bounds and descriptions: the ROS parameter
descriptors (``ros/parameters.py``), the launch file's arguments and the README's parameter table
are generated from or tested against them, and the shipped YAML files hold only what differs.
Every bound is checked in ``__post_init__`` (so ``dataclasses.replace`` cannot bypass it), every
float must be finite, and errors name the field, the value and the bound, LeRobot-style.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

NODE_NAME = "kuavo_smolvla_policy"
MERGE_MODES = ("latest_only", "weighted_average", "temporal_ensemble", "rtc")
CAMERA_TRANSPORTS = ("compressed", "raw")
POLICY_BACKENDS = ("process", "thread")
FAST_PATH_MODES = ("auto", "on", "off")
DEFAULT_TASK = "pick up the object"
# Old key -> new key. Still read from YAML and ROS parameters, with one deprecation line.
DEPRECATED_KEYS = {"scheduler.publish_rate_hz": "outputs.publish_rate_hz"}
BOUND_KEYS = ("gt", "ge", "lt", "le")
_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}

_log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which field and how to fix it."""


class FieldError(ConfigError):
    """One field out of its bounds; ``from_dict`` re-prefixes it with the field's YAML path."""

    def __init__(self, section: str, name: str, detail: str) -> None:
        self.section, self.name, self.detail = section, name, detail
        super().__init__(f"{section}.{name}{detail}" if section else f"{name}{detail}")

    def at(self, section: str) -> FieldError:
        return FieldError(section, self.name, self.detail)


def _meta(
    description: str,
    unit: str = "",
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] = (),
    runtime: bool = False,
) -> dict[str, Any]:
    """Field metadata: description, unit, bounds (``gt``/``ge``/``lt``/``le``, per element for
    lists), allowed ``choices`` and whether the parameter may change while the node runs
    (``runtime``; everything else is a read-only ROS parameter)."""
    m: dict[str, Any] = {"description": description, "unit": unit, "runtime": runtime}
    for key, value in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)):
        if value is not None:
            m[key] = value
    if choices:
        m["choices"] = tuple(choices)
    return m


def bounds_of(f: dataclasses.Field) -> dict[str, float]:
    """The field's bounds, e.g. ``{"gt": 0.0, "le": 1000.0}``."""
    return {k: f.metadata[k] for k in BOUND_KEYS if k in f.metadata}


def describe_bounds(bounds: dict[str, float]) -> str:
    """``{"gt": 0, "le": 10}`` -> ``"> 0, <= 10"``."""
    return ", ".join(f"{_OPS[k]} {v:g}" for k, v in bounds.items())


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_value(section: str, name: str, value: Any, f: dataclasses.Field) -> None:
    """Finiteness (floats), bounds and choices of one value (or each element of a tuple)."""
    items = list(enumerate(value)) if isinstance(value, tuple) else [(None, value)]
    unit = f.metadata.get("unit", "")
    for i, v in items:
        label = name if i is None else f"{name}[{i}]"
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise FieldError(section, label, f"={v} must be a finite number.")
        if isinstance(v, str):
            choices = f.metadata.get("choices", ())
            if choices and v not in choices:
                raise FieldError(section, label, f"={v!r}: choose one of {', '.join(choices)}.")
            continue
        for key, bound in bounds_of(f).items():
            ok = {"gt": v > bound, "ge": v >= bound, "lt": v < bound, "le": v <= bound}[key]
            if not ok:
                raise FieldError(
                    section,
                    label,
                    f"={v:g} must be {_OPS[key]} {bound:g}{' ' + unit if unit else ''}.",
                )


class _Validated:
    """Mixin: ``__post_init__`` checks every field's metadata (bounds, finiteness, choices)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            _check_value(self.SECTION, f.name, getattr(self, f.name), f)
        self._check()

    def _check(self) -> None:
        """Checks across fields (subclasses)."""


# Kuavo biped_s45 arm limits (rad) and joint velocity limits (rad/s), from the robot URDF.
# Grippers are 0 (open) .. 1 (closed); the claw's speed is not published, so its "own" limit is
# a sanity cap of a full stroke in 0.1 s.
_L_LOWER = (-3.1416, -0.349, -1.5708, -2.618, -1.5708, -1.309, -0.698)
_L_UPPER = (1.5708, 2.094, 1.5708, 0.0, 1.5708, 0.698, 0.698)
_R_LOWER = (-3.1416, -2.094, -1.5708, -2.618, -1.5708, -0.698, -0.698)
_R_UPPER = (1.5708, 0.349, 1.5708, 0.0, 1.5708, 1.309, 0.698)
URDF_ARM_VELOCITY = (41.3, 19.2, 18.8, 18.8, 21.7, 21.7, 21.7)
GRIPPER_VELOCITY_CAP = 10.0
KUAVO_JOINT_NAMES = (
    *(f"zarm_l{i}_joint" for i in range(1, 8)),
    "left_claw",
    *(f"zarm_r{i}_joint" for i in range(1, 8)),
    "right_claw",
)


@dataclass(frozen=True)
class RobotConfig(_Validated):
    """The robot's policy vector: order, names, limits and speed limits (SI: rad, rad/s).

    Kuavo's default is 16-D: left arm l1..l7, left gripper, right arm r1..r7, right gripper.
    A 4Pro / 5 / 5W or a dexterous hand is a change of this section, not of code.
    """

    SECTION: ClassVar[str] = "robot"

    name: str = field(default="kuavo_s45", metadata=_meta("Robot profile name (for logs)."))
    joint_names: tuple[str, ...] = field(
        default=KUAVO_JOINT_NAMES, metadata=_meta("Names of the policy dims, in policy order.")
    )
    lower: tuple[float, ...] = field(
        default=(*_L_LOWER, 0.0, *_R_LOWER, 0.0),
        metadata=_meta("Lower limit per policy dim (URDF; grippers 0 open).", "rad"),
    )
    upper: tuple[float, ...] = field(
        default=(*_L_UPPER, 1.0, *_R_UPPER, 1.0),
        metadata=_meta("Upper limit per policy dim (URDF; grippers 1 closed).", "rad"),
    )
    max_velocity: tuple[float, ...] = field(
        default=(*(1.0,) * 7, 2.0, *(1.0,) * 7, 2.0),
        metadata=_meta(
            "Speed limit per policy dim (grippers: strokes/s); at most robot.velocity_limits.",
            "rad/s",
            gt=0.0,
        ),
    )
    velocity_limits: tuple[float, ...] = field(
        default=(
            *URDF_ARM_VELOCITY,
            GRIPPER_VELOCITY_CAP,
            *URDF_ARM_VELOCITY,
            GRIPPER_VELOCITY_CAP,
        ),
        metadata=_meta(
            "The robot's own velocity limit per policy dim (URDF <limit velocity>; grippers a"
            " full stroke in 0.1 s): the speed limit can never be set above it.",
            "rad/s",
            gt=0.0,
        ),
    )
    gripper_indices: tuple[int, ...] = field(
        default=(7, 15),
        metadata=_meta("Policy dims that are grippers (0 open .. 1 closed).", ge=0),
    )

    def _check(self) -> None:
        n = len(self.joint_names)
        _check(n > 0, "robot.joint_names is empty: list the policy dims in order.")
        _check(len(set(self.joint_names)) == n, "robot.joint_names has duplicates.")
        for key in ("lower", "upper", "max_velocity", "velocity_limits"):
            _check(
                len(getattr(self, key)) == n,
                f"robot.{key} has {len(getattr(self, key))} values but robot.joint_names has {n}:"
                " give one value per policy dim.",
            )
        for i, (lo, hi) in enumerate(zip(self.lower, self.upper)):
            _check(
                lo < hi,
                f"robot.lower[{i}]={lo} must be below robot.upper[{i}]={hi}"
                f" ({self.joint_names[i]}).",
            )
        for i, (v, cap) in enumerate(zip(self.max_velocity, self.velocity_limits)):
            _check(
                v <= cap,
                f"robot.max_velocity[{i}]={v:g} must be <= robot.velocity_limits[{i}]={cap:g}"
                f" rad/s ({self.joint_names[i]}'s own limit).",
            )
        for i in self.gripper_indices:
            _check(0 <= i < n, f"robot.gripper_indices has {i}, outside 0..{n - 1}.")

    @property
    def dim(self) -> int:
        return len(self.joint_names)

    @property
    def arm_indices(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.dim) if i not in self.gripper_indices)


@dataclass(frozen=True)
class SourceConfig(_Validated):
    """Where some policy dims come from: a topic, a message type and a field path.

    ``field`` is a dotted path with an optional slice, e.g. ``position`` (JointState) or
    ``joint_data.joint_q[12:26]`` (kuavo_msgs/sensorsData). If the message carries a ``name``
    list and ``names`` is set, values are matched by name (other joints are ignored); otherwise
    ``index`` (or the slice) picks them by position. ``scale`` converts to policy units
    (0.01 for a 0..100 claw, pi/180 for degrees).
    """

    SECTION: ClassVar[str] = "inputs.<source>"

    topic: str = dataclasses.field(default="", metadata=_meta("Topic."))
    msg_type: str = dataclasses.field(
        default="sensor_msgs/msg/JointState", metadata=_meta("Message type (pkg/msg/Type).")
    )
    field: str = dataclasses.field(
        default="position",
        metadata=_meta("Field path, e.g. position or joint_data.joint_q[12:26]."),
    )
    names: tuple[str, ...] = dataclasses.field(
        default=(), metadata=_meta("Match values by these names (when the message has names).")
    )
    index: tuple[int, ...] = dataclasses.field(
        default=(), metadata=_meta("Pick values by position (messages without names).", ge=0)
    )
    scale: float = dataclasses.field(
        default=1.0, metadata=_meta("Multiplier to policy units (claw 0..100: 0.01).")
    )
    dims: tuple[int, ...] = dataclasses.field(
        default=(), metadata=_meta("Policy dims this source feeds.", ge=0)
    )

    def _check(self) -> None:
        if self.scale == 0:
            raise FieldError(
                self.SECTION, "scale", "=0 must be != 0 (it converts to policy units)."
            )

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
class CamerasConfig(_Validated):
    """Cameras, by robot name. ``rename_to`` maps each to the checkpoint's image feature name."""

    SECTION: ClassVar[str] = "inputs.cameras"

    names: tuple[str, ...] = field(
        default=("head_cam_h", "wrist_cam_l", "wrist_cam_r"),
        metadata=_meta("Camera names (1 to 8), as in the dataset's image features."),
    )
    topics: tuple[str, ...] = field(
        default=(
            "/cam_h/color/image_raw/compressed",
            "/cam_l/color/image_raw/compressed",
            "/cam_r/color/image_raw/compressed",
        ),
        metadata=_meta("Image topic per camera."),
    )
    transports: tuple[str, ...] = field(
        default=("compressed", "compressed", "compressed"),
        metadata=_meta("Per camera: compressed or raw.", choices=CAMERA_TRANSPORTS),
    )
    rename_to: tuple[str, ...] = field(
        default=(), metadata=_meta("Checkpoint image feature name per camera, if they differ.")
    )

    def _check(self) -> None:
        n = len(self.names)
        _check(1 <= n <= 8, "inputs.cameras.names must list 1 to 8 cameras.")
        _check(
            len(self.topics) == n,
            f"inputs.cameras.topics has {len(self.topics)} entries for {n} cameras.",
        )
        _check(
            len(self.transports) == n,
            f"inputs.cameras.transports has {len(self.transports)} entries for {n} cameras.",
        )
        _check(
            not self.rename_to or len(self.rename_to) == n,
            f"inputs.cameras.rename_to has {len(self.rename_to)} entries for {n} cameras"
            " (or leave it empty).",
        )

    @property
    def rename_map(self) -> dict[str, str]:
        """Robot camera name -> checkpoint image feature name (without the prefix)."""
        if not self.rename_to:
            return {n: n for n in self.names}
        return dict(zip(self.names, self.rename_to))


@dataclass(frozen=True)
class InputsConfig(_Validated):
    SECTION: ClassVar[str] = "inputs"

    arm: SourceConfig = field(default_factory=_default_arm_source)
    gripper: SourceConfig = field(default_factory=_default_gripper_source)
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    task_topic: str = field(default="~/task", metadata=_meta("std_msgs/String task topic."))
    state_timeout_s: float = field(
        default=0.5,
        metadata=_meta("Joint/gripper state older than this is stale.", "s", gt=0.0, le=60.0),
    )
    camera_timeout_s: float = field(
        default=0.5,
        metadata=_meta("A camera frame older than this is stale.", "s", gt=0.0, le=60.0),
    )
    max_image_bytes: int = field(
        default=16_000_000,
        metadata=_meta("A larger camera message is refused before decoding.", "B", ge=1),
    )
    max_image_side: int = field(
        default=4096,
        metadata=_meta("A wider or taller image is refused before decoding.", "px", ge=1),
    )
    max_task_chars: int = field(
        default=512, metadata=_meta("A longer task text is cut to this length.", ge=1)
    )


@dataclass(frozen=True)
class OutputsConfig(_Validated):
    """Command topics. The stock arm command is 14 positions in degrees on /kuavo_arm_traj."""

    SECTION: ClassVar[str] = "outputs"

    publish_rate_hz: float = field(
        default=100.0,
        metadata=_meta(
            "Command publish rate (the control timer; the speed limit's dt cap is 2 periods)."
            " YAML key scheduler.publish_rate_hz is still read (deprecated).",
            "Hz",
            gt=0.0,
            le=1000.0,
        ),
    )
    arm_topic: str = field(default="/kuavo_arm_traj", metadata=_meta("Arm command topic."))
    arm_names: tuple[str, ...] = field(
        default=tuple(f"arm_joint_{i}" for i in range(14)),
        metadata=_meta("Joint names in the arm command, one per arm dim."),
    )
    arm_in_degrees: bool = field(
        default=True, metadata=_meta("Arm command in degrees (stock Kuavo) instead of rad.")
    )
    gripper_topic: str = field(default="/gripper/command", metadata=_meta("Gripper command topic."))
    gripper_msg_type: str = field(
        default="sensor_msgs/msg/JointState", metadata=_meta("Gripper command message type.")
    )
    gripper_field: str = field(
        default="position", metadata=_meta("Field path of the gripper values in the command.")
    )
    gripper_names: tuple[str, ...] = field(
        default=("left_claw", "right_claw"), metadata=_meta("Gripper names, one per gripper dim.")
    )
    gripper_scale: float = field(
        default=100.0,
        metadata=_meta("Policy gripper 0..1 -> command units (claw 0..100).", gt=0.0, le=100000.0),
    )
    action_topic: str = field(
        default="~/action", metadata=_meta("Full command in SI units (also in dry run).")
    )


@dataclass(frozen=True)
class PolicyConfig(_Validated):
    SECTION: ClassVar[str] = "policy"

    checkpoint: str = field(
        default="", metadata=_meta("SmolVLA checkpoint: local directory or hub id.")
    )
    revision: str = field(
        default="",
        metadata=_meta("Hub revision (commit hash or tag) to pin a hub id to; empty: latest."),
    )
    trust_remote_code: bool = field(
        default=False,
        metadata=_meta(
            "Allow the checkpoint's processor files to name classes other than LeRobot's"
            " registered steps and this package's (they are imported and built: code execution)."
        ),
    )
    device: str = field(default="auto", metadata=_meta("auto, cpu, cuda, cuda:N or mps."))
    fast_path: str = field(
        default="auto",
        metadata=_meta(
            "auto (CUDA: bf16 + CUDA graphs; CPU: its float32 code if it equals LeRobot at"
            " warm-up), on (CUDA) or off (LeRobot eager).",
            choices=FAST_PATH_MODES,
        ),
    )
    task: str = field(
        default=DEFAULT_TASK,
        metadata=_meta("Task instruction (until one arrives on the task topic).", runtime=True),
    )
    seed: int = field(default=-1, metadata=_meta("Flow-matching noise seed; -1 for random.", ge=-1))
    warmup: bool = field(default=True, metadata=_meta("Run one forward pass at load."))
    torch_threads: int = field(
        default=0,
        metadata=_meta(
            "CPU threads for inference (0: torch default); leave a core for control.",
            ge=0,
            le=1024,
        ),
    )
    timeout_s: float = field(
        default=0.0,
        metadata=_meta(
            "A chunk not answered within this is a fault (0: max(2 s, 10x the warm-up chunk)).",
            "s",
            ge=0.0,
            le=600.0,
        ),
    )
    backend: str = field(
        default="process",
        metadata=_meta(
            "Where the model runs: process (a child process, no GIL contention with the"
            " control timer) or thread (in the node's process).",
            choices=POLICY_BACKENDS,
        ),
    )


@dataclass(frozen=True)
class SchedulerConfig(_Validated):
    """How chunks become a command stream (see scheduler.py for the formulas)."""

    SECTION: ClassVar[str] = "scheduler"

    action_fps: float = field(
        default=10.0,
        metadata=_meta("Chunk step rate; must equal the dataset fps.", "Hz", gt=0.0, le=1000.0),
    )
    n_action_steps: int = field(
        default=10,
        metadata=_meta("Request a new chunk every this many chunk steps.", ge=1, le=1000),
    )
    min_horizon_s: float = field(
        default=0.5,
        metadata=_meta("Request early when less than this is buffered.", "s", ge=0.0, le=60.0),
    )
    merge_mode: str = field(
        default="weighted_average",
        metadata=_meta(f"One of {', '.join(MERGE_MODES)}.", choices=MERGE_MODES),
    )
    old_weight: float = field(
        default=0.3,
        metadata=_meta("weighted_average: weight of the old chunk.", ge=0.0, le=1.0),
    )
    ensemble_decay: float = field(
        default=0.01,
        metadata=_meta("temporal_ensemble: w_i = exp(-decay * i).", ge=0.0, le=100.0),
    )
    latency_init_s: float = field(
        default=0.1,
        metadata=_meta(
            "Initial latency estimate when no warm-up was measured (the node starts from the"
            " warm-up chunk's time).",
            "s",
            ge=0.0,
            le=60.0,
        ),
    )
    latency_window: int = field(
        default=20,
        metadata=_meta("Latency estimate: window of recent chunks.", ge=1, le=10000),
    )

    @property
    def step_s(self) -> float:
        return 1.0 / self.action_fps


@dataclass(frozen=True)
class SafetyConfig(_Validated):
    SECTION: ClassVar[str] = "safety"

    ramp_time_s: float = field(
        default=2.0,
        metadata=_meta("Ramp from the measured pose at start/resume.", "s", ge=0.0, le=60.0),
    )
    velocity_scale: float = field(
        default=1.0,
        metadata=_meta(
            "Scales robot.max_velocity (the product stays within robot.velocity_limits).",
            gt=0.0,
            le=10.0,
        ),
    )
    limit_margin: float = field(
        default=0.0,
        metadata=_meta("Keep this far inside the joint limits.", "rad", ge=0.0, le=0.5),
    )
    max_start_error: float = field(
        default=0.05,
        metadata=_meta(
            "Enable is refused (or faults) when the measured pose is further than this outside"
            " the limits; within it the start is clamped.",
            "rad",
            ge=0.0,
            le=0.5,
        ),
    )


@dataclass(frozen=True)
class Config(_Validated):
    """Everything the node, replay and training need; one YAML file."""

    SECTION: ClassVar[str] = ""

    robot: RobotConfig = field(default_factory=RobotConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    dry_run: bool = field(
        default=False, metadata=_meta("Compute but publish only ~/action.", runtime=True)
    )
    start_enabled: bool = field(
        default=False, metadata=_meta("Start enabled (default: wait for ~/enable).")
    )

    def _check(self) -> None:
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
        scale = self.safety.velocity_scale
        for i, (v, cap) in enumerate(zip(self.robot.max_velocity, self.robot.velocity_limits)):
            _check(
                v * scale <= cap,
                f"safety.velocity_scale={scale:g} x robot.max_velocity[{i}]={v:g} = {v * scale:g}"
                f" must be <= robot.velocity_limits[{i}]={cap:g} rad/s"
                f" ({self.robot.joint_names[i]}'s own limit).",
            )
        m = self.safety.limit_margin
        for i, (lo, hi) in enumerate(zip(self.robot.lower, self.robot.upper)):
            _check(
                lo + m < hi - m,
                f"safety.limit_margin={m:g} leaves no room for {self.robot.joint_names[i]}"
                f" (limits {lo:g}..{hi:g}): use a margin below half the joint range.",
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


def from_dict(cls: type, data: dict[str, Any], where: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors (typos are common).

    Keys not given keep the value of ``base`` (default: ``cls()``), so a nested section only
    needs what differs: ``inputs.arm.topic`` alone keeps the default arm source's names and dims.
    """
    hints = _field_types(cls)
    names = {f.name for f in fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + u for u in unknown)}; known: {sorted(names)}."
        )
    base = cls() if base is None else base
    kwargs = {}
    for k, v in data.items():
        if _is_dataclass_type(hints[k]):
            if not isinstance(v, dict):
                raise ConfigError(f"{prefix + k} must be a mapping, got {type(v).__name__}.")
            kwargs[k] = from_dict(hints[k], v, prefix + k, base=getattr(base, k))
        else:
            kwargs[k] = _coerce(v, hints[k], prefix + k)
    try:
        return dataclasses.replace(base, **kwargs)
    except FieldError as exc:  # name the field by its YAML path (a SourceConfig sits in two)
        raise exc.at(where) from None


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


@dataclass(frozen=True)
class ParamSpec:
    """One leaf of the config as a ROS parameter (generated from the dataclass field)."""

    name: str  # dotted, e.g. "scheduler.action_fps"
    default: Any  # lists for tuples
    description: str
    unit: str
    bounds: dict[str, float]
    elem: type  # the field's type, or its items' type for lists
    runtime: bool  # may change while the node runs; everything else is read-only
    choices: tuple[str, ...]

    @property
    def is_list(self) -> bool:
        return isinstance(self.default, list)

    def full_description(self) -> str:
        """Description, unit, bounds and choices in one line (ROS descriptor, README, launch)."""
        extra = [f"unit {self.unit}"] if self.unit else []
        if self.bounds:
            extra.append(("each " if self.is_list else "") + describe_bounds(self.bounds))
        if self.choices and not self.description.startswith("One of"):
            extra.append("one of " + ", ".join(self.choices))
        return self.description + (f" [{'; '.join(extra)}]" if extra else "")


def parameter_fields() -> list[ParamSpec]:
    """Every leaf of ``Config`` as a ``ParamSpec``, in declaration order: what the node declares,
    what the launch file and the README's parameter table are checked against."""
    specs: list[ParamSpec] = []

    def walk(cls: type, obj: Any, prefix: str) -> None:
        hints = _field_types(cls)
        for f in fields(cls):
            v = getattr(obj, f.name)
            if _is_dataclass_type(hints[f.name]):
                walk(hints[f.name], v, f"{prefix}{f.name}.")
                continue
            hint = hints[f.name]
            elem = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
            specs.append(
                ParamSpec(
                    name=prefix + f.name,
                    default=list(v) if isinstance(v, tuple) else v,
                    description=f.metadata.get("description", ""),
                    unit=f.metadata.get("unit", ""),
                    bounds=bounds_of(f),
                    elem=elem,
                    runtime=bool(f.metadata.get("runtime", False)),
                    choices=tuple(f.metadata.get("choices", ())),
                )
            )

    walk(Config, Config(), "")
    return specs


def parameter_specs() -> list[tuple[str, Any, str, dict[str, Any], type]]:
    """(dotted name, default, description, bounds, element type) per leaf (older form of
    :func:`parameter_fields`)."""
    return [(p.name, p.default, p.description, p.bounds, p.elem) for p in parameter_fields()]


def migrate_deprecated(flat: dict[str, Any], warn: Any = None) -> dict[str, Any]:
    """Move deprecated dotted keys (``DEPRECATED_KEYS``) to their new names, one warning line
    each; both given with different values is an error."""
    warn = warn or _log.warning
    out = dict(flat)
    for old, new in DEPRECATED_KEYS.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ConfigError(f"{old}={value!r} and {new}={out[new]!r} disagree: set only {new}.")
        out[new] = value
        warn(f"{old} is deprecated: use {new} (same meaning).")
    return out


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
    """Load and validate the YAML config (any ROS params file top key: ``/**``, the node's
    name, or a bare mapping); ``overrides`` are dotted keys (``policy.device``). No file: the
    dataclass defaults, which are also what the shipped default YAML amounts to."""
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
    flat = migrate_deprecated(flatten(data))
    if overrides:
        flat.update(migrate_deprecated(dict(overrides)))
    return from_dict(Config, unflatten(flat))


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


def _cell(value: Any) -> str:
    if isinstance(value, list):
        if len(value) > 3:
            return f"{len(value)} values"
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"' if value == "" or " " in value else value
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def parameter_table_markdown() -> str:
    """The README's parameter table, generated from the dataclasses (test_config checks the
    README holds exactly this; the test prints the command that regenerates it)."""
    rows = [
        "| parameter | default | unit | bounds | runtime | description |",
        "|---|---|---|---|---|---|",
    ]
    for p in parameter_fields():
        bounds = describe_bounds(p.bounds)
        if p.choices:
            bounds = " \\| ".join(p.choices)
        desc = p.description.replace("|", "\\|")
        row = [f"`{p.name}`", _cell(p.default).replace("|", "\\|"), p.unit, bounds]
        rows.append("| " + " | ".join([*row, "yes" if p.runtime else "", desc]) + " |")
    return "\n".join(rows)
