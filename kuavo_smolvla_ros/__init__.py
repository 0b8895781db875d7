"""Drive the Kuavo humanoid's arms and grippers with a SmolVLA policy from ROS 2.

The public Python API: ``load_policy`` (the policy runner), ``load_config`` (the one YAML
config) and the pure core modules (scheduler, safety, observation) the node is built from.
"""

from kuavo_smolvla_ros.core.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config", "load_policy"]
__version__ = "0.1.0"


def load_policy(*args, **kwargs):
    """Load a SmolVLA checkpoint for the Kuavo profile; see ``policy.load_policy``."""
    from kuavo_smolvla_ros.runners.eager import load_policy as _load

    return _load(*args, **kwargs)
