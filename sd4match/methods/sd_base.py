"""Shared machinery of Stable Diffusion matchers (DIFT, SD4Match): lazy model loading, the VAE
posterior cached per image (memory and disk), and ensemble features from a context."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmarks.console import say
from benchmarks.dense import DenseConfig, DenseMatcher, ImageInfo
from benchmarks.matchers.base import ConfigError

from ..backbones.sd import ATTENTION, POSTERIOR, SDFeaturizer
from ..backbones.sd_models import default_model_id, load_components
from .store import ImageStore


@dataclass(frozen=True)
class SDConfig(DenseConfig):
    """model_id: hub id, local folder, ``tiny`` or ``random-sd21``; t: noise timestep;
    up_block: UNet up block whose output is the feature; ensemble: noise draws averaged;
    channels_last: NHWC memory format for the VAE and UNet (a speed option for GPUs);
    compile: ``torch.compile`` the UNet blocks that run (the first batch pays the compilation; batches
    are padded to the batch size so that one static-shape graph serves the whole run);
    attention: scaled-dot-product-attention backend (``auto``: PyTorch's choice; or ``flash``,
    ``efficient``, ``cudnn``, ``math``);
    posterior: ``per-image`` (one VAE posterior sample shared by the ensemble, SD4Match) or
    ``per-member`` (one sample per ensemble member, DIFT); the VAE encoder runs once either way."""

    model_id: str = field(default_factory=default_model_id)
    t: int = 261
    up_block: int = 1
    ensemble: int = 8
    channels_last: bool = False
    compile: bool = False
    attention: str = "auto"
    posterior: str = "per-image"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.t <= 999 or self.ensemble < 1 or not 0 <= self.up_block <= 3:
            raise ValueError(f"t must be in 0..999, ensemble >= 1 and up_block in 0..3; got t={self.t}, "
                             f"ensemble={self.ensemble}, up_block={self.up_block}")


#: the parts of a diffusers Stable Diffusion folder whose files the features depend on
SD_FOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


class SDMatcherBase(DenseMatcher):
    Config = SDConfig
    #: images stay on the host until a VAE posterior is missing: a cached posterior needs no upload
    host_images = True

    def __init__(self, config=None):
        super().__init__(config)
        cfg = self.config  # ranges of t, ensemble and up_block are checked by SDConfig itself
        if cfg.attention not in ATTENTION:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTION)}, got {cfg.attention!r}")
        if cfg.posterior not in POSTERIOR:
            raise ConfigError(f"posterior must be one of {', '.join(POSTERIOR)}, got {cfg.posterior!r}")
        self._sd: SDFeaturizer | None = None
        # keyed by the weights' fingerprint (random-weight presets: by their seed), the resize and the input size
        self._posteriors = ImageStore(cfg.cache_dir, "vae", [self.fingerprints()["model"], cfg.image_size, cfg.resize,
                                                             cfg.dtype, cfg.device.split(":")[0]],
                                      self.device, limit=2 * self.memory_cache_size, one_at_a_time=cfg.batch_invariant)

    def fingerprints(self) -> dict[str, str]:
        if not hasattr(self, "_fingerprints"):
            from benchmarks.fingerprint import model_fingerprint

            self._fingerprints = {"model": model_fingerprint(self.config.model_id, self.config.seed, SD_FOLDERS)}
        return self._fingerprints

    @property
    def sd(self) -> SDFeaturizer:
        if self._sd is None:  # loaded on first use: a fully cached run never loads the model

            say(f"loading Stable Diffusion from {self.config.model_id} ...")
            comps = load_components(self.config.model_id, seed=self.config.seed)
            self._sd = SDFeaturizer(comps, self.config.up_block, self.device, self.dtype, self.config.channels_last,
                                    self.config.compile, self.config.attention, autocast=self.autocast)
        return self._sd

    def eager(self):
        """Compiled UNet blocks run eagerly and unpadded inside this context (FLOP counts, probes)."""
        return self.sd.eager()

    def posterior(self, images, infos: list[ImageInfo]) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) per image, computed once per image and cached.

        ``images``: a ``(B, 3, S, S)`` tensor or a list of ``(3, S, S)`` tensors in [0, 1], on the
        host or the device; only the images whose posterior is missing are uploaded.
        """

        def compute(positions):
            x = torch.stack([images[i] for i in positions])
            if self.device.type == "cuda" and not x.is_cuda:
                x = x.pin_memory()
            mean, std = self.sd.posterior((x.to(self.device, non_blocking=True) * 2 - 1).to(self.dtype))
            return [(mean[j], std[j]) for j in range(len(positions))]

        values = self._posteriors.get(infos, compute)
        mean = torch.stack([m for m, _ in values]).to(self.device, self.dtype)
        std = torch.stack([s for _, s in values]).to(self.device, self.dtype)
        return mean, std

    def sd_features(self, images, infos: list[ImageInfo], context: torch.Tensor, keys: list[str]) -> torch.Tensor:
        cfg = self.config
        if cfg.compile and self.sd.pad_to is None and not self.sd.in_eager:
            per_call = (2 if self.per_pair_features else 1) if cfg.batch_invariant else self.batch_size
            self.sd.pad_to = per_call * cfg.ensemble
        mean, std = self.posterior(images, infos)
        return self.sd.features(mean, std, context, keys=keys, t=cfg.t, ensemble=cfg.ensemble, seed=cfg.seed,
                                posterior=cfg.posterior)

    def keep_in_memory(self, n_images: int) -> None:
        super().keep_in_memory(n_images)
        self._posteriors.limit = max(self._posteriors.limit or 0, n_images)

    def reset_caches(self) -> None:
        super().reset_caches()
        self._posteriors.clear()

    def probe(self, batch: int) -> None:
        S, sd = self.config.image_size, self.sd
        x = torch.rand(batch, 3, S, S, device=self.device, dtype=self.dtype) * 2 - 1
        width = int(sd.c.text_encoder.config.hidden_size)
        ctx = torch.zeros(batch, 77, width, device=self.device, dtype=self.dtype)
        with sd.eager():  # no compilation per probed size
            mean, std = sd.posterior(x)
            sd.features(mean, std, ctx, keys=[f"probe-{i}" for i in range(batch)], t=self.config.t,
                        ensemble=self.config.ensemble, seed=0, posterior=self.config.posterior)

    def describe(self) -> dict:
        return {**super().describe(), "model_id": self.config.model_id}

    def close(self) -> None:
        if self._sd is not None:
            self._sd.close()
            self._sd = None
