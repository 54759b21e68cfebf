"""Frozen DINOv2 patch tokens for the CPM, with a per-image cache.

Preprocessing equals the default DINOv2 image processor of Hugging Face (``BitImageProcessor``,
tested): resize the short side to 256 (bicubic; the long side truncated to an integer), centre-crop
224, ImageNet mean/std. ViT-B/14 then gives 16 x 16 = 256 patch tokens of
width 768 (the CLS token is dropped).
"""

from __future__ import annotations

import math
import os
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DINO_HUB_ID = "facebook/dinov2-base"
DINO_ENV = "CORRBENCH_DINO_MODEL"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


#: random-weight DINOv2 architectures: name -> (width, blocks, heads, SwiGLU FFN) of ViT-S/B/L/G/14
RANDOM_SIZES = {"random-small": (384, 12, 6, False), "random-base": (768, 12, 12, False),
                "random-large": (1024, 24, 16, False), "random-giant": (1536, 40, 24, True)}


#: how the 37 x 37 position-embedding table is resampled to an n x m patch grid:
#: ``hub`` (the default): DINOv2's own torch.hub code, which sd-dino and GeoAware-SC load, and
#: Hugging Face transformers up to 4.44, which SD4Match's precomputed CPM features used: bicubic with
#: ``scale_factor = ((n + 0.1) / 37, (m + 0.1) / 37)``, no antialias, unchanged when the grid is 37 x 37;
#: ``transformers``: transformers >= 4.45, bicubic to ``size = (n, m)``, which samples the table at
#: other positions (up to 4e-2 of the token magnitude on random weights at 840).
#: Models with their own rule (DINOv2 with registers, DINOv3) are left as they are.
POSITION_RULES = ("hub", "transformers")
HUB_OFFSET = 0.1


def default_dino_id() -> str:
    return os.environ.get(DINO_ENV) or DINO_HUB_ID


@dataclass
class DinoSpec:
    resize: int = 256
    crop: int = 224


def tiny_dino(seed: int = 0):
    """A seeded 2-layer DINOv2 (width 32, patch 14) for a 56 x 56 crop: 16 patch tokens."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed + 3)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                                     patch_size=14, mlp_ratio=2))
    return model.eval().requires_grad_(False), DinoSpec(resize=64, crop=56)


def _hub_positions(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's torch.hub position rule as a replacement of ``Dinov2Embeddings.interpolate_pos_encoding``
    (bound to the embeddings module): see :data:`POSITION_RULES`."""
    table = self.position_embeddings
    n_patches, n_table = embeddings.shape[1] - 1, table.shape[1] - 1
    if n_patches == n_table and height == width:
        return table
    side = int(round(math.sqrt(n_table)))
    ph, pw = self.patch_embeddings.patch_size
    rows, cols = height // ph, width // pw
    grid = table[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + HUB_OFFSET) / side, (cols + HUB_OFFSET) / side), mode="bicubic",
                         align_corners=False, antialias=False)
    if tuple(grid.shape[-2:]) != (rows, cols):  # pragma: no cover - (n + 0.1) / 37 * 37 floors to n
        raise RuntimeError(f"position grid {tuple(grid.shape[-2:])} does not fit {rows} x {cols} patches")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(table.dtype)
    return torch.cat([table[:, :1], grid], dim=1)


def set_position_rule(model, rule: str = "hub"):
    """Make a plain DINOv2 ``model`` resample its position table by ``rule`` (:data:`POSITION_RULES`);
    other architectures (registers, DINOv3) keep their own. Returns the model."""
    if rule not in POSITION_RULES:
        raise ValueError(f"dino_pos must be one of {', '.join(POSITION_RULES)}, got {rule!r}")
    emb = getattr(model, "embeddings", None)
    if getattr(model.config, "model_type", "") != "dinov2" or emb is None:
        return model
    if rule == "hub":
        emb.interpolate_pos_encoding = types.MethodType(_hub_positions, emb)
    elif "interpolate_pos_encoding" in vars(emb):
        del emb.interpolate_pos_encoding  # back to the class's own (transformers') rule
    return model


