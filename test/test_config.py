"""The config dataclasses: one source of defaults and bounds, checked wherever a Config is made.

Bounds are refused with the field, the value and the bound in the message, also through
``dataclasses.replace`` and ROS parameters; the shipped YAML files hold only differences from the
defaults and apply under any namespace (``/**``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.node import Node
from rclpy.parameter import Parameter

from kuavo_smolvla_ros.core.config import (
    NODE_NAME,
    URDF_ARM_VELOCITY,
    Config,
    ConfigError,
    flatten,
    load_config,
    parameter_fields,
    parameter_table_markdown,
    to_dict,
)
from kuavo_smolvla_ros.ros.parameters import ALIASES, ConfigParameters

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "config").glob("*.yaml"))
SPECS = parameter_fields()
SECTIONS = {"robot", "inputs", "outputs", "policy", "scheduler", "safety"}


def _section_and_field(name: str) -> tuple[tuple[str, ...], str]:
    *path, leaf = name.split(".")
    return tuple(path), leaf


def _violations(spec) -> list[tuple[str, float]]:
    """One out-of-bounds value per bound of a numeric field."""
    out = []
    step = 1 if spec.elem is int else 1e-6
    for key, bound in spec.bounds.items():
        bad = {"gt": bound, "ge": bound - step, "lt": bound, "le": bound + step}[key]
        out.append((key, int(bad) if spec.elem is int else float(bad)))
    return out


BOUND_CASES = [
    pytest.param(spec, key, bad, id=f"{spec.name}-{key}")
    for spec in SPECS
    if spec.elem in (int, float)
    for key, bad in _violations(spec)
]
FLOAT_CASES = [
    pytest.param(spec, bad, id=f"{spec.name}-{bad}")
    for spec in SPECS
    if spec.elem is float
    for bad in (math.nan, math.inf, -math.inf)
]


def _as_value(spec, scalar):
    """The field's value with ``scalar`` in it (the first element for lists)."""
    return [scalar, *spec.default[1:]] if spec.is_list else scalar


def test_every_numeric_field_has_bounds_description_and_unit_where_it_has_one():
    for spec in SPECS:
        assert spec.description, f"{spec.name} has no description"
    numeric = [s for s in SPECS if s.elem in (int, float) and s.name.split(".")[-1] not in
               ("scale", "lower", "upper")]  # fmt: skip
    for spec in numeric:
        assert spec.bounds, f"{spec.name} has no bounds"
    assert len(BOUND_CASES) >= 20


@pytest.mark.parametrize(("spec", "key", "bad"), BOUND_CASES)
def test_every_bound_is_refused_with_field_value_and_bound(spec, key, bad):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={spec.name: _as_value(spec, bad)})
    msg = str(err.value)
    label = f"{spec.name}[0]" if spec.is_list else spec.name
    assert label in msg, msg
    assert f"{bad:g}" in msg, msg
    assert f"{spec.bounds[key]:g}" in msg, msg


@pytest.mark.parametrize(("spec", "key", "bad"), BOUND_CASES)
def test_dataclasses_replace_cannot_bypass_the_bounds(spec, key, bad):
    path, leaf = _section_and_field(spec.name)
    obj = Config()
    for p in path:
        obj = getattr(obj, p)
    value = _as_value(spec, bad)
    with pytest.raises(ConfigError, match=leaf):
        dataclasses.replace(obj, **{leaf: tuple(value) if spec.is_list else value})


@pytest.mark.parametrize(("spec", "bad"), FLOAT_CASES)
def test_nan_and_inf_are_refused_in_every_float_field(spec, bad):
    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config(overrides={spec.name: _as_value(spec, bad)})


@pytest.mark.parametrize("value", [math.nan, -100.0, 0.0, math.inf])
def test_gripper_scale_from_the_issue_is_refused(value):
    """A NaN scale is applied after the safety filter: it would reach /gripper/command."""
    with pytest.raises(ConfigError, match=r"outputs\.gripper_scale="):
        dataclasses.replace(Config().outputs, gripper_scale=value)


@pytest.mark.parametrize("name", ["inputs.state_timeout_s", "inputs.camera_timeout_s"])
def test_infinite_timeouts_are_refused(name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.") + "=inf"):
        load_config(overrides={name: math.inf})


def test_speed_limit_above_the_robots_own_joint_limit_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"robot.max_velocity": [1e9] * 16})
    assert "robot.max_velocity[0]=1e+09" in str(err.value)
    assert "41.3" in str(err.value) and "zarm_l1_joint" in str(err.value)
    # each joint at exactly its URDF limit is fine; the velocity scale cannot push it over
    at_limit = [*URDF_ARM_VELOCITY, 2.0, *URDF_ARM_VELOCITY, 2.0]
    assert load_config(overrides={"robot.max_velocity": at_limit}).robot.max_velocity[1] == 19.2
    with pytest.raises(ConfigError, match=r"safety\.velocity_scale=1\.5 x robot\.max_velocity"):
        load_config(overrides={"robot.max_velocity": at_limit, "safety.velocity_scale": 1.5})


