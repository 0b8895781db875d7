"""The policy runner: a SmolVLA checkpoint behind one small interface (openpi style).

``load_policy(checkpoint)`` -> ``PolicyRunner``; ``runner.predict_chunk(state, images, task)``
takes the robot's 16-D state (rad, grippers 0..1), RGB uint8 images keyed by robot camera name
and the task text, and returns a ``(chunk_size, 16)`` array in robot units. LeRobot stays the
model definition and owns normalization (its saved pre/post processors, at 16-D); this module
only validates dims up front, builds the batch and times the call. The node, the replay tool,
training evaluation and users' scripts all go through it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.core.config import Config

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """The checkpoint cannot be found, read or used; the message says why and what to do."""


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


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A local directory as is; otherwise a hub id, fetched (or found in the HF cache)."""
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

        return Path(snapshot_download(repo_id=text))
    except Exception as exc:
        raise CheckpointError(
            f"could not fetch {text!r} from the Hugging Face Hub ({type(exc).__name__}: {exc})."
            " Offline? Download it once (huggingface-cli download) or pass a local directory."
        ) from None


@dataclass
class _Timing:
    preprocess_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0


class PolicyRunner:
    """SmolVLA + its saved processors for one robot profile.

    Use ``load_policy`` to build one. Not thread-safe: one caller at a time (the node's worker).
    """

    def __init__(
        self,
        policy: Any,
        preprocessor: Any,
        postprocessor: Any,
        camera_features: dict[str, str],
        robot_dim: int,
        device: str,
        checkpoint: Path,
    ) -> None:
        import torch

        self.policy = policy
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.camera_features = camera_features
        self.robot_dim = robot_dim
        self.device = device
        self.checkpoint = checkpoint
        self.chunk_size = int(policy.config.chunk_size)
        self.timing = _Timing()
        self._torch = torch
        self._normalizer = next(
            (s for s in preprocessor.steps if type(s).__name__ == "NormalizerProcessorStep"), None
        )
        # fast_path.FastPath when load_policy turned it on (bf16 + CUDA graphs); same contract.
        self.fast_path: Any = None

    # -- the interface ------------------------------------------------------------------------
    @property
    def last_inference_s(self) -> float:
        """Wall time of the last ``predict_chunk`` (preprocess + model + postprocess)."""
        return self.timing.total_s

    @property
    def rtc_enabled(self) -> bool:
        rtc = getattr(self.policy.config, "rtc_config", None)
        return bool(rtc is not None and rtc.enabled)

    def reset(self) -> None:
        """New episode: clears the policy's internal queues."""
        self.policy.reset()

    def predict_chunk(
        self,
        state: np.ndarray,
        images: dict[str, np.ndarray],
        task: str,
        seed: int | None = None,
        inference_delay: int | None = None,
        prev_chunk_left_over: np.ndarray | None = None,
    ) -> np.ndarray:
        """One action chunk ``(chunk_size, robot_dim)`` in robot units.

        With ``seed``, torch's global generator is seeded right before LeRobot samples its
        flow-matching noise, so ``SmolVLAPolicy.predict_action_chunk`` seeded the same way gives
        the same chunk. ``inference_delay`` / ``prev_chunk_left_over`` (robot units) are used
        when the runner was loaded with RTC.
        """
        if self.fast_path is not None:
            out = self.fast_path.predict_chunk(
                state, images, task, seed, inference_delay, prev_chunk_left_over
            )
            self.timing = _Timing(*self.fast_path.last_timing)
            return out
        torch = self._torch
        t0 = time.perf_counter()
        batch = self.make_batch(state, images, task)
        batch = self.preprocessor(batch)
        kwargs: dict[str, Any] = {}
        if self.rtc_enabled and prev_chunk_left_over is not None and len(prev_chunk_left_over):
            kwargs["inference_delay"] = int(inference_delay or 0)
            kwargs["prev_chunk_left_over"] = self._normalize_actions(prev_chunk_left_over)
        t1 = time.perf_counter()
        if seed is not None:
            torch.manual_seed(int(seed))
        actions = self.policy.predict_action_chunk(batch, **kwargs)
        actions = self.postprocessor(actions)
        out = actions.detach().to("cpu", torch.float64).numpy().reshape(-1, actions.shape[-1])
        if out.shape != (self.chunk_size, self.robot_dim):
            raise dims.DimensionError(
                f"the policy returned a {out.shape} chunk, expected ({self.chunk_size},"
                f" {self.robot_dim})."
            )
        t2 = time.perf_counter()
        self.timing = _Timing(preprocess_s=t1 - t0, inference_s=t2 - t1, total_s=t2 - t0)
        return out

    # -- helpers ------------------------------------------------------------------------------
    def make_batch(self, state: np.ndarray, images: dict[str, np.ndarray], task: str) -> dict:
        """Robot-named numpy inputs -> LeRobot's unbatched observation dict (as its robots do)."""
        torch = self._torch
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        if state.shape[0] != self.robot_dim:
            raise dims.DimensionError(
                f"state has {state.shape[0]} values, the robot profile has {self.robot_dim}."
            )
        if not np.all(np.isfinite(state)):
            raise ValueError("state contains NaN or Inf; refusing to run the policy on it.")
        batch: dict[str, Any] = {dims.STATE_KEY: torch.from_numpy(state)}
        missing = sorted(set(self.camera_features) - set(images))
        if missing:
            raise ValueError(f"missing camera image(s) {missing}; have {sorted(images)}.")
        for cam, feature in self.camera_features.items():
            img = np.asarray(images[cam])
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"camera {cam!r}: expected an RGB uint8 HxWx3 image, got {img.dtype}"
                    f" {img.shape}."
                )
            batch[feature] = torch.tensor(img).permute(2, 0, 1).float() / 255
        batch["task"] = task or ""
        return batch

    def _normalize_actions(self, actions: np.ndarray) -> Any:
        """Robot-unit actions -> the model's normalized action space (for RTC's leftover)."""
        torch = self._torch
        t = torch.as_tensor(np.asarray(actions, np.float32), device=self.device)
        if self._normalizer is not None:
            t = self._normalizer._normalize_action(t, inverse=False)
        return t.unsqueeze(0)


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


