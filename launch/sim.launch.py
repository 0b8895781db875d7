"""Launch the simulated Kuavo (MuJoCo), optionally with the policy node in sim time.

    ros2 launch kuavo_smolvla_ros sim.launch.py task:=pick image_width:=640 image_height:=480
    ros2 launch kuavo_smolvla_ros sim.launch.py task:=reach checkpoint:=/path/to/ckpt

The simulator publishes the robot's topics and ``/clock``; with ``checkpoint`` set, the policy
node starts too, with ``use_sim_time`` and the task's instruction, disabled as always: call
``/simulator/reset``, ``/simulator/start`` and then ``/kuavo_smolvla_policy/enable``.
``kuavo-smolvla-eval`` does all of this per episode on a private ROS domain.
"""

# launch / launch_ros are imported inside the functions, so tests can load this file without them

# launch argument -> (simulator parameter, type, default, description)
SIM_ARGS = {
    "task": (str, "reach", "reach | pick | place"),
    "seed": (int, "0", "seed of episode 0; episode k uses seed + k"),
    "image_width": (int, "640", "camera image width (px)"),
    "image_height": (int, "480", "camera image height (px)"),
    "camera_rate_hz": (float, "30.0", "camera rate (sim time)"),
    "real_time_factor": (float, "1.0", "sim s per wall s at most; 0: as fast as possible"),
    "command_latency_s": (float, "0.0", "command latency (sim s)"),
    "camera_latency_s": (float, "0.0", "camera latency (sim s)"),
    "joint_noise_rad": (float, "0.0", "joint measurement noise (rad, std)"),
}


def _nodes(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from kuavo_smolvla_ros.sim.tasks import TASKS

    params = {
        name: kind(LaunchConfiguration(name).perform(context))
        for name, (kind, _default, _desc) in SIM_ARGS.items()
    }
    nodes = [
        Node(
            package="kuavo_smolvla_ros",
            executable="kuavo-smolvla-sim",
            name="kuavo_sim",
            output="screen",
            parameters=[params],
        )
    ]
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    if checkpoint:
        nodes.append(
            Node(
                package="kuavo_smolvla_ros",
                executable="policy_node",
                name="kuavo_smolvla_policy",
                output="screen",
                parameters=[
                    LaunchConfiguration("config"),
                    {
                        "use_sim_time": True,
                        "policy.checkpoint": checkpoint,
                        "policy.device": LaunchConfiguration("device").perform(context),
                        "policy.task": TASKS[params["task"]].instruction,
                    },
                ],
            )
        )
    return nodes


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    default_config = PathJoinSubstitution(
        [FindPackageShare("kuavo_smolvla_ros"), "config", "kuavo_smolvla.yaml"]
    )
    args = [
        DeclareLaunchArgument(name, default_value=default, description=desc)
        for name, (_kind, default, desc) in SIM_ARGS.items()
    ]
    args += [
        DeclareLaunchArgument("checkpoint", default_value="", description="policy checkpoint"),
        DeclareLaunchArgument("device", default_value="auto", description="policy device"),
        DeclareLaunchArgument("config", default_value=default_config, description="node config"),
        DeclareLaunchArgument("mujoco_gl", default_value="egl", description="egl | osmesa"),
    ]
    return LaunchDescription(
        [
            *args,
            SetEnvironmentVariable("MUJOCO_GL", LaunchConfiguration("mujoco_gl")),
            OpaqueFunction(function=_nodes),
        ]
    )
