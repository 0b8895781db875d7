"""Checkpoint trust: a checkpoint can make this process build LeRobot's registered processor
steps and nothing else, unless ``policy.trust_remote_code`` says otherwise."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from kuavo_smolvla_ros.core.config import Config
from kuavo_smolvla_ros.runners.eager import CheckpointError, load_policy
from kuavo_smolvla_ros.runners.trust import (
    UntrustedCheckpointError,
    check_checkpoint_trust,
    trusted_steps,
    untrusted_steps,
)


def _tamper(ckpt: Path, marker: Path, file: str = "policy_preprocessor.json") -> None:
    """Put a step first that runs a shell command writing ``marker`` when instantiated."""
    path = ckpt / file
    data = json.loads(path.read_text())
    evil = {"class": "subprocess.Popen", "config": {"args": ["sh", "-c", f"echo pwned > {marker}"]}}
    data["steps"].insert(0, evil)
    path.write_text(json.dumps(data))


def _wait_for(path: Path, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()


def test_the_tiny_checkpoint_names_only_registered_lerobot_steps(tiny_checkpoint):
    assert untrusted_steps(tiny_checkpoint) == []
    check_checkpoint_trust(tiny_checkpoint)
    steps = trusted_steps()
    assert "normalizer_processor" in steps and "tokenizer_processor" in steps
    assert all(p.startswith(("lerobot.", "kuavo_smolvla_ros.")) for p in steps.values())


def test_tampered_checkpoint_is_refused_before_anything_is_built(tiny_checkpoint_copy, tmp_path):
    marker = tmp_path / "pwned.txt"
    _tamper(tiny_checkpoint_copy, marker)
    with pytest.raises(UntrustedCheckpointError) as err:
        load_policy(tiny_checkpoint_copy, "cpu", Config(), warmup=False)
    msg = str(err.value)
    assert "subprocess.Popen" in msg and "policy_preprocessor.json step 0" in msg
    assert "policy.trust_remote_code: true" in msg
    assert isinstance(err.value, CheckpointError)  # the node's one-line "cannot start" path
    time.sleep(0.5)
    assert not marker.exists(), "the untrusted step ran"


def test_the_same_checkpoint_runs_the_step_when_trusted(tiny_checkpoint_copy, tmp_path):
    """What the refusal prevents is real: with trust_remote_code LeRobot builds the class."""
    marker = tmp_path / "pwned.txt"
    _tamper(tiny_checkpoint_copy, marker)
    cfg = Config(policy=dataclasses.replace(Config().policy, trust_remote_code=True))
    with pytest.raises(Exception):  # noqa: B017 (Popen is no processor step: LeRobot fails after)
        load_policy(tiny_checkpoint_copy, "cpu", cfg, warmup=False)
    assert _wait_for(marker), "LeRobot did not instantiate the step (the test would prove nothing)"


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"class": "os.system", "config": {}}, "'os.system'"),
        ({"class": "some_module.SomeStep", "config": {}}, "'some_module.SomeStep'"),
        ({"registry_name": "not_a_lerobot_step", "config": {}}, "'not_a_lerobot_step'"),
        ({"config": {}}, "names no class"),
    ],
)
def test_each_untrusted_step_is_named(tiny_checkpoint_copy, entry, named):
    path = tiny_checkpoint_copy / "policy_postprocessor.json"
    data = json.loads(path.read_text())
    data["steps"].append(entry)
    path.write_text(json.dumps(data))
    with pytest.raises(UntrustedCheckpointError, match=named) as err:
        check_checkpoint_trust(tiny_checkpoint_copy)
    assert "policy_postprocessor.json step" in str(err.value)


def test_a_lerobot_step_named_by_its_class_path_is_trusted(tiny_checkpoint_copy):
    path = tiny_checkpoint_copy / "policy_postprocessor.json"
    data = json.loads(path.read_text())
    data["steps"].append({"class": trusted_steps()["device_processor"], "config": {}})
    path.write_text(json.dumps(data))
    assert untrusted_steps(tiny_checkpoint_copy) == []


def test_unreadable_processor_file_is_a_checkpoint_error(tiny_checkpoint_copy):
    (tiny_checkpoint_copy / "policy_preprocessor.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        check_checkpoint_trust(tiny_checkpoint_copy)


def test_policy_revision_pins_the_hub_snapshot(tmp_path):
    """``policy.revision`` reaches the hub client: in a hub cache holding two revisions of one
    repo (offline, real huggingface_hub), the pinned tag resolves to its own snapshot."""
    import subprocess
    import sys

    repo = tmp_path / "hub" / "models--kuavo--policy"
    for ref, commit in (("main", "a" * 40), ("v1", "b" * 40)):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    code = (
        "from kuavo_smolvla_ros.runners.eager import resolve_checkpoint as r;"
        "print(r('kuavo/policy').name, r('kuavo/policy', 'v1').name)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["a" * 40, "b" * 40]
