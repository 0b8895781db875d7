"""Shared fixtures: real (tiny) LeRobot SmolVLA checkpoints built offline once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# A DDS domain of this test run's own, so parallel runs on one machine never hear each other.
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight tiny SmolVLA saved like a real checkpoint (32-D model, 16-D Kuavo)."""
    from kuavo_smolvla_ros.demo.model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("ckpt") / "tiny_smolvla", size="tiny")


@pytest.fixture()
def tiny_checkpoint_copy(tiny_checkpoint, tmp_path) -> Path:
    """A private copy a test may edit (to break it on purpose)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, dst)
    return dst
