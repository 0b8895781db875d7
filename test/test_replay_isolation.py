"""Replay can never reach a robot: live mode runs on a private ROS domain whatever the shell
has, and an output directory holding files replay did not write is refused before any work,
in both modes, with nothing deleted."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import JointState

from kuavo_smolvla_ros.core.config import Config, ConfigError
from kuavo_smolvla_ros.demo.bag import make_demo_bag
from kuavo_smolvla_ros.replay.cli import main
from kuavo_smolvla_ros.replay.isolation import (
    MARKER,
    choose_domain_id,
    claim_out_dir,
    domain_in_use,
    private_ros_env,
)
from kuavo_smolvla_ros.replay.live import replay_live

EXIT_USAGE = 2


def _foreign_dir(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    """A directory with someone's files, including an ``outputs`` folder (replay used to delete
    ``DIR/outputs``)."""
    out = tmp_path / "results"
    (out / "outputs").mkdir(parents=True)
    files = {
        out / "thesis.tex": b"\\section{Results}",
        out / "outputs" / "experiment_1.mcap": b"precious",
    }
    for path, data in files.items():
        path.write_bytes(data)
    return out, files


def _untouched(out: Path, files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.read_bytes() == data, f"{path} was changed"
    assert not (out / MARKER).exists() and not (out / "report.json").exists()


def test_claim_refuses_foreign_files_and_deletes_nothing(tmp_path):
    out, files = _foreign_dir(tmp_path)
    with pytest.raises(ConfigError, match="holds files replay did not write") as err:
        claim_out_dir(out)
    assert "outputs" in str(err.value) and "thesis.tex" in str(err.value)
    assert "Nothing was deleted" in str(err.value)
    _untouched(out, files)


def test_claim_accepts_a_new_empty_or_replay_directory(tmp_path):
    assert claim_out_dir(tmp_path / "new" / "dir").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (claim_out_dir(empty) / MARKER).is_file()
    (empty / "report.json").write_text("{}")  # replay's own files: reused
    (empty / "outputs").mkdir()
    claim_out_dir(empty)
    (empty / "notes.txt").write_text("mine")  # anything else: refused
    with pytest.raises(ConfigError, match="notes.txt"):
        claim_out_dir(empty)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        claim_out_dir(tmp_path / "file")


@pytest.mark.parametrize("mode", ["offline", "live"])
def test_cli_refuses_a_foreign_out_before_any_work(mode, tmp_path, capsys):
    """The bag does not even exist: the refusal comes before the bag, model or node."""
    out, files = _foreign_dir(tmp_path)
    args = [str(tmp_path / "missing.mcap"), "--checkpoint", str(tmp_path / "no_ckpt")]
    rc = main([*args, "--mode", mode, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE
    assert "holds files replay did not write" in err and "missing.mcap" not in err
    _untouched(out, files)


def test_private_env_moves_domain_and_limits_discovery_to_this_host():
    shell = {"ROS_DOMAIN_ID": "0", "ROS_STATIC_PEERS": "robot.local", "PATH": "/bin"}
    shell["ROS_DISCOVERY_SERVER"] = "10.0.0.2:11811"
    env = private_ros_env(42, shell)
    assert env["ROS_DOMAIN_ID"] == "42" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_STATIC_PEERS" not in env and "ROS_DISCOVERY_SERVER" not in env
    assert env["PATH"] == "/bin"


def test_chosen_domain_is_never_the_shells_and_not_in_use():
    shell = os.environ["ROS_DOMAIN_ID"]
    ctx = rclpy.Context()
    rclpy.init(context=ctx)  # a participant on the shell's domain
    node = rclpy.create_node("domain_probe", context=ctx)
    try:
        assert domain_in_use(int(shell))
        for _ in range(20):
            d = choose_domain_id()
            assert str(d) != shell and not domain_in_use(d)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)


@pytest.mark.slow
def test_live_replay_is_invisible_on_the_shells_domain(tiny_checkpoint, tmp_path, capfd):
    """A listener on the shell's domain (where a robot would be) hears no command and no
    /clock while the live replay's node publishes hundreds."""
    bag = make_demo_bag(tmp_path / "demo", "mcap", 2.0, width=96, height=72)
    heard: list[str] = []
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    robot = rclpy.create_node("robot_side_listener", context=ctx)
    cfg = Config()
    for topic in (cfg.outputs.arm_topic, cfg.outputs.gripper_topic, "/joint_states"):
        robot.create_subscription(JointState, topic, lambda m, t=topic: heard.append(t), 10)
    from rosgraph_msgs.msg import Clock

    robot.create_subscription(Clock, "/clock", lambda m: heard.append("/clock"), 10)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(robot)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        result = replay_live(
            bag, tiny_checkpoint, cfg, tmp_path / "out", seed=0, device="cpu", progress=False
        )
        time.sleep(1.0)
    finally:
        executor.shutdown(timeout_sec=2.0)
        robot.destroy_node()
        rclpy.shutdown(context=ctx)
        spin.join(timeout=5.0)
    assert len(result.cmd_t) > 50, "the replay's node published commands"
    assert heard == [], f"heard on the shell's domain: {sorted(set(heard))}"
    domain = result.info["ros_domain_id"]
    assert str(domain) != os.environ["ROS_DOMAIN_ID"]
    err = capfd.readouterr().err
    assert f"isolated on private ROS_DOMAIN_ID {domain}" in err
    assert sum("isolated on private ROS_DOMAIN_ID" in ln for ln in err.splitlines()) == 1
