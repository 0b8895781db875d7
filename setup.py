"""ament_python setup for kuavo_smolvla_ros (also pip-installable into a plain venv)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "kuavo_smolvla_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "benchmarks", "benchmarks.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    package_data={package_name: ["config/*.yaml"]},
    install_requires=["setuptools", "numpy", "pyyaml"],
    zip_safe=True,
    maintainer="kuavo_smolvla_ros maintainers",
    maintainer_email="maintainers@kuavo-smolvla-ros.invalid",
    description="SmolVLA policy node, rosbag replay and fine-tuning for the Kuavo humanoid's arms.",
    license="Apache-2.0",
    python_requires=">=3.10",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "policy_node = kuavo_smolvla_ros.ros.node:main",
            "policy_node_rt = kuavo_smolvla_ros.ros.realtime:main",
            "replay = kuavo_smolvla_ros.replay.cli:main",
            "kuavo-smolvla-replay = kuavo_smolvla_ros.replay.cli:main",
            "kuavo-smolvla-make-demo-model = kuavo_smolvla_ros.demo.model:main",
            "kuavo-smolvla-make-demo-bag = kuavo_smolvla_ros.demo.bag:main",
            "kuavo-smolvla-train = kuavo_smolvla_ros.training.cli:main",
            "kuavo-smolvla-convert = kuavo_smolvla_ros.training.convert:main",
            "kuavo-smolvla-sim = kuavo_smolvla_ros.sim.cli:main",
            "kuavo-smolvla-eval = kuavo_smolvla_ros.sim.eval:main",
        ],
    },
)
