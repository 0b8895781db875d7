"""The fast path's engine: one SmolVLA chunk as plain tensor code (no host syncs, no copies).

LeRobot's ``VLAFlowMatching`` stays the model definition: its weights and modules (vision
tower, connector, VLM and expert layers, projections) and its helpers (``resize_with_pad``,
``make_att_2d_masks``, ``create_sinusoidal_pos_embedding``, ``sample_noise``, the RTC
processor's prefix weights) are used as they are. Only how one chunk runs changes
(``fast.FastRunner`` drives this engine: host side, CUDA graphs, the Runner interface):

1. **Static shapes.** The task's tokens are padded (and masked) to a fixed length chosen so
   the prefix is a multiple of 16 tokens; camera resolutions are those of the first call (a
   new resolution captures its own graphs, up to four sets are kept).
2. **bf16 where it is safe.** The vision tower, the VLM and the action expert run in bf16.
   The five small projections (``state_proj``, ``action_in_proj``, ``action_out_proj``,
   ``action_time_mlp_in/out``), the flow state ``x_t``, the velocity and RoPE stay float32:
   ``model.to(bfloat16)`` fails in ``sample_actions`` because float32 noise/state meet bf16
   ``nn.Linear`` weights there; keeping those layers float32 is what removes the mismatch.
3. **Images on the GPU.** uint8 frames are uploaded as they are (pinned staging); the
   uint8 -> [0, 1] -> resize with padding -> [-1, 1] steps of LeRobot's ``prepare_images`` run
   on the GPU, the three cameras as one batch through the vision tower.
4. **The prefix once per chunk.** Images + task + state fill the K/V cache once; all flow steps
   reuse it. For the expert's cross-attention layers the expert's K/V projections of that
   cache are also computed once per chunk (LeRobot recomputes them at each of the 10 steps).
5. **No host work in the loop.** Timestep embeddings and RoPE tables are precomputed device
   tensors (LeRobot's loop copies ``torch.tensor(time)`` to the GPU at each step and builds
   its masks from Python lists). A chunk is two graph replays: the images (vision tower),
   during which the host uploads state, noise and RTC inputs, then the rest (prefix, 10
   denoising steps, RTC guidance). One host sync per chunk: the result's copy back.
6. **Fewer kernels** (the run is launch-bound: about 2,200 kernels per chunk). Attention goes
   through ``scaled_dot_product_attention`` with additive masks (the same softmax attention
   as LeRobot's eager one), RMSNorm through ``F.rms_norm``, q/k/v (and the expert's gate/up)
   through one matmul each (concatenated weight copies, about 200 MB in bf16), residual adds
   fused into the output GEMMs (``addmm_``), and two Triton kernels: RoPE + bf16 cast + the
   K/V cache writes of a layer, and SiLU(gate) * up. Their torch equivalents stay as the
   reference (``triton=False``) and are tested against them on the CPU interpreter.

No ``torch.compile``: start-up is load + bf16 cast + two warm-up passes (Triton JIT) + capture,
about 11 s on an H100 (LeRobot's ``compile_model`` autotuned for more than 8 minutes).

**RTC.** LeRobot 0.4.4's guidance (``RTCProcessor.denoise_step``) calls the denoiser before
``x_t`` requires grad, so its autograd "correction" is exactly the weighted error
``(prev - (x_t - t * v_t)) * w`` and no gradient flows through the network. The fast path
computes that closed form inside its own captured graph (leftover and prefix weights are static
inputs), so RTC chunks cost what plain ones do; no eager fallback is needed. ``test_fast_path``
pins the result to LeRobot's RTC output: were LeRobot to differentiate through the network, that
test fails and RTC must go back to the eager path (``fast_path="off"``) until the fast path
follows. RTC with ``rtc_config.debug`` (LeRobot's tracker) is not served: the runner stays eager.

Numbers (docs/benchmarks.md, H100, 450M model, 3 cameras): 11.4 ms per chunk against 234 ms for
LeRobot's float32 ``predict_action_chunk``; bf16 outputs within 3e-3 relative of float32. On the
CPU the same code in float32 equals LeRobot's ``sample_actions`` to 1e-5 (tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kuavo_smolvla_ros.runners.base import FastPathError
from kuavo_smolvla_ros.runners.parts import find_normalizer

# The small float32 layers around the bf16 transformer (see the module docstring, point 2).
FLOAT32_MODULES = (
    "state_proj",
    "action_in_proj",
    "action_out_proj",
    "action_time_mlp_in",
    "action_time_mlp_out",
)


def unsupported_reasons(
    policy: Any, camera_features: dict[str, str], preprocessor: Any = None
) -> list[str]:
    """Why the fast path cannot run this SmolVLA (empty when it can)."""
    from lerobot.configs.types import FeatureType, NormalizationMode

    cfg = policy.config
    vwe = policy.model.vlm_with_expert
    reasons = []
    if cfg.add_image_special_tokens:
        reasons.append("add_image_special_tokens=True")
    if cfg.prefix_length > 0:
        reasons.append(f"prefix_length={cfg.prefix_length} (prefix padding)")
    if cfg.adapt_to_pi_aloha:
        reasons.append("adapt_to_pi_aloha=True")
    if vwe.num_expert_layers != vwe.num_vlm_layers:
        reasons.append(
            f"num_expert_layers={vwe.num_expert_layers} != num_vlm_layers={vwe.num_vlm_layers}"
        )
    models = [vwe.get_vlm_model().text_model, vwe.lm_expert]
    for layer in [*models[0].layers, *models[1].layers]:
        att, mlp = layer.self_attn, layer.mlp
        if any(lin.bias is not None for lin in (att.q_proj, att.k_proj, att.v_proj)) or any(
            lin.bias is not None for lin in (mlp.gate_proj, mlp.up_proj)
        ):
            reasons.append("q/k/v or gate/up projections with biases")
            break
    norm = find_normalizer(preprocessor)
    norm_map = norm.norm_map if norm is not None else {}
    mode = norm_map.get(FeatureType.VISUAL, NormalizationMode.IDENTITY)
    if NormalizationMode(mode) != NormalizationMode.IDENTITY:
        reasons.append(f"images are normalized with {mode} (the GPU path assumes IDENTITY)")
    fed = set(camera_features.values())
    missing = [k for k in cfg.image_features if k not in fed]
    if missing:
        reasons.append(f"image features {missing} have no camera (empty cameras)")
    rtc = getattr(cfg, "rtc_config", None)
    if rtc is not None and rtc.enabled and rtc.debug:
        reasons.append("rtc_config.debug=True (LeRobot's RTC tracker runs eagerly)")
    return reasons


def to_mixed_precision(model: Any, dtype: torch.dtype = torch.bfloat16) -> None:
    """Cast the VLM + expert to ``dtype``; the small projections in FLOAT32_MODULES stay float32."""
    model.vlm_with_expert.to(dtype)
    for name in FLOAT32_MODULES:
        getattr(model, name).to(torch.float32)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _rope_tables(positions: Tensor, head_dim: int, max_wavelength: float = 10_000) -> tuple:
    """``cos``, ``sin`` (B, L, 1, D) float32 such that ``_rope(x) == apply_rope(x, positions)``.

    Same arithmetic as ``smolvlm_with_expert.apply_rope``; the sign of the first half of
    ``sin`` and the half swap in ``_rope`` replace its split + four products.
    """
    d_half = head_dim // 2
    freq_exponents = (2.0 / head_dim) * torch.arange(
        d_half, dtype=torch.float32, device=positions.device
    )
    timescale = max_wavelength**freq_exponents
    radians = positions[..., None].to(torch.float32) / timescale[None, None, :]
    radians = radians[..., None, :]
    sin, cos = torch.sin(radians), torch.cos(radians)
    return torch.cat([cos, cos], dim=-1).contiguous(), torch.cat([-sin, sin], dim=-1).contiguous()


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE of ``x`` (B, L, H, D), any dtype, computed and returned in float32."""
    d = x.shape[-1] // 2
    swapped = torch.cat([x[..., d:], x[..., :d]], dim=-1)
    out = x * cos
    out.addcmul_(swapped, sin)
    return out


