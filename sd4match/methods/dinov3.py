"""DINOv3 nearest neighbour in the padded frame (``dinov3``), on the frame base of the DINOv2 baseline.

The frame is the one sd-dino and GeoAware-SC evaluate in (longer side to S, centred, padded), at
S = 768 (48 x 48 patches of 16 px); inside it the image is resized as DINOv3's own image processor
resizes (rescale, bilinear with antialiasing, ImageNet mean/std). Features: the last block's patch
tokens through the final LayerNorm (DINOv3's ``x_norm_patchtokens``); class and register tokens
dropped; cell u maps back to ``16 u + 7.5``. Which layer, resolution and normalisation DINOv3's own
keypoint-correspondence evaluation uses is unconfirmed here: these are settings (``dino_layer``,
``dino_final_norm``, ``image_size``), recorded with every result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones.dinov3 import (
    MEAN,
    STD,
    default_dinov3_id,
    dinov3_tokens,
    load_dinov3,
    processor_pixels,
)
from .frame import FrameConfig, FrameMatcher
from .frame_geometry import square_layout


@dataclass(frozen=True)
class Dinov3Config(FrameConfig):
    """dino_id: DINOv3 ViT weights (hub id, local folder, ``tiny``, ``random-{small,base,large}``)."""

    patch_size: ClassVar[int] = 16
    image_size: int = 768
    centre: float = 7.5
    dino_id: str = field(default_factory=default_dinov3_id)
    dino_final_norm: bool = True


class Dinov3Matcher(FrameMatcher):
    name = "dinov3"
    description = ("DINOv3 ViT-B/16 nearest neighbour: last block's normed patch tokens, 768 padded frame, 48 x 48 "
                   "cells, argmax, cell centre 16j + 7.5 (layer and resolution of DINOv3's own evaluation unconfirmed)")
    Config = Dinov3Config
    backbone_name = "DINOv3"
    presets = {"tiny": {"dino_id": "tiny", "image_size": 112, "batch_size": 16},
               "random-base": {"dino_id": "random-base"}}

    def load_backbone(self):
        return load_dinov3(self.config.dino_id, self.config.seed)

    def frame_pixels(self, image: torch.Tensor, flip: bool) -> torch.Tensor:
        S, pad = self.config.image_size, self.config.pad
        H, W = image.shape[-2:]
        _, ox, oy, nw, nh = square_layout(W, H, S)
        u8 = (image.detach().float().cpu() * 255).round().clamp(0, 255)
        small = processor_pixels(u8, (nh, nw))
        if pad == "edge":
            out = F.pad(small[None], (ox, S - nw - ox, oy, S - nh - oy), mode="replicate")[0]
        else:  # black, normalised as the processor normalises
            out = ((torch.zeros(3, S, S) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))
            out[:, oy:oy + nh, ox:ox + nw] = small
        return out.flip(-1) if flip else out

    def backbone_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return dinov3_tokens(self.dino, pixels, self.config.dino_layer, self.config.dino_final_norm)

    def image_maps(self, images, infos, flip: bool = False):
        return list(self.dino_maps(images, infos, flip))

    def describe(self) -> dict:
        return {**super().describe(), "dino_pos": "rope"}

