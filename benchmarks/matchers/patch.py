"""A weight-free dense matcher: each grid cell described by the colours of its neighbourhood.

It exists to check the dense machinery (resizing, sampling, readouts, mapping back) on real
images: geometric transforms of one image are matched almost perfectly by it, while random
network weights would hide an x/y swap or an off-by-one in the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..dense import DenseConfig, DenseMatcher


@dataclass(frozen=True)
class PatchConfig(DenseConfig):
    """grid: cells per side of the feature map; radius: neighbourhood half-width in cells.

    Raw-colour descriptors give a broad cosine landscape, so the soft readouts use a sharper
    temperature than learned features do.
    """

    image_size: int = 384
    grid: int = 48
    radius: int = 6
    temperature: float = 0.005
    readout: str = "nn,soft-argmax,kernel-soft-argmax,window-soft-argmax,upsampled-nn"

    def __post_init__(self):
        super().__post_init__()
        if not 2 <= self.grid <= 1024 or not 0 <= self.radius <= 64:
            raise ValueError(f"grid must be in 2..1024 and radius in 0..64, got grid={self.grid}, radius={self.radius}")


class PatchMatcher(DenseMatcher):
    name = "patch"
    description = "normalised raw-colour neighbourhoods on the dense grid (no weights; a sanity baseline)"
    Config = PatchConfig
    presets = {"tiny": {"image_size": 96, "grid": 24, "radius": 2}}

    def extract(self, images, infos):
        g, r = self.config.grid, self.config.radius
        cells = F.interpolate(images.float(), size=(g, g), mode="area")
        padded = F.pad(cells, (r, r, r, r), mode="replicate")
        patches = F.unfold(padded, kernel_size=2 * r + 1)  # (B, 3 * k * k, g * g)
        patches = patches - patches.mean(dim=1, keepdim=True)
        patches = F.normalize(patches, dim=1)
        return patches.reshape(images.shape[0], -1, g, g)
