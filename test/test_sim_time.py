"""The node on sim time over real topics: its control clock follows /clock, and /clock going back
(``ros2 bag play --loop``, a simulator restart) holds the last command exactly, then resumes with
a fresh chunk. The fake robot does not follow the commands; every command is checked against
the invariant (docs/safety.md)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rclpy
from ros_harness import FakeKuavo, check_invariant, start_node, stop_node
from rosgraph_msgs.msg import Clock

from kuavo_smolvla_ros.testing.fake_robot import ARM_TOPIC

pytestmark = pytest.mark.slow

OK = 0
POSE = np.linspace(-0.3, -0.05, 14)  # inside every limit
T0, T_BACK = 1000.0, 10.0  # sim time before and after the jump


class SimClock:
    """/clock at 100 Hz of wall time, sim time running 1:1, set back by the test."""

    def __init__(self, t0: float) -> None:
        self.node = rclpy.create_node("test_sim_clock")
        self.pub = self.node.create_publisher(Clock, "/clock", 10)
        self.t = t0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.t += 0.01
            ns = round(self.t * 1e9)
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(ns, 1_000_000_000)
            self.pub.publish(msg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.node.destroy_node()


def _wait_running(robot: FakeKuavo, since: float, chunks: int, timeout: float = 120.0) -> dict:
    """/diagnostics OK and running, with at least ``chunks`` chunks merged in all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = robot.diagnostic_status(since)
        if st and st[0] == OK and "running" in st[1] and int(st[2]["chunks"]) >= chunks:
            return st[2]
        time.sleep(0.1)
    raise AssertionError(f"not running on new chunks after the jump: {robot.diagnostic_status()}")


def test_sim_time_going_back_holds_the_last_command_exactly_then_resumes(tiny_checkpoint, tmp_path):
    rclpy.init()
    clock = SimClock(T0)
    robot = FakeKuavo(arm_pose=POSE, claw=30.0, follow=False)
    log = tmp_path / "node.log"
    proc = start_node(
        tiny_checkpoint,
        "use_sim_time:=true",
        "task:=pick up the cup",
        "safety.ramp_time_s:=0.5",
        "policy.seed:=0",
        "policy.timeout_s:=10.0",
        log=log,
    )
    try:
        assert robot.enable_cli.wait_for_service(timeout_sec=180), "node did not come up"
        assert robot.enable(True).success
        robot.wait_diagnostics(OK, 150, contains="running")
        t_start = time.monotonic()
        robot.wait_for(ARM_TOPIC, 100, since=t_start)

        chunks = int(robot.diagnostic_status()[2]["chunks"])
        clock.t = T_BACK  # the bag starts over
        t_back = time.monotonic()
        # Fresh inputs, then new chunks requested and followed at the new time.
        values = _wait_running(robot, t_back, chunks + 3)
        assert values["clock_jumps"] == "1"
        robot.wait_for(ARM_TOPIC, 100, since=t_back)
        times, cmds = robot.published_commands(t_start)
    finally:
        robot.close()
        clock.close()
        if proc.poll() is None:
            stop_node(proc)
        rclpy.shutdown()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "the clock went back to 10." in text, text[-3000:]

    # Commands are stamped with the control clock (sim time): before the jump >= T0.
    before, after = times >= T0 - 1.0, times < T0 - 1.0
    assert before.sum() >= 50 and after.sum() >= 50
    for part in (before, after):
        bad = check_invariant(times[part], cmds[part])
        assert bad == [], "\n".join(bad[:5])
    # Across the jump no time has passed for the speed limit: the first command after it is the
    # last one before it, exactly; the robot then moves again under the new chunks.
    np.testing.assert_array_equal(cmds[after][0], cmds[before][-1])
    assert np.abs(np.diff(cmds[after], axis=0)).max() > 0
