"""The replay tool on real bags (sqlite3, mcap, stock ROS 1) with the tiny SmolVLA: offline and
live modes, the report's numbers, and every kind of bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Writer as Ros2Writer

from kuavo_smolvla_ros.bag import open_bag, typestore_for, write_bag
from kuavo_smolvla_ros.core import metrics
from kuavo_smolvla_ros.core.config import Config, default_config_path, load_config
from kuavo_smolvla_ros.demo.bag import demo_messages, make_demo_bag
from kuavo_smolvla_ros.replay.cli import main
from kuavo_smolvla_ros.replay.live import replay_live
from kuavo_smolvla_ros.replay.offline import live_timeline, replay_offline, timeline_from_dir
from kuavo_smolvla_ros.replay.plan import ReplayError
from kuavo_smolvla_ros.replay.report import make_report, write_report

W, H = 96, 72  # small camera frames keep the bags and the decoding cheap
SECONDS = 3.0
CAM_L = "/cam_l/color/image_raw/compressed"
CAM_H = "/cam_h/color/image_raw/compressed"
ARM_NAMES = [f"arm_joint_{i}" for i in range(14)]


def config_for(fmt: str) -> Config:
    name = "kuavo_ros1_stock.yaml" if fmt == "ros1" else "kuavo_smolvla.yaml"
    return load_config(default_config_path(name))


@pytest.fixture(scope="module")
def runner(tiny_checkpoint):
    """The tiny model, on one CPU thread: torch's default (all cores) crawls on a busy 2-core
    machine, 20x slower than one thread here."""
    import torch

    from kuavo_smolvla_ros.runners.eager import load_policy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_policy(tiny_checkpoint, device="cpu", config=Config())
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    return {
        fmt: make_demo_bag(root / f"demo_{fmt}", fmt, SECONDS, width=W, height=H)
        for fmt in ("sqlite3", "mcap", "ros1")
    }


def messages(fmt: str = "sqlite3", seconds: float = 2.5) -> list:
    return list(demo_messages(fmt, seconds, width=W, height=H))


def write(path: Path, msgs: list, fmt: str = "sqlite3") -> Path:
    return write_bag(path, msgs, fmt)[0]


def write_with_unknown_type(path: Path, msgs: list, topic: str, msgtype: str) -> Path:
    """A ROS 2 bag where ``topic`` has a type the bag does not define (no definition stored)."""
    store = typestore_for("sqlite3")
    conns = {}
    with Ros2Writer(path, version=9) as w:
        for t, typ, t_ns, msg in msgs:
            if t not in conns:
                conns[t] = (
                    w.add_connection(t, msgtype, msgdef="", rihs01="RIHS01_00")
                    if t == topic
                    else w.add_connection(t, typ, typestore=store)
                )
            w.write(conns[t], t_ns, store.serialize_cdr(msg, typ))
    return path


def offline(runner, bag, fmt="sqlite3", **kw):
    return replay_offline(bag, runner, config_for(fmt), seed=0, progress=False, **kw)


def summary(rep: dict) -> dict:
    keys = ("mae", "rmse", "latency_ms", "rate_hz", "max_switch_step_deg", "n_chunks")
    return {k: rep[k] for k in (*keys, "n_commands", "clamped", "holds")}


# ---------------------------------------------------------------------------------------------
# Offline mode and the report


def test_offline_report_is_the_same_for_sqlite3_mcap_and_stock_ros1_recordings(runner, bags):
    reps = {}
    for fmt, bag in bags.items():
        res = offline(runner, bag, fmt)
        assert res.warnings == [] and not res.partial
        reps[fmt] = make_report(res, config_for(fmt))
    ref = reps["sqlite3"]
    assert summary(reps["mcap"]) == summary(ref)
    assert summary(reps["ros1"]) == summary(ref)  # joint_q[12:26] + kuavo_msgs claws
    assert ref["bag_format"] == "sqlite3" and reps["ros1"]["bag_format"] == "ros1"
    assert ref["rate_hz"] == pytest.approx(100.0)
    assert ref["n_chunks"] >= 2
    # fixed 100 ms latency, observations on ticks: the first command 1 tick after the merge
    assert ref["latency_ms"]["p50"] == pytest.approx(110.0, abs=1e-3)
    assert all(v is not None for v in ref["mae"].values())
    assert ref["max_switch_step_deg"] <= math.degrees(1.0 * 0.02) + 1e-9  # speed limit bound


def test_offline_replay_is_deterministic_with_a_seed(runner, bags):
    a = offline(runner, bags["sqlite3"])
    b = offline(runner, bags["sqlite3"])
    assert np.array_equal(a.cmd_t, b.cmd_t) and np.array_equal(a.cmd, b.cmd)
    c = replay_offline(bags["sqlite3"], runner, config_for("sqlite3"), seed=1, progress=False)
    assert not np.allclose(a.cmd, c.cmd)


def test_report_numbers_match_a_hand_computation_on_a_small_bag(runner, tmp_path):
    bag = write(tmp_path / "small", messages(seconds=2.0))
    res = offline(runner, bag)
    rep = make_report(res, Config())

    # The recorded commands, read back independently: degrees and claw 0..100.
    arm_t, arm, claw_t, claw = [], [], [], []
    with open_bag(bag) as b:
        for m in b.messages(["/kuavo_arm_traj", "/gripper/command"]):
            if m.topic == "/kuavo_arm_traj":
                assert list(m.msg.name) == ARM_NAMES
                arm_t.append(m.t)
                arm.append(m.msg.position)
            else:
                claw_t.append(m.t)
                claw.append(m.msg.position)
    arm, claw = np.array(arm), np.array(claw)
    cmd_deg = np.degrees(res.cmd)
    cmd_deg[:, [7, 15]] = res.cmd[:, [7, 15]] * 100
    names = Config().robot.joint_names
    arm_dims = [*range(7), *range(8, 15)]
    for k, d in enumerate(arm_dims):
        ok = (res.cmd_t >= arm_t[0]) & (res.cmd_t <= arm_t[-1])
        err = cmd_deg[ok, d] - np.interp(res.cmd_t[ok], arm_t, arm[:, k])
        assert rep["mae"][names[d]] == pytest.approx(np.abs(err).mean(), rel=1e-9)
        assert rep["rmse"][names[d]] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-9)
    for k, d in enumerate((7, 15)):
        ok = (res.cmd_t >= claw_t[0]) & (res.cmd_t <= claw_t[-1])
        err = cmd_deg[ok, d] - np.interp(res.cmd_t[ok], claw_t, claw[:, k])
        assert rep["mae"][names[d]] == pytest.approx(np.abs(err).mean(), rel=1e-9)
        assert rep["n_scored"][names[d]] == ok.sum()

    lat, steps = [], []
    for c in res.chunks:
        j = int(np.argmax(res.cmd_t > c.t_arrival + 1e-6))
        lat.append(res.cmd_t[j] - c.t_obs)
        if j > 0:
            steps.append(np.abs(cmd_deg[j, arm_dims] - cmd_deg[j - 1, arm_dims]).max())
    assert rep["n_chunks"] == len(res.chunks) >= 2
    assert rep["latency_ms"]["max"] == pytest.approx(1e3 * max(lat))
    assert rep["latency_ms"]["p50"] == pytest.approx(1e3 * np.median(lat))
    assert rep["max_switch_step_deg"] == pytest.approx(max(steps))
    span = res.cmd_t[-1] - res.cmd_t[0]
    assert rep["rate_hz"] == pytest.approx((len(res.cmd_t) - 1) / span)
    assert rep["n_commands"] == len(res.cmd_t)


def test_cli_writes_report_table_and_plot_and_picks_the_stock_config_for_ros1(
    tiny_checkpoint, bags, tmp_path, capsys
):
    out = tmp_path / "out"
    rc = main([str(bags["ros1"]), "--checkpoint", str(tiny_checkpoint), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"].endswith("kuavo_ros1_stock.yaml")
    assert rep["mode"] == "offline" and rep["latency"] == "fixed 100 ms" and rep["seed"] == 0
    for key in ("mae", "rmse", "latency_ms", "rate_hz", "max_switch_step_deg", "n_chunks"):
        assert key in rep
    assert set(rep["mae"]) == set(Config().robot.joint_names)
    assert (out / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "zarm_l1_joint" in captured.out and "max switch step (deg)" in captured.out
    assert str(out / "report.json") in captured.out and "trajectories.png" in captured.out


def test_task_comes_from_the_bag_when_recorded_else_from_the_config_or_cli(runner, tmp_path):
    msgs = messages(seconds=1.5)
    store = typestore_for("sqlite3")
    task = ("/kuavo_smolvla_policy/task", "std_msgs/msg/String", msgs[0][2] - 1)
    msgs.insert(0, (*task, store.types["std_msgs/msg/String"](data="stack the red cups")))
    with_topic = write(tmp_path / "with", msgs)
    assert offline(runner, with_topic).info["task"] == "stack the red cups"
    without = write(tmp_path / "without", msgs[1:])
    assert offline(runner, without).info["task"] == "pick up the object"  # policy.task
    assert offline(runner, without, task="open the drawer").info["task"] == "open the drawer"


# ---------------------------------------------------------------------------------------------
# Live mode: the node over ROS 2 with a simulated clock


@pytest.fixture(scope="module")
def live_runs(bags, tiny_checkpoint, tmp_path_factory):
    """``live_runs(fmt) -> (result, report, out_dir)``: one live replay per format, shared by
    the behaviour test and the timing test."""
    done: dict[str, tuple] = {}

    def run(fmt: str) -> tuple:
        if fmt not in done:
            out = tmp_path_factory.mktemp(f"live_{fmt}") / "live"
            cfg = config_for(fmt)
            live = replay_live(
                bags[fmt], tiny_checkpoint, cfg, out, seed=0, device="cpu", progress=False
            )
            rep = make_report(live, cfg)
            write_report(rep, live, cfg, out)
            done[fmt] = (live, rep, out)
        return done[fmt]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["sqlite3", "ros1"])
def test_live_and_offline_modes_agree_on_the_commanded_trajectory(fmt, runner, bags, live_runs):
    """Offline replay of the live run's own timeline (its ticks and chunk latencies) must give
    the commands the node gave. What may differ: a chunk merged at the very sim time of a tick
    shapes that tick or the next one (the node's inference thread and timer race), which moves
    the speed-limited command by at most 2 * max_velocity * max_dt (max_dt = 2 / 100 Hz): 2.29
    deg per arm joint, 8 claw units; and the observation behind a chunk may hold a joint state
    one message older (measured effect on the tiny model's chunk < 0.001 deg)."""
    cfg = config_for(fmt)
    live, rep, out = live_runs(fmt)
    ticks, latencies = timeline_from_dir(out)  # what --timeline DIR uses
    mem_ticks, mem_latencies = live_timeline(live)
    np.testing.assert_allclose(ticks, mem_ticks, rtol=0, atol=1e-6)
    np.testing.assert_allclose(latencies, mem_latencies, rtol=0, atol=1e-6)
    assert latencies[-1] == math.inf  # the request in flight at the end never arrives
    off = offline(runner, bags[fmt], fmt, latency_s=latencies, tick_times=ticks)

    scale = metrics.report_scale(16, cfg.robot.gripper_indices)
    cmp = metrics.compare_trajectories(live.cmd_t, live.cmd * scale, off.cmd_t, off.cmd * scale)
    assert cmp["n"] >= 0.9 * len(live.cmd_t) > 0
    v_max = np.asarray(cfg.robot.max_velocity) * scale * 2 * (2 / 100)
    assert np.all(cmp["max_abs"] <= v_max + 1e-6), (cmp["max_abs"], v_max)
    assert len(off.chunks) == len(live.chunks) >= 1

    # Chunks in sim time (bag time): observed inside the bag, merged after their observation;
    # the node's own counters agree with what was recorded.
    assert all(live.t_start - 1e-6 <= c.t_obs <= c.t_arrival for c in live.chunks)
    assert live.counters["requests"] >= len(live.chunks)
    assert rep["mode"] == "live" and rep["n_chunks"] == len(live.chunks)
    assert rep["task"] == "pick up the object"  # what the node reported in /diagnostics
    assert rep["latency_ms"]["n"] >= len(live.chunks) - 1 and rep["latency_ms"]["p50"] > 0
    assert rep["mae_mean"]["arm_deg"] is not None
    assert "clamped" in rep and "holds" in rep  # from the node's /diagnostics
    if fmt == "ros1":
        assert any("/sensors_data_raw" in n and "JointState" in n for n in live.info["notes"])

    # The recorded outputs: a ROS 2 bag whose arm command is ~/action in degrees.
    with open_bag(out / "outputs") as b:
        topics = set(b.topics)
        action = {
            (m.msg.header.stamp.sec, m.msg.header.stamp.nanosec): np.array(m.msg.position)
            for m in b.messages(["/kuavo_smolvla_policy/action"])
        }
        arm = [
            (m.msg.header.stamp.sec, m.msg.header.stamp.nanosec, np.array(m.msg.position))
            for m in b.messages(["/kuavo_arm_traj"])
        ]
    assert {"/kuavo_arm_traj", "/gripper/command", "/diagnostics"} <= topics
    assert "/kuavo_smolvla_policy/chunk_timing" in topics
    matched = [(a, action[(s, ns)]) for s, ns, a in arm if (s, ns) in action]
    assert len(matched) >= 0.9 * len(arm) > 0
    for a, act in matched[::50]:
        np.testing.assert_allclose(a, np.degrees(act[[*range(7), *range(8, 15)]]), atol=1e-9)


@pytest.mark.timing
@pytest.mark.slow
def test_live_replay_at_speed_1_publishes_most_ticks_and_two_chunks(live_runs):
    """Wall-clock dependent: at x1 the node must keep up with the played clock (an idle
    machine publishes nearly every 100 Hz tick; a loaded one misses ticks and chunks)."""
    live, rep, _ = live_runs("sqlite3")
    assert len(live.cmd_t) >= 0.5 * SECONDS * 100
    assert rep["rate_hz"] > 20
    assert len(live.chunks) >= 2


# ---------------------------------------------------------------------------------------------
# Bad input: a clear line, a partial report where possible, exit 1 only when nothing is left


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kuavo_smolvla_ros.replay.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,  # a default --out lands here, never in the checkout
    )


@pytest.mark.parametrize("case", ["missing", "random.db3", "random.bag", "empty.mcap", "dir"])
def test_unreadable_bag_is_one_clear_line_and_exit_1(case, tmp_path):
    path = tmp_path / case
    if case == "dir":
        path.mkdir()
    elif case != "missing":
        data = b"" if case.startswith("empty") else np.random.default_rng(0).bytes(5000)
        path.write_bytes(data)
    proc = run_cli(str(path), "--checkpoint", str(tmp_path / "no_ckpt"), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kuavo-smolvla-replay: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in lines[0]


def test_truncated_bag_gives_a_partial_report_or_nothing_to_evaluate(
    runner, bags, tiny_checkpoint, tmp_path, capsys
):
    data = bags["ros1"].read_bytes()
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[: len(data) * 2 // 3])
    res = offline(runner, cut, "ros1")
    assert res.partial
    assert any("ends early" in w for w in res.warnings)
    assert 0 < res.t_end - res.t_start < SECONDS - 0.5 and len(res.cmd_t) > 50

    out = tmp_path / "out"
    rc = main([str(cut), "--checkpoint", str(tiny_checkpoint), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "partial report" in err and "Traceback" not in err
    assert json.loads((out / "report.json").read_text())["partial"] is True

    tiny = tmp_path / "tiny.bag"
    tiny.write_bytes(data[: len(data) // 30])  # about 0.1 s of data: no chunk can arrive
    rc = main([str(tiny), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "nothing to evaluate" in err[0]


def test_truncated_sqlite3_bag_gives_a_partial_report(runner, tmp_path):
    bag = write(tmp_path / "bag", messages(seconds=3.0))
    db = bag / "bag.db3"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) * 2 // 3])
    res = offline(runner, bag)
    assert res.partial and len(res.cmd_t) > 50
    assert any("ends early" in w or "damaged" in w for w in res.warnings)


def test_absent_input_topic_means_nothing_to_evaluate(tiny_checkpoint, tmp_path, capsys):
    bag = write(tmp_path / "bag", [m for m in messages() if m[0] != CAM_L])
    rc = main([str(bag), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert CAM_L in err[0] and "not in the bag" in err[0] and "/joint_states" in err[0]


def test_stock_ros1_bag_with_the_ros2_config_names_the_right_config(
    bags, tiny_checkpoint, tmp_path, capsys
):
    cfg = str(default_config_path("kuavo_smolvla.yaml"))
    args = ["--checkpoint", str(tiny_checkpoint), "--config", cfg, "--out", str(tmp_path / "o")]
    rc = main([str(bags["ros1"]), *args])
    err = capsys.readouterr().err
    assert rc == 1 and "/joint_states" in err and "kuavo_ros1_stock.yaml" in err


def test_absent_recorded_commands_give_a_partial_report(runner, tmp_path):
    bag = write(tmp_path / "bag", [m for m in messages() if m[0] != "/gripper/command"])
    res = offline(runner, bag)
    rep = make_report(res, Config())
    assert rep["partial"] is True
    assert rep["mae"]["left_claw"] is None and rep["mae"]["right_claw"] is None
    assert rep["mae"]["zarm_l1_joint"] is not None and rep["mae_mean"]["gripper"] is None
    assert any("/gripper/command" in w for w in rep["warnings"])


def test_input_topic_of_an_unknown_type_means_nothing_to_evaluate(
    tiny_checkpoint, tmp_path, capsys
):
    bag = write_with_unknown_type(tmp_path / "bag", messages(), CAM_L, "acme_msgs/msg/Frame")
    rc = main([str(bag), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert CAM_L in err[0] and "acme_msgs/msg/Frame" in err[0]


def test_recorded_command_of_an_unknown_type_costs_only_its_error_numbers(runner, tmp_path):
    bag = write_with_unknown_type(
        tmp_path / "bag", messages(), "/kuavo_arm_traj", "acme_msgs/msg/ArmTraj"
    )
    res = offline(runner, bag)
    rep = make_report(res, Config())
    assert rep["partial"] and rep["mae"]["zarm_l1_joint"] is None
    assert rep["mae"]["left_claw"] is not None
    assert any("acme_msgs/msg/ArmTraj" in w for w in rep["warnings"])


def test_input_of_the_wrong_message_type_is_reported_with_its_error(runner, tmp_path):
    """/gripper/state recorded as CompressedImage: every message fails to map; nothing runs."""
    msgs = messages()
    img = next(m for m in msgs if m[0] == CAM_H)
    swapped = [
        (t, img[1], n, img[3]) if t == "/gripper/state" else (t, ty, n, m) for t, ty, n, m in msgs
    ]
    bag = write(tmp_path / "bag", swapped)
    with pytest.raises(ReplayError, match=r"gripper.*(position|name)"):
        offline(runner, bag)


def test_stamps_out_of_order_are_reported_and_replay_goes_by_log_time(runner, tmp_path):
    msgs = messages()
    clean = write(tmp_path / "clean", msgs)
    js = [i for i, m in enumerate(msgs) if m[0] == "/joint_states"]
    shuffled = list(msgs)
    for a, b in zip(js[1::4], js[2::4]):  # swap the header stamps of every 4th pair
        ma, mb = shuffled[a][3], shuffled[b][3]
        shuffled[a] = (*shuffled[a][:3], dataclasses.replace(ma, header=mb.header))
        shuffled[b] = (*shuffled[b][:3], dataclasses.replace(mb, header=ma.header))
    shuffled.reverse()  # and write them in reverse log-time order
    bag = write(tmp_path / "shuffled", shuffled, "mcap")
    a, b = offline(runner, clean), offline(runner, bag)
    assert np.array_equal(a.cmd, b.cmd)
    assert any("/joint_states" in w and "out of order" in w for w in b.warnings)
    assert not b.partial


def test_undecodable_frames_are_skipped_and_counted(runner, tmp_path):
    msgs = messages()
    bad = []
    k = 0
    for t, ty, n, m in msgs:
        if t == CAM_H:
            k += 1
            if k % 4 == 0:
                m = dataclasses.replace(m, data=np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8))
        bad.append((t, ty, n, m))
    res = offline(runner, write(tmp_path / "bag", bad))
    assert len(res.cmd_t) > 100
    assert any("head_cam_h" in w and "unusable" in w for w in res.warnings)


def test_a_camera_without_one_decodable_frame_means_nothing_to_evaluate(runner, tmp_path):
    junk = np.frombuffer(b"garbage", np.uint8)
    msgs = [
        (t, ty, n, dataclasses.replace(m, data=junk) if t == CAM_L else m)
        for t, ty, n, m in messages()
    ]
    with pytest.raises(ReplayError, match=r"camera:wrist_cam_l.*decode"):
        offline(runner, write(tmp_path / "bag", msgs))


def test_corrupt_messages_are_skipped_and_counted(runner, tmp_path):
    store = typestore_for("sqlite3")
    path = tmp_path / "bag"
    conns = {}
    with Ros2Writer(path, version=9) as w:
        for i, (t, typ, t_ns, msg) in enumerate(messages()):
            if t not in conns:
                conns[t] = w.add_connection(t, typ, typestore=store)
            raw = bytes(store.serialize_cdr(msg, typ))
            if t == "/joint_states" and i % 10 == 0:
                raw = raw[:12]  # cut short: does not deserialize
            w.write(conns[t], t_ns, raw)
    res = offline(runner, path)
    assert len(res.cmd_t) > 100
    assert any("/joint_states" in w and "could not be decoded" in w for w in res.warnings)
