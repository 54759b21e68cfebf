"""DINOv3 ViT (``DINOv3ViTModel`` in transformers): loading, its image processor's arithmetic, and
patch tokens of one block.

DINOv3 ViTs have 16-pixel patches, rotary position embeddings (any grid, no position table to
resample) and 4 register tokens after the class token. Its image processor
(``DINOv3ViTImageProcessor``) rescales to [0, 1] first, then resizes bilinearly *with* antialiasing
(on the float image), then normalises with ImageNet's mean and std.

The official weights are gated on the Hugging Face Hub (accept the licence on the model page, then
log in, or download them and pass the folder).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from benchmarks.matchers.base import MatcherError

DINOV3_HUB_ID = "facebook/dinov3-vitb16-pretrain-lvd1689m"
DINOV3_ENV = "CORRBENCH_DINOV3_MODEL"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PATCH = 16
HOW = (f"the DINOv3 weights are gated on the Hugging Face Hub: accept the licence on the page of {DINOV3_HUB_ID} "
       f"(or another dinov3-vit* model) and log in (hf auth login), or download them and pass --set dino_id=FOLDER "
       f"(or set {DINOV3_ENV})")
#: random-weight DINOv3 ViT architectures (width, blocks, heads, MLP width), for timing and FLOPs
RANDOM_SIZES = {"random-small": (384, 12, 6, 1536), "random-base": (768, 12, 12, 3072),
                "random-large": (1024, 24, 16, 4096)}


def default_dinov3_id() -> str:
    return os.environ.get(DINOV3_ENV) or DINOV3_HUB_ID


def _config(width: int, depth: int, heads: int, mlp: int, image_size: int = 224):
    from transformers import DINOv3ViTConfig

    return DINOv3ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                           intermediate_size=mlp, patch_size=PATCH, num_register_tokens=4, image_size=image_size,
                           layerscale_value=1.0)


def load_dinov3(model_id: str, seed: int = 0):
    """``DINOv3ViTModel`` (eval, frozen) from ``tiny`` (2 blocks of width 32), a ``random-*`` size, a
    local folder or a hub id; a one-line MatcherError otherwise."""
    from transformers import DINOv3ViTModel

    if model_id == "tiny" or model_id in RANDOM_SIZES:
        torch.manual_seed(seed + 5)
        cfg = _config(32, 2, 2, 64, 112) if model_id == "tiny" else _config(*RANDOM_SIZES[model_id])
        return DINOv3ViTModel(cfg).eval().requires_grad_(False)
    from .sd_models import pretrained

    model = pretrained(DINOv3ViTModel, model_id, "DINOv3", HOW)
    if getattr(model.config, "model_type", "") != "dinov3_vit":
        raise MatcherError(f"{model_id}: not a DINOv3 ViT (model type {model.config.model_type!r})")
    return model


def processor_pixels(u8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(3, H, W)`` uint8 RGB -> the image processor's arithmetic at ``size`` (h, w): rescale by
    1/255, bilinear resize with antialiasing (align corners off), ImageNet mean/std."""
    x = u8.float()[None] * (1 / 255)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


@torch.no_grad()
def dinov3_tokens(model, pixels: torch.Tensor, layer: int = -1, final_norm: bool = True) -> torch.Tensor:
    """Patch tokens of block ``layer`` (negative: from the last), through the final LayerNorm when
    ``final_norm`` (the model's ``last_hidden_state`` for the last block); the class token and the
    register tokens are dropped. ``(B, 3, S, S)`` -> ``(B, (S/16)^2, D)``."""
    n = int(model.config.num_hidden_layers)
    if not -n <= layer < n:
        raise ValueError(f"layer must be in {-n}..{n - 1} for this {n}-block model, got {layer}")
    p = next(model.parameters())
    out = model(pixel_values=pixels.to(p.device, p.dtype), output_hidden_states=True)
    tokens = out.hidden_states[layer % n + 1]
    if final_norm:
        tokens = model.norm(tokens)
    skip = 1 + int(model.config.num_register_tokens or 0)
    return tokens[:, skip:].float()
