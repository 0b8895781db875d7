"""The fast path's code, checked on the CPU against LeRobot on a real (tiny) SmolVLA.

CI has no GPU: what runs here is the fast engine's tensor code in float32 (no CUDA graphs), its
host side through ``FastRunner``, the Triton kernels under Triton's CPU interpreter, and the
device rules. The CPU default's choice (float32 fast path when it matches LeRobot at warm-up)
is in test_runners.py. Numbers come from ``benchmarks/inference.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kuavo_smolvla_ros import load_policy
from kuavo_smolvla_ros.core.config import Config, PolicyConfig
from kuavo_smolvla_ros.runners.eager import PolicyRunner, example_inputs
from kuavo_smolvla_ros.runners.fast import FastPathError, FastRunner, fast_path_plan
from kuavo_smolvla_ros.runners.fast_engine import (
    FLOAT32_MODULES,
    SmolVLAEngine,
    StaticInputs,
    to_mixed_precision,
    triton_available,
    unsupported_reasons,
)

pytestmark = pytest.mark.slow
TASK = "put the bottle on the table"


def _lerobot_inputs(runner, state, images, task=TASK):
    """What LeRobot's predict_action_chunk hands to sample_actions, via the runner's processors."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    batch = runner.preprocessor(runner.make_batch(state, images, task))
    imgs, img_masks = runner.policy.prepare_images(batch)
    lerobot_state = runner.policy.prepare_state(batch)
    return (
        imgs,
        img_masks,
        batch[OBS_LANGUAGE_TOKENS],
        batch[OBS_LANGUAGE_ATTENTION_MASK],
        lerobot_state,
    )


def _engine_inputs(runner, engine, images, tokens, lang_mask, state, noise):
    """The same inputs as the engine reads them: uint8 frames, language padded to lang_len."""
    feature_to_cam = {f: c for c, f in runner.camera_features.items()}
    frames = [
        torch.from_numpy(images[feature_to_cam[f]]) for f in runner.policy.config.image_features
    ]
    n = tokens.shape[1]
    assert n < engine.lang_len, "the test wants padding in the static-length prompt"
    ids = torch.zeros(1, engine.lang_len, dtype=torch.long)
    mask = torch.zeros(1, engine.lang_len, dtype=torch.bool)
    ids[:, :n], mask[:, :n] = tokens, lang_mask
    return StaticInputs(
        images=frames,
        lang_tokens=ids,
        lang_mask=mask,
        state=state,
        noise=noise,
        prev=torch.zeros_like(noise),
        weights=torch.zeros(1, noise.shape[1], 1),
    )


def _noise(model, seed=3):
    torch.manual_seed(seed)
    cfg = model.config
    return model.sample_noise((1, cfg.chunk_size, cfg.max_action_dim), "cpu")


def test_denoise_loop_with_precomputed_timesteps_equals_lerobot_sample_actions(tiny_checkpoint):
    runner = load_policy(tiny_checkpoint, device="cpu", warmup=False)
    model = runner.policy.model
    state, images = example_inputs(runner, height=240, width=320, seed=11)
    imgs, img_masks, tokens, lang_mask, st = _lerobot_inputs(runner, state + 0.2, images)
    noise = _noise(model)
    with torch.no_grad():
        ref = model.sample_actions(imgs, img_masks, tokens, lang_mask, st, noise=noise.clone())
        engine = SmolVLAEngine(model, n_images=len(imgs), dtype=torch.float32)
        inp = _engine_inputs(runner, engine, images, tokens, lang_mask, st, noise)
        ours = engine.sample(inp)
    diff = float((ours - ref).abs().max())
    print(f"max abs difference fast-path loop vs LeRobot sample_actions: {diff:.3g}")
    assert diff <= 1e-5
    assert ref.abs().max() > 0.1, "a meaningful chunk, not zeros"
    assert engine.prefix_len % 16 == 0


