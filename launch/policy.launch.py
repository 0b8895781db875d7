"""Launch the Kuavo SmolVLA policy node.

    ros2 launch kuavo_smolvla_ros policy.launch.py checkpoint:=/path/to/ckpt task:="pick up the cup"

Every argument left empty keeps the value from the config file
(``share/kuavo_smolvla_ros/config/kuavo_smolvla.yaml`` by default). The topic arguments set the
node's topic parameters; ROS remapping (``--ros-args -r``) works on top of them as usual.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# launch argument -> node parameter (applied only when the argument is not empty)
PARAMETER_ARGS = {
    "checkpoint": ("policy.checkpoint", str, "SmolVLA checkpoint: local directory or hub id."),
    "device": ("policy.device", str, "auto, cpu, cuda, cuda:N."),
    "task": ("policy.task", str, "Task instruction given to the policy."),
    "dry_run": ("dry_run", bool, "true: compute everything, publish only ~/action."),
    "start_enabled": (
        "start_enabled",
        bool,
        "true: start enabled instead of waiting for ~/enable.",
    ),
    "joint_states_topic": ("inputs.arm.topic", str, "Arm joint states topic."),
    "gripper_state_topic": ("inputs.gripper.topic", str, "Gripper state topic."),
    "arm_command_topic": ("outputs.arm_topic", str, "Arm command topic (degrees)."),
    "gripper_command_topic": ("outputs.gripper_topic", str, "Gripper command topic (0..100)."),
}


def _as(kind, text):
    if kind is bool:
        return text.strip().lower() in ("1", "true", "yes", "on")
    return text


def _node(context, *args, **kwargs):
    overrides = {}
    for arg, (param, kind, _desc) in PARAMETER_ARGS.items():
        value = LaunchConfiguration(arg).perform(context)
        if value != "":
            overrides[param] = _as(kind, value)
    use_sim_time = _as(bool, LaunchConfiguration("use_sim_time").perform(context))
    # SCHED_FIFO for the node's control loop (docs/benchmarks.md: the only set-up with no late
    # tick under load); the inference child resets itself to normal scheduling at nice +10.
    realtime = _as(bool, LaunchConfiguration("realtime").perform(context))
    return [
        Node(
            prefix="chrt -f 10" if realtime else None,
            package="kuavo_smolvla_ros",
            executable="policy_node",
            name="kuavo_smolvla_policy",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("config"),
                {"use_sim_time": use_sim_time},
                overrides,
            ],
        )
    ]


def generate_launch_description():
    default_config = PathJoinSubstitution(
        [FindPackageShare("kuavo_smolvla_ros"), "config", "kuavo_smolvla.yaml"]
    )
    declared = [
        DeclareLaunchArgument("config", default_value=default_config, description="Config YAML."),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="Use /clock (bag replay)."
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace."),
        DeclareLaunchArgument(
            "realtime",
            default_value="false",
            description="true: run the node under 'chrt -f 10' (needs CAP_SYS_NICE or rtprio).",
        ),
    ]
    declared += [
        DeclareLaunchArgument(name, default_value="", description=desc)
        for name, (_param, _kind, desc) in PARAMETER_ARGS.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_node)])
