"""Fine-tuning on LeRobot: the real tiny SmolVLA, real LeRobot datasets, CPU, a few steps each."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from kuavo_smolvla_ros import training
from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import CamerasConfig, Config, InputsConfig, RobotConfig
from kuavo_smolvla_ros.runners.eager import example_inputs, load_policy
from kuavo_smolvla_ros.training import cli

CAMS = ("head_cam_h", "wrist_cam_l", "wrist_cam_r")
FAST = training.TrainOptions(num_workers=0, device="cpu", progress=False, log_freq=0, val_samples=8)


def write_dataset(
    root: Path,
    *,
    episodes: int = 2,
    frames: int = 40,
    fps: int = 10,
    cameras: tuple[str, ...] = CAMS,
    size: int = 64,
    dim: int = 16,
    task: str = "pick up the cube",
    phase: float = 0.0,
    seed: int = 0,
    video: bool = True,
) -> Path:
    """A LeRobot dataset of smooth joint motions, action = next state, images tinted by state."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (dim,), "names": None},
        "action": {"dtype": "float32", "shape": (dim,), "names": None},
    }
    for cam in cameras:
        features[f"observation.images.{cam}"] = {
            "dtype": "video" if video else "image",
            "shape": (size, size, 3),
            "names": ["height", "width", "channels"],
        }
    ds = LeRobotDataset.create(
        f"local/{root.name}", fps=fps, features=features, root=root, use_videos=video
    )
    rng = np.random.default_rng(seed)
    freq = 0.2 + 0.05 * np.arange(dim)
    for _ in range(episodes):
        offset = rng.uniform(0, 2 * np.pi) + phase

        def q(t: float, offset: float = offset) -> np.ndarray:
            return (0.5 * np.sin(2 * np.pi * freq * t + offset)).astype(np.float32)

        for i in range(frames):
            s = q(i / fps)
            img = np.empty((size, size, 3), np.uint8)
            img[...] = (127 + 120 * s[:3]).astype(np.uint8)
            frame = {"observation.state": s, "action": q((i + 1) / fps), "task": task}
            frame.update({f"observation.images.{c}": img for c in cameras})
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return root


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / training.LOG_NAME).read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def pick_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "pick", task="pick up the cube")


@pytest.fixture(scope="module")
def place_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "place"
    return write_dataset(root, frames=30, task="place it in the box", phase=np.pi / 2, seed=1)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """Factory of one-episode datasets for the refusal tests (cheap to write)."""

    def make(name: str, **kw) -> Path:
        root = tmp_path_factory.mktemp("bad") / name
        return write_dataset(root, episodes=1, frames=6, size=32, **kw)

    return make


def test_finetune_lowers_the_loss_and_saves_a_checkpoint_the_runner_loads(
    tiny_checkpoint, pick_dataset, tmp_path
):
    out = tmp_path / "run"
    ckpt = training.finetune(
        tiny_checkpoint, pick_dataset, out, steps=40, batch_size=4, lr=1e-3, options=FAST
    )

    history = losses(out)
    assert len(history) == 40
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last < 0.85 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"

    assert ckpt == (out / "checkpoints" / "last" / "pretrained_model").resolve()
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["max_state_dim"] == 32 and saved["max_action_dim"] == 32
    assert saved["input_features"]["observation.state"]["shape"] == [16]
    assert saved["output_features"]["action"]["shape"] == [16]
    assert (ckpt / "vlm" / "config.json").is_file()
    assert (ckpt.parent / "training_state" / "training_step.json").is_file()

    runner = load_policy(ckpt, warmup=False)
    stats = runner.normalizer.stats
    assert stats["observation.state"]["mean"].shape[-1] == 16
    state, images = example_inputs(runner, height=64, width=64)
    assert runner.predict_chunk(state, images, "pick up the cube", seed=0).shape == (50, 16)

    val = json.loads((out / training.VALIDATION_NAME).read_text())
    assert val["rows"][0]["val_loss"]["pick"] > 0