def test_rtc_guidance_in_closed_form_equals_lerobots_autograd_guidance(tiny_checkpoint):
    runner = load_policy(tiny_checkpoint, device="cpu", warmup=False, rtc=True)
    model, policy = runner.policy.model, runner.policy
    state, images = example_inputs(runner, seed=5)
    imgs, img_masks, tokens, lang_mask, st = _lerobot_inputs(runner, state, images)
    noise = _noise(model, seed=8)
    chunk, dim = policy.config.chunk_size, policy.config.max_action_dim
    leftover = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (1, 30, 16))).float()
    delay = 4
    with torch.no_grad():
        ref = model.sample_actions(
            imgs, img_masks, tokens, lang_mask, st, noise=noise.clone(),
            inference_delay=delay, prev_chunk_left_over=leftover,
        )  # fmt: skip
        plain = model.sample_actions(imgs, img_masks, tokens, lang_mask, st, noise=noise.clone())
        engine = SmolVLAEngine(model, n_images=len(imgs), dtype=torch.float32)
        inp = _engine_inputs(runner, engine, images, tokens, lang_mask, st, noise)
        inp.prev[:, :30, :16] = leftover
        horizon = min(policy.config.rtc_config.execution_horizon, leftover.shape[1])
        w = policy.rtc_processor.get_prefix_weights(delay, horizon, chunk)
        inp.weights.copy_(w.view(1, chunk, 1))
        ours = engine.sample(inp, rtc=True)
    assert ours.shape == (1, chunk, dim)
    assert float((ref - plain).abs().max()) > 1e-2, "the guidance must change the chunk"
    assert float((ours - ref).abs().max()) <= 1e-5


def test_fast_path_through_the_runner_matches_the_eager_runner_plain_and_rtc(tiny_checkpoint):
    eager = load_policy(tiny_checkpoint, device="cpu", warmup=False, rtc=True)
    assert isinstance(eager, PolicyRunner)
    fast = FastRunner(eager.parts, dtype=torch.float32, cuda_graphs=False, triton=False)
    state, images = example_inputs(eager, seed=2)
    state = state + 0.1
    leftover = np.random.default_rng(4).uniform(-0.5, 0.5, (23, 16))
    for kwargs in ({}, {"inference_delay": 3, "prev_chunk_left_over": leftover}):
        ref = eager.predict_chunk(state, images, TASK, seed=77, **kwargs)
        ours = fast.predict_chunk(state, images, TASK, seed=77, **kwargs)
        assert ours.shape == ref.shape == (50, 16)
        assert ours.dtype == np.float64
        assert np.abs(ours - ref).max() <= 1e-5, kwargs
        assert fast.last_inference_s > 0
        assert fast.timing.total_s >= fast.timing.inference_s > 0
    other_task = fast.predict_chunk(state, images, "wave hello", seed=77)
    assert np.abs(other_task - ours).max() > 1e-7, "a new task is tokenized, not a stale cache"
    other_seed = fast.predict_chunk(state, images, TASK, seed=78)
    assert np.abs(other_seed - ref).max() > 1e-6, "the seed must matter"
    with pytest.raises(ValueError, match="missing camera"):
        fast.predict_chunk(state, {"head_cam_h": images["head_cam_h"]}, TASK)


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_fused_triton_kernels_equal_the_torch_ops_they_replace(tiny_checkpoint, monkeypatch):
    from kuavo_smolvla_ros.runners import fast_engine as fast_path

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's CPU interpreter
    monkeypatch.setattr(fast_path, "_TRITON", {})
    runner = load_policy(tiny_checkpoint, device="cpu", warmup=False)
    model = runner.policy.model
    ref = SmolVLAEngine(model, n_images=3, dtype=torch.float32, triton=False)
    tri = SmolVLAEngine(model, n_images=3, dtype=torch.float32, triton=True)
    assert tri.triton
    H, KV, D = ref.n_heads, ref.n_kv, ref.head_dim
    g = torch.Generator().manual_seed(0)
    n, rows = 7, 12
    qkv = torch.randn(1, n, (H + 2 * KV) * D, generator=g)
    cos, sin = fast_path._rope_tables((torch.arange(n) + 5)[None], D)
    outs = []
    for eng in (ref, tri):
        k_exp = torch.full((1, rows, H, D), 9.0)
        v_exp = torch.full((1, rows, H, D), 9.0)
        k_raw, v_raw = torch.zeros(1, n, KV, D), torch.zeros(1, n, KV, D)
        q = eng.rope_qkv(qkv, cos, sin, KV, k_exp[:, 2 : 2 + n], v_exp[:, 2 : 2 + n], k_raw, v_raw)
        q_only = eng.rope_qkv(qkv[..., : H * D].contiguous(), cos, sin, 0)
        act = eng.silu_mul(qkv[..., :40], qkv[..., 40:80])
        outs.append((q, k_exp, v_exp, k_raw, v_raw, q_only, act))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert (outs[1][1][:, :2] == 9.0).all() and (outs[1][1][:, 2 + n :] == 9.0).all()


