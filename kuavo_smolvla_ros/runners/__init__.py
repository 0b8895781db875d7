"""Policy runners: one interface (``base.Runner``), three implementations, one factory.

``base`` (the Protocol, input/output checks, ``run_request``; numpy only), ``parts`` (a loaded
checkpoint's public parts), ``eager`` (loading, LeRobot's runner), ``fast_engine`` + ``fast``
(the fast path), ``process`` (a runner in a child process), ``factory`` (``make_runner``).
Names are imported lazily here, so ``import kuavo_smolvla_ros.runners.process`` in the node's
process does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Runner": "base",
    "Timing": "base",
    "CheckpointError": "base",
    "FastPathError": "base",
    "check_inputs": "base",
    "check_chunk": "base",
    "run_request": "base",
    "set_torch_threads": "base",
    "make_runner": "factory",
    "load_policy": "eager",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