def test_choices_are_refused_with_the_allowed_values():
    with pytest.raises(ConfigError, match=r"scheduler\.merge_mode='blend': choose one of"):
        load_config(overrides={"scheduler.merge_mode": "blend"})
    with pytest.raises(ConfigError, match=r"inputs\.cameras\.transports\[1\]='h264'"):
        load_config(overrides={"inputs.cameras.transports": ["raw", "h264", "raw"]})


def test_source_errors_name_the_source_by_its_yaml_path():
    with pytest.raises(ConfigError, match=r"inputs\.gripper\.scale=nan"):
        load_config(overrides={"inputs.gripper.scale": math.nan})
    with pytest.raises(ConfigError, match=r"inputs\.arm\.scale=0"):
        load_config(overrides={"inputs.arm.scale": 0.0})


def test_the_default_task_is_the_real_default():
    """A node started without YAML used to wait forever with "stale inputs task"."""
    assert Config().policy.task == "pick up the object"


def test_publish_rate_lives_in_outputs_and_the_old_key_still_works(caplog):
    assert load_config(overrides={"outputs.publish_rate_hz": 50}).outputs.publish_rate_hz == 50.0
    with caplog.at_level("WARNING"):
        cfg = load_config(overrides={"scheduler.publish_rate_hz": 40})
    assert cfg.outputs.publish_rate_hz == 40.0
    assert "scheduler.publish_rate_hz is deprecated: use outputs.publish_rate_hz" in caplog.text
    assert not hasattr(cfg.scheduler, "publish_rate_hz")


def test_yaml_round_trip_under_the_any_namespace_key(tmp_path):
    cfg = load_config(overrides={"policy.task": "stack the cups", "safety.ramp_time_s": 3.5})
    path = tmp_path / "round_trip.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": to_dict(cfg)}}))
    assert load_config(path) == cfg
    # the node-name key and a bare mapping read the same
    path.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": to_dict(cfg)}}))
    assert load_config(path) == cfg
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_yaml_uses_the_any_namespace_key_and_holds_only_differences(path):
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == ["/**"], f"{path.name}: top key must be /** (applies under any namespace)"
    given = flatten(raw["/**"]["ros__parameters"] or {})
    defaults = flatten(to_dict(Config()))
    for key, value in given.items():
        assert key in defaults, f"{path.name}: {key} is not a config field"
        assert value != defaults[key], f"{path.name}: {key}={value!r} restates the default"
    load_config(path)  # and it is valid


def test_default_yaml_is_the_defaults():
    assert load_config(REPO / "config" / "kuavo_smolvla.yaml") == Config()


def test_partial_section_keeps_the_other_defaults_of_that_section(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("/**:\n  ros__parameters:\n    inputs:\n      arm:\n        topic: /arm\n")
    cfg = load_config(path)
    assert cfg.inputs.arm.topic == "/arm"
    assert cfg.inputs.arm.dims == Config().inputs.arm.dims
    assert cfg.inputs.arm.names == Config().inputs.arm.names


# -- the same config through ROS parameters --------------------------------------------------


@pytest.fixture()
def ros_node():
    """``make(args, namespace)``: an rclpy node named like the policy node, in its own context,
    started with ``--ros-args`` ``args`` (e.g. ``--params-file``)."""
    made: list[tuple[rclpy.Context, Node]] = []

    def make(args: list[str] | None = None, namespace: str = "") -> Node:
        ctx = rclpy.Context()
        rclpy.init(context=ctx, args=["--ros-args", *args] if args else None)
        node = Node(NODE_NAME, namespace=namespace, context=ctx)
        made.append((ctx, node))
        return node

    yield make
    for ctx, node in made:
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_yaml_applies_to_a_namespaced_node(ros_node, tmp_path):
    path = tmp_path / "robot1.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    policy:\n      task: wave\n"
        "    outputs:\n      gripper_scale: 50.0\n"
    )
    node = ros_node(["--params-file", str(path)], namespace="robot1")
    assert node.get_fully_qualified_name() == f"/robot1/{NODE_NAME}"
    cfg = ConfigParameters(node).config
    assert cfg.policy.task == "wave" and cfg.outputs.gripper_scale == 50.0
    assert cfg == load_config(path)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_node_builds_the_same_config_as_load_config(ros_node, path):
    node = ros_node(["--params-file", str(path)], namespace="robot1")
    assert ConfigParameters(node).config == load_config(path)


def test_node_without_yaml_equals_node_with_the_default_yaml(ros_node):
    bare = ConfigParameters(ros_node()).config
    default = ConfigParameters(
        ros_node(["--params-file", str(REPO / "config" / "kuavo_smolvla.yaml")])
    ).config
    assert bare == default == Config()