def test_auto_is_checked_float32_on_cpu_and_on_without_cuda_is_a_clear_error(tiny_checkpoint):
    # No warm-up chunk, nothing to check the float32 fast path against: LeRobot eager.
    runner = load_policy(tiny_checkpoint, device="cpu", warmup=False, fast_path="auto")
    assert isinstance(runner, PolicyRunner)
    assert fast_path_plan("auto", "cpu") == "cpu"
    assert fast_path_plan("auto", "cuda") == "cuda"
    assert fast_path_plan("auto", "mps") == "off"
    assert fast_path_plan("off", "cuda") == "off"
    with pytest.raises(FastPathError, match="needs a CUDA device"):
        load_policy(tiny_checkpoint, device="cpu", warmup=False, fast_path="on")
    cfg = Config(policy=PolicyConfig(fast_path="on"))  # the config's value is read too
    with pytest.raises(FastPathError, match="fast_path='auto'"):
        load_policy(tiny_checkpoint, device="cpu", config=cfg, warmup=False)
    with pytest.raises(FastPathError, match="choose one of"):
        load_policy(tiny_checkpoint, device="cpu", warmup=False, fast_path="fast")


def test_checkpoints_the_fast_path_cannot_serve_are_named(tiny_checkpoint):
    runner = load_policy(tiny_checkpoint, device="cpu", warmup=False)
    assert unsupported_reasons(runner.policy, runner.camera_features, runner.preprocessor) == []
    runner.policy.config.add_image_special_tokens = True
    cams = dict(runner.camera_features)
    cams.pop("wrist_cam_r")
    reasons = unsupported_reasons(runner.policy, cams, runner.preprocessor)
    assert any("add_image_special_tokens" in r for r in reasons)
    assert any("empty cameras" in r for r in reasons)
    with pytest.raises(FastPathError, match="add_image_special_tokens"):
        FastRunner(runner.parts, dtype=torch.float32, cuda_graphs=False)
    runner.policy.config.add_image_special_tokens = False
    with pytest.raises(FastPathError, match="CUDA graphs need a CUDA device"):
        FastRunner(runner.parts, dtype=torch.float32, cuda_graphs=True)


def test_bf16_weights_with_float32_projections_run_where_plain_bf16_fails(tiny_checkpoint):
    """The issue's float/bf16 matmul mismatch, and the mixed precision that removes it."""
    ref_runner = load_policy(tiny_checkpoint, device="cpu", warmup=False)
    state, images = example_inputs(ref_runner, seed=9)
    ref = ref_runner.predict_chunk(state, images, TASK, seed=1)

    broken = load_policy(tiny_checkpoint, device="cpu", warmup=False)
    broken.policy.to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="dtype"):
        broken.predict_chunk(state, images, TASK, seed=1)

    mixed = load_policy(tiny_checkpoint, device="cpu", warmup=False)
    to_mixed_precision(mixed.policy.model, torch.bfloat16)
    for name in FLOAT32_MODULES:
        assert getattr(mixed.policy.model, name).weight.dtype == torch.float32
    assert mixed.policy.model.vlm_with_expert.lm_expert.norm.weight.dtype == torch.bfloat16
    lerobot_bf16 = mixed.predict_chunk(state, images, TASK, seed=1)  # LeRobot's own loop
    fast = FastRunner(mixed.parts, dtype=torch.bfloat16, cuda_graphs=False, triton=False)
    fast_bf16 = fast.predict_chunk(state, images, TASK, seed=1)
    for out in (lerobot_bf16, fast_bf16):
        assert np.all(np.isfinite(out))
        rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert rel < 5e-2, rel
    assert np.linalg.norm(fast_bf16 - ref) / np.linalg.norm(ref) < 1e-2