def load_policy(
    checkpoint: str | Path,
    device: str = "cpu",
    config: Config | None = None,
    *,
    rtc: bool | None = None,
    warmup: bool | None = None,
    fast_path: str | None = None,
) -> PolicyRunner:
    """Load a SmolVLA checkpoint (local dir or hub id) for the configured robot profile.

    Checks every dimension rule (``dims``) before building the model, keeps the checkpoint's
    32-D width, loads its saved pre/post processors, and optionally runs one warm-up forward.
    ``rtc`` defaults to ``config.scheduler.merge_mode == "rtc"``. ``fast_path`` (default
    ``config.policy.fast_path``): ``auto`` = on for CUDA, off elsewhere; ``on`` needs CUDA;
    see ``fast_path.py`` (bf16 + one CUDA graph per chunk, RTC included).
    """
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cfg = config or Config()
    rtc = cfg.scheduler.merge_mode == "rtc" if rtc is None else rtc
    warmup = cfg.policy.warmup if warmup is None else warmup
    fast_mode = cfg.policy.fast_path if fast_path is None else fast_path
    device = resolve_device(device)
    from kuavo_smolvla_ros.runners import fast as fp

    fast = fp.use_fast_path(fast_mode, device)  # "on" without CUDA fails here, before loading
    ckpt = resolve_checkpoint(checkpoint)
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
    norm = next((s for s in pre.steps if type(s).__name__ == "NormalizerProcessorStep"), None)
    if norm is not None and norm.stats:
        dims.check_stats(norm.stats, cfg.robot.dim)

    t0 = time.perf_counter()
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
    log.info("loaded %s on %s in %.1f s", ckpt, device, time.perf_counter() - t0)
    runner = PolicyRunner(policy, pre, post, camera_features, cfg.robot.dim, device, ckpt)
    if fast:
        try:
            runner.fast_path = fp.FastPath(runner)
        except fp.FastPathError as exc:
            if fast_mode == "on":
                raise
            log.warning("fast path off, running LeRobot eagerly: %s", exc)
    if warmup:
        t0 = time.perf_counter()
        warm_up(runner)
        log.info("warm-up (and graph capture) in %.1f s", time.perf_counter() - t0)
    return runner


def example_inputs(
    runner: PolicyRunner, height: int = 480, width: int = 640, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A plausible mid-range state and random camera images, for warm-up and tests."""
    rng = np.random.default_rng(seed)
    state = np.zeros(runner.robot_dim, dtype=np.float64)
    images = {
        cam: rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        for cam in runner.camera_features
    }
    return state, images


def warm_up(runner: PolicyRunner, task: str = "warm up") -> float:
    """One forward pass so the first real request is not the slow one; returns its time."""
    state, images = example_inputs(runner)
    runner.predict_chunk(state, images, task, seed=0)
    runner.reset()
    return runner.last_inference_s
