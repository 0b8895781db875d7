"""``make_runner(config)``: the one place that picks where and how the policy runs.

- ``policy.backend: process`` -> ``process.ProcessRunner``: the model in a child process (the
  node's default: a Python-heavy forward in a thread delays the control timer).
- ``policy.backend: thread`` -> ``eager.load_policy`` in this process, which picks
  ``fast.FastRunner`` or ``eager.PolicyRunner`` from ``policy.fast_path`` and the device (the
  child process makes the same choice).

Torch's thread count is set here for the in-process runners and by ``process`` in its child,
both through ``base.set_torch_threads``.
"""

from __future__ import annotations

from pathlib import Path

from kuavo_smolvla_ros.core.config import POLICY_BACKENDS, Config, ConfigError
from kuavo_smolvla_ros.runners.base import Runner, set_torch_threads


def make_runner(
    config: Config,
    *,
    checkpoint: str | Path | None = None,
    device: str | None = None,
    backend: str | None = None,
    warmup: bool | None = None,
) -> Runner:
    """The runner ``config.policy`` asks for; ``checkpoint``, ``device`` and ``backend`` override
    its ``policy.checkpoint``, ``policy.device`` and ``policy.backend``."""
    pol = config.policy
    checkpoint = checkpoint or pol.checkpoint
    if not checkpoint:
        raise ConfigError("no checkpoint: set policy.checkpoint (or -p checkpoint:=DIR_OR_HUB_ID).")
    device = device or pol.device
    backend = backend or pol.backend
    if backend not in POLICY_BACKENDS:
        raise ConfigError(f"policy.backend={backend!r}; choose one of {POLICY_BACKENDS}.")
    if backend == "process":
        from kuavo_smolvla_ros.runners.process import ProcessRunner

        return ProcessRunner(checkpoint, device=device, config=config, warmup=warmup)
    from kuavo_smolvla_ros.runners.eager import load_policy

    set_torch_threads(pol.torch_threads)
    return load_policy(checkpoint, device=device, config=config, warmup=warmup)