def test_two_stage_run_writes_both_checkpoints_and_a_per_task_validation_table(
    tiny_checkpoint, pick_dataset, place_dataset, tmp_path, capsys, caplog
):
    caplog.set_level("INFO", logger="kuavo_smolvla_ros.training")
    stages = tmp_path / "stages.yaml"
    pick = os.path.relpath(pick_dataset, tmp_path)  # paths relative to the stages file
    stages.write_text(
        f"stages:\n"
        f"  - {{dataset: {pick}, task: pick up the cube, steps: 6, name: pick}}\n"
        f"  - dataset: {place_dataset}\n"
        f"    task: place it in the box\n"
        f"    steps: 6\n"
        f"    name: place\n"
        f"    mix: {{{pick}: 0.3}}   # 30 % of each batch replays the first task\n"
    )
    out = tmp_path / "seq"
    rc = cli.main(
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--stages",
            str(stages),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--val-samples",
            "6",
            "--no-progress",
        ]
    )
    assert rc == 0

    for k in (1, 2):
        ckpt = out / f"stage_{k}" / "checkpoints" / "last" / "pretrained_model"
        assert (ckpt / "model.safetensors").is_file()
        assert (ckpt / "policy_preprocessor.json").is_file()
        assert len(losses(out / f"stage_{k}")) == 6

    val = json.loads((out / training.VALIDATION_NAME).read_text())
    assert [t["name"] for t in val["tasks"]] == ["pick", "place"]
    assert [r["stage"] for r in val["rows"]] == ["stage_1", "stage_2"]
    assert set(val["rows"][0]["val_loss"]) == {"pick"}
    assert set(val["rows"][1]["val_loss"]) == {"pick", "place"}
    assert all(np.isfinite(v) for r in val["rows"] for v in r["val_loss"].values())

    printed = capsys.readouterr().out
    assert "validation loss" in printed
    assert "pick [train]" in printed and "place [train]" in printed

    assert "stage 2 mixes place 0.70, pick 0.30" in caplog.text

    # Stage 2's normalizer covers both tasks: the frame-weighted mean of the two datasets.
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    metas = [
        LeRobotDatasetMetadata(f"local/{d.name}", root=d) for d in (pick_dataset, place_dataset)
    ]
    frames = [m.total_frames for m in metas]
    both = sum(n * m.stats["observation.state"]["mean"] for n, m in zip(frames, metas)) / sum(
        frames
    )
    runner = load_policy(out / "stage_2" / "checkpoints" / "last" / "pretrained_model")
    mean = np.asarray(runner.normalizer.stats["observation.state"]["mean"])
    np.testing.assert_allclose(mean, both, rtol=1e-4, atol=1e-5)
    state, images = example_inputs(runner, height=64, width=64)
    assert runner.predict_chunk(state, images, "place it in the box").shape == (50, 16)


