"""The package as ROS users install it: colcon build layout, package.xml, launch file, config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from kuavo_smolvla_ros.core.config import flatten, load_config, parameter_specs

REPO = Path(__file__).resolve().parents[1]
PKG = "kuavo_smolvla_ros"
EXECUTABLES = (
    "policy_node",
    "policy_node_rt",
    "replay",
    "kuavo-smolvla-replay",
    "kuavo-smolvla-train",
)


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
    if colcon is None:
        pytest.fail("colcon is not installed: `make setup` installs colcon-common-extensions")
    base = tmp_path_factory.mktemp("colcon")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [colcon, "--log-base", str(base / "log"), "build", "--base-paths", str(REPO)]
    cmd += ["--build-base", str(base / "build"), "--install-base", str(base / "install")]
    proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return base / "install" / PKG


def test_colcon_build_installs_launch_config_manifest_and_executables(colcon_install):
    share = colcon_install / "share" / PKG
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "policy.launch.py").is_file()
    assert (share / "config" / "kuavo_smolvla.yaml").is_file()
    assert (share / "config" / "kuavo_ros1_stock.yaml").is_file()
    marker = colcon_install / "share" / "ament_index" / "resource_index" / "packages" / PKG
    assert marker.is_file()
    for exe in EXECUTABLES:
        path = colcon_install / "lib" / PKG / exe
        assert path.is_file() and os.access(path, os.X_OK), f"{exe} not installed in lib/{PKG}"


def test_installed_config_is_the_one_the_node_loads(colcon_install):
    cfg = load_config(colcon_install / "share" / PKG / "config" / "kuavo_smolvla.yaml")
    assert cfg.robot.dim == 16
    assert cfg.outputs.arm_topic == "/kuavo_arm_traj"


def test_package_xml_is_format_3_ament_python_with_runtime_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == PKG
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    for dep in ("rclpy", "sensor_msgs", "std_msgs", "std_srvs", "diagnostic_msgs", "cv_bridge"):
        assert dep in deps
    assert {"launch", "launch_ros"} <= deps


@pytest.mark.parametrize("name", ["kuavo_smolvla.yaml", "kuavo_ros1_stock.yaml"])
def test_every_yaml_key_is_a_declared_parameter(name):
    raw = yaml.safe_load((REPO / "config" / name).read_text())
    keys = set(flatten(raw["/**"]["ros__parameters"] or {}))
    declared = {name for name, *_ in parameter_specs()}
    assert keys <= declared, keys - declared
