"""bag: reading and writing ROS 1 / ROS 2 bags, the kuavo_msgs fix, damaged files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag1 import Reader as Ros1Reader
from rosbags.rosbag2 import Writer as Ros2Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from kuavo_smolvla_ros.bag import (
    KUAVO_MD5,
    KUAVO_MSGS,
    BagError,
    BagWriter,
    kuavo_types,
    open_bag,
    typestore_for,
    write_bag,
)

T0 = 1_700_000_000 * 10**9
CLAW_NAMES = ["left_claw", "right_claw"]


# ---------------------------------------------------------------------------------------------
# message builders


class Msgs:
    """Builds messages with the typestore of one bag format."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.store = typestore_for(fmt)
        self.T = self.store.types

    def header(self, t_ns: int, frame_id: str = "") -> object:
        stamp = self.T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
        if self.fmt == "ros1":
            return self.T["std_msgs/msg/Header"](seq=7, stamp=stamp, frame_id=frame_id)
        return self.T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def joint_state(self, t_ns: int, names: list[str], pos) -> object:
        n = len(names)
        return self.T["sensor_msgs/msg/JointState"](
            header=self.header(t_ns),
            name=names,
            position=np.asarray(pos, float),
            velocity=np.zeros(n),
            effort=np.zeros(n),
        )

    def eed(self, pos) -> object:
        return self.T["kuavo_msgs/msg/endEffectorData"](
            name=list(CLAW_NAMES),
            position=np.asarray(pos, float),
            velocity=np.array([50.0, 50.0]),
            effort=np.array([1.0, 1.0]),
        )

    def claw_state(self, t_ns: int, pos, codes=(1, 3)) -> object:
        return self.T["kuavo_msgs/msg/lejuClawState"](
            header=self.header(t_ns), state=np.array(codes, np.int8), data=self.eed(pos)
        )

    def claw_command(self, t_ns: int, pos) -> object:
        return self.T["kuavo_msgs/msg/lejuClawCommand"](
            header=self.header(t_ns), data=self.eed(pos)
        )

    def sensors(self, t_ns: int, q) -> object:
        T = self.T
        vec = T["geometry_msgs/msg/Vector3"]
        q = np.asarray(q, float)
        return T["kuavo_msgs/msg/sensorsData"](
            header=self.header(t_ns, "world"),
            sensor_time=T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9),
            joint_data=T["kuavo_msgs/msg/jointData"](
                joint_q=q, joint_v=q * 0, joint_vd=q * 0, joint_current=q * 0
            ),
            imu_data=T["kuavo_msgs/msg/imuData"](
                gyro=vec(x=0.0, y=0.0, z=0.0),
                acc=vec(x=0.0, y=0.0, z=9.81),
                free_acc=vec(x=0.0, y=0.0, z=0.0),
                quat=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            ),
            end_effector_data=T["kuavo_msgs/msg/endEffectorData"](
                name=[], position=np.zeros(0), velocity=np.zeros(0), effort=np.zeros(0)
            ),
        )

    def image(self, t_ns: int, w: int = 32, h: int = 24) -> object:
        import cv2

        img = np.zeros((h, w, 3), np.uint8)
        img[:, : w // 2] = (255, 0, 0)
        ok, jpeg = cv2.imencode(".jpg", img)
        assert ok
        return self.T["sensor_msgs/msg/CompressedImage"](
            header=self.header(t_ns, "cam"), format="jpeg", data=np.frombuffer(jpeg, np.uint8)
        )


def q28(k: int) -> np.ndarray:
    """28 joint values: legs 0..11, arms 12..25 (distinct per message), head 26..27."""
    return np.concatenate([np.zeros(12), 0.01 * k + 0.001 * np.arange(14), [0.1, -0.1]])


def stock_messages(n: int = 40, dt_ms: int = 10) -> list[tuple[str, str, int, object]]:
    """A stock Kuavo ROS 1 recording in miniature: sensors, claw state/command, arm, camera."""
    m = Msgs("ros1")
    out = []
    for k in range(n):
        t = T0 + k * dt_ms * 10**6
        out.append(("/sensors_data_raw", "kuavo_msgs/msg/sensorsData", t, m.sensors(t, q28(k))))
        out.append(
            (
                "/leju_claw_state",
                "kuavo_msgs/msg/lejuClawState",
                t + 1000,
                m.claw_state(t, [k, 2 * k]),
            )
        )
        out.append(
            (
                "/leju_claw_command",
                "kuavo_msgs/msg/lejuClawCommand",
                t + 2000,
                m.claw_command(t, [100 - k, 50.0]),
            )
        )
        deg = np.full(14, float(k))
        names = [f"arm_joint_{i}" for i in range(14)]
        out.append(
            (
                "/kuavo_arm_traj",
                "sensor_msgs/msg/JointState",
                t + 3000,
                m.joint_state(t, names, deg),
            )
        )
        if k % 3 == 0:
            out.append(
                (
                    "/cam_h/color/image_raw/compressed",
                    "sensor_msgs/msg/CompressedImage",
                    t + 4000,
                    m.image(t),
                )
            )
    return out


def ros2_messages(fmt: str, n: int = 30, dt_ms: int = 10) -> list[tuple[str, str, int, object]]:
    m = Msgs(fmt)
    out = []
    for k in range(n):
        t = T0 + k * dt_ms * 10**6
        names = ["zarm_l1_joint", "leg_l1_joint", "zarm_r1_joint"]
        out.append(
            (
                "/joint_states",
                "sensor_msgs/msg/JointState",
                t,
                m.joint_state(t, names, [k, -k, 2 * k]),
            )
        )
        out.append(
            (
                "/gripper/state",
                "sensor_msgs/msg/JointState",
                t + 500,
                m.joint_state(t, CLAW_NAMES, [k, 100 - k]),
            )
        )
        if k % 2 == 0:
            out.append(
                (
                    "/cam_h/color/image_raw/compressed",
                    "sensor_msgs/msg/CompressedImage",
                    t + 900,
                    m.image(t),
                )
            )
    return out


@pytest.fixture(scope="module")
def stock_bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stock") / "kuavo_stock.bag"
    write_bag(path, stock_messages(), "ros1")
    return path


# ---------------------------------------------------------------------------------------------
# kuavo_msgs definitions


def test_kuavo_definitions_reproduce_the_stock_ros1_md5_sums():
    store = typestore_for("ros1")
    for msgtype, md5 in KUAVO_MD5.items():
        assert store.generate_msgdef(msgtype)[1] == md5, msgtype


def test_claw_state_constants_are_constants_not_fields():
    store = typestore_for("ros1")
    consts, fields = store.fielddefs["kuavo_msgs/msg/lejuClawState"]
    assert [f[0] for f in fields] == ["header", "state", "data"]
    assert [(c[0], c[2]) for c in consts] == [
        ("kError", -1),
        ("kUnknown", 0),
        ("kMoving", 1),
        ("kReached", 2),
        ("kGrabbed", 3),
    ]
    cls = store.types["kuavo_msgs/msg/lejuClawState"]
    assert (cls.kError, cls.kGrabbed) == (-1, 3)
    assert "int8 kError = -1" in KUAVO_MSGS["kuavo_msgs/msg/lejuClawState"]


def test_rosbags_alone_misreads_the_stock_claw_state_definition():
    # The real-world bug this module works around: five phantom int8 fields, another md5.
    text = kuavo_types.kuavo_ros1_full_definition("kuavo_msgs/msg/lejuClawState")
    typs = get_types_from_msg(text, "kuavo_msgs/msg/lejuClawState")
    names = [f[0] for f in typs["kuavo_msgs/msg/lejuClawState"][1]]
    assert "kError" in names
    store = get_typestore(Stores.EMPTY)
    store.register(typs)
    assert store.generate_msgdef("kuavo_msgs/msg/lejuClawState")[1].startswith("d89db751")

    fixed = kuavo_types.parse_msg_text(text, "kuavo_msgs/msg/lejuClawState")
    assert [f[0] for f in fixed["kuavo_msgs/msg/lejuClawState"][1]] == ["header", "state", "data"]
    store = get_typestore(Stores.EMPTY)
    store.register(fixed)
    assert (
        store.generate_msgdef("kuavo_msgs/msg/lejuClawState")[1]
        == KUAVO_MD5["kuavo_msgs/msg/lejuClawState"]
    )


def test_full_definition_text_has_genmsg_layout():
    text = kuavo_types.kuavo_ros1_full_definition("kuavo_msgs/msg/sensorsData")
    sections = [line for line in text.splitlines() if line.startswith("MSG: ")]
    assert sections == [
        "MSG: std_msgs/Header",
        "MSG: kuavo_msgs/jointData",
        "MSG: kuavo_msgs/imuData",
        "MSG: geometry_msgs/Vector3",
        "MSG: geometry_msgs/Quaternion",
        "MSG: kuavo_msgs/endEffectorData",
    ]
    assert text.startswith("std_msgs/Header header\ntime sensor_time\n")


# ---------------------------------------------------------------------------------------------
# The stock Kuavo ROS 1 recording


def test_written_stock_bag_carries_leju_definitions_and_md5(stock_bag):
    with Ros1Reader(stock_bag) as r:
        conns = {c.topic: c for c in r.connections}
    claw = conns["/leju_claw_state"]
    assert claw.digest == "71c0eb8f4803a00f5667de51a2f70aac"
    assert "int8 kError = -1" in claw.msgdef.data
    assert "MSG: kuavo_msgs/endEffectorData" in claw.msgdef.data
    assert conns["/sensors_data_raw"].digest == "54439d3ac2ef33d46fd7cf6d324860c3"
    assert conns["/leju_claw_command"].digest == "57c40e80f90e7a289ae0b2488552e043"
    assert conns["/kuavo_arm_traj"].digest == "3066dcd76a6cfaef579bd0f34173e9fd"
    assert conns["/cam_h/color/image_raw/compressed"].digest == "8f7a12909da2c9d3332d540a0977563f"


def test_claw_state_bytes_have_no_constant_bytes(stock_bag):
    """On the wire: header, int8[] state, endEffectorData, exactly as the robot sends it."""
    with Ros1Reader(stock_bag) as r:
        conn = next(c for c in r.connections if c.topic == "/leju_claw_state")
        _, _, raw = next(iter(r.messages([conn])))

    def string(s: str) -> bytes:
        return struct.pack("<I", len(s)) + s.encode()

    def f64s(xs) -> bytes:
        return struct.pack(f"<I{len(xs)}d", len(xs), *xs)

    expected = (
        struct.pack("<III", 7, T0 // 10**9, 0)
        + string("")
        + struct.pack("<Ibb", 2, 1, 3)
        + struct.pack("<I", 2)
        + string("left_claw")
        + string("right_claw")
        + f64s([0.0, 0.0])
        + f64s([50.0, 50.0])
        + f64s([1.0, 1.0])
    )
    assert bytes(raw) == expected


def test_plain_anyreader_refuses_stock_claw_state_bag_and_open_bag_reads_it(stock_bag):
    with pytest.raises(AnyReaderError, match="hash mismatch"), AnyReader([stock_bag]):
        pass

    with open_bag(stock_bag) as bag:
        assert bag.format == "ros1"
        assert bag.warnings == []
        assert bag.topics["/leju_claw_state"] == ("kuavo_msgs/msg/lejuClawState", 40)
        assert bag.topics["/sensors_data_raw"] == ("kuavo_msgs/msg/sensorsData", 40)
        claws, sensors, commands, arm = [], [], [], []
        for m in bag.messages():
            if m.topic == "/leju_claw_state":
                claws.append(m)
            elif m.topic == "/sensors_data_raw":
                sensors.append(m)
            elif m.topic == "/leju_claw_command":
                commands.append(m)
            elif m.topic == "/kuavo_arm_traj":
                arm.append(m)
        assert bag.skipped == 0
    assert len(claws) == len(sensors) == len(commands) == len(arm) == 40
    for k, m in enumerate(claws):
        assert list(m.msg.data.name) == CLAW_NAMES
        np.testing.assert_array_equal(m.msg.data.position, [k, 2 * k])
        np.testing.assert_array_equal(m.msg.state, [1, 3])
        assert m.msg.kGrabbed == 3
        assert m.t == pytest.approx((T0 + k * 10**7 + 1000) / 1e9)
    for k, m in enumerate(sensors):
        q = np.asarray(m.msg.joint_data.joint_q)
        assert q.shape == (28,)
        np.testing.assert_allclose(q[12:26], 0.01 * k + 0.001 * np.arange(14))
        assert m.msg.header.stamp.sec == T0 // 10**9
        assert m.msg.header.stamp.nanosec == k * 10**7
        assert m.msg.imu_data.acc.z == 9.81
    for k, m in enumerate(commands):
        np.testing.assert_array_equal(m.msg.data.position, [100 - k, 50.0])
    for k, m in enumerate(arm):
        np.testing.assert_array_equal(m.msg.position, np.full(14, float(k)))


def test_bag_definitions_with_mixed_case_constants_of_any_type_are_read(tmp_path):
    """Not only kuavo_msgs: any ROS 1 type with non-UPPER constants decodes from the bag."""
    text = "int8 kIdle = 0\nint8 kBusy=1\nstring kName = hello # not a comment\nint8 status\n"
    typs = kuavo_types.parse_msg_text(text, "my_msgs/msg/Status")
    assert typs["my_msgs/msg/Status"][0] == [
        ("kIdle", "int8", 0),
        ("kBusy", "int8", 1),
        ("kName", "string", "hello # not a comment"),
    ]
    store = get_typestore(Stores.EMPTY)
    store.register(typs)
    md5 = store.generate_msgdef("my_msgs/msg/Status")[1]
    path = tmp_path / "status.bag"
    from rosbags.rosbag1 import Writer

    with Writer(path) as w:
        conn = w.add_connection("/status", "my_msgs/msg/Status", msgdef=text, md5sum=md5)
        for k in range(3):
            msg = store.types["my_msgs/msg/Status"](status=k)
            w.write(conn, T0 + k, store.serialize_ros1(msg, "my_msgs/msg/Status"))
    with pytest.raises(AnyReaderError), AnyReader([path]):
        pass
    with open_bag(path) as bag:
        assert [m.msg.status for m in bag.messages()] == [0, 1, 2]
        assert bag.warnings == []


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("fmt", ["sqlite3", "mcap"])
def test_ros2_round_trip_keeps_values_order_and_stamps(tmp_path, fmt):
    msgs = ros2_messages(fmt)
    (path,) = write_bag(tmp_path / "bag", msgs, fmt)
    assert (path / "metadata.yaml").is_file()
    with open_bag(path) as bag:
        assert bag.format == fmt
        assert bag.topics == {
            "/cam_h/color/image_raw/compressed": ("sensor_msgs/msg/CompressedImage", 15),
            "/gripper/state": ("sensor_msgs/msg/JointState", 30),
            "/joint_states": ("sensor_msgs/msg/JointState", 30),
        }
        assert bag.start_s == pytest.approx(T0 / 1e9)
        assert bag.end_s == pytest.approx((T0 + 29 * 10**7 + 900) / 1e9)
        got = list(bag.messages())
    assert len(got) == len(msgs)
    assert [m.t for m in got] == sorted(m.t for m in got)
    for (topic, msgtype, t_ns, sent), m in zip(msgs, got, strict=True):
        assert (m.topic, m.msgtype) == (topic, msgtype)
        assert m.t == pytest.approx(t_ns / 1e9, abs=1e-6)
        assert m.msg.header.stamp.sec == sent.header.stamp.sec
        assert m.msg.header.stamp.nanosec == sent.header.stamp.nanosec
        if msgtype.endswith("JointState"):
            assert list(m.msg.name) == list(sent.name)
            np.testing.assert_array_equal(m.msg.position, sent.position)
        else:
            np.testing.assert_array_equal(m.msg.data, sent.data)


@pytest.mark.parametrize("fmt", ["sqlite3", "mcap"])
def test_kuavo_types_round_trip_in_ros2_bags(tmp_path, fmt):
    """A ROS 2 port of kuavo_msgs (same layouts): written and read back with the constants."""
    m = Msgs(fmt)
    msgs = [
        ("/leju_claw_state", "kuavo_msgs/msg/lejuClawState", T0 + k, m.claw_state(T0 + k, [k, 9]))
        for k in range(3)
    ]
    (path,) = write_bag(tmp_path / "bag", msgs, fmt)
    with open_bag(path) as bag:
        got = list(bag.messages())
        assert bag.warnings == []
    assert [list(x.msg.data.position) for x in got] == [[0, 9], [1, 9], [2, 9]]
    assert got[0].msg.kReached == 2


def test_ros1_and_ros2_readers_give_the_same_joint_values(tmp_path):
    (p2,) = write_bag(tmp_path / "r2", ros2_messages("sqlite3"), "sqlite3")
    (p1,) = write_bag(tmp_path / "r1.bag", ros2_messages("ros1"), "ros1")
    with open_bag(p1) as b1, open_bag(p2) as b2:
        a = [(m.topic, m.t, list(m.msg.position)) for m in b1.messages(["/joint_states"])]
        b = [(m.topic, m.t, list(m.msg.position)) for m in b2.messages(["/joint_states"])]
    assert a == b


def test_compressed_image_decodes_with_cv2(stock_bag):
    import cv2

    with open_bag(stock_bag) as bag:
        m = next(bag.messages(["/cam_h/color/image_raw/compressed"]))
    img = cv2.imdecode(np.asarray(m.msg.data), cv2.IMREAD_COLOR)
    assert img.shape == (24, 32, 3)
    assert img[:, :10, 0].mean() > 200  # blue half (BGR) survived


def test_topic_filter_time_window_and_absent_topics(stock_bag):
    with open_bag(stock_bag) as bag:
        only = list(bag.messages(["/leju_claw_state"]))
        assert {m.topic for m in only} == {"/leju_claw_state"}
        assert len(only) == 40
        window = list(
            bag.messages(["/sensors_data_raw"], start_s=T0 / 1e9 + 0.1, stop_s=T0 / 1e9 + 0.2)
        )
        assert len(window) == 10
        assert list(bag.messages(["/no/such/topic"])) == []
        assert bag.missing(["/no/such/topic", "/leju_claw_state"]) == ["/no/such/topic"]
        with pytest.raises(BagError, match=r"(?s)/no/such/topic.*not in the bag.*/leju_claw_state"):
            bag.require(["/no/such/topic"])
        bag.require(["/leju_claw_state"])


# ---------------------------------------------------------------------------------------------
# Split recordings


def test_ros1_split_recording_reads_as_one_stream(tmp_path):
    msgs = stock_messages(n=60)
    paths = write_bag(tmp_path / "rec.bag", msgs, "ros1", split_s=0.2)
    assert [p.name for p in paths] == ["rec_0.bag", "rec_1.bag", "rec_2.bag"]
    for source in (paths, tmp_path):  # a list of files, or their directory
        with open_bag(source) as bag:
            assert bag.topics["/leju_claw_state"][1] == 60
            got = list(bag.messages())
        assert len(got) == len(msgs)
        assert [m.t for m in got] == sorted(m.t for m in got)


@pytest.mark.parametrize("fmt", ["sqlite3", "mcap"])
def test_ros2_split_bag_merges_its_files_by_time(tmp_path, fmt):
    m = Msgs(fmt)
    names = ["zarm_l1_joint"]
    # 0.99 s lands in file 0, then 1.00 s opens file 1 and a late 0.98 s message follows it:
    # the files overlap in time, as they can when a recorder splits while messages queue.
    times = [0.0, 0.5, 0.99, 1.0, 0.98, 1.5, 2.1, 2.5]
    msgs = [
        (
            "/joint_states",
            "sensor_msgs/msg/JointState",
            T0 + round(t * 1e9),
            m.joint_state(T0, names, [t]),
        )
        for t in times
    ]
    with BagWriter(tmp_path / "split", fmt, split_s=1.0) as w:
        for topic, msgtype, t_ns, msg in msgs:
            w.write(topic, msgtype, t_ns, msg)
    files = sorted(p.name for p in (tmp_path / "split").iterdir() if p.name != "metadata.yaml")
    suffix = ".mcap" if fmt == "mcap" else ".db3"
    assert files == [f"split_{i}{suffix}" for i in range(3)]
    with open_bag(tmp_path / "split") as bag:
        assert bag.topics == {"/joint_states": ("sensor_msgs/msg/JointState", len(times))}
        got = [m.msg.position[0] for m in bag.messages()]
    assert got == sorted(times)


def test_several_ros2_bags_read_as_one_stream(tmp_path):
    msgs = ros2_messages("sqlite3")
    (a,) = write_bag(tmp_path / "a", msgs[::2], "sqlite3")
    (b,) = write_bag(tmp_path / "b", msgs[1::2], "mcap")
    with open_bag([a, b]) as bag:
        got = list(bag.messages())
    assert [m.t for m in got] == sorted(t / 1e9 for _, _, t, _ in msgs)


def test_ros2_directory_without_metadata_is_read_from_its_files(tmp_path):
    (path,) = write_bag(tmp_path / "bag", ros2_messages("mcap"), "mcap")
    (path / "metadata.yaml").unlink()
    with open_bag(path) as bag:
        assert len(list(bag.messages())) == 75
        assert any("no metadata.yaml" in w for w in bag.warnings)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(BagError, match="bag not found"):
        open_bag(tmp_path / "nope.bag")


@pytest.mark.parametrize("name", ["empty.bag", "empty.db3", "empty.mcap"])
def test_empty_file_is_a_clear_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(BagError, match=r"empty") as err:
        open_bag(tmp_path / name)
    assert name in str(err.value)


@pytest.mark.parametrize("name", ["junk.bag", "junk.db3", "junk.mcap"])
def test_random_bytes_are_not_a_bag(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(BagError, match=r"not a (ROS 1 bag|rosbag)") as err:
        open_bag(tmp_path / name)
    assert name in str(err.value)


def test_unknown_file_type_and_non_bag_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match="unknown bag file type"):
        open_bag(tmp_path / "notes.txt")
    with pytest.raises(BagError, match="not a bag"):
        open_bag(tmp_path)
    with pytest.raises(BagError, match="no bag path"):
        open_bag([])


def test_ros1_and_ros2_cannot_be_mixed(tmp_path, stock_bag):
    (p2,) = write_bag(tmp_path / "r2", ros2_messages("sqlite3", n=2), "sqlite3")
    with pytest.raises(BagError, match="ROS 1 and ROS 2"):
        open_bag([stock_bag, p2])


def _expect_partial(path: Path, full: list[tuple[str, float]]) -> int:
    """Read a damaged bag: some messages, all correct, then a BagError saying how many."""
    got: list[tuple[str, float]] = []
    with open_bag(path) as bag, pytest.raises(BagError) as err:
        assert bag.damage
        for m in bag.messages():
            got.append((m.topic, m.t))
    assert 0 < len(got) < len(full)
    assert err.value.messages_read == len(got)
    assert f"Read {len(got)} messages" in str(err.value)
    assert got == [x for x in full if x[1] <= got[-1][1]][: len(got)]
    return len(got)


def _full(path: Path) -> list[tuple[str, float]]:
    with open_bag(path) as bag:
        return [(m.topic, m.t) for m in bag.messages()]


def test_truncated_ros1_bag_yields_what_is_left_then_errors(tmp_path, stock_bag):
    data = stock_bag.read_bytes()
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[: len(data) // 2])
    _expect_partial(cut, _full(stock_bag))
    with open_bag(cut) as bag:  # a window that ends before the loss reads without error
        assert len(list(bag.messages(stop_s=T0 / 1e9 + 0.05))) > 0


def test_ros1_bag_of_a_killed_recorder_reads_completely(tmp_path, stock_bag):
    """Chunks complete, index never written (a `.bag.active` left by a killed rosbag record)."""
    data = bytearray(stock_bag.read_bytes())
    at = data.index(b"index_pos=") + len(b"index_pos=")
    (index_pos,) = struct.unpack_from("<Q", data, at)
    struct.pack_into("<Q", data, at, 0)  # what rosbag record leaves until it closes the bag
    active = tmp_path / "rec.bag.active"
    active.write_bytes(bytes(data[:index_pos]))
    with open_bag(active) as bag:
        assert bag.damage is None
        assert any("scanning" in w for w in bag.warnings)
        assert [(m.topic, m.t) for m in bag.messages()] == _full(stock_bag)


def test_truncated_sqlite3_bag_yields_what_is_left_then_errors(tmp_path):
    (path,) = write_bag(tmp_path / "bag", ros2_messages("sqlite3", n=400), "sqlite3")
    full = _full(path)
    db = path / "bag.db3"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    _expect_partial(path, full)


def test_truncated_mcap_bag_yields_complete_chunks_then_errors(tmp_path):
    # rosbags writes 1 MiB MCAP chunks: a ~2.5 MB bag cut at 3/4 keeps its first chunks.
    m = Msgs("mcap")
    payload = np.random.default_rng(0).integers(0, 255, 50_000, dtype=np.uint8)
    msgs = []
    for k in range(50):
        t = T0 + k * 10**7
        img = m.T["sensor_msgs/msg/CompressedImage"](header=m.header(t), format="raw", data=payload)
        msgs.append(("/blob", "sensor_msgs/msg/CompressedImage", t, img))
    (path,) = write_bag(tmp_path / "bag", msgs, "mcap")
    full = _full(path)
    f = path / "bag.mcap"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 3 // 4])
    n = _expect_partial(path, full)
    assert n >= 20


def test_undecodable_message_is_skipped_and_counted(tmp_path):
    store = typestore_for("sqlite3")
    m = Msgs("sqlite3")
    path = tmp_path / "bag"
    with Ros2Writer(path, version=9) as w:
        conn = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=store)
        for k in range(5):
            msg = m.joint_state(T0 + k, ["a"], [k])
            raw = store.serialize_cdr(msg, "sensor_msgs/msg/JointState")
            w.write(conn, T0 + k, b"\x00\x01\x00\x00garbage" if k == 2 else raw)
    with open_bag(path) as bag:
        got = [m.msg.position[0] for m in bag.messages()]
        assert got == [0, 1, 3, 4]
        assert bag.skipped == 1
        assert bag.skipped_by_topic == {"/joint_states": 1}


def test_type_without_any_definition_is_named_with_its_topic(tmp_path):
    store = typestore_for("sqlite3")
    path = tmp_path / "bag"
    with Ros2Writer(path, version=9) as w:
        good = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=store)
        odd = w.add_connection("/odd", "foo_msgs/msg/Bar", msgdef="", rihs01="RIHS01_00")
        w.write(
            good,
            T0,
            store.serialize_cdr(
                Msgs("sqlite3").joint_state(T0, ["a"], [1.0]), "sensor_msgs/msg/JointState"
            ),
        )
        w.write(odd, T0 + 1, b"\x00\x01\x00\x00\x01\x02\x03\x04")
    with open_bag(path) as bag:
        assert bag.topics["/odd"] == ("foo_msgs/msg/Bar", 1)
        assert any("/odd" in w and "foo_msgs/msg/Bar" in w for w in bag.warnings)
        assert [m.topic for m in bag.messages()] == ["/joint_states"]  # all topics: left out
        with pytest.raises(BagError, match=r"/odd.*foo_msgs/msg/Bar"):
            list(bag.messages(["/odd"]))


# ---------------------------------------------------------------------------------------------
# Writer


def test_writer_refuses_to_overwrite_unless_asked(tmp_path):
    msgs = ros2_messages("sqlite3", n=2)
    write_bag(tmp_path / "bag", msgs, "sqlite3")
    with pytest.raises(BagError, match="exists already"):
        write_bag(tmp_path / "bag", msgs, "sqlite3")
    write_bag(tmp_path / "bag", msgs[:1], "sqlite3", overwrite=True)
    with open_bag(tmp_path / "bag") as bag:
        assert bag.message_count == 1
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "thesis.tex").write_text("precious")
    with pytest.raises(BagError, match="non-bag files"):
        write_bag(tmp_path / "keep", msgs, "sqlite3", overwrite=True)
    assert (tmp_path / "keep" / "thesis.tex").is_file()


def test_unknown_format_is_a_clear_error(tmp_path):
    with pytest.raises(BagError, match="unknown bag format"):
        BagWriter(tmp_path / "x", "ros3")


def test_python_m_bag_prints_topics_or_one_error_line(stock_bag, tmp_path, capsys):
    from kuavo_smolvla_ros.bag.__main__ import main

    assert main([str(stock_bag)]) == 0
    out = capsys.readouterr().out
    assert "[ros1]" in out and "/leju_claw_state  kuavo_msgs/msg/lejuClawState  40" in out
    assert main([str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: bag not found: {tmp_path / 'absent'}"]