def test_descriptors_are_generated_from_the_dataclasses(ros_node):
    node = ros_node()
    ConfigParameters(node)
    (rate,) = node.describe_parameters(["outputs.publish_rate_hz"])
    assert rate.read_only and "Hz" in rate.description
    assert rate.floating_point_range[0].from_value == 0.0
    assert rate.floating_point_range[0].to_value == 1000.0
    (steps,) = node.describe_parameters(["scheduler.n_action_steps"])
    assert (steps.integer_range[0].from_value, steps.integer_range[0].to_value) == (1, 1000)
    runtime = {s.name for s in SPECS if s.runtime}
    assert runtime == {"policy.task", "dry_run"}
    for spec in SPECS:
        (d,) = node.describe_parameters([spec.name])
        assert d.read_only == (spec.name not in runtime), spec.name
        assert d.description.startswith(spec.description)


def test_parameters_that_cannot_change_at_runtime_are_refused_aliases_included(ros_node):
    node = ros_node()
    params = ConfigParameters(node)
    seen: list[dict] = []
    params.watch(seen.append)
    for name, value in [("checkpoint", "X"), ("device", "cuda"), ("policy.checkpoint", "X")]:
        (res,) = node.set_parameters([Parameter(name, value=value)])
        assert not res.successful and "read-only" in res.reason, name
    assert params.config.policy.checkpoint == "" and not seen
    (res,) = node.set_parameters([Parameter("task", value="stack the cups")])
    assert res.successful
    assert seen == [{"policy.task": "stack the cups"}]
    assert params.config.policy.task == "stack the cups"
    assert ALIASES["task"] == "policy.task"


def test_runtime_changes_pass_the_config_validation(ros_node):
    """The set-callback builds the whole Config again: what it refuses comes back as the reason
    (called directly here because every bounded numeric parameter is read-only over ROS)."""
    node = ros_node()
    params = ConfigParameters(node)
    params.watch(lambda changes: None)
    res = params._on_set_parameters([Parameter("outputs.gripper_scale", value=math.nan)])
    assert not res.successful and "outputs.gripper_scale=nan must be a finite number" in res.reason
    res = params._on_set_parameters([Parameter("safety.velocity_scale", value=1e9)])
    assert not res.successful and "safety.velocity_scale=1e+09 must be <= 10" in res.reason
    assert params.config == Config()


def test_bad_value_in_a_params_file_is_refused_at_start(ros_node, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("/**:\n  ros__parameters:\n    outputs:\n      gripper_scale: -100.0\n")
    node = ros_node(["--params-file", str(path)])
    with pytest.raises(Exception, match="gripper_scale"):
        ConfigParameters(node)


def test_deprecated_publish_rate_parameter_still_sets_the_rate(ros_node):
    node = ros_node(["-p", "scheduler.publish_rate_hz:=50"])
    assert ConfigParameters(node).config.outputs.publish_rate_hz == 50.0


def test_readme_parameter_table_is_the_generated_one():
    text = (REPO / "README.md").read_text()
    begin = text.index("<!-- parameters:begin")
    table = text[text.index("\n", begin) + 1 : text.index("<!-- parameters:end -->")].strip()
    assert table == parameter_table_markdown(), (
        "README parameter table is out of date; regenerate it with .venv/bin/python -c"
        ' "from kuavo_smolvla_ros.core.config import parameter_table_markdown as t; print(t())"'
    )
    for spec in SPECS:
        assert f"| `{spec.name}` |" in table


@pytest.mark.slow
def test_running_node_refuses_read_only_parameters_and_accepts_the_task(tiny_checkpoint, tmp_path):
    """``ros2 param set /kuavo_smolvla_policy checkpoint X`` used to report success and do
    nothing: over ROS, on the real node, it is refused with a reason now."""
    from kuavo_smolvla_ros.testing.fake_robot import FakeKuavo, start_node, stop_node

    rclpy.init()
    proc = start_node(tiny_checkpoint, "policy.backend:=thread", log=tmp_path / "node.log")
    fake = None
    try:
        fake = FakeKuavo()
        assert fake.param_cli.wait_for_service(timeout_sec=120), (tmp_path / "node.log").read_text()
        for name, value in [("checkpoint", "X"), ("device", "cuda"), ("scheduler.action_fps", 5.0)]:
            res = fake.set_parameter(name, value)
            assert not res.successful and "read-only" in res.reason, (name, res.reason)
        res = fake.set_parameter("task", "stack the cups")
        assert res.successful, res.reason
    finally:
        if fake is not None:
            fake.close()
        assert stop_node(proc) == 0
        rclpy.shutdown()
    assert "'stack the cups'" in (tmp_path / "node.log").read_text()  # the node logged the new task
