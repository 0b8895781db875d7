"""Launch the Kuavo SmolVLA policy node.

    ros2 launch kuavo_smolvla_ros policy.launch.py checkpoint:=/path/to/ckpt task:="pick up the cup"

Every argument left empty keeps the value from the config file
(``share/kuavo_smolvla_ros/config/kuavo_smolvla.yaml`` by default; its ``/**`` key applies it
under any ``namespace:=``). The topic arguments set the node's topic parameters; ROS remapping
(``--ros-args -r``) works on top of them as usual. Argument descriptions come from the config
dataclasses (``launch_arguments()``; test/test_launch.py checks them).

``realtime:=true`` runs ``policy_node_rt``, which puts the node under SCHED_FIFO itself; without
the permission it prints one line that says how to grant it and the launch fails (exit code 1).
"""

from __future__ import annotations

# launch argument -> node parameter (applied only when the argument is not empty)
PARAMETER_ARGS = {
    "checkpoint": "policy.checkpoint",
    "device": "policy.device",
    "task": "policy.task",
    "dry_run": "dry_run",
    "start_enabled": "start_enabled",
    "joint_states_topic": "inputs.arm.topic",
    "gripper_state_topic": "inputs.gripper.topic",
    "arm_command_topic": "outputs.arm_topic",
    "gripper_command_topic": "outputs.gripper_topic",
}
# arguments of the launch itself: name -> (default, description); "config" defaults to the
# package's share directory (filled in by generate_launch_description)
LAUNCH_ARGS = {
    "config": ("", "Config YAML (default: the package's config/kuavo_smolvla.yaml)."),
    "use_sim_time": ("false", "Use /clock (bag replay)."),
    "namespace": ("", "Node namespace; the config's /** key applies under any namespace."),
    "realtime": (
        "false",
        "true: run the node under SCHED_FIFO priority 10 (policy_node_rt); needs CAP_SYS_NICE"
        " or an rtprio limit, otherwise one line says how to grant it and the launch fails.",
    ),
}
NODE_NAME = "kuavo_smolvla_policy"


def launch_arguments() -> list[tuple[str, str, str]]:
    """``(name, default, description)`` of every argument, the parameter ones generated from
    the config dataclasses (their description, unit and bounds)."""
    from kuavo_smolvla_ros.core.config import parameter_fields

    specs = {s.name: s for s in parameter_fields()}
    out = [(name, default, desc) for name, (default, desc) in LAUNCH_ARGS.items()]
    for arg, param in PARAMETER_ARGS.items():
        desc = f"{param} (empty: the config file's value): {specs[param].full_description()}"
        out.append((arg, "", desc))
    return out


def parameter_overrides(values: dict[str, str]) -> dict[str, object]:
    """Non-empty launch argument values -> node parameters, typed like the config fields."""
    from kuavo_smolvla_ros.core.config import parameter_fields

    kinds = {s.name: s.elem for s in parameter_fields()}
    out: dict[str, object] = {}
    for arg, param in PARAMETER_ARGS.items():
        text = values.get(arg, "")
        if text != "":
            out[param] = _truthy(text) if kinds[param] is bool else text
    return out


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _on_node_exit(event, context):
    """A refused SCHED_FIFO fails the launch (LaunchService returns 1) with one line."""
    from kuavo_smolvla_ros.ros.realtime import EXIT_NO_REALTIME, how_to_grant

    if event.returncode == EXIT_NO_REALTIME:
        raise RuntimeError(how_to_grant(10, "the node could not switch to SCHED_FIFO"))
    return None


def _node(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = parameter_overrides({arg: value(arg) for arg in PARAMETER_ARGS})
    realtime = _truthy(value("realtime"))
    return [
        Node(
            package="kuavo_smolvla_ros",
            executable="policy_node_rt" if realtime else "policy_node",
            name=NODE_NAME,
            namespace=value("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[
                value("config"),
                {"use_sim_time": _truthy(value("use_sim_time"))},
                overrides,
            ],
            on_exit=_on_node_exit,
        )
    ]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    default_config = PathJoinSubstitution(
        [FindPackageShare("kuavo_smolvla_ros"), "config", "kuavo_smolvla.yaml"]
    )
    declared = [
        DeclareLaunchArgument(
            name, default_value=default_config if name == "config" else default, description=desc
        )
        for name, default, desc in launch_arguments()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_node)])