def load_dino(model_id: str, seed: int = 0, positions: str = "hub"):
    """(model, preprocessing spec) from ``tiny``, a local folder or a hub id; ``positions``: the
    position-embedding rule (:data:`POSITION_RULES`)."""
    model, spec = _load_dino(model_id, seed)
    return set_position_rule(model, positions), spec


def _load_dino(model_id: str, seed: int = 0):
    if model_id == "tiny":
        return tiny_dino(seed)
    if model_id in RANDOM_SIZES:  # a real DINOv2 architecture with random weights, for timing and FLOPs
        from transformers import Dinov2Config, Dinov2Model

        width, depth, heads, swiglu = RANDOM_SIZES[model_id]
        torch.manual_seed(seed + 3)
        cfg = Dinov2Config(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                           use_swiglu_ffn=swiglu, image_size=518)
        return Dinov2Model(cfg).eval().requires_grad_(False), DinoSpec()
    from transformers import (
        AutoModel,  # Dinov2Model, or Dinov2WithRegistersModel for *-with-registers
    )

    from .sd_models import pretrained

    return pretrained(AutoModel, model_id, "DINOv2", f"pass --set dino_id=PATH or set {DINO_ENV}"), DinoSpec()


def resized_size(W: int, H: int, short: int) -> tuple[int, int]:
    """Hugging Face's shortest-edge resize: the short side becomes ``short`` and the long side
    ``int(short * long / short_side)`` (truncated, not rounded). -> (width, height)."""
    if W <= H:
        return short, int(short * H / W)
    return int(short * W / H), short


def preprocess(image, spec: DinoSpec) -> torch.Tensor:
    """A PIL image -> ``(3, crop, crop)`` as the DINOv2 image processor makes it: short side resized
    (bicubic, long side truncated), centre crop (offsets ``(size - crop) // 2``), ImageNet mean/std."""
    import numpy as np
    from PIL import Image

    img = image.convert("RGB")
    w, h = resized_size(*img.size, spec.resize)
    img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - spec.crop) // 2, (h - spec.crop) // 2
    img = img.crop((left, top, left + spec.crop, top + spec.crop))  # Pillow pads with 0 if the image is smaller
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) * np.float32(1 / 255)).permute(2, 0, 1)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def patch_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """``(B, 3, crop, crop)`` preprocessed pixels -> ``(B, P, Dd)`` patch tokens (no CLS)."""
    p = next(model.parameters())
    out = model(pixel_values=pixels.to(p.device, p.dtype)).last_hidden_state
    return out[:, 1:].float()


@torch.no_grad()
def block_tokens(model, pixels: torch.Tensor, layer: int = -1, final_norm: bool = False) -> torch.Tensor:
    """Patch tokens of one transformer block: ``(B, 3, S, S)`` normalised pixels -> ``(B, (S/14)^2, D)``.

    ``layer``: block index (negative counts from the last); ``final_norm``: pass them through the
    model's final LayerNorm (Hugging Face's ``last_hidden_state`` and DINOv2's ``x_norm_patchtokens``
    do; sd-dino and GeoAware-SC take the block output before it). The class token and any register
    tokens are dropped; the position embeddings are interpolated to S by the model.
    """
    p = next(model.parameters())
    n = int(model.config.num_hidden_layers)
    index = layer % n if -n <= layer < n else None
    if index is None:
        raise ValueError(f"layer must be in {-n}..{n - 1} for this {n}-block model, got {layer}")
    out = model(pixel_values=pixels.to(p.device, p.dtype), output_hidden_states=True)
    tokens = out.hidden_states[index + 1]
    if final_norm:
        tokens = model.layernorm(tokens)
    skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    return tokens[:, skip:].float()


def dims(model, spec: DinoSpec) -> tuple[int, int]:
    """(patch count, width) of ``model`` under ``spec``."""
    patch = model.config.patch_size
    return (spec.crop // patch) ** 2, int(model.config.hidden_size)