def test_an_interrupted_run_resumes_from_its_last_checkpoint(
    tiny_checkpoint, pick_dataset, tmp_path
):
    out = tmp_path / "run"
    opts = training.TrainOptions(
        num_workers=0, device="cpu", progress=False, log_freq=0, val_samples=0, save_freq=3
    )
    training.finetune(tiny_checkpoint, pick_dataset, out, steps=6, batch_size=2, options=opts)
    # Interrupted after step 6 but before its checkpoint: the last one is step 3's.
    ckpts = out / "checkpoints"
    shutil.rmtree(ckpts / "000006")
    (ckpts / "last").unlink()
    (ckpts / "last").symlink_to("000003")
    log = out / training.LOG_NAME

    with pytest.raises(FileExistsError, match="--resume"):
        training.finetune(tiny_checkpoint, pick_dataset, out, steps=6, batch_size=2, options=opts)

    resumed = training.finetune(
        tiny_checkpoint,
        pick_dataset,
        out,
        steps=6,
        batch_size=2,
        options=dataclasses.replace(opts, resume=True),
    )
    assert resumed == (ckpts / "000006" / "pretrained_model").resolve()
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_base_checkpoint_with_other_dims_and_camera_names_is_fine_tuned_to_kuavo(
    pick_dataset, tmp_path
):
    """Like lerobot/smolvla_base: 6-D SO100 features and cameras camera1..3 (rename_to)."""
    from kuavo_smolvla_ros.demo.model import build_demo_model

    so100 = RobotConfig(
        name="so100",
        joint_names=tuple(f"j{i}" for i in range(6)),
        lower=(-1.0,) * 6,
        upper=(1.0,) * 6,
        max_velocity=(1.0,) * 6,
        velocity_limits=(1.0,) * 6,
        gripper_indices=(5,),
    )
    base = build_demo_model(
        tmp_path / "base", cameras=("camera1", "camera2", "camera3"), robot=so100
    )
    cfg = Config(
        inputs=InputsConfig(cameras=CamerasConfig(rename_to=("camera1", "camera2", "camera3")))
    )
    held_out = dataclasses.replace(FAST, val_fraction=0.5)  # train on episode 0, validate on 1
    ckpt = training.finetune(
        base, pick_dataset, tmp_path / "ft", steps=3, batch_size=2, config=cfg, options=held_out
    )
    val = json.loads((tmp_path / "ft" / training.VALIDATION_NAME).read_text())
    assert val["tasks"][0]["split"] == "held-out" and val["rows"][0]["val_loss"]["pick"] > 0

    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["input_features"]["observation.state"]["shape"] == [16]
    assert "observation.images.camera1" in saved["input_features"]
    runner = load_policy(ckpt, config=cfg, warmup=False)
    assert runner.camera_features["head_cam_h"] == "observation.images.camera1"
    state, images = example_inputs(runner, height=64, width=64)
    assert runner.predict_chunk(state, images, "pick up the cube").shape == (50, 16)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("dims", r"observation.state is \[14\] but the robot profile has 16"),
        ("padded", r"native 16 dims: the model pads to 32"),
        ("fps", r"recorded at 15 fps but scheduler.action_fps is 10"),
        ("camera_names", r"inputs.cameras.names"),
        ("camera_features", r"not image features of the checkpoint"),
        ("horizon", r"267 vs 233"),
    ],
)
def test_a_dataset_that_does_not_fit_is_refused_before_training(
    case, match, tiny_checkpoint, small_dataset, tmp_path
):
    cfg = Config()
    opts = FAST
    if case == "dims":
        data = small_dataset("dims14", dim=14)
    elif case == "padded":
        data = small_dataset("dims32", dim=32)
    elif case == "fps":
        data = small_dataset("fps15", fps=15)
    elif case == "camera_names":
        data = small_dataset("two_cams", cameras=CAMS[:2])
    elif case == "camera_features":
        data = small_dataset("ok_cams")
        cfg = Config(inputs=InputsConfig(cameras=CamerasConfig(rename_to=("a", "b", "c"))))
    else:
        data = small_dataset("horizon")
        opts = dataclasses.replace(FAST, action_horizon=16)
    out = tmp_path / "never"
    with pytest.raises(dims.DimensionError, match=match):
        training.finetune(tiny_checkpoint, data, out, steps=2, config=cfg, options=opts)
    assert not out.exists(), "refused runs must not start (nor create the output directory)"


def test_cli_prints_the_refusal_and_exits_2(tiny_checkpoint, small_dataset, tmp_path, capsys):
    data = small_dataset("cli_fps", fps=30)
    rc = cli.main(
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--dataset",
            str(data),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--steps",
            "1",
        ]
    )
    assert rc == 2
    assert "recorded at 30 fps" in capsys.readouterr().err


def test_stages_mixing_an_unknown_dataset_is_refused(tiny_checkpoint, pick_dataset, tmp_path):
    stages = [
        training.Stage(dataset=str(pick_dataset), name="pick", steps=1),
        training.Stage(dataset=str(pick_dataset), name="again", steps=1, mix={"elsewhere": 0.5}),
    ]
    with pytest.raises(training.StagesError, match="no earlier stage"):
        training.train_stages(tiny_checkpoint, stages, tmp_path / "o", options=FAST)


