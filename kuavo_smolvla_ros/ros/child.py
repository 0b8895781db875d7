"""The policy node as a child process: the command that starts it, and a stop that always ends it.

Used by the live replay (and meant for the tests' and benchmarks' fake robot): SIGINT first, so
the node publishes its safe stop and destroys itself, then a kill if it does not exit in time.
"""

from __future__ import annotations

import signal
import subprocess
import sys

__all__ = ["node_command", "stop_node"]


def node_command(*ros_args: str) -> list[str]:
    """``python -m kuavo_smolvla_ros.ros.node --ros-args ROS_ARGS...`` with this interpreter."""
    return [sys.executable, "-m", "kuavo_smolvla_ros.ros.node", "--ros-args", *ros_args]


def stop_node(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """Stop the node (SIGINT, then kill after ``timeout`` s); returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
