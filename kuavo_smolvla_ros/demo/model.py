"""Build a SmolVLA checkpoint offline: random weights, saved exactly like a real one.

No model hub is needed. The VLM backbone's config, tokenizer (trained here with ``tokenizers``)
and processor are written into ``<out>/vlm`` and the policy's ``vlm_model_name`` points there,
so the checkpoint loads through the same code path as ``lerobot/smolvla_base``:
``config.json`` + ``model.safetensors`` + ``policy_preprocessor.json`` /
``policy_postprocessor.json`` with 16-D Kuavo normalization stats and the stock Kuavo camera
names. ``--size tiny`` is a few MB for tests and the demo; ``--size full`` is the real 450M
architecture (SmolVLM2-500M backbone cut to 16 layers) for benchmarks.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kuavo_smolvla_ros.core.config import RobotConfig

DEFAULT_CAMERAS = ("head_cam_h", "wrist_cam_l", "wrist_cam_r")
SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "eos_token": "<|endoftext|>",
    "bos_token": "<|im_start|>",
    "unk_token": "<|unk|>",
}
EXTRA_SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}


@dataclass(frozen=True)
class ModelSize:
    """Backbone dimensions. ``full`` mirrors SmolVLM2-500M-Video-Instruct (SigLIP-B/16 at 512
    px + SmolLM2-360M), cut to 16 layers by SmolVLA's ``num_vlm_layers``."""

    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    image_size: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vocab_size: int
    scale_factor: int
    num_vlm_layers: int


SIZES = {
    "tiny": ModelSize(32, 2, 2, 64, 64, 64, 4, 4, 2, 128, 512, 2, 2),
    "full": ModelSize(768, 12, 12, 3072, 512, 960, 32, 15, 5, 2560, 49280, 4, 16),
}

_CORPUS = [
    "pick up the object",
    "pick up the red cube and place it in the box",
    "put the bottle on the table",
    "open the drawer",
    "close the gripper",
    "move the left arm to the right",
    "hand over the cup from the left hand to the right hand",
    "sort the parts into the bins",
    "wave hello",
    "fold the towel",
    "push the button",
    "grasp the handle and lift",
]


def _train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained locally, wrapped like SmolVLM's (special tokens too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [*SPECIAL_TOKENS.values(), *EXTRA_SPECIAL_TOKENS.values()]
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 4096),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [*_CORPUS, *(s.upper() for s in _CORPUS), "0 1 2 3 4 5 6 7 8 9 \n"]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=8192,
        extra_special_tokens=EXTRA_SPECIAL_TOKENS,
        **SPECIAL_TOKENS,
    )


def _save_vlm(vlm_dir: Path, size: ModelSize) -> None:
    """Write the backbone's config + processor, as the hub repo of SmolVLM2 holds them."""
    from transformers import SmolVLMConfig, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_smolvlm import SmolVLMImageProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    tokenizer = _train_tokenizer(size.vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids(EXTRA_SPECIAL_TOKENS["image_token"])
    cfg = SmolVLMConfig(
        vision_config={
            "hidden_size": size.vision_hidden,
            "intermediate_size": size.vision_intermediate,
            "num_hidden_layers": size.vision_layers,
            "num_attention_heads": size.vision_heads,
            "image_size": size.image_size,
            "patch_size": 16,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": size.text_hidden,
            "intermediate_size": size.text_intermediate,
            "num_hidden_layers": size.text_layers,
            "num_attention_heads": size.text_heads,
            "num_key_value_heads": size.text_kv_heads,
            "head_dim": size.text_hidden // size.text_heads,
            "vocab_size": size.vocab_size,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
        },
        scale_factor=size.scale_factor,
        image_token_id=image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg.save_pretrained(vlm_dir)
    image_seq_len = (size.image_size // 16) ** 2 // size.scale_factor**2
    edge = {"longest_edge": size.image_size}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=edge, max_image_size=edge),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(size=edge, max_image_size=edge),
        image_seq_len=image_seq_len,
    )
    processor.save_pretrained(vlm_dir)


def kuavo_stats(robot: RobotConfig | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Plausible 16-D stats for Kuavo (rad, grippers 0..1): every LeRobot mode's keys."""
    robot = robot or RobotConfig()
    lo, hi = np.asarray(robot.lower), np.asarray(robot.upper)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    s = {
        "mean": mid,
        "std": half / 2,
        "min": lo,
        "max": hi,
        "q01": mid - 0.9 * half,
        "q99": mid + 0.9 * half,
        "q10": mid - 0.6 * half,
        "q90": mid + 0.6 * half,
    }
    s = {k: v.astype(np.float32) for k, v in s.items()}
    return {"observation.state": dict(s), "action": dict(s)}


def build_demo_model(
    out: str | Path,
    size: str = "tiny",
    cameras: tuple[str, ...] = DEFAULT_CAMERAS,
    robot: RobotConfig | None = None,
    chunk_size: int = 50,
    stats: dict[str, dict[str, np.ndarray]] | None = None,
    seed: int = 0,
) -> Path:
    """Build and save a random-weight SmolVLA checkpoint for the Kuavo profile at ``out``."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    robot = robot or RobotConfig()
    spec = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vlm_dir = (out / "vlm").resolve()
    _save_vlm(vlm_dir, spec)

    torch.manual_seed(seed)
    features_in = {
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(robot.dim,)),
        **{
            f"observation.images.{c}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 480, 640))
            for c in cameras
        },
    }
    cfg = SmolVLAConfig(
        input_features=features_in,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(robot.dim,))},
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        num_vlm_layers=spec.num_vlm_layers,
        resize_imgs_with_padding=(spec.image_size, spec.image_size),
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
        device="cpu",
        push_to_hub=False,
    )
    policy = SmolVLAPolicy(cfg)
    policy.save_pretrained(out)
    stats = stats or kuavo_stats(robot)
    pre, post = make_smolvla_pre_post_processors(
        cfg, {k: {n: torch.as_tensor(v) for n, v in d.items()} for k, d in stats.items()}
    )
    pre.save_pretrained(out)
    post.save_pretrained(out)
    (out / "kuavo_demo_model.json").write_text(
        json.dumps({"size": size, "cameras": list(cameras), "robot": robot.name, "seed": seed})
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output checkpoint directory")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--chunk-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = build_demo_model(a.out, size=a.size, chunk_size=a.chunk_size, seed=a.seed)
    print(f"wrote {a.size} SmolVLA checkpoint to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
