"""DIFT: zero-shot Stable Diffusion features (Tang et al., NeurIPS 2023), through the dense base.

Defaults are the paper's: SD-2.1, t = 261, up_blocks[1], ensemble 8, 768 x 768 input, prompt
"a photo of a {category}" through the CLIP tokenizer and text encoder (no classifier-free
guidance). Readouts: DIFT's own ``upsampled-nn`` (features upsampled to the original images,
argmax) and the 48 x 48 grid readouts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from benchmarks.dense import DenseConfig, DenseMatcher

from .features import SDFeaturizer
from .models import default_model_id, load_components


@dataclass(frozen=True)
class DiftConfig(DenseConfig):
    model_id: str = field(default_factory=default_model_id)
    t: int = 261
    up_block: int = 1
    ensemble: int = 8
    prompt: str = "a photo of a {category}"
    readout: str = "upsampled-nn,nn,soft-argmax,kernel-soft-argmax,window-soft-argmax"


class DiftMatcher(DenseMatcher):
    name = "dift"
    description = "DIFT: SD-2.1 up-block-1 features, t=261, ensemble 8, prompt 'a photo of a {category}'"
    Config = DiftConfig
    presets = {
        "tiny": {"model_id": "tiny", "image_size": 64, "ensemble": 2, "kernel_sigma": 3.0},
        "fast": {"ensemble": 1},
    }

    def __init__(self, config=None):
        super().__init__(config)
        cfg = self.config
        if cfg.ensemble < 1 or cfg.t < 0:
            from benchmarks.matchers.base import ConfigError

            raise ConfigError(f"ensemble must be >= 1 and t >= 0, got ensemble={cfg.ensemble}, t={cfg.t}")
        self._sd = None
        self._prompts: dict[str, torch.Tensor] = {}

    @property
    def sd(self) -> SDFeaturizer:
        if self._sd is None:  # loaded on first use: a fully cached run never loads the model
            comps = load_components(self.config.model_id, seed=self.config.seed)
            self._sd = SDFeaturizer(comps, self.config.up_block, self.device, self.dtype)
        return self._sd

    def cache_tag(self, info) -> str:
        return self.config.prompt.format(category=info.category)

    def _context(self, categories: list[str]) -> torch.Tensor:
        for c in set(categories):
            if c not in self._prompts:
                self._prompts[c] = self.sd.encode_text([self.config.prompt.format(category=c)])[0]
        return torch.stack([self._prompts[c] for c in categories])

    def extract(self, images, infos):
        cfg = self.config
        x = (images * 2 - 1).to(self.device, self.dtype)
        mean, std = self.sd.posterior(x)
        ctx = self._context([i.category for i in infos])
        keys = [hashlib.sha256(f"{i.key}|{self.cache_tag(i)}".encode()).hexdigest() for i in infos]
        return self.sd.features(mean, std, ctx, keys=keys, t=cfg.t, ensemble=cfg.ensemble, seed=cfg.seed)

    def describe(self) -> dict:
        return {**super().describe(), "model_id": self.config.model_id}

    def close(self) -> None:
        if self._sd is not None:
            self._sd.close()
