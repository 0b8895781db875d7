"""Bag -> LeRobot dataset: real bags from the demo generator (ROS 2 and stock ROS 1), read back
with LeRobot, values checked against the bag's own messages at the frame times."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from kuavo_smolvla_ros.bag import open_bag
from kuavo_smolvla_ros.core.config import load_config
from kuavo_smolvla_ros.core.observation import decode_image
from kuavo_smolvla_ros.demo.bag import make_demo_bag
from kuavo_smolvla_ros.training import convert

REPO = Path(__file__).resolve().parents[1]
DURATION_S = 4.0
FPS = 10
ARM = [f"zarm_{s}{i}_joint" for s in "lr" for i in range(1, 8)]
CAMERAS = {
    "head_cam_h": "/cam_h/color/image_raw/compressed",
    "wrist_cam_l": "/cam_l/color/image_raw/compressed",
    "wrist_cam_r": "/cam_r/color/image_raw/compressed",
}


def policy_vector(arm14: np.ndarray, claws: np.ndarray) -> np.ndarray:
    """[left arm 7, left claw, right arm 7, right claw]."""
    return np.concatenate([arm14[:7], claws[:1], arm14[7:], claws[1:]])


def read_expected(bag: Path, ros1: bool) -> dict[str, tuple[np.ndarray, list]]:
    """Per stream: log times and values in policy units, straight from the messages' fields."""
    if ros1:
        topics = {
            "/sensors_data_raw": ("arm_state", lambda m: np.asarray(m.joint_data.joint_q[12:26])),
            "/leju_claw_state": ("claw_state", lambda m: np.asarray(m.data.position) / 100),
            "/kuavo_arm_traj": ("arm_cmd", lambda m: np.radians(m.position)),
            "/leju_claw_command": ("claw_cmd", lambda m: np.asarray(m.data.position) / 100),
        }
    else:

        def by_name(m):
            pos = dict(zip(m.name, m.position))
            return np.array([pos[n] for n in ARM])

        topics = {
            "/joint_states": ("arm_state", by_name),
            "/gripper/state": ("claw_state", lambda m: np.asarray(m.position) / 100),
            "/kuavo_arm_traj": ("arm_cmd", lambda m: np.radians(m.position)),
            "/gripper/command": ("claw_cmd", lambda m: np.asarray(m.position) / 100),
        }
    cam_topics = {t: c for c, t in CAMERAS.items()}
    out: dict[str, tuple[list, list]] = {}
    with open_bag(bag) as reader:
        for m in reader.messages([*topics, *cam_topics]):
            if m.topic in topics:
                key, fn = topics[m.topic]
                value = fn(m.msg)
            else:
                key, value = cam_topics[m.topic], m.msg
            times, values = out.setdefault(key, ([], []))
            times.append(m.t)
            values.append(value)
    return {k: (np.asarray(t), v) for k, (t, v) in out.items()}


def nearest(stream: tuple[np.ndarray, list], t: float):
    times, values = stream
    return values[int(np.argmin(np.abs(times - t)))]