def _expand_heads(x: Tensor, groups: int) -> Tensor:
    """(B, L, kv_heads, D) -> (B, L, kv_heads * groups, D), as LeRobot's eager attention does."""
    if groups == 1:
        return x
    b, n, h, d = x.shape
    return x[:, :, :, None, :].expand(b, n, h, groups, d).reshape(b, n, h * groups, d)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean "may attend" mask -> additive mask (0 / most negative finite) with a head dim."""
    return torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Softmax attention on (B, L, H, D) tensors -> (B, Lq, H * D)."""
    b, n, h, d = q.shape
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2).reshape(b, n, h * d)


def _rms(x: Tensor, norm: Any) -> Tensor:
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


def _add_linear_(x: Tensor, inp: Tensor, linear: Any) -> Tensor:
    """``x += linear(inp)`` in place: one GEMM with the residual as its C (no bias) operand."""
    x2 = x.view(-1, x.shape[-1])
    if linear.bias is None:
        x2.addmm_(inp.reshape(-1, inp.shape[-1]), linear.weight.t())
    else:
        x2.add_(linear(inp).reshape(x2.shape))
    return x


# -- two fused kernels (Triton), used on CUDA; the torch code above/below is the reference ------
_TRITON: dict[str, Any] = {}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_kernels() -> dict[str, Any]:
    """Compiled lazily (``TRITON_INTERPRET=1`` set before the first call runs them on the CPU)."""
    if _TRITON:
        return _TRITON
    import triton
    import triton.language as tl

    @triton.jit
    def rope_qkv_kernel(
        qkv_ptr, cos_ptr, sin_ptr, q_ptr, kexp_ptr, vexp_ptr, kraw_ptr, vraw_ptr,
        n, s_qkv, s_csb, s_q, s_expb, s_expn, s_rawb, s_rawn,
        H: tl.constexpr, KV: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
        BH: tl.constexpr, BKV: tl.constexpr, WRITE_EXP: tl.constexpr, WRITE_RAW: tl.constexpr,
    ):  # fmt: skip
        # One token per program: RoPE'd q out; RoPE'd k and v head-expanded and/or as they are.
        pid = tl.program_id(0)
        bi = pid // n
        i = pid % n
        d = tl.arange(0, D)
        dsw = (d + D // 2) % D
        cos = tl.load(cos_ptr + bi * s_csb + i * D + d)
        sin = tl.load(sin_ptr + bi * s_csb + i * D + d)
        row = qkv_ptr + pid * s_qkv
        h = tl.arange(0, BH)[:, None]
        hm = h < H
        x = tl.load(row + h * D + d[None, :], mask=hm).to(tl.float32)
        xs = tl.load(row + h * D + dsw[None, :], mask=hm).to(tl.float32)
        q = x * cos[None, :] + xs * sin[None, :]
        tl.store(q_ptr + pid * s_q + h * D + d[None, :], q.to(q_ptr.dtype.element_ty), mask=hm)
        if KV > 0:
            kh = tl.arange(0, BKV)[:, None]
            km = kh < KV
            krow = row + H * D
            k = tl.load(krow + kh * D + d[None, :], mask=km).to(tl.float32)
            ks = tl.load(krow + kh * D + dsw[None, :], mask=km).to(tl.float32)
            k = k * cos[None, :] + ks * sin[None, :]
            v = tl.load(krow + KV * D + kh * D + d[None, :], mask=km)
            if WRITE_RAW:
                off = bi * s_rawb + i * s_rawn + kh * D + d[None, :]
                tl.store(kraw_ptr + off, k.to(kraw_ptr.dtype.element_ty), mask=km)
                tl.store(vraw_ptr + off, v.to(vraw_ptr.dtype.element_ty), mask=km)
            if WRITE_EXP:
                ke = k.to(kexp_ptr.dtype.element_ty)
                ve = v.to(vexp_ptr.dtype.element_ty)
                for r in tl.static_range(G):
                    off = bi * s_expb + i * s_expn + (kh * G + r) * D + d[None, :]
                    tl.store(kexp_ptr + off, ke, mask=km)
                    tl.store(vexp_ptr + off, ve, mask=km)

    @triton.jit
    def silu_mul_kernel(g_ptr, u_ptr, out_ptr, cols, s_g, s_u, s_out, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = c < cols
        g = tl.load(g_ptr + row * s_g + c, mask=m).to(tl.float32)
        u = tl.load(u_ptr + row * s_u + c, mask=m).to(tl.float32)
        y = g / (1.0 + tl.exp(-g)) * u  # silu(g) * u; tl.sigmoid, as written in Triton
        tl.store(out_ptr + row * s_out + c, y.to(out_ptr.dtype.element_ty), mask=m)

    _TRITON.update(rope_qkv=rope_qkv_kernel, silu_mul=silu_mul_kernel, triton=triton)
    return _TRITON


@dataclass
class StaticInputs:
    """Device tensors a chunk reads; a captured graph reads them at these addresses."""

    images: list[Tensor]  # (H, W, 3) uint8 per camera, in the model's image-feature order
    lang_tokens: Tensor  # (1, L) int64, padded to the engine's lang_len
    lang_mask: Tensor  # (1, L) bool
    state: Tensor  # (1, max_state_dim) float32, normalized and zero-padded
    noise: Tensor  # (1, chunk_size, max_action_dim) float32
    prev: Tensor  # (1, chunk_size, max_action_dim) float32, RTC leftover (normalized, padded)
    weights: Tensor  # (1, chunk_size, 1) float32, RTC prefix weights


class SmolVLAEngine:
    """One chunk of SmolVLA inference as plain tensor code: no host syncs, no host->device copies.

    ``sample(inputs, rtc)`` is what ``VLAFlowMatching.sample_actions`` computes (plus RTC's
    guidance when ``rtc``), on the model's own modules and weights, in two parts:
    ``image_embeddings`` (frames -> vision tower -> connector) and ``sample_from`` (the rest).
    It runs eagerly (the CPU tests run it in float32) or under CUDA graph capture (``FastPath``).
    ``triton`` swaps two groups of small ops for one fused kernel each (RoPE + cast + K/V
    writes; SiLU x up); the torch code is the reference they are tested against.
    """

    def __init__(
        self,
        model: Any,
        n_images: int,
        dtype: torch.dtype = torch.bfloat16,
        triton: bool = False,
    ) -> None:
        from lerobot.policies.smolvla.modeling_smolvla import create_sinusoidal_pos_embedding

        self.model = model
        self.cfg = cfg = model.config
        self.dtype = dtype
        self.device = model.state_proj.weight.device
        vwe = model.vlm_with_expert
        vlm = vwe.get_vlm_model()
        self.vision, self.connector, self.text = vlm.vision_model, vlm.connector, vlm.text_model
        self.expert = vwe.lm_expert
        self.vlm_layers, self.expert_layers = vwe.get_model_layers([self.text, self.expert])
        self.n_layers = len(self.vlm_layers)
        self.n_heads = vwe.num_attention_heads
        self.n_kv = vwe.num_key_value_heads
        self.groups = self.n_heads // self.n_kv
        self.head_dim = vwe.config.text_config.head_dim
        self.scale = self.head_dim**-0.5
        every = vwe.self_attn_every_n_layers
        self.self_attn = [
            "cross" not in vwe.attention_mode or (every > 0 and i % every == 0)
            for i in range(self.n_layers)
        ]
        self.chunk = cfg.chunk_size
        self.action_dim = cfg.max_action_dim
        self.chunk_pad = _round_up(self.chunk, 16)
        d = self.head_dim
        silu = all(
            type(m.mlp.act_fn).__name__ in ("SiLU", "SiLUActivation") for m in self.vlm_layers
        )
        self.triton = bool(triton and d & (d - 1) == 0 and silu)

        # Prefix layout: n_images * tokens-per-image, language (padded), one state token; the
        # language length is chosen so the prefix is a multiple of 16 (aligned SDPA masks).
        side = cfg.resize_imgs_with_padding
        vcfg = self.vision.config
        img_px = side[1] if side is not None else vcfg.image_size
        patches = (img_px // vcfg.patch_size) ** 2
        self.img_tokens = patches // self.connector.scale_factor**2
        fixed = n_images * self.img_tokens + 1
        self.lang_len = _round_up(fixed + cfg.tokenizer_max_length, 16) - fixed
        self.prefix_len = fixed + self.lang_len
        self.n_images = n_images

        dev = self.device
        with torch.no_grad():
            self.prefix_att = torch.zeros(1, self.prefix_len, dtype=torch.bool, device=dev)
            self.prefix_att[:, -1] = True  # the state token: images/language do not attend to it
            causal = torch.zeros(self.chunk, self.chunk_pad, dtype=torch.bool, device=dev)
            causal[:, : self.chunk] = torch.ones(self.chunk, self.chunk, device=dev).tril().bool()
            self.suffix_causal = causal
            self.cross_cos, self.cross_sin = _rope_tables(
                torch.arange(self.chunk, device=dev)[None], self.head_dim
            )
            # Flow steps: LeRobot's times, its sinusoidal timestep embedding, precomputed.
            self.dt = -1.0 / cfg.num_steps
            self.times = [1.0 + s * self.dt for s in range(cfg.num_steps)]
            width = vwe.expert_hidden_size
            self.time_emb = [
                create_sinusoidal_pos_embedding(
                    torch.tensor(t, dtype=torch.float32, device=dev).expand(1),
                    width,
                    cfg.min_period,
                    cfg.max_period,
                    device=torch.device(dev),
                ).to(torch.float32)
                for t in self.times
            ]
            self.guidance = self._guidance_weights()
            self._fuse_weights()
        self._patch_pos: dict[tuple[int, int], Tensor] = {}

    # -- setup helpers -------------------------------------------------------------------------
    def _guidance_weights(self) -> list[float] | None:
        """RTC's per-step guidance weight, computed as ``RTCProcessor.denoise_step`` does."""
        rtc = getattr(self.cfg, "rtc_config", None)
        if rtc is None:
            return None
        out = []
        for t in self.times:
            tau = torch.as_tensor(1 - t)
            max_w = torch.as_tensor(rtc.max_guidance_weight)
            sq = (1 - tau) ** 2
            inv_r2 = (sq + tau**2) / sq
            c = torch.nan_to_num((1 - tau) / tau, posinf=max_w)
            w = torch.minimum(torch.nan_to_num(c * inv_r2, posinf=max_w), max_w)
            out.append(float(w))
        return out

    def _fuse_weights(self) -> None:
        """One matmul for q/k/v of every vision, VLM and expert layer, and the expert's gate/up.

        Also q/k/v of the vision tower. Concatenated copies (about 200 MB in bf16 for the 450M
        model); only the vision tower's have biases.
        """
        self.vis_qkv = []
        for layer in self.vision.encoder.layers:
            att = layer.self_attn
            w = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach()
            parts = (att.q_proj.bias, att.k_proj.bias, att.v_proj.bias)
            b = torch.cat(parts).detach() if all(t is not None for t in parts) else None
            self.vis_qkv.append((w, b))
        self.vlm_qkv_w, self.qkv_w, self.gate_up_w = [], [], []
        for layer in self.vlm_layers:
            att = layer.self_attn
            self._no_bias(att.q_proj, att.k_proj, att.v_proj)
            w = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
            self.vlm_qkv_w.append(w.detach())
        for i, layer in enumerate(self.expert_layers):
            att, mlp = layer.self_attn, layer.mlp
            self._no_bias(att.q_proj, att.k_proj, att.v_proj, mlp.gate_proj, mlp.up_proj)
            if self.self_attn[i]:
                w = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
            else:
                w = att.q_proj.weight
            self.qkv_w.append(w.detach())
            self.gate_up_w.append(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach())

    @staticmethod
    def _no_bias(*linears: Any) -> None:
        if any(lin.bias is not None for lin in linears):
            raise FastPathError("q/k/v or gate/up projections with biases are not supported")

    def patch_positions(self, h: int, w: int) -> Tensor:
        """Position ids of a full (unmasked) image, as ``SmolVLMVisionEmbeddings`` makes them.

        Computed in float32 like the float32 model does (its bucketing depends on the dtype).
        """
        key = (h, w)
        if key not in self._patch_pos:
            emb = self.vision.embeddings
            nps = emb.num_patches_per_side
            boundaries = torch.arange(1 / nps, 1.0, 1 / nps)
            nh, nw = h // emb.patch_size, w // emb.patch_size
            fh = torch.arange(nh, dtype=torch.float32) / nh * (1 - 1e-6)
            fw = torch.arange(nw, dtype=torch.float32) / nw * (1 - 1e-6)
            bh = torch.bucketize(fh, boundaries, right=True)
            bw = torch.bucketize(fw, boundaries, right=True)
            pos = (bh[:, None] * nps + bw).flatten()[None]
            self._patch_pos[key] = pos.to(self.device)
        return self._patch_pos[key]

    # -- fused pieces (Triton or torch) --------------------------------------------------------
    def rope_qkv(
        self,
        qkv: Tensor,
        cos: Tensor,
        sin: Tensor,
        n_kv: int,
        k_exp: Tensor | None = None,
        v_exp: Tensor | None = None,
        k_raw: Tensor | None = None,
        v_raw: Tensor | None = None,
    ) -> Tensor:
        """Split a fused projection (b, n, (H + 2 * n_kv) * D) (q only when ``n_kv == 0``).

        Returns RoPE'd q (b, n, H, D) in ``dtype``; writes RoPE'd k and v head-expanded into
        ``k_exp``/``v_exp`` (b, n, H, D views) and/or as they are into ``k_raw``/``v_raw``.
        """
        b, n, _ = qkv.shape
        H, D, g = self.n_heads, self.head_dim, self.groups
        if self.triton:
            kern = _triton_kernels()
            q = torch.empty(b, n, H, D, dtype=self.dtype, device=qkv.device)
            dummy = q
            write_exp, write_raw = k_exp is not None, k_raw is not None
            ke, ve = (k_exp, v_exp) if write_exp else (dummy, dummy)
            kr, vr = (k_raw, v_raw) if write_raw else (dummy, dummy)
            if write_exp:
                assert k_exp.stride() == v_exp.stride() and k_exp.stride()[2:] == (D, 1)
            if write_raw:
                assert k_raw.stride() == v_raw.stride() and k_raw.stride()[2:] == (D, 1)
            bkv = max(1, 1 << (max(n_kv, 1) - 1).bit_length())
            kern["rope_qkv"][(b * n,)](
                qkv, cos, sin, q, ke, ve, kr, vr,
                n, qkv.stride(1), cos.stride(0) if cos.shape[0] > 1 else 0, H * D,
                ke.stride(0), ke.stride(1), kr.stride(0), kr.stride(1),
                H=H, KV=n_kv, G=g, D=D, BH=1 << (H - 1).bit_length(), BKV=bkv,
                WRITE_EXP=write_exp, WRITE_RAW=write_raw,
            )  # fmt: skip
            return q
        x = qkv.view(b, n, H + 2 * n_kv, D)
        r = _rope(x[:, :, : H + n_kv], cos, sin)
        q = r[:, :, :H].to(self.dtype)
        if n_kv:
            k, v = r[:, :, H:], x[:, :, H + n_kv :]
            if k_exp is not None:
                k_exp.view(b, n, n_kv, g, D).copy_(k[:, :, :, None].expand(b, n, n_kv, g, D))
                v_exp.view(b, n, n_kv, g, D).copy_(v[:, :, :, None].expand(b, n, n_kv, g, D))
            if k_raw is not None:
                k_raw.copy_(k)
                v_raw.copy_(v)
        return q

    def silu_mul(self, gate: Tensor, up: Tensor) -> Tensor:
        """``silu(gate) * up`` (Llama's MLP activation), one kernel with Triton."""
        if not self.triton:
            return F.silu(gate) * up
        cols = gate.shape[-1]
        g2, u2 = gate.reshape(-1, cols), up.reshape(-1, cols)
        out = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
        block = 1024
        kern = _triton_kernels()
        grid = (g2.shape[0], -(-cols // block))
        kern["silu_mul"][grid](g2, u2, out, cols, g2.stride(0), u2.stride(0), cols, BLOCK=block)
        return out.view(gate.shape)

    # -- one chunk -----------------------------------------------------------------------------
    def pixels(self, images: list[Tensor]) -> Tensor:
        """uint8 (H, W, 3) frames -> (N, 3, S, S) float32 in [-1, 1] (LeRobot's prepare_images)."""
        from lerobot.policies.smolvla.modeling_smolvla import resize_with_pad

        if len({tuple(im.shape) for im in images}) == 1:
            groups = [torch.stack(images)]
        else:
            groups = [im[None] for im in images]
        out = []
        for g in groups:
            x = g.permute(0, 3, 1, 2).float() / 255
            if self.cfg.resize_imgs_with_padding is not None:
                x = resize_with_pad(x, *self.cfg.resize_imgs_with_padding, pad_value=0)
            out.append(x * 2.0 - 1.0)
        return torch.cat(out) if len(out) > 1 else out[0]

    def embed_images(self, pixels: Tensor) -> Tensor:
        """SigLIP tower + connector on (N, 3, S, S) -> (N, tokens, hidden) in ``dtype``."""
        vm = self.vision
        x = vm.embeddings.patch_embedding(pixels.to(self.dtype))
        x = x.flatten(2).transpose(1, 2)
        x = x + vm.embeddings.position_embedding(self.patch_positions(*pixels.shape[2:]))
        for layer, (w, b) in zip(vm.encoder.layers, self.vis_qkv):
            att = layer.self_attn
            n, t, _ = x.shape
            h = layer.layer_norm1(x)
            qkv = F.linear(h, w, b).view(n, t, 3, att.num_heads, att.head_dim)
            q, k, v = qkv.unbind(2)
            x = x + att.out_proj(_attend(q, k, v, None, att.scale))
            x = x + layer.mlp(layer.layer_norm2(x))
        x = vm.post_layernorm(x)
        return self.connector(x)

    def image_embeddings(self, images: list[Tensor]) -> Tensor:
        """Frames -> scaled image embeddings (N, tokens, hidden), as ``embed_prefix`` makes them."""
        img = self.embed_images(self.pixels(images))
        # LeRobot multiplies by torch.tensor(width**0.5, dtype=img.dtype): the same rounding.
        return img * float(torch.tensor(img.shape[-1] ** 0.5, dtype=img.dtype))

    def embed_prefix(self, inp: StaticInputs, img: Tensor) -> tuple[Tensor, Tensor]:
        """Prefix embeddings (1, P, hidden) in ``dtype`` and its pad mask (1, P)."""
        img = img.reshape(1, -1, img.shape[-1])
        lang = self.text.get_input_embeddings()(inp.lang_tokens)
        lang = lang * math.sqrt(lang.shape[-1])
        state = self.model.state_proj(inp.state)[:, None, :]
        embs = torch.cat([img.to(self.dtype), lang.to(self.dtype), state.to(self.dtype)], dim=1)
        ones = torch.ones(1, img.shape[1], dtype=torch.bool, device=img.device)
        pad = torch.cat([ones, inp.lang_mask, ones[:, :1]], dim=1)
        return embs, pad

    def fill_cache(self, embs: Tensor, pad: Tensor) -> dict:
        """The VLM over the prefix; returns per layer the K/V the expert attends to.

        Self-attention layers get buffers (b, P + chunk_pad, H, D) whose first P rows hold the
        prefix's RoPE'd keys / values (heads expanded) and whose tail the flow steps fill;
        cross-attention layers get the raw (b, P, kv, D) keys / values to project.
        """
        from lerobot.policies.smolvla.modeling_smolvla import make_att_2d_masks

        mask = _additive(make_att_2d_masks(pad, self.prefix_att), self.dtype)
        pos = torch.cumsum(pad, dim=1) - 1
        cos, sin = _rope_tables(pos, self.head_dim)
        x = embs.contiguous()  # the residual stream, updated in place
        b, p, _ = x.shape
        H, KV, D, dev = self.n_heads, self.n_kv, self.head_dim, x.device
        cache: dict[str, list] = {"k": [], "v": []}
        for i, layer in enumerate(self.vlm_layers):
            att = layer.self_attn
            h = _rms(x, layer.input_layernorm)
            last = i == self.n_layers - 1
            rows = p + self.chunk_pad if self.self_attn[i] else p
            if self.self_attn[i] or not last:
                kb = torch.zeros(b, rows, H, D, dtype=self.dtype, device=dev)
                vb = torch.zeros(b, rows, H, D, dtype=self.dtype, device=dev)
                k_exp, v_exp = kb[:, :p], vb[:, :p]
            else:
                kb = vb = k_exp = v_exp = None
            k_raw = v_raw = None
            if not self.self_attn[i]:
                k_raw = torch.empty(b, p, KV, D, dtype=self.dtype, device=dev)
                v_raw = torch.empty(b, p, KV, D, dtype=self.dtype, device=dev)
            qkv = F.linear(h, self.vlm_qkv_w[i])
            q = self.rope_qkv(qkv, cos, sin, KV, k_exp, v_exp, k_raw, v_raw)
            cache["k"].append(kb if self.self_attn[i] else k_raw)
            cache["v"].append(vb if self.self_attn[i] else v_raw)
            if last:
                break  # the last layer's output is never read: only its K/V are
            _add_linear_(x, _attend(q, k_exp, v_exp, mask, self.scale), att.o_proj)
            mlp = layer.mlp
            h = _rms(x, layer.post_attention_layernorm)
            _add_linear_(x, self.silu_mul(mlp.gate_proj(h), mlp.up_proj(h)), mlp.down_proj)
        return cache

    def expert_context(self, cache: dict, pad: Tensor) -> dict:
        """Everything the flow steps read that does not change between steps."""
        b, p = pad.shape
        c, cp = self.chunk, self.chunk_pad
        ctx: dict[str, Any] = {"k": [], "v": []}
        for i, layer in enumerate(self.expert_layers):
            kb, vb = cache["k"][i], cache["v"][i]
            if not self.self_attn[i]:
                # The expert's cross-attention projects the VLM's cache: once per chunk here.
                att = layer.self_attn
                kx = att.k_proj(kb.reshape(b, p, -1)).view(b, p, -1, self.head_dim)
                vx = att.v_proj(vb.reshape(b, p, -1)).view(b, p, -1, self.head_dim)
                kb = _expand_heads(kx, self.groups).contiguous()
                vb = _expand_heads(vx, self.groups).contiguous()
            ctx["k"].append(kb)
            ctx["v"].append(vb)
        prefix = pad[:, None, :].expand(b, c, p)
        suffix = self.suffix_causal[None].expand(b, c, cp)
        ctx["mask_self"] = _additive(torch.cat([prefix, suffix], dim=2), self.dtype)
        ctx["mask_cross"] = _additive(prefix, self.dtype)
        offsets = pad.sum(dim=-1, keepdim=True)
        pos = offsets + torch.arange(c, device=pad.device)[None]
        ctx["cos"], ctx["sin"] = _rope_tables(pos, self.head_dim)
        ctx["prefix_len"] = p
        return ctx

    def velocity(self, x_t: Tensor, time_emb: Tensor, ctx: dict) -> Tensor:
        """``VLAFlowMatching.denoise_step`` -> v_t (1, chunk, A) float32.

        ``time_emb`` is the step's precomputed sinusoidal timestep embedding (1, width).
        """
        m = self.model
        a = m.action_in_proj(x_t)
        t = time_emb[:, None, :].expand_as(a)
        h = m.action_time_mlp_out(F.silu(m.action_time_mlp_in(torch.cat([a, t], dim=2))))
        x = h.to(self.dtype).contiguous()  # the residual stream, updated in place
        n = x.shape[1]
        p, kv = ctx["prefix_len"], self.n_kv
        for i, layer in enumerate(self.expert_layers):
            att = layer.self_attn
            h = _rms(x, layer.input_layernorm)
            qkv = F.linear(h, self.qkv_w[i])
            if self.self_attn[i]:
                kb, vb = ctx["k"][i], ctx["v"][i]
                q = self.rope_qkv(
                    qkv, ctx["cos"], ctx["sin"], kv, kb[:, p : p + n], vb[:, p : p + n]
                )
                o = _attend(q, kb, vb, ctx["mask_self"], self.scale)
            else:
                q = self.rope_qkv(qkv, self.cross_cos, self.cross_sin, 0)
                o = _attend(q, ctx["k"][i], ctx["v"][i], ctx["mask_cross"], self.scale)
            _add_linear_(x, o, att.o_proj)
            h = _rms(x, layer.post_attention_layernorm)
            gate, up = F.linear(h, self.gate_up_w[i]).chunk(2, dim=-1)
            _add_linear_(x, self.silu_mul(gate, up), layer.mlp.down_proj)
        out = _rms(x, self.expert.norm).to(torch.float32)
        return m.action_out_proj(out)

    def sample_from(self, inp: StaticInputs, img: Tensor, rtc: bool = False) -> Tensor:
        """Given the image embeddings: prefix, K/V cache, the flow steps (and RTC guidance)."""
        embs, pad = self.embed_prefix(inp, img)
        ctx = self.expert_context(self.fill_cache(embs, pad), pad)
        x_t = inp.noise
        for step, t in enumerate(self.times):
            v_t = self.velocity(x_t, self.time_emb[step], ctx)
            if rtc:
                # RTCProcessor.denoise_step: its autograd correction equals the weighted error.
                err = (inp.prev - (x_t - t * v_t)) * inp.weights
                v_t = v_t - self.guidance[step] * err
            x_t = x_t + self.dt * v_t
        return x_t

    def sample(self, inp: StaticInputs, rtc: bool = False) -> Tensor:
        """One chunk (1, chunk, max_action_dim) float32 in normalized action space."""
        return self.sample_from(inp, self.image_embeddings(inp.images), rtc)
