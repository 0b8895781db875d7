"""Loading a SmolVLA checkpoint in this process, and LeRobot's eager runner.

``load_policy(checkpoint)`` checks every dimension rule, loads the policy and its saved pre/post
processors (``parts.PolicyParts``) and returns a ``base.Runner``: ``PolicyRunner`` (LeRobot's
``predict_action_chunk``, float32, as shipped) or ``fast.FastRunner`` (the fast engine on the
same weights), as ``policy.fast_path`` and the device say. ``runner.predict_chunk(state,
images, task)`` takes the robot's 16-D state (rad, grippers 0..1), RGB uint8 images keyed by
robot camera name and the task text, and returns a ``(chunk_size, 16)`` array in robot units.
LeRobot stays the model definition and owns normalization (its saved processors, at 16-D).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import Config
from kuavo_smolvla_ros.runners.base import (
    CheckpointError,
    ChunkInputs,
    FastPathError,
    Timing,
    check_inputs,
)
from kuavo_smolvla_ros.runners.parts import PartsRunner, PolicyParts, find_normalizer
from kuavo_smolvla_ros.runners.trust import check_checkpoint_trust

__all__ = [  # CheckpointError is imported from here by the node, replay and training
    "CheckpointError",
    "PolicyRunner",
    "example_inputs",
    "load_parts",
    "load_policy",
    "pick_checked",
    "warm_up",
]

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> cuda if available, else mps, else cpu; explicit devices are checked."""
    import torch

    if device in ("", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device={device!r} but CUDA is not available here; use cpu or auto.")
    return device


def resolve_checkpoint(checkpoint: str | Path, revision: str = "") -> Path:
    """A local directory as is; otherwise a hub id, fetched (or found in the HF cache) at
    ``revision`` (``policy.revision``: a commit hash or tag pins it; empty: the latest)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json: not a LeRobot policy checkpoint.")
        return path
    text = str(checkpoint)
    if not text or path.suffix or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(
            f"checkpoint {text!r} is neither a local directory nor a hub id like"
            " 'lerobot/smolvla_base'."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, revision=revision or None))
    except Exception as exc:
        raise CheckpointError(
            f"could not fetch {text!r} from the Hugging Face Hub ({type(exc).__name__}: {exc})."
            " Offline? Download it once (huggingface-cli download) or pass a local directory."
        ) from None


class PolicyRunner(PartsRunner):
    """LeRobot's own ``predict_action_chunk`` behind the Runner interface (float32, eager).

    Equals ``SmolVLAPolicy.predict_action_chunk`` + the saved post-processor bit for bit when
    seeded the same way (test_policy). Use ``load_policy`` to build one. Not thread-safe: one
    caller at a time (the node's worker).
    """

    def _forward(self, inputs: ChunkInputs) -> tuple[np.ndarray, float]:
        """With ``inputs.seed``, torch's global generator is seeded right before LeRobot samples
        its flow-matching noise, as a caller of ``SmolVLAPolicy.predict_action_chunk`` would."""
        import torch

        p = self.parts
        batch = p.preprocessor(self._batch(inputs.state, inputs.frames, inputs.task))
        kwargs: dict[str, Any] = {}
        if inputs.rtc is not None:
            left = torch.as_tensor(inputs.rtc.leftover, device=p.device)
            kwargs["inference_delay"] = inputs.rtc.delay
            kwargs["prev_chunk_left_over"] = p.normalize_actions(left).unsqueeze(0)
        t_model = Timing.now()
        if inputs.seed is not None:
            torch.manual_seed(int(inputs.seed))
        return p.robot_chunk(p.policy.predict_action_chunk(batch, **kwargs)), t_model

    def make_batch(self, state: np.ndarray, images: dict[str, np.ndarray], task: str) -> dict:
        """Robot-named numpy inputs -> LeRobot's unbatched observation dict (as its robots do)."""
        p = self.parts
        state, frames = check_inputs(state, images, p.robot_dim, list(p.camera_features))
        return self._batch(state, frames, task)

    def _batch(self, state: np.ndarray, frames: dict[str, np.ndarray], task: str) -> dict:
        import torch

        batch: dict[str, Any] = {dims.STATE_KEY: torch.from_numpy(state)}
        for cam, feature in self.parts.camera_features.items():
            batch[feature] = torch.tensor(frames[cam]).permute(2, 0, 1).float() / 255
        batch["task"] = task or ""
        return batch


def bundled_vlm_dir(ckpt: Path) -> Path | None:
    """``<ckpt>/vlm`` when the checkpoint carries its backbone's config and processor (offline
    checkpoints from demo_model, and checkpoints fine-tuned from them), else None."""
    vlm = Path(ckpt) / "vlm"
    return vlm.resolve() if (vlm / "config.json").is_file() else None


def read_policy_config(ckpt: Path, device: str) -> Any:
    """The checkpoint's SmolVLA config, ready to build the model (inference and training).

    Redirects ``vlm_model_name`` to a bundled backbone and turns off the separate VLM weight
    download: every weight comes from the checkpoint itself.
    """
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig  # noqa: F401 (registers)

    try:
        policy_cfg = PreTrainedConfig.from_pretrained(ckpt)
    except Exception as exc:
        raise CheckpointError(f"cannot read {ckpt}/config.json: {exc}") from None
    if getattr(policy_cfg, "type", None) != "smolvla":
        raise CheckpointError(
            f"{ckpt} holds a {getattr(policy_cfg, 'type', '?')!r} policy; this package runs SmolVLA."
        )
    vlm = bundled_vlm_dir(ckpt)
    if vlm is not None:
        policy_cfg.vlm_model_name = str(vlm)
    policy_cfg.device = device
    policy_cfg.load_vlm_weights = False
    return policy_cfg


def processor_overrides(ckpt: Path, device: str) -> dict[str, dict[str, Any]]:
    """Overrides for the checkpoint's saved pre-processor: device, and a bundled tokenizer."""
    overrides: dict[str, dict[str, Any]] = {"device_processor": {"device": device}}
    vlm = bundled_vlm_dir(ckpt)
    if vlm is not None and (vlm / "tokenizer_config.json").is_file():
        overrides["tokenizer_processor"] = {"tokenizer_name": str(vlm)}
    return overrides


def load_parts(
    checkpoint: str | Path, device: str = "cpu", config: Config | None = None, rtc: bool = False
) -> PolicyParts:
    """A SmolVLA checkpoint (local dir or hub id) for the configured robot profile, loaded.

    Checks every dimension rule (``dims``) before building the model, keeps the checkpoint's
    32-D width and loads its saved pre/post processors. ``device`` must be resolved already.
    """
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cfg = config or Config()
    ckpt = resolve_checkpoint(checkpoint, cfg.policy.revision)
    # Refuse processor steps that are not LeRobot's own before LeRobot builds them (trust.py).
    check_checkpoint_trust(ckpt, cfg.policy.trust_remote_code)
    policy_cfg = read_policy_config(ckpt, device)

    ck = dims.CheckpointDims.from_policy_config(policy_cfg, dims.state_proj_in_features(ckpt))
    dims.check_checkpoint(ck, cfg.robot.dim)
    camera_features = dims.check_cameras(
        ck, cfg.inputs.cameras.names, cfg.inputs.cameras.rename_map
    )
    dims.check_n_action_steps(cfg.scheduler.n_action_steps, ck.chunk_size)
    if rtc:
        from lerobot.policies.rtc.configuration_rtc import RTCConfig

        policy_cfg.rtc_config = RTCConfig(
            enabled=True, execution_horizon=cfg.scheduler.n_action_steps
        )

    overrides = processor_overrides(ckpt, device)
    try:
        pre, post = make_pre_post_processors(
            policy_cfg, pretrained_path=str(ckpt), preprocessor_overrides=overrides
        )
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{ckpt} has no saved processors ({exc}). Checkpoints saved by LeRobot >= 0.4 carry"
            " policy_preprocessor.json; re-save older ones with LeRobot's migration script."
        ) from None
    norm = find_normalizer(pre)
    if norm is not None and norm.stats:
        dims.check_stats(norm.stats, cfg.robot.dim)

    t0 = Timing.now()
    try:
        policy = SmolVLAPolicy.from_pretrained(str(ckpt), config=policy_cfg)
    except RuntimeError as exc:
        if "size mismatch" in str(exc):
            raise CheckpointError(
                f"the weights in {ckpt} do not fit its config: {str(exc).splitlines()[0]}."
                " Keep max_state_dim/max_action_dim as the checkpoint was trained (32 for"
                " smolvla_base); the robot's 16 dims are padded inside the model."
            ) from None
        raise
    policy.eval()
    log.info("loaded %s on %s in %.1f s", ckpt, device, Timing.now() - t0)
    return PolicyParts(policy, pre, post, camera_features, cfg.robot.dim, device, ckpt)


def load_policy(
    checkpoint: str | Path,
    device: str = "cpu",
    config: Config | None = None,
    *,
    rtc: bool | None = None,
    warmup: bool | None = None,
    fast_path: str | None = None,
) -> PartsRunner:
    """Load a SmolVLA checkpoint in this process; a ``base.Runner`` (see ``load_parts``).

    ``rtc`` defaults to ``config.scheduler.merge_mode == "rtc"``, ``warmup`` (one forward pass
    at load) to ``config.policy.warmup``. ``fast_path`` (default ``config.policy.fast_path``,
    see ``fast.fast_path_plan``): ``auto`` = on CUDA the fast path (bf16 + CUDA graphs), on the
    CPU its float32 code when it equals LeRobot within ``fast.CPU_MATCH_TOL`` on the warm-up
    chunk (``pick_checked``; no warm-up, no check: eager); ``on`` needs CUDA; ``off``: eager.
    """
    from kuavo_smolvla_ros.runners import fast

    cfg = config or Config()
    rtc = cfg.scheduler.merge_mode == "rtc" if rtc is None else rtc
    warmup = cfg.policy.warmup if warmup is None else warmup
    mode = cfg.policy.fast_path if fast_path is None else fast_path
    device = resolve_device(device)
    plan = fast.fast_path_plan(mode, device)  # "on" without CUDA fails here, before loading
    parts = load_parts(checkpoint, device, cfg, rtc)
    runner: PartsRunner = PolicyRunner(parts)
    t0 = Timing.now()
    if plan == "cuda":
        try:
            runner = fast.FastRunner(parts)
        except FastPathError as exc:
            if mode == "on":
                raise
            log.warning("fast path off, running LeRobot eagerly: %s", exc)
    if plan == "cpu" and warmup:  # both run the warm-up chunk
        runner = pick_checked(runner, lambda: fast.FastRunner(parts), fast.CPU_MATCH_TOL)
    elif warmup:
        warm_up(runner)
    if warmup:
        log.info("warm-up (and graph capture) in %.1f s", Timing.now() - t0)
    return runner


def pick_checked(
    reference: PartsRunner, make_candidate: Any, tol: float, task: str = "warm up"
) -> PartsRunner:
    """``make_candidate()`` if its warm-up chunk equals ``reference``'s within ``tol`` (max abs
    difference, robot units, same seed), else ``reference``; one log line either way.

    Both run the warm-up chunk, so either comes back warm. A candidate that cannot be built or
    fails on the warm-up chunk counts as a mismatch.
    """
    state, images = example_inputs(reference)
    ref = reference.predict_chunk(state, images, task, seed=0)
    reference.reset()
    try:
        candidate = make_candidate()
        out = candidate.predict_chunk(state, images, task, seed=0)
        candidate.reset()
    except (FastPathError, RuntimeError, ValueError) as exc:
        log.warning("fast path off, running LeRobot eagerly: %s: %s", type(exc).__name__, exc)
        return reference
    diff = float(np.max(np.abs(out - ref)))
    if not diff <= tol:  # NaN too
        log.warning(
            "fast path off, running LeRobot eagerly: its warm-up chunk differs from LeRobot's by"
            " %.2g (> %.0e)",
            diff,
            tol,
        )
        return reference
    log.info(
        "fast path on (%s): warm-up chunk within %.2g of LeRobot's, %.2f s vs %.2f s",
        type(candidate).__name__,
        diff,
        candidate.last_inference_s,
        reference.last_inference_s,
    )
    return candidate


def example_inputs(
    runner: Any, height: int = 480, width: int = 640, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A plausible mid-range state and random camera images, for warm-up and tests."""
    rng = np.random.default_rng(seed)
    state = np.zeros(runner.robot_dim, dtype=np.float64)
    images = {
        cam: rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        for cam in runner.camera_features
    }
    return state, images


def warm_up(runner: Any, task: str = "warm up") -> float:
    """One forward pass so the first real request is not the slow one; returns its time."""
    state, images = example_inputs(runner)
    runner.predict_chunk(state, images, task, seed=0)
    runner.reset()
    return runner.last_inference_s
