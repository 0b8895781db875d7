"""The launch file without launch/launch_ros (not installable here): its arguments come from the
config dataclasses, and ``realtime:=true`` without permission fails with one line saying how to
grant it (the wrapper run for real, with CAP_SYS_NICE dropped and an rtprio limit of 0)."""

from __future__ import annotations

import ast
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kuavo_smolvla_ros.core.config import NODE_NAME, parameter_fields
from kuavo_smolvla_ros.ros.realtime import EXIT_NO_REALTIME

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "policy.launch.py"
RT_WRAPPER = Path(sys.executable).parent / "policy_node_rt"


@pytest.fixture(scope="module")
def launch_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("policy_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # launch/launch_ros are imported only inside functions
    return module


def test_launch_file_parses_and_defines_generate_launch_description(launch_module):
    tree = ast.parse(LAUNCH_FILE.read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in names
    assert launch_module.NODE_NAME == NODE_NAME


def test_parameter_arguments_are_described_by_the_dataclasses(launch_module):
    specs = {s.name: s for s in parameter_fields()}
    args = {name: (default, desc) for name, default, desc in launch_module.launch_arguments()}
    assert {"config", "use_sim_time", "namespace", "realtime"} <= set(args)
    assert {"checkpoint", "device", "task", "dry_run"} <= set(args)
    for arg, param in launch_module.PARAMETER_ARGS.items():
        assert param in specs, f"launch argument {arg} sets unknown parameter {param}"
        default, desc = args[arg]
        assert default == "", f"{arg}: an empty default keeps the config file's value"
        assert desc.startswith(param) and specs[param].full_description() in desc, arg
    assert "CAP_SYS_NICE" in args["realtime"][1] and "/**" in args["namespace"][1]


def test_parameter_overrides_are_typed_like_the_fields(launch_module):
    out = launch_module.parameter_overrides(
        {"checkpoint": "/ckpt", "dry_run": "True", "start_enabled": "false", "task": ""}
    )
    assert out == {"policy.checkpoint": "/ckpt", "dry_run": True, "start_enabled": False}


def test_launch_fails_when_the_node_reports_no_realtime(launch_module):
    """LaunchService returns 1 when an event handler raises; the message says how to grant."""
    with pytest.raises(RuntimeError, match="setcap cap_sys_nice\\+ep"):
        launch_module._on_node_exit(types.SimpleNamespace(returncode=EXIT_NO_REALTIME), None)
    assert launch_module._on_node_exit(types.SimpleNamespace(returncode=0), None) is None


def _without_rt_permission() -> None:
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))


def _unprivileged(cmd: list[str]) -> list[str]:
    """Drop CAP_SYS_NICE for ``cmd`` (root in a container has it)."""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop CAP_SYS_NICE")
        return [setpriv, "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", *cmd]
    return cmd


def test_realtime_wrapper_without_permission_prints_how_to_grant_and_fails():
    assert RT_WRAPPER.is_file(), "policy_node_rt is not installed (pip install -e .)"
    proc = subprocess.run(
        _unprivileged([str(RT_WRAPPER), "--ros-args", "-p", "policy.checkpoint:=/nonexistent"]),
        preexec_fn=_without_rt_permission,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_NO_REALTIME, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in ("SCHED_FIFO", "CAP_SYS_NICE", "setcap cap_sys_nice+ep", "limits.conf"):
        assert needle in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_realtime_wrapper_with_permission_runs_the_node_under_fifo(tmp_path):
    """Where this process may use SCHED_FIFO, the wrapper starts the node itself (which then
    refuses the missing checkpoint with its one-line fatal, exit 2)."""
    probe = subprocess.run(
        [sys.executable, "-c", "from kuavo_smolvla_ros.ros.realtime import enter_realtime as e;"
         " raise SystemExit(0 if e(10) is None else 1)"],
        timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("this machine does not allow SCHED_FIFO (the refusal test covers it)")
    proc = subprocess.run(
        [str(RT_WRAPPER), "--ros-args", "-p", f"policy.checkpoint:={tmp_path / 'missing'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot start" in proc.stdout + proc.stderr
