"""A loaded SmolVLA checkpoint as its public parts: the LeRobot policy and its processors.

Every in-process runner (``eager.PolicyRunner``, ``fast.FastRunner``) is built from one
``PolicyParts``; two runners may share one (the CPU's fast path is checked against the eager
runner on the same weights). Normalization stays LeRobot's: the saved pre-processor's
``NormalizerProcessorStep``, at the robot's 16-D.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.runners.base import ChunkRunner, Timing


def find_normalizer(preprocessor: Any) -> Any:
    """The pre-processor's ``NormalizerProcessorStep`` (None for a checkpoint without)."""
    steps = getattr(preprocessor, "steps", ())
    return next((s for s in steps if type(s).__name__ == "NormalizerProcessorStep"), None)


@dataclass
class PolicyParts:
    """What ``load_policy`` read: policy, pre/post processors and the robot's view of them."""

    policy: Any  # lerobot SmolVLAPolicy, eval mode, on ``device``
    preprocessor: Any  # its saved PolicyProcessorPipeline (tokenizer, normalizer, device)
    postprocessor: Any  # its saved unnormalizer pipeline
    camera_features: dict[str, str]  # robot camera name -> the model's image feature
    robot_dim: int
    device: str
    checkpoint: Path

    @property
    def chunk_size(self) -> int:
        return int(self.policy.config.chunk_size)

    @property
    def rtc_enabled(self) -> bool:
        rtc = getattr(self.policy.config, "rtc_config", None)
        return bool(rtc is not None and rtc.enabled)

    @property
    def normalizer(self) -> Any:
        return find_normalizer(self.preprocessor)

    def normalize_state(self, state: Any) -> Any:
        """Robot-unit state tensor -> the model's normalized state (LeRobot's statistics)."""
        norm = self.normalizer
        if norm is None:
            return state
        return norm._normalize_observation({dims.STATE_KEY: state}, inverse=False)[dims.STATE_KEY]

    def normalize_actions(self, actions: Any) -> Any:
        """Robot-unit action tensor -> the model's normalized actions (RTC's leftover)."""
        norm = self.normalizer
        return actions if norm is None else norm._normalize_action(actions, inverse=False)

    def robot_chunk(self, actions: Any) -> np.ndarray:
        """The model's normalized actions (1, chunk, action_dim) -> robot-unit (chunk, dim)."""
        import torch

        out = self.postprocessor(actions)
        return out.detach().to("cpu", torch.float64).numpy().reshape(-1, out.shape[-1])


class PartsRunner(ChunkRunner):
    """What the in-process runners share: their parts, reset and close (and ``ChunkRunner``)."""

    def __init__(self, parts: PolicyParts) -> None:
        self.parts = parts
        self.chunk_size = parts.chunk_size
        self.timing = Timing()

    # The parts under their old names (scripts, tests and training evaluation read them).
    policy = property(lambda self: self.parts.policy)
    preprocessor = property(lambda self: self.parts.preprocessor)
    postprocessor = property(lambda self: self.parts.postprocessor)
    camera_features = property(lambda self: self.parts.camera_features)
    robot_dim = property(lambda self: self.parts.robot_dim)
    device = property(lambda self: self.parts.device)
    checkpoint = property(lambda self: self.parts.checkpoint)
    rtc_enabled = property(lambda self: self.parts.rtc_enabled)
    normalizer = property(lambda self: self.parts.normalizer)

    def reset(self) -> None:
        """New episode: clears the policy's internal queues."""
        self.parts.policy.reset()

    def close(self) -> None:
        """Nothing to release in this process (the Runner interface's ``close``)."""

    def __enter__(self) -> PartsRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
