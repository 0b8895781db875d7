"""The process backend (inference_process.py): same chunks as in-process, errors, lifetime.

Real child processes with the tiny checkpoint; no timing assertions (the deadlines below only
bound how long a test waits for a process to go away).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from kuavo_smolvla_ros.core.config import Config, ConfigError, PolicyConfig, SchedulerConfig
from kuavo_smolvla_ros.core.dims import DimensionError
from kuavo_smolvla_ros.runners.eager import CheckpointError, example_inputs, load_policy
from kuavo_smolvla_ros.runners.process import InferenceProcessError, ProcessRunner
from kuavo_smolvla_ros.testing.fake_robot import child_pids

pytestmark = pytest.mark.slow


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie waiting for its reaper; the leader
    of a dying multi-threaded process may show as a zombie a little before its threads)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.startswith("State:") and "Z" in line for line in f):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def remote(tiny_checkpoint):
    runner = ProcessRunner(tiny_checkpoint, device="cpu")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def local(tiny_checkpoint):
    return load_policy(tiny_checkpoint, device="cpu")


def _inputs(runner, seed: int = 0):
    state, images = example_inputs(runner, height=96, width=128, seed=seed)
    state = np.linspace(-0.2, 0.2, runner.robot_dim)
    return state, images


def test_same_chunk_as_the_in_process_runner(remote, local):
    assert remote.chunk_size == local.chunk_size
    assert remote.robot_dim == local.robot_dim == 16
    assert remote.camera_features == local.camera_features
    for seed in (0, 7):
        state, images = _inputs(local, seed)
        want = local.predict_chunk(state, images, "pick up the cup", seed=seed)
        got = remote.predict_chunk(state, images, "pick up the cup", seed=seed)
        assert got.shape == (local.chunk_size, 16)
        np.testing.assert_array_equal(got, want)
    assert remote.last_inference_s > 0


def test_images_of_another_size_and_a_reset_still_match(remote, local):
    state, _ = _inputs(local)
    rng = np.random.default_rng(3)
    images = {c: rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for c in local.camera_features}
    remote.reset()  # deferred to the next request; never blocks
    local.reset()
    want = local.predict_chunk(state, images, "open the drawer", seed=5)
    got = remote.predict_chunk(state, images, "open the drawer", seed=5)
    np.testing.assert_array_equal(got, want)


def test_rtc_inputs_reach_the_child(tiny_checkpoint):
    cfg = Config(scheduler=SchedulerConfig(merge_mode="rtc"))
    local = load_policy(tiny_checkpoint, device="cpu", config=cfg)
    with ProcessRunner(tiny_checkpoint, device="cpu", config=cfg) as remote:
        assert remote.rtc_enabled and local.rtc_enabled
        state, images = _inputs(local)
        leftover = np.tile(np.linspace(-0.1, 0.1, 16), (40, 1))
        kw = dict(seed=1, inference_delay=3, prev_chunk_left_over=leftover)
        want = local.predict_chunk(state, images, "wave hello", **kw)
        got = remote.predict_chunk(state, images, "wave hello", **kw)
        np.testing.assert_array_equal(got, want)


def test_child_errors_come_back_as_exceptions_and_the_child_keeps_serving(remote, local):
    state, images = _inputs(local)
    pid = remote.pid
    with pytest.raises(DimensionError, match="state has 15 values, the robot profile has 16"):
        remote.predict_chunk(state[:15], images, "x")
    with pytest.raises(ValueError, match="missing camera image"):
        remote.predict_chunk(state, {"head_cam_h": images["head_cam_h"]}, "x")
    with pytest.raises(ValueError, match="NaN or Inf"):
        remote.predict_chunk(np.full(16, np.nan), images, "x")
    # Bad inputs are refused before they cross the pipe (runners.base.check_inputs); what only
    # the child sees (here torch refusing a seed) comes back with the child's traceback.
    with pytest.raises(ValueError, match="Overflow") as err:
        remote.predict_chunk(state, images, "x", seed=2**80)
    assert "manual_seed" in str(err.value.__cause__)
    assert remote.pid == pid and remote.alive
    want = local.predict_chunk(state, images, "x", seed=2)
    np.testing.assert_array_equal(remote.predict_chunk(state, images, "x", seed=2), want)


def test_load_errors_are_raised_by_the_constructor(tmp_path):
    with pytest.raises(CheckpointError, match="neither a local directory nor a hub id"):
        ProcessRunner(tmp_path / "missing.ckpt", device="cpu")


def test_a_dead_child_is_an_error_with_its_exit_code_until_restart(tiny_checkpoint, local):
    """Never a silent restart: the node must see the death (issue 9) and decide."""
    state, images = _inputs(local)
    with ProcessRunner(tiny_checkpoint, device="cpu") as runner:
        old = runner.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while runner.alive and time.monotonic() < deadline:  # reaped, all threads gone
            time.sleep(0.05)
        assert not runner.alive and runner.exitcode == -9
        for _ in range(2):  # stays an error, every time
            with pytest.raises(InferenceProcessError, match="exited with code -9"):
                runner.predict_chunk(state, images, "x", seed=4)
        assert runner.restarts == 0
        runner.restart()
        got = runner.predict_chunk(state, images, "x", seed=4)
        assert runner.restarts == 1 and runner.pid != old and runner.alive
        np.testing.assert_array_equal(got, local.predict_chunk(state, images, "x", seed=4))


def test_kill_frees_a_request_blocked_on_a_stopped_child(tiny_checkpoint, local):
    import threading

    state, images = _inputs(local)
    with ProcessRunner(tiny_checkpoint, device="cpu") as runner:
        os.kill(runner.pid, signal.SIGSTOP)
        errors: list[Exception] = []

        def call():
            try:
                runner.predict_chunk(state, images, "x")
            except InferenceProcessError as exc:
                errors.append(exc)

        th = threading.Thread(target=call)
        th.start()
        th.join(1.0)
        assert th.is_alive(), "a stopped child never answers"
        runner.kill()
        th.join(10.0)
        assert not th.is_alive() and errors and "-9" in str(errors[0])


def test_close_stops_the_child_and_later_calls_fail_clearly(tiny_checkpoint, local):
    runner = ProcessRunner(tiny_checkpoint, device="cpu")
    pid = runner.pid
    runner.close()
    assert _gone(pid) and not runner.alive
    runner.close()  # idempotent
    state, images = _inputs(local)
    with pytest.raises(InferenceProcessError, match="closed"):
        runner.predict_chunk(state, images, "x")


CHILD_OF_A_KILLED_PARENT = """
import sys, time
from kuavo_smolvla_ros.runners.process import ProcessRunner
if __name__ == "__main__":
    runner = ProcessRunner(sys.argv[1], device="cpu")
    print("CHILD", runner.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("stopped", [False, True], ids=["running", "stopped"])
def test_the_child_and_its_resource_tracker_die_with_a_killed_parent(
    tiny_checkpoint, tmp_path, stopped
):
    """PR_SET_PDEATHSIG reaches a stopped child too; the tracker follows on EOF."""
    script = tmp_path / "parent.py"
    script.write_text(CHILD_OF_A_KILLED_PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tiny_checkpoint)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = ""
        while not line.startswith("CHILD"):  # LeRobot prints to stdout while loading
            line = parent.stdout.readline()
            assert line, "the parent exited before its child was ready"
        child = int(line.split()[1])
        family = child_pids(parent.pid)  # the child and multiprocessing's resource tracker
        assert child in family
        assert not _gone(child, timeout=0.5)
        if stopped:
            os.kill(child, signal.SIGSTOP)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for pid in family:
            assert _gone(pid, timeout=15), f"process {pid} outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_backend_is_validated():
    assert PolicyConfig().backend == "process"
    assert replace(PolicyConfig(), backend="thread").backend == "thread"
    with pytest.raises(ConfigError, match="policy.backend"):
        PolicyConfig(backend="gpu")
