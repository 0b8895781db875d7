"""The fast path as a Runner: ``FastRunner`` drives ``fast_engine.SmolVLAEngine``.

Built from a checkpoint's public parts (``parts.PolicyParts``: the LeRobot policy and its saved
processors), like ``eager.PolicyRunner``, so the two can share one loaded model.

- **CUDA** (``policy.fast_path: auto`` or ``on``): bf16 with float32 projections, each chunk
  two CUDA graph replays, Triton kernels where Triton imports (``fast_engine`` says how).
  11.4 ms per full-size chunk on an H100 against 234 ms for LeRobot (docs/benchmarks.md).
- **CPU** (``auto``): the same engine in float32, no graphs: about half LeRobot's time per
  chunk, because the prefix is computed once per chunk, q/k/v are one matmul and the denoising
  loop does no host work. ``eager.load_policy`` keeps it only when it equals LeRobot within
  ``CPU_MATCH_TOL`` on the warm-up chunk (``pick_checked``), else it runs LeRobot eagerly.
- ``off``: LeRobot's own ``predict_action_chunk`` (``eager.PolicyRunner``).

The host side (this module): pinned staging buffers, the static task tokens (the
pre-processor's tokenizer, padded to the engine's static length), the state and RTC leftover
normalized with LeRobot's normalizer, noise from LeRobot's ``sample_noise``, and the
post-processor on the way out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kuavo_smolvla_ros.core import dims
from kuavo_smolvla_ros.runners.base import ChunkInputs, FastPathError, Timing
from kuavo_smolvla_ros.runners.fast_engine import (
    SmolVLAEngine,
    StaticInputs,
    to_mixed_precision,
    triton_available,
    unsupported_reasons,
)
from kuavo_smolvla_ros.runners.parts import PartsRunner, PolicyParts

log = logging.getLogger(__name__)

FAST_PATH_MODES = ("auto", "on", "off")
# The CPU's float32 engine is used by default only when it equals LeRobot this closely (max
# abs difference in robot units) on the warm-up chunk; it measured 1.5e-7 on the 450M model.
CPU_MATCH_TOL = 1e-5
_MAX_GRAPHS = 4  # camera-resolution sets kept captured at once


def fast_path_plan(mode: str, device: str) -> str:
    """What ``policy.fast_path`` means on ``device``: ``"cuda"`` (bf16 + CUDA graphs),
    ``"cpu"`` (float32, kept if it matches LeRobot at warm-up) or ``"off"`` (LeRobot eager).

    ``on`` without CUDA is an error: it promises the GPU path.
    """
    if mode not in FAST_PATH_MODES:
        raise FastPathError(f"fast_path={mode!r}; choose one of {FAST_PATH_MODES}.")
    is_cuda = str(device).startswith("cuda")
    if mode == "on" and not (is_cuda and torch.cuda.is_available()):
        raise FastPathError(
            f"fast_path='on' needs a CUDA device (bf16 + CUDA graphs), but the policy runs on"
            f" {device!r}. Use fast_path='auto' (CUDA: bf16 + graphs; CPU: float32 when it"
            " matches LeRobot at warm-up) or 'off'."
        )
    if mode == "off":
        return "off"
    if is_cuda:
        return "cuda"
    return "cpu" if str(device) == "cpu" else "off"


@dataclass
class _Captured:
    """Static inputs of one camera-resolution set, and its graphs once captured."""

    inputs: StaticInputs
    host_images: list[Tensor]  # pinned staging buffers (CUDA) or the device buffers (CPU)
    graphs: dict[Any, Any]  # "images", False (plain), True (RTC) -> torch.cuda.CUDAGraph
    outputs: dict[Any, Tensor]


class FastRunner(PartsRunner):
    """A Runner on the fast engine; same contract and results as ``eager.PolicyRunner``.

    ``dtype`` (default: bf16 on CUDA, float32 elsewhere): anything but float32 casts the
    parts' policy to mixed precision in place (``to_mixed_precision``), so an eager runner on
    the same parts is then no longer LeRobot's float32. With ``cuda_graphs`` (CUDA only) each
    camera-resolution set gets two captured graphs: the images (upload -> vision tower),
    replayed first so the host prepares state, noise and RTC inputs while the GPU runs it, and
    the rest of the chunk (plain, and RTC when the policy does RTC). ``triton`` (default: on
    CUDA when Triton imports) fuses RoPE / K/V writes and SiLU x up into one kernel each.
    """

    def __init__(
        self,
        parts: PolicyParts,
        dtype: torch.dtype | None = None,
        cuda_graphs: bool | None = None,
        triton: bool | None = None,
    ) -> None:
        reasons = unsupported_reasons(parts.policy, parts.camera_features, parts.preprocessor)
        if reasons:
            raise FastPathError("the fast path cannot serve this checkpoint: " + "; ".join(reasons))
        super().__init__(parts)
        self.torch_device = torch.device(parts.device)
        is_cuda = self.torch_device.type == "cuda"
        self.cuda_graphs = is_cuda if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not is_cuda:
            raise FastPathError("CUDA graphs need a CUDA device.")
        triton = (is_cuda and triton_available()) if triton is None else triton
        if dtype is None:
            dtype = torch.bfloat16 if is_cuda else torch.float32
        model = parts.policy.model
        if dtype != torch.float32:
            to_mixed_precision(model, dtype)
        cfg = parts.policy.config
        feature_to_cam = {f: c for c, f in parts.camera_features.items()}
        self.cameras = [feature_to_cam[f] for f in cfg.image_features]
        self.engine = SmolVLAEngine(model, len(self.cameras), dtype, triton=triton)
        self.max_state_dim = cfg.max_state_dim
        self.action_dim = cfg.max_action_dim
        pin = is_cuda
        self._state_host = torch.zeros(1, parts.robot_dim, pin_memory=pin)
        self._prev_host = torch.zeros(self.chunk_size, parts.robot_dim, pin_memory=pin)
        self._weights_host = torch.zeros(1, self.chunk_size, 1, pin_memory=pin)
        self._tokens: dict[str, tuple[Tensor, Tensor]] = {}
        self._captured: dict[tuple, _Captured] = {}
        self.captures = 0

    # -- one chunk (ChunkRunner.predict_chunk checks the inputs, times the call) ----------------
    @torch.no_grad()
    def _forward(self, inputs: ChunkInputs) -> tuple[np.ndarray, float]:
        """Frames into the static buffers, the image part started, then the host's inputs."""
        p = self.parts
        frames = [inputs.frames[c] for c in self.cameras]
        cap = self._buffers(tuple(f.shape for f in frames))
        inp = cap.inputs
        for host, dev, frame in zip(cap.host_images, inp.images, frames):
            host.numpy()[...] = frame
            if host is not dev:
                dev.copy_(host, non_blocking=True)
        rtc = inputs.rtc is not None
        with self._on_device():
            img = self._images(cap, rtc)  # the GPU starts on the frames; the host goes on below
            self._set_state(inp, inputs.state)
            ids, mask = self._task_tokens(inputs.task)
            inp.lang_tokens.copy_(ids)
            inp.lang_mask.copy_(mask)
            if inputs.rtc is not None:
                self._set_rtc(inp, inputs.rtc.leftover, inputs.rtc.delay)
            if inputs.seed is not None:
                torch.manual_seed(int(inputs.seed))
            noise = p.policy.model.sample_noise(
                (1, self.chunk_size, self.action_dim), self.torch_device
            )
            inp.noise.copy_(noise)
            t_model = Timing.now()
            out = self._rest(cap, img, rtc)
        return p.robot_chunk(out[:, :, : p.policy.config.action_feature.shape[0]]), t_model

    # -- helpers -------------------------------------------------------------------------------
    def _on_device(self) -> Any:
        if self.torch_device.type == "cuda":
            return torch.cuda.device(self.torch_device)
        return torch.no_grad()  # a no-op context here (already in no_grad)

    def _upload(self, host: Tensor, values: np.ndarray) -> Tensor:
        """Pinned staging -> device without waiting for the GPU (a pageable copy would)."""
        host.numpy()[...] = values
        return host.to(self.torch_device, non_blocking=True)

    def _set_state(self, inp: StaticInputs, state: np.ndarray) -> None:
        t = self.parts.normalize_state(self._upload(self._state_host, state[None]))
        inp.state.zero_()
        inp.state[:, : t.shape[-1]].copy_(t)

    def _task_tokens(self, task: str) -> tuple[Tensor, Tensor]:
        """The preprocessor's tokens for ``task`` (cached), right-padded to the static length."""
        task = task or ""
        if task not in self._tokens:
            from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

            r = self.parts
            batch = r.preprocessor(
                {dims.STATE_KEY: torch.zeros(r.robot_dim, dtype=torch.float32), "task": task}
            )
            ids, mask = batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
            n = min(ids.shape[1], self.engine.lang_len)
            pad_id = 0
            tok = getattr(r.policy.model.vlm_with_expert.processor, "tokenizer", None)
            if tok is not None and tok.pad_token_id is not None:
                pad_id = int(tok.pad_token_id)
            full_ids = torch.full((1, self.engine.lang_len), pad_id, dtype=torch.long)
            full_mask = torch.zeros((1, self.engine.lang_len), dtype=torch.bool)
            full_ids[:, :n] = ids[:, :n].cpu()
            full_mask[:, :n] = mask[:, :n].cpu().bool()
            if len(self._tokens) > 64:
                self._tokens.clear()
            self._tokens[task] = (full_ids.to(self.torch_device), full_mask.to(self.torch_device))
        return self._tokens[task]

    def _set_rtc(self, inp: StaticInputs, leftover: np.ndarray, delay: int) -> None:
        """RTC's padded leftover and prefix weights, as ``RTCProcessor.denoise_step`` builds them."""
        r = self.parts
        left = np.asarray(leftover, dtype=np.float32)
        h = min(left.shape[0], self.chunk_size)
        horizon = min(r.policy.config.rtc_config.execution_horizon, left.shape[0])
        w = r.policy.rtc_processor.get_prefix_weights(delay, horizon, self.chunk_size)
        self._prev_host.zero_()
        prev = self._upload(self._prev_host[:h], left[:h])  # robot units, on the device
        prev = self.parts.normalize_actions(prev)
        inp.prev.zero_()
        inp.prev[0, :h, : prev.shape[-1]].copy_(prev)
        inp.weights.copy_(self._upload(self._weights_host, w.view(1, self.chunk_size, 1).numpy()))

    def _buffers(self, shapes: tuple) -> _Captured:
        cap = self._captured.get(shapes)
        if cap is not None:
            return cap
        if len(self._captured) >= _MAX_GRAPHS:
            self._captured.pop(next(iter(self._captured)))
        dev = self.torch_device
        images = [torch.empty(s, dtype=torch.uint8, device=dev) for s in shapes]
        if dev.type == "cuda":
            host = [torch.empty(s, dtype=torch.uint8, pin_memory=True) for s in shapes]
        else:
            host = images
        L = self.engine.lang_len
        inp = StaticInputs(
            images=images,
            lang_tokens=torch.zeros(1, L, dtype=torch.long, device=dev),
            lang_mask=torch.zeros(1, L, dtype=torch.bool, device=dev),
            state=torch.zeros(1, self.max_state_dim, dtype=torch.float32, device=dev),
            noise=torch.zeros(1, self.chunk_size, self.action_dim, dtype=torch.float32, device=dev),
            prev=torch.zeros(1, self.chunk_size, self.action_dim, dtype=torch.float32, device=dev),
            weights=torch.zeros(1, self.chunk_size, 1, dtype=torch.float32, device=dev),
        )
        cap = _Captured(inputs=inp, host_images=host, graphs={}, outputs={})
        self._captured[shapes] = cap
        return cap

    def _images(self, cap: _Captured, rtc: bool) -> Tensor:
        """Start the image part (graph replay, or eager); returns its output tensor."""
        if not self.cuda_graphs:
            return self.engine.image_embeddings(cap.inputs.images)
        if "images" not in cap.graphs:
            # A new camera-resolution set: capture the image graph and the rest (plain, and RTC
            # when the runner does RTC), so no later chunk pays for a capture.
            try:
                self._capture(cap, {rtc, bool(self.parts.rtc_enabled)})
            except RuntimeError as exc:  # a driver/library that refuses capture: stay eager
                log.warning("CUDA graph capture failed, running the fast path eagerly: %s", exc)
                self.cuda_graphs = False
                cap.graphs.clear()
                return self.engine.image_embeddings(cap.inputs.images)
        cap.graphs["images"].replay()
        return cap.outputs["images"]

    def _rest(self, cap: _Captured, img: Tensor, rtc: bool) -> Tensor:
        if not self.cuda_graphs:
            return self.engine.sample_from(cap.inputs, img, rtc)
        if rtc not in cap.graphs:
            self._capture(cap, {rtc})
        cap.graphs[rtc].replay()
        return cap.outputs[rtc]

    def _capture(self, cap: _Captured, flags: set[bool]) -> None:
        """Eager passes on a side stream (kernel selection, workspaces, Triton JIT), then capture.

        The image graph's output stays alive in ``cap.outputs``: the other graphs read it.
        """
        t0 = Timing.now()
        eng, inp = self.engine, cap.inputs
        stream = torch.cuda.Stream(device=self.torch_device)
        stream.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                img = eng.image_embeddings(inp.images)
                for rtc in flags:
                    eng.sample_from(inp, img, rtc)
        torch.cuda.current_stream(self.torch_device).wait_stream(stream)
        if "images" not in cap.graphs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                cap.outputs["images"] = eng.image_embeddings(inp.images)
            cap.graphs["images"] = graph
        for rtc in sorted(flags - set(cap.graphs)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                cap.outputs[rtc] = eng.sample_from(inp, cap.outputs["images"], rtc)
            cap.graphs[rtc] = graph
        self.captures += 1
        log.info(
            "captured SmolVLA chunk graphs (cameras %s, rtc %s) in %.2f s",
            [tuple(im.shape) for im in inp.images],
            sorted(flags),
            Timing.now() - t0,
        )
