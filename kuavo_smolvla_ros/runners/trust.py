"""What a checkpoint is trusted to make this process build: LeRobot's registered processor steps.

LeRobot rebuilds a checkpoint's pre/post-processing from ``policy_preprocessor.json`` and
``policy_postprocessor.json``: each step names a class, either by ``registry_name`` (looked up in
``lerobot.processor.ProcessorStepRegistry``) or by ``class`` (a ``module.Class`` path that LeRobot
imports and instantiates with the step's config). A file naming ``subprocess.Popen`` therefore
runs a command on load. This module reads those files as plain JSON *before* anything is built
and refuses any step that is not one of LeRobot's own registered steps or this package's, naming
it. ``policy.trust_remote_code: true`` lifts the check (the README says what that means).

Nothing else in a checkpoint is code: weights are safetensors, ``config.json`` is parsed into
LeRobot's typed config, the tokenizer is loaded without ``trust_remote_code``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kuavo_smolvla_ros.runners.base import CheckpointError

TRUSTED_MODULES = ("lerobot.", "kuavo_smolvla_ros.")
PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")


class UntrustedCheckpointError(CheckpointError):
    """The checkpoint names a class this package will not build without trust_remote_code."""


def trusted_steps() -> dict[str, str]:
    """``registry name -> module.Class`` of every trusted registered processor step.

    Imports LeRobot's processor modules (and SmolVLA's) so their steps are registered; a step
    registered by any other module (a plugin imported in this process) is not trusted.
    """
    import lerobot.policies.smolvla.processor_smolvla
    import lerobot.processor  # noqa: F401 (registers LeRobot's steps)
    from lerobot.processor import ProcessorStepRegistry

    out: dict[str, str] = {}
    for name in ProcessorStepRegistry.list():
        cls = ProcessorStepRegistry.get(name)
        path = f"{cls.__module__}.{cls.__qualname__}"
        if path.startswith(TRUSTED_MODULES):
            out[name] = path
    return out


def _steps(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}).") from None
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        raise CheckpointError(f"{path} has no 'steps' list: not a LeRobot processor file.")
    return steps


def untrusted_steps(ckpt: Path) -> list[str]:
    """``file: step`` for each processor step of ``ckpt`` that is not trusted (empty: all fine).

    Every ``*processor*.json`` in the checkpoint is read (the two LeRobot loads, and any other
    a caller might load), as JSON only: nothing is imported or built here.
    """
    trusted = trusted_steps()
    trusted_paths = set(trusted.values())
    bad: list[str] = []
    files = sorted({*(ckpt / f for f in PROCESSOR_FILES), *ckpt.glob("*processor*.json")})
    for path in files:
        if not path.is_file():
            continue
        for i, step in enumerate(_steps(path)):
            where = f"{path.name} step {i}"
            if not isinstance(step, dict):
                bad.append(f"{where}: {step!r} (not a step entry)")
            elif "registry_name" in step:
                name = step["registry_name"]
                if name not in trusted:
                    bad.append(f"{where}: registry_name {name!r} (not a LeRobot-registered step)")
            elif "class" in step:
                if step["class"] not in trusted_paths:
                    bad.append(f"{where}: class {step['class']!r}")
            else:
                bad.append(f"{where}: names no class ({sorted(step)})")
    return bad


def check_checkpoint_trust(ckpt: str | Path, trust_remote_code: bool = False) -> None:
    """Refuse ``ckpt`` before anything is built if a processor file names an untrusted class.

    Raises ``UntrustedCheckpointError`` naming every such step, unless ``trust_remote_code``.
    """
    if trust_remote_code:
        return
    bad = untrusted_steps(Path(ckpt))
    if bad:
        raise UntrustedCheckpointError(
            f"checkpoint {ckpt} asks to build classes that are not LeRobot's registered processor"
            f" steps: {'; '.join(bad)}. Loading it would import and run them, so it was refused"
            " before anything was built. If you trust its author, set"
            " policy.trust_remote_code: true."
        )
