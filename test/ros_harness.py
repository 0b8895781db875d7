"""The simulated Kuavo for tests of the policy node: re-exported from the package
(``kuavo_smolvla_ros.testing.fake_robot``), which the benchmarks use too."""

from __future__ import annotations

from pathlib import Path

from kuavo_smolvla_ros.testing.fake_robot import (  # noqa: F401 - re-exported for the tests
    ARM_NAMES,
    CAMERA_TOPICS,
    NODE,
    FakeKuavo,
    check_invariant,
    child_pids,
    inference_child,
    jpeg,
    process_gone,
    start_node,
    stop_node,
)

REPO = Path(__file__).resolve().parents[1]