def test_video_decodes_with_pyav_after_one_warning_line_where_torchcodec_cannot_load(
    tiny_checkpoint, pick_dataset, tmp_path, caplog, recwarn
):
    """torchcodec needs FFmpeg's shared libraries, which its wheel does not bring: asked for it
    anyway where they are missing (this repository's CI), training decodes with pyav."""
    from kuavo_smolvla_ros.training import data

    data._warn_fallback.cache_clear()
    caplog.set_level("WARNING", logger="kuavo_smolvla_ros.training")
    opts = dataclasses.replace(FAST, video_backend="torchcodec", val_samples=0)
    for run in ("a", "b"):  # two runs in one process: still one warning
        ckpt = training.finetune(
            tiny_checkpoint, pick_dataset, tmp_path / run, steps=2, batch_size=2, options=opts
        )
        assert (ckpt / "model.safetensors").is_file()

    said = [r.getMessage() for r in caplog.records if "torchcodec" in r.getMessage()]
    reason = data._torchcodec_error()
    if reason is None:  # FFmpeg is here: torchcodec decodes and nothing is said
        assert said == []
        assert data.video_backend("torchcodec") == "torchcodec"
    else:
        assert len(said) == 1 and "\n" not in said[0], said
        assert "decoding video with pyav" in said[0] and reason in said[0]
        assert data.video_backend("torchcodec") == "pyav"
        assert not [w for w in recwarn if "video decoding" in str(w.message)]
    assert data.video_backend("pyav") == "pyav"


def test_action_chunks_read_from_column_tensors_equal_lerobots_own_reads(tmp_path):
    """The loader's shortcut for image datasets (no PNG decoding for the 50 action rows) gives
    LeRobot's items exactly, padding at episode ends included, also on an episode subset."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from kuavo_smolvla_ros.training.data import TaskText, read_chunks_from_columns

    root = write_dataset(tmp_path / "img", episodes=3, frames=20, size=16, video=False)
    delta = {"action": [i / 10 for i in range(50)]}
    for episodes in (None, [0, 2]):
        mine, theirs = (
            LeRobotDataset(
                f"local/{root.name}", root=root, episodes=episodes, delta_timestamps=delta
            )
            for _ in range(2)
        )
        read_chunks_from_columns(mine)
        assert mine._query_hf_dataset != theirs._query_hf_dataset
        # The training loader's own view: the whole dataset, seen through the episodes.
        whole = LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=delta)
        read_chunks_from_columns(whole)
        view = TaskText(whole, None, episodes)
        assert len(view) == len(theirs) and view.num_episodes == theirs.num_episodes
        # Loader workers started by spawn or forkserver (macOS, Python 3.14) get it pickled.
        unpickled = pickle.loads(pickle.dumps(mine))
        for i in (0, 7, 19, 20, len(theirs) - 1):
            b = theirs[i]
            for a in (mine[i], view[i], unpickled[i]):
                assert a.keys() == b.keys()
                for key in b:
                    same = (
                        torch.equal(a[key], b[key]) if torch.is_tensor(b[key]) else a[key] == b[key]
                    )
                    assert same, (episodes, i, key)


@pytest.mark.parametrize("video", [False, True], ids=["png", "video"])
def test_uint8_image_batches_restore_lerobots_float_images_bit_for_bit(tmp_path, video):
    """The workers' uint8 hand-over: a quarter of the bytes, and after ``restore`` the very
    float32 batch LeRobot's own loader gives; an augmented image stays float32."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from torch.utils.data import DataLoader, default_collate

    from kuavo_smolvla_ros.training.data import Uint8Images

    root = write_dataset(tmp_path / "d", episodes=2, frames=12, size=32, video=video)
    if video:
        pytest.importorskip("av")
    ds = LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")
    images = Uint8Images(ds.meta.camera_keys)
    assert images.keys
    theirs = next(iter(DataLoader(ds, batch_size=6, shuffle=False)))
    handed = next(iter(DataLoader(ds, batch_size=6, shuffle=False, collate_fn=images.collate)))
    for key in images.keys:
        assert handed[key].dtype == torch.uint8 and theirs[key].dtype == torch.float32
        assert handed[key].nbytes * 4 == theirs[key].nbytes
    mine = images.restore(handed)
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        if torch.is_tensor(value):
            assert mine[key].dtype == value.dtype and torch.equal(mine[key], value), key
    # Not 8-bit pixels (brightened, as an augmentation would): handed over unchanged.
    key = images.keys[0]
    items = [dict(ds[i]) for i in range(3)]
    for item in items:
        item[key] = item[key] * 0.9
    batch = images.collate(items)
    assert batch[key].dtype == torch.float32
    assert torch.equal(batch[key], default_collate(items)[key])
