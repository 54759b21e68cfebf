"""DIFT: zero-shot Stable Diffusion features (Tang et al., NeurIPS 2023), through the dense base.

Defaults are the paper's: SD-2.1, t = 261, up_blocks[1], ensemble 8, 768 x 768 input (Pillow
bicubic resize, as DIFT's ``Image.resize`` default), prompt "a photo of a {category}" through the
CLIP tokenizer and text encoder (no classifier-free guidance), one VAE posterior sample per
ensemble member (DIFT repeats the image before the VAE). Readouts: DIFT's own ``upsampled-nn`` (features upsampled to the original images,
argmax) and the 48 x 48 grid readouts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .sd_base import SDConfig, SDMatcherBase


@dataclass(frozen=True)
class DiftConfig(SDConfig):
    """DIFT's own protocol: Pillow bicubic resize, one VAE posterior sample per ensemble member."""

    prompt: str = "a photo of a {category}"
    resize: str = "bicubic"
    posterior: str = "per-member"
    readout: str = "upsampled-nn,nn,soft-argmax,kernel-soft-argmax,window-soft-argmax"

    def __post_init__(self):
        super().__post_init__()
        rest = self.prompt.replace("{category}", "")
        if "{" in rest or "}" in rest:
            raise ValueError(f"prompt may hold the placeholder {{category}} and no other braces, got {self.prompt!r}")


class DiftMatcher(SDMatcherBase):
    name = "dift"
    description = "DIFT: SD-2.1 up-block-1 features, t=261, ensemble 8, prompt 'a photo of a {category}'"
    Config = DiftConfig
    presets = {
        "tiny": {"model_id": "tiny", "image_size": 32, "ensemble": 2, "kernel_sigma": 3.0, "batch_size": 16},
        "fast": {"ensemble": 1},
    }

    def __init__(self, config=None):
        super().__init__(config)
        self._prompts: dict[str, torch.Tensor] = {}

    def cache_tag(self, info) -> str:
        return self.config.prompt.replace("{category}", info.category)

    def _context(self, categories: list[str]) -> torch.Tensor:
        """Text-encoder output, computed once per prompt."""
        for c in set(categories):
            if c not in self._prompts:
                self._prompts[c] = self.sd.encode_text([self.config.prompt.replace("{category}", c)])[0]
        return torch.stack([self._prompts[c] for c in categories])

    def extract(self, images, infos):
        ctx = self._context([i.category for i in infos])
        keys = [hashlib.sha256(f"{i.key}|{self.cache_tag(i)}".encode()).hexdigest() for i in infos]
        return self.sd_features(images, infos, ctx, keys)
