"""observation.py: field paths, state extraction, image decoding and the observation buffer.

Real message classes (sensor_msgs, rosbags' typestore) where possible; SimpleNamespace for the
duck-typed cases. No mocks, no clock: every time is passed in.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image, JointState

from kuavo_smolvla_ros.core.config import Config, ConfigError, SourceConfig, load_config
from kuavo_smolvla_ros.core.observation import (
    FieldPath,
    FieldPathError,
    Observation,
    ObservationBuffer,
    ObservationError,
    SourceExtractor,
    decode_image,
    extract_source,
    make_example_observation,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
ARM_NAMES = tuple(f"zarm_{s}{i}_joint" for s in "lr" for i in range(1, 8))
OTHER_JOINTS = (
    *(f"leg_{s}{i}_joint" for s in "lr" for i in range(1, 7)),
    "zhead_1_joint",
    "zhead_2_joint",
)


def joint_state(names, positions) -> JointState:
    msg = JointState()
    msg.name = list(names)
    msg.position = [float(p) for p in positions]
    return msg


def arm_value(name: str) -> float:
    """A distinct, recognisable value per arm joint: left l3 -> 0.13, right r3 -> -0.23."""
    side, i = name[5], int(name[6])
    return (0.1 + i / 100) if side == "l" else -(0.2 + i / 100)


# ---------------------------------------------------------------------------------------------
# State extraction from JointState.


def test_arm_joints_among_leg_and_head_joints_in_shuffled_order_land_in_policy_order():
    cfg = Config()
    names = list(ARM_NAMES + OTHER_JOINTS)
    np.random.default_rng(1).shuffle(names)
    msg = joint_state(names, [arm_value(n) if n.startswith("zarm") else 9.0 for n in names])
    gripper = joint_state(["right_claw", "left_claw"], [30.0, 70.0])

    buf = ObservationBuffer(cfg)
    buf.update_state("arm", extract_source(msg, cfg.inputs.arm, label="arm"), t=1.0)
    buf.update_state("gripper", extract_source(gripper, cfg.inputs.gripper), t=1.0)

    state = buf.state(1.0)
    expected = [
        {"left_claw": 0.7, "right_claw": 0.3}.get(n) or arm_value(n) for n in cfg.robot.joint_names
    ]
    np.testing.assert_allclose(state, expected)
    assert state.shape == (16,)


def test_gripper_claw_0_to_100_is_scaled_to_policy_0_to_1():
    src = Config().inputs.gripper
    out = extract_source(joint_state(["left_claw", "right_claw"], [0.0, 100.0]), src)
    np.testing.assert_allclose(out, [0.0, 1.0])
    out = extract_source(joint_state(["left_claw", "right_claw"], [25.0, 50.0]), src)
    np.testing.assert_allclose(out, [0.25, 0.5])


def test_message_without_names_is_picked_by_index():
    src = dataclasses.replace(Config().inputs.arm, index=tuple(range(14, 0, -1)))
    msg = joint_state([], np.arange(20.0))
    np.testing.assert_array_equal(extract_source(msg, src), np.arange(14.0, 0.0, -1.0))


def test_message_without_names_and_no_index_needs_exactly_the_right_count():
    src = Config().inputs.arm
    np.testing.assert_array_equal(extract_source(joint_state([], range(14)), src), range(14))
    with pytest.raises(ObservationError, match=r"expected 14 arm values, got 7") as err:
        extract_source(joint_state([], range(7)), src, label="arm")
    assert "/joint_states" in str(err.value)
    assert "inputs.arm.index" in str(err.value)


def test_missing_joint_names_are_listed_in_the_error():
    names = [n for n in ARM_NAMES if n not in ("zarm_l4_joint", "zarm_r7_joint")] + ["leg_l1_joint"]
    with pytest.raises(ObservationError) as err:
        extract_source(joint_state(names, range(len(names))), Config().inputs.arm, label="arm")
    text = str(err.value)
    assert "zarm_l4_joint, zarm_r7_joint" in text
    assert "leg_l1_joint" in text  # what the message has
    assert "inputs.arm.names" in text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_state_values_are_rejected_and_named(bad):
    positions = [arm_value(n) for n in ARM_NAMES]
    positions[2] = bad
    with pytest.raises(ObservationError, match=r"non-finite arm values.*zarm_l3_joint"):
        extract_source(joint_state(ARM_NAMES, positions), Config().inputs.arm, label="arm")


def test_name_match_follows_a_name_list_that_changes_order():
    extractor = SourceExtractor(Config().inputs.arm, "arm")
    names = list(ARM_NAMES)
    first = extractor(joint_state(names, [arm_value(n) for n in names]))
    names.reverse()
    second = extractor(joint_state(names, [arm_value(n) for n in names]))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, [arm_value(n) for n in ARM_NAMES])


def test_names_and_values_of_different_lengths_are_an_error():
    msg = joint_state(ARM_NAMES, range(14))
    msg.position = []  # e.g. a publisher that fills only effort
    with pytest.raises(ObservationError, match=r"14 names but 0 values in 'position'"):
        extract_source(msg, Config().inputs.arm)


def test_index_out_of_range_is_an_error():
    src = dataclasses.replace(Config().inputs.gripper, names=(), index=(0, 5))
    with pytest.raises(ObservationError, match=r"index \[0, 5\] is out of range for the 2"):
        extract_source(joint_state([], [1.0, 2.0]), src, label="gripper")


def test_extraction_returns_a_fresh_array_not_a_view_of_the_message():
    data = np.arange(14.0)
    msg = SimpleNamespace(name=[], position=data)
    out = extract_source(msg, Config().inputs.arm)
    out[0] = 99.0
    assert data[0] == 0.0


# ---------------------------------------------------------------------------------------------
# Field paths on nested messages (kuavo_msgs/sensorsData, lejuClawState).


def sensors_data_ns(q) -> SimpleNamespace:
    return SimpleNamespace(
        header=SimpleNamespace(frame_id=""),
        joint_data=SimpleNamespace(joint_q=list(q), joint_v=[0.0] * len(q)),
    )


def test_field_path_slices_the_arm_out_of_sensors_data_joint_q():
    q = np.arange(28.0) / 10
    path = FieldPath("joint_data.joint_q[12:26]")
    np.testing.assert_array_equal(path.get(sensors_data_ns(q)), q[12:26])
    assert path.get(sensors_data_ns(q)).dtype == np.float64


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("x", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("x[:7]", [0, 1, 2, 3, 4, 5, 6]),
        ("x[7:]", [7, 8, 9]),
        ("x[-3:]", [7, 8, 9]),
        ("x[3]", [3]),
        ("x[-1]", [9]),
        ("a.b[3]", [30]),
        ("a.scalar", [2.5]),
        ("arms[1].q[0:2]", [5, 6]),
    ],
)
def test_field_path_grammar(spec, expected):
    msg = SimpleNamespace(
        x=list(range(10)),
        a=SimpleNamespace(b=np.arange(10) * 10, scalar=2.5),
        arms=[SimpleNamespace(q=[1, 2]), SimpleNamespace(q=[5, 6, 7])],
    )
    np.testing.assert_array_equal(FieldPath(spec).get(msg), expected)


@pytest.mark.parametrize(
    "spec", ["", "a..b", "a[1:2].b", "x[1:2:3]", "x[a:b]", "x[]", "1x", "x[1]]"]
)
def test_malformed_field_path_is_a_config_error(spec):
    with pytest.raises(FieldPathError) as err:
        FieldPath(spec)
    # A config mistake, yet callbacks that only catch ObservationError still catch it.
    assert isinstance(err.value, ConfigError)
    assert isinstance(err.value, ObservationError)


def test_missing_attribute_error_names_the_path_and_the_message_type():
    with pytest.raises(ObservationError) as err:
        FieldPath("positions").get(JointState())
    text = str(err.value)
    assert "'positions'" in text and "sensor_msgs/msg/JointState" in text
    assert "position" in text  # lists what the message has

    with pytest.raises(ObservationError, match=r"joint_data.*has no field 'joint_qq'"):
        FieldPath("joint_data.joint_qq[12:26]").get(sensors_data_ns(range(28)))


def test_slice_that_does_not_fit_the_field_is_an_error_not_a_short_result():
    with pytest.raises(ObservationError, match=r"slice \[12:26\] does not fit the 20 values"):
        FieldPath("joint_data.joint_q[12:26]").get(sensors_data_ns(range(20)))
    with pytest.raises(ObservationError, match=r"index \[30\] is out of range"):
        FieldPath("x[30]").get(SimpleNamespace(x=[1.0]))


def test_non_numeric_field_is_an_error():
    with pytest.raises(ObservationError, match="not numbers"):
        FieldPath("header").get(JointState())
    with pytest.raises(ObservationError, match="not numbers"):
        FieldPath("name").get(SimpleNamespace(name="zarm_l1_joint"))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 30),
    start=st.one_of(st.none(), st.integers(-35, 35)),
    stop=st.one_of(st.none(), st.integers(-35, 35)),
)
def test_slice_matches_python_slicing_when_it_fits_and_raises_otherwise(n, start, stop):
    spec = f"x[{'' if start is None else start}:{'' if stop is None else stop}]"
    values = list(range(n))
    a = 0 if start is None else (start + n if start < 0 else start)
    b = n if stop is None else (stop + n if stop < 0 else stop)
    if 0 <= a <= b <= n:
        got = FieldPath(spec).get(SimpleNamespace(x=values))
        np.testing.assert_array_equal(got, values[start:stop])
    else:
        with pytest.raises(ObservationError):
            FieldPath(spec).get(SimpleNamespace(x=values))


KUAVO_MSGS = {
    "kuavo_msgs/msg/jointData": (
        "float64[] joint_q\nfloat64[] joint_v\nfloat64[] joint_vd\nfloat64[] joint_current\n"
    ),
    "kuavo_msgs/msg/imuData": (
        "geometry_msgs/Vector3 gyro\ngeometry_msgs/Vector3 acc\ngeometry_msgs/Vector3 free_acc\n"
        "geometry_msgs/Quaternion quat\n"
    ),
    "kuavo_msgs/msg/endEffectorData": (
        "string[] name\nfloat64[] position\nfloat64[] velocity\nfloat64[] effort\n"
    ),
    "kuavo_msgs/msg/sensorsData": (
        "std_msgs/Header header\nbuiltin_interfaces/Time sensor_time\n"
        "kuavo_msgs/jointData joint_data\nkuavo_msgs/imuData imu_data\n"
        "kuavo_msgs/endEffectorData end_effector_data\n"
    ),
    "kuavo_msgs/msg/lejuClawState": (
        "std_msgs/Header header\nint8[] state\nkuavo_msgs/endEffectorData data\n"
    ),
}


@pytest.fixture(scope="module")
def kuavo_typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name, text in KUAVO_MSGS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def roundtrip(store, msg):
    """Serialize and deserialize, so the test sees exactly what a bag reader hands over."""
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def test_stock_ros1_config_reads_rosbags_sensors_data_and_claw_state(kuavo_typestore):
    ts = kuavo_typestore
    T = ts.types
    cfg = load_config(CONFIG_DIR / "kuavo_ros1_stock.yaml")
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](1, 0), frame_id="")
    vec = T["geometry_msgs/msg/Vector3"](0.0, 0.0, 0.0)
    empty = np.zeros(0)
    q = np.linspace(-1.0, 1.0, 28)
    sensors = T["kuavo_msgs/msg/sensorsData"](
        header=header,
        sensor_time=T["builtin_interfaces/msg/Time"](1, 0),
        joint_data=T["kuavo_msgs/msg/jointData"](q, np.zeros(28), np.zeros(28), np.zeros(28)),
        imu_data=T["kuavo_msgs/msg/imuData"](
            vec, vec, vec, T["geometry_msgs/msg/Quaternion"](0.0, 0.0, 0.0, 1.0)
        ),
        end_effector_data=T["kuavo_msgs/msg/endEffectorData"]([], empty, empty, empty),
    )
    claw = T["kuavo_msgs/msg/lejuClawState"](
        header=header,
        state=np.array([2, 3], dtype=np.int8),
        data=T["kuavo_msgs/msg/endEffectorData"](
            ["right_claw", "left_claw"], np.array([80.0, 20.0]), np.zeros(2), np.zeros(2)
        ),
    )
    sensors, claw = roundtrip(ts, sensors), roundtrip(ts, claw)

    arm = extract_source(sensors, cfg.inputs.arm, label="arm")
    gripper = extract_source(claw, cfg.inputs.gripper, label="gripper")  # names in data.name
    np.testing.assert_allclose(arm, q[12:26])
    np.testing.assert_allclose(gripper, [0.2, 0.8])

    with pytest.raises(ObservationError, match="kuavo_msgs/msg/sensorsData"):
        FieldPath("joint_data.joint_position").get(sensors)


# ---------------------------------------------------------------------------------------------
# Images.


def colour_image(h: int = 48, w: int = 64) -> np.ndarray:
    """RGB: red left third, green middle, blue right, a grey bottom band; JPEG-friendly blocks."""
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[:, : w // 3] = (255, 0, 0)
    rgb[:, w // 3 : 2 * w // 3] = (0, 255, 0)
    rgb[:, 2 * w // 3 :] = (0, 0, 255)
    rgb[-8:] = (128, 128, 128)
    return rgb


def compressed(rgb: np.ndarray, ext: str, fmt: str) -> CompressedImage:
    ok, enc = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage()
    msg.format = fmt
    msg.data = enc.tobytes()
    return msg


def test_png_compressed_image_round_trips_exactly_as_rgb():
    rgb = colour_image()
    out = decode_image(compressed(rgb, ".png", "bgr8; png compressed bgr8"), "compressed")
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_compressed_image_decodes_to_rgb_not_bgr():
    rgb = colour_image()
    out = decode_image(compressed(rgb, ".jpg", "bgr8; jpeg compressed bgr8"), "compressed")
    assert out.shape == rgb.shape
    # Pixels well inside each block: red stays red (channel 0), blue stays blue (channel 2).
    np.testing.assert_allclose(out[10, 5], (255, 0, 0), atol=12)
    np.testing.assert_allclose(out[10, 32], (0, 255, 0), atol=12)
    np.testing.assert_allclose(out[10, 58], (0, 0, 255), atol=12)


def test_compressed_data_as_a_numpy_array_like_rosbags_gives_it():
    rgb = colour_image()
    ros = compressed(rgb, ".png", "png")
    msg = SimpleNamespace(format="png", data=np.frombuffer(bytes(ros.data), dtype=np.uint8))
    np.testing.assert_array_equal(decode_image(msg, "compressed"), rgb)


def test_corrupt_or_empty_compressed_images_raise_observation_errors():
    good = bytes(compressed(colour_image(), ".jpg", "jpeg").data)
    msg = CompressedImage(format="jpeg")
    msg.data = good[:3] + bytes(200)  # a JPEG marker followed by garbage
    with pytest.raises(ObservationError, match="cannot decode as JPEG or PNG"):
        decode_image(msg, "compressed")
    with pytest.raises(ObservationError, match="data is empty"):
        decode_image(CompressedImage(format="jpeg"), "compressed")
    depth = CompressedImage(format="16UC1; compressedDepth")
    depth.data = good
    with pytest.raises(ObservationError, match="compressedDepth"):
        decode_image(depth, "compressed")


def raw_image(encoding: str, rgb: np.ndarray, pad: int = 0, bigendian: bool = False) -> Image:
    """A sensor_msgs/Image of ``rgb`` in ``encoding``, each row followed by ``pad`` junk bytes."""
    gray16 = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
        "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]),
        "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
        "mono16": gray16.astype(">u2" if bigendian else "<u2"),
    }[encoding]
    h, w = rgb.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(h, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian))
    msg.step = padded.shape[1]
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_raw_colour_encodings_decode_to_rgb_with_and_without_row_padding(encoding, pad):
    rgb = colour_image(6, 9)
    out = decode_image(raw_image(encoding, rgb, pad), "raw")
    assert out.dtype == np.uint8 and out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize(
    ("encoding", "bigendian"), [("mono8", False), ("mono16", False), ("mono16", True)]
)
def test_raw_mono_encodings_become_grey_rgb_scaled_to_8_bit(encoding, bigendian, pad):
    rgb = colour_image(6, 9)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = decode_image(raw_image(encoding, rgb, pad, bigendian), "raw")
    np.testing.assert_array_equal(out, np.dstack([grey] * 3))


def test_decoded_raw_image_is_writable_and_does_not_alias_the_message():
    rgb = colour_image(4, 4)
    msg = SimpleNamespace(height=4, width=4, encoding="rgb8", step=12, data=rgb.reshape(-1).copy())
    out = decode_image(msg, "raw")
    out[0, 0] = (1, 2, 3)
    np.testing.assert_array_equal(msg.data[:3], rgb[0, 0])


def test_raw_image_problems_raise_observation_errors():
    rgb = colour_image(6, 9)
    for encoding in ("yuv422", "bayer_rggb8", "not_an_encoding"):
        msg = raw_image("rgb8", rgb)
        msg.encoding = encoding
        with pytest.raises(ObservationError, match=f"unsupported encoding '{encoding}'"):
            decode_image(msg, "raw", use_cv_bridge=False)
    short = raw_image("bgr8", rgb, pad=2)
    short.data = bytes(short.data)[:-1]
    with pytest.raises(ObservationError, match=r"data has \d+ bytes, expected step\*height"):
        decode_image(short, "raw")
    narrow = raw_image("rgb8", rgb)
    narrow.step = 9 * 3 - 1
    with pytest.raises(ObservationError, match="step 26 is smaller"):
        decode_image(narrow, "raw")
    with pytest.raises(ObservationError, match="empty image"):
        decode_image(Image(encoding="rgb8"), "raw")
    with pytest.raises(ObservationError, match="unknown camera transport"):
        decode_image(raw_image("rgb8", rgb), "theora")


# ---------------------------------------------------------------------------------------------
# ObservationBuffer.


def stock_cfg(**inputs) -> Config:
    cfg = Config()
    return dataclasses.replace(
        cfg,
        inputs=dataclasses.replace(cfg.inputs, state_timeout_s=0.5, camera_timeout_s=0.2, **inputs),
        policy=dataclasses.replace(cfg.policy, task="pick up the cup"),
    )


def fill(buf: ObservationBuffer, t: float, cameras=("head_cam_h", "wrist_cam_l", "wrist_cam_r")):
    buf.update_state("arm", np.linspace(-0.5, 0.5, 14), t)
    buf.update_state("gripper", np.array([0.1, 0.9]), t)
    for i, cam in enumerate(cameras):
        buf.update_image(cam, np.full((4, 6, 3), i, np.uint8), t)


def test_snapshot_is_none_until_every_input_has_arrived():
    buf = ObservationBuffer(stock_cfg())
    assert buf.snapshot(0.0) is None
    assert buf.state(0.0) is None
    assert buf.stale_inputs(0.0) == [
        "arm",
        "gripper",
        "camera:head_cam_h",
        "camera:wrist_cam_l",
        "camera:wrist_cam_r",
    ]
    buf.update_state("arm", np.zeros(14), 0.0)
    assert buf.state(0.0) is None  # gripper still missing
    buf.update_state("gripper", np.array([0.0, 1.0]), 0.0)
    assert buf.state(0.0).shape == (16,)
    assert buf.snapshot(0.0) is None
    fill(buf, 0.1, cameras=("head_cam_h", "wrist_cam_l"))
    assert buf.stale_inputs(0.1) == ["camera:wrist_cam_r"]
    assert buf.snapshot(0.1) is None
    buf.update_image("wrist_cam_r", np.zeros((4, 6, 3), np.uint8), 0.1)

    obs = buf.snapshot(0.15)
    assert isinstance(obs, Observation)
    assert obs.stamp == 0.15 and obs.task == "pick up the cup"
    assert obs.state.shape == (16,)
    np.testing.assert_allclose(obs.state[[7, 15]], [0.1, 0.9])
    np.testing.assert_allclose(obs.state[:7], np.linspace(-0.5, 0.5, 14)[:7])
    assert set(obs.images) == {"head_cam_h", "wrist_cam_l", "wrist_cam_r"}
    assert obs.images["wrist_cam_l"][0, 0, 0] == 1


def test_stale_camera_blocks_the_snapshot_until_a_fresh_frame_arrives():
    buf = ObservationBuffer(stock_cfg())
    fill(buf, 1.0)
    assert buf.snapshot(1.2) is not None  # exactly at the camera timeout: still fresh
    for cam in ("head_cam_h", "wrist_cam_l"):
        buf.update_image(cam, np.zeros((4, 6, 3), np.uint8), 1.2)
    assert buf.stale_inputs(1.3) == ["camera:wrist_cam_r"]
    assert buf.snapshot(1.3) is None
    assert buf.state(1.3) is not None  # state timeout is 0.5 s
    buf.update_image("wrist_cam_r", np.zeros((4, 6, 3), np.uint8), 1.3)
    assert buf.stale_inputs(1.3) == []
    assert buf.snapshot(1.3) is not None
    assert buf.stale_inputs(1.6)[:2] == ["arm", "gripper"]
    assert buf.state(1.6) is None


def test_task_change_is_used_and_an_empty_task_counts_as_missing():
    buf = ObservationBuffer(stock_cfg())
    fill(buf, 0.0)
    assert buf.snapshot(0.0).task == "pick up the cup"
    buf.set_task("  put the cup in the box\n")
    assert buf.snapshot(0.0).task == "put the cup in the box"
    buf.set_task("   ")
    assert buf.stale_inputs(0.0) == ["task"]
    assert buf.snapshot(0.0) is None
    with pytest.raises(ObservationError):
        buf.set_task(None)


def test_reset_forgets_state_and_images_but_keeps_the_task():
    buf = ObservationBuffer(stock_cfg())
    fill(buf, 0.0)
    buf.set_task("wave")
    buf.reset()
    assert buf.snapshot(0.0) is None
    assert buf.state(0.0) is None
    assert buf.task == "wave"
    assert all(t is None for t in buf.last_update.values())


def test_last_update_reports_receive_times_by_input_name():
    buf = ObservationBuffer(stock_cfg())
    buf.update_state("gripper", np.zeros(2), 3.5)
    buf.update_image("wrist_cam_l", np.zeros((2, 2, 3), np.uint8), 4.0)
    assert buf.last_update == {
        "arm": None,
        "gripper": 3.5,
        "camera:head_cam_h": None,
        "camera:wrist_cam_l": 4.0,
        "camera:wrist_cam_r": None,
    }


def test_buffer_rejects_bad_updates_with_clear_errors():
    buf = ObservationBuffer(stock_cfg())
    with pytest.raises(ObservationError, match="unknown camera 'cam_h'.*head_cam_h"):
        buf.update_image("cam_h", np.zeros((2, 2, 3), np.uint8), 0.0)
    with pytest.raises(ObservationError, match="RGB uint8"):
        buf.update_image("head_cam_h", np.zeros((2, 2), np.uint8), 0.0)
    with pytest.raises(ObservationError, match="RGB uint8"):
        buf.update_image("head_cam_h", np.zeros((2, 2, 3), np.float32), 0.0)
    with pytest.raises(ObservationError, match="unknown state source 'legs'"):
        buf.update_state("legs", np.zeros(12), 0.0)
    with pytest.raises(ObservationError, match="expected 2"):
        buf.update_state("gripper", np.zeros(3), 0.0)
    with pytest.raises(ObservationError, match="non-finite"):
        buf.update_state("gripper", np.array([0.0, math.nan]), 0.0)
    with pytest.raises(ObservationError, match="finite"):
        buf.update_state("gripper", np.zeros(2), math.nan)
    with pytest.raises(ObservationError, match="finite"):
        buf.snapshot(math.inf)


def test_snapshot_state_is_a_copy_and_images_are_read_only():
    buf = ObservationBuffer(stock_cfg())
    fill(buf, 0.0)
    obs = buf.snapshot(0.0)
    obs.state[:] = 42.0
    assert not np.any(buf.snapshot(0.0).state == 42.0)
    with pytest.raises(ValueError):
        obs.images["head_cam_h"][0, 0, 0] = 9


def test_gripper_dims_follow_the_config():
    cfg = stock_cfg(
        gripper=SourceConfig(topic="/g", names=("left_claw", "right_claw"), dims=(7, 15))
    )
    buf = ObservationBuffer(cfg)
    buf.update_state("gripper", np.array([0.25, 0.75]), 0.0)
    buf.update_state("arm", np.zeros(14), 0.0)
    np.testing.assert_array_equal(np.flatnonzero(buf.state(0.0)), [7, 15])


def test_concurrent_writer_and_reader_see_consistent_snapshots():
    buf = ObservationBuffer(stock_cfg())
    stop = threading.Event()
    errors: list[BaseException] = []
    seen = [0]

    def writer():
        k = 0
        try:
            while not stop.is_set():
                k += 1
                t = k * 1e-3
                buf.update_state("arm", np.full(14, float(k)), t)
                buf.update_state("gripper", np.full(2, k % 2), t)
                for cam in buf.camera_names:
                    buf.update_image(cam, np.full((8, 8, 3), k % 256, np.uint8), t)
                if k % 50 == 0:
                    buf.set_task(f"task {k}")
        except BaseException as exc:
            errors.append(exc)

    def reader():
        try:
            while not stop.is_set():
                t = _latest(buf)
                assert isinstance(buf.stale_inputs(t), list)
                obs = buf.snapshot(t)
                if obs is None:
                    continue
                assert obs.state.shape == (16,)
                arm = obs.state[[*range(7), *range(8, 15)]]
                assert np.all(arm == arm[0])  # one update is never seen half-written
                assert all(img.shape == (8, 8, 3) for img in obs.images.values())
                seen[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for th in threads:
        th.start()
    time.sleep(0.5)
    stop.set()
    for th in threads:
        th.join(timeout=5)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[0]
    assert seen[0] > 0


def _latest(buf: ObservationBuffer) -> float:
    times = [t for t in buf.last_update.values() if t is not None]
    return max(times) if times else 0.0


# ---------------------------------------------------------------------------------------------
# Example fixture.


def test_example_observation_is_valid_for_the_config_and_reproducible():
    cfg = load_config(CONFIG_DIR / "kuavo_smolvla.yaml")
    obs = make_example_observation(cfg, seed=3, image_size=(24, 32))
    assert obs.state.shape == (cfg.robot.dim,)
    assert np.all(obs.state >= cfg.robot.lower) and np.all(obs.state <= cfg.robot.upper)
    assert set(obs.images) == set(cfg.inputs.cameras.names)
    assert all(img.shape == (24, 32, 3) and img.dtype == np.uint8 for img in obs.images.values())
    assert obs.task == "pick up the object"
    again = make_example_observation(cfg, seed=3, image_size=(24, 32))
    np.testing.assert_array_equal(obs.state, again.state)


# -- issue 9: size caps before decoding, task cap, a decoder thread that never dies silently --
from kuavo_smolvla_ros.core.frames import FrameDecoder  # noqa: E402
from kuavo_smolvla_ros.core.observation import (  # noqa: E402
    ImageTooLarge,
    image_size,
    short_text,
)


def _encoded(ext: str, h: int, w: int) -> CompressedImage:
    img = np.zeros((h, w, 3), np.uint8)
    return CompressedImage(format=ext.strip("."), data=cv2.imencode(ext, img)[1].tobytes())


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_image_dimensions_are_read_from_the_header(ext):
    assert image_size(_encoded(ext, 48, 5000), "compressed") == (5000, 48)
    raw = Image(height=6000, width=4, encoding="rgb8", step=12, data=b"")
    assert image_size(raw, "raw") == (4, 6000)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_an_image_above_the_side_cap_is_refused_before_decoding(ext):
    msg = _encoded(ext, 48, 5000)
    with pytest.raises(ImageTooLarge, match="5000x48 px, above inputs.max_image_side=4096"):
        decode_image(msg, "compressed", max_bytes=16_000_000, max_side=4096)
    assert decode_image(_encoded(ext, 48, 64), "compressed", max_side=4096).shape == (48, 64, 3)


def test_a_message_above_the_byte_cap_is_refused_before_decoding():
    msg = CompressedImage(format="jpeg", data=bytes(2000))
    with pytest.raises(ImageTooLarge, match="2000 bytes, above inputs.max_image_bytes=1000"):
        decode_image(msg, "compressed", max_bytes=1000)
    raw = Image(height=5000, width=5000, encoding="rgb8", step=15000, data=b"")
    with pytest.raises(ImageTooLarge, match="5000x5000"):
        decode_image(raw, "raw", max_side=4096)


def test_a_long_task_is_cut_and_logs_carry_a_short_form():
    cfg = Config()
    buf = ObservationBuffer(cfg)
    assert buf.set_task("x" * 100_000) is True
    assert len(buf.task) == cfg.inputs.max_task_chars == 512 and buf.tasks_cut == 1
    assert buf.set_task("pick up the cup") is False
    assert short_text("word " * 100) == ("word " * 12)[:60] + "..."
    assert short_text("short") == "short"


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


def test_an_unexpected_exception_in_the_decoder_thread_is_reported_and_it_lives_on():
    crashes, frames = [], []

    def on_frame(camera, rgb, t):
        if t == 0.0:
            raise RuntimeError("bug in a callback")
        frames.append(t)

    dec = FrameDecoder(on_frame, lambda c, e: None, on_crash=crashes.append)
    try:
        dec.submit("head_cam_h", "compressed", _encoded(".jpg", 8, 8), 0.0)
        _wait(lambda: crashes)
        assert "bug in a callback" in str(crashes[0]) and dec.crashes == 1
        dec.submit("head_cam_h", "compressed", _encoded(".jpg", 8, 8), 1.0)
        _wait(lambda: frames == [1.0])
    finally:
        dec.stop()


def test_codec_warnings_of_corrupt_jpegs_are_counted_not_printed(capfd):
    good = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8))
    data = good[1].tobytes()
    corrupt = CompressedImage(format="jpeg", data=data[: len(data) // 2] + b"\xff\xd9")
    frames = []
    dec = FrameDecoder(lambda c, rgb, t: frames.append(t), lambda c, e: None, quiet_codec=True)
    try:
        for i in range(5):
            dec.submit("head_cam_h", "compressed", corrupt, float(i))
            _wait(lambda i=i: len(frames) == i + 1)
        assert dec.codec_warnings == 5
    finally:
        dec.stop()
    assert "Corrupt JPEG" not in capfd.readouterr().err