def load_dataset(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")


def check_round_trip(root: Path, bag: Path, ros1: bool, episode: int = 0) -> None:
    ds = load_dataset(root)
    side = json.loads((root / convert.SIDECAR).read_text())["episodes"][episode]
    n = side["frames"]
    assert abs(n - DURATION_S * FPS) <= 1
    expected = read_expected(bag, ros1)
    ep = ds.meta.episodes[episode]
    first = int(ep["dataset_from_index"])
    assert int(ep["dataset_to_index"]) - first == n
    for k in range(n):
        item = ds.hf_dataset[first + k]
        t = side["start_s"] + k / FPS
        state = policy_vector(nearest(expected["arm_state"], t), nearest(expected["claw_state"], t))
        action = policy_vector(nearest(expected["arm_cmd"], t), nearest(expected["claw_cmd"], t))
        np.testing.assert_allclose(np.asarray(item["observation.state"]), state, atol=1e-6)
        np.testing.assert_allclose(np.asarray(item["action"]), action, atol=1e-6)
    # Videos decode, frame for frame close to the camera image nearest in time.
    for k in (0, n // 2, n - 1):
        item = ds[first + k]
        t = side["start_s"] + k / FPS
        for cam in CAMERAS:
            video = item[f"observation.images.{cam}"].numpy().transpose(1, 2, 0)
            jpeg = decode_image(nearest(expected[cam], t), "compressed") / 255.0
            assert video.shape == jpeg.shape
            assert np.abs(video - jpeg).mean() < 0.03, f"{cam} frame {k} differs from the bag"


@pytest.fixture(scope="module")
def ros2_bags(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("bags")
    return [
        make_demo_bag(d / "a", fmt="sqlite3", duration_s=DURATION_S, seed=0, width=64, height=48),
        make_demo_bag(d / "b", fmt="mcap", duration_s=DURATION_S, seed=1, width=64, height=48),
    ]


@pytest.fixture(scope="module")
def ros1_bag(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bags")
    return make_demo_bag(
        d / "stock", fmt="ros1", duration_s=DURATION_S, seed=2, width=64, height=48
    )


@pytest.fixture(scope="module")
def ros2_dataset(ros2_bags, tmp_path_factory) -> Path:
    cfg = load_config(REPO / "config" / "kuavo_smolvla.yaml")
    out = tmp_path_factory.mktemp("datasets") / "demo"
    return convert.convert_bags(ros2_bags, out, cfg, task=["pick up", "put down"], fps=FPS)


def test_ros2_bags_become_one_episode_each_with_values_from_the_bag(ros2_bags, ros2_dataset):
    info = json.loads((ros2_dataset / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and info["fps"] == FPS
    assert info["features"]["observation.state"]["shape"] == [16]
    assert info["features"]["action"]["shape"] == [16]
    for cam in CAMERAS:
        assert info["features"][f"observation.images.{cam}"]["dtype"] == "video"
    ds = load_dataset(ros2_dataset)
    assert sorted(ds.meta.tasks.index) == ["pick up", "put down"]
    for episode, bag in enumerate(ros2_bags):  # sqlite3, then mcap
        check_round_trip(ros2_dataset, bag, ros1=False, episode=episode)


def test_stock_ros1_bag_converts_with_the_stock_config(ros1_bag, tmp_path):
    cfg = load_config(REPO / "config" / "kuavo_ros1_stock.yaml")
    root = convert.convert_bags([ros1_bag], tmp_path / "stock", cfg, task="pick up")
    check_round_trip(root, ros1_bag, ros1=True)


def test_a_converted_bag_fine_tunes_and_the_result_runs(ros2_dataset, tiny_checkpoint, tmp_path):
    from kuavo_smolvla_ros import training
    from kuavo_smolvla_ros.runners.eager import example_inputs, load_policy

    opts = training.TrainOptions(device="cpu", num_workers=0, progress=False, val_samples=0)
    ckpt = training.finetune(tiny_checkpoint, ros2_dataset, tmp_path / "ft", steps=2, batch_size=2,
                          options=opts)  # fmt: skip
    runner = load_policy(ckpt, warmup=False)
    state, images = example_inputs(runner, height=48, width=64)
    assert runner.predict_chunk(state, images, "pick up").shape == (50, 16)


def test_cameras_stored_as_images_hold_the_same_frames_and_need_no_video(ros2_bags, tmp_path):
    root = convert.convert_bags(ros2_bags[:1], tmp_path / "images", task="pick up", video=False)
    features = json.loads((root / "meta" / "info.json").read_text())["features"]
    assert {features[f"observation.images.{c}"]["dtype"] for c in CAMERAS} == {"image"}
    assert not list(root.rglob("*.mp4")), "no video files"
    check_round_trip(root, ros2_bags[0], ros1=False)
    assert convert.main([str(ros2_bags[0]), "--out", str(tmp_path / "cli"), "--task", "x",
                         "--images"]) == 0  # fmt: skip
    assert not list((tmp_path / "cli").rglob("*.mp4"))


def test_a_bag_without_the_configured_topics_is_refused_with_a_hint(ros1_bag, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(convert.ConvertError, match="kuavo_ros1_stock.yaml") as err:
        convert.convert_bags([ros1_bag], out, task="pick up")  # default config: ROS 2 topics
    assert "/joint_states" in str(err.value)
    assert not out.exists()


def test_cli_converts_and_reports(ros1_bag, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = convert.main(
        [str(ros1_bag), "--out", str(out), "--task", "pick up",
         "--config", str(REPO / "config" / "kuavo_ros1_stock.yaml")]
    )  # fmt: skip
    assert rc == 0
    assert re.search(r"1 episodes, (39|40|41) frames at 10 fps", capsys.readouterr().out)
    assert convert.main([str(ros1_bag), "--out", str(out), "--task", "x"]) == 2
    assert "exists" in capsys.readouterr().err


def test_each_video_frame_is_the_camera_image_nearest_to_the_frame_time(tmp_path):
    """Camera images whose grey level codes their message number (demo bag, 30 Hz, jittered)."""
    import dataclasses

    import cv2

    from kuavo_smolvla_ros.bag import write_bag
    from kuavo_smolvla_ros.demo.bag import demo_messages

    counts: dict[str, int] = {}
    times: dict[str, list[float]] = {}

    def coded():
        for topic, msgtype, t_ns, msg in demo_messages("sqlite3", 2.0, 0, 32, 32):
            if msgtype.endswith("CompressedImage"):
                i = counts[topic] = counts.get(topic, -1) + 1
                times.setdefault(topic, []).append(t_ns / 1e9)
                grey = np.full((32, 32, 3), 10 + 4 * i, np.uint8)
                jpeg = cv2.imencode(".jpg", grey, [int(cv2.IMWRITE_JPEG_QUALITY), 100])[1]
                msg = dataclasses.replace(msg, data=jpeg.reshape(-1))
            yield topic, msgtype, t_ns, msg

    write_bag(tmp_path / "coded", coded(), "sqlite3")
    root = convert.convert_bags([tmp_path / "coded"], tmp_path / "ds", task="pick up")
    ds = load_dataset(root)
    start = json.loads((root / convert.SIDECAR).read_text())["episodes"][0]["start_s"]
    for k in range(len(ds)):
        item = ds[k]
        for cam, topic in CAMERAS.items():
            level = float(item[f"observation.images.{cam}"].mean()) * 255
            t = np.asarray(times[topic])
            want = int(np.argmin(np.abs(t - (start + k / FPS))))
            assert abs(level - (10 + 4 * want)) < 1.5, (cam, k, level, want)


def test_commands_that_do_not_match_the_config_are_refused_naming_the_fields(ros2_bags, tmp_path):
    from kuavo_smolvla_ros.core.config import Config, OutputsConfig

    cfg = Config(outputs=OutputsConfig(arm_names=tuple(f"joint{i}" for i in range(14))))
    with pytest.raises(convert.ConvertError, match="outputs.arm_names") as err:
        convert.convert_bags(ros2_bags[:1], tmp_path / "never", cfg, task="pick up")
    assert "arm_joint_0" in str(err.value)  # what the bag's /kuavo_arm_traj calls its joints
    assert not (tmp_path / "never").exists()
