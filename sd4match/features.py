"""Stable Diffusion features: VAE posterior, noise at timestep t, UNet stopped after an up block.

The steps follow ../docs (method facts): the image is resized to S x S and scaled to [-1, 1]; the
VAE posterior is *sampled* (mean + std * eps) and multiplied by the VAE scaling factor; noise is
added with the scheduler's ``add_noise`` at timestep ``t``; the UNet runs with the prompt
embeddings as cross-attention context and is stopped right after ``up_blocks[up_block]`` by a
forward hook (diffusers' own forward is used unchanged); the ensemble repeats this E times with
independent noise and averages the feature maps.

Randomness is seeded per image: the posterior sample and the E noise draws come from a CPU
generator seeded with ``hash(seed, image key)``, so a result does not depend on batch
composition or device.
"""

from __future__ import annotations

import hashlib

import torch

from .models import SDComponents


class _Stop(Exception):
    """Raised by the hook to end the UNet forward after the block we need."""


def image_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class SDFeaturizer:
    """Dense features from a frozen Stable Diffusion UNet.

    Shape: images ``(B, 3, S, S)`` in [-1, 1] -> features ``(B, C, S/16, S/16)`` for SD-2.1's
    ``up_blocks[1]`` (1280 x 48 x 48 at S = 768).
    """

    def __init__(self, components: SDComponents, up_block: int = 1, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, compile: bool = False):
        n_up = len(components.unet.up_blocks)
        if not 0 <= up_block < n_up:
            raise ValueError(f"up_block must be in 0..{n_up - 1}, got {up_block}")
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()  # casting frozen modules with .to() is intended here
        self.c = components
        self.up_block = up_block
        self.device = torch.device(device)
        self.dtype = dtype
        for m in (components.vae, components.unet, components.text_encoder):
            m.to(self.device, dtype=dtype)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:  # NHWC convolutions: faster on tensor-core GPUs
            components.vae.to(memory_format=self.memory_format)
            components.unet.to(memory_format=self.memory_format)
        if compile:  # torch.compile each UNet block that runs (diffusers' modules, compiled in place)
            unet = components.unet
            for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks[: up_block + 1]]:
                if block is not None:
                    block.compile()
        self._captured: torch.Tensor | None = None
        self._hook = components.unet.up_blocks[up_block].register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self._captured = output[0] if isinstance(output, tuple) else output
        raise _Stop

    def close(self) -> None:
        self._hook.remove()

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompt strings -> ``(B, 77, D)`` context from the tokenizer and text encoder (no CFG)."""
        tok = self.c.tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        return self.c.text_encoder(ids)[0]

    # ------------------------------------------------------------------ image
    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of ``(B, 3, S, S)`` images in [-1, 1]; unscaled latents."""
        x = images.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        dist = self.c.vae.encode(x).latent_dist
        return dist.mean, dist.std

    def _noise(self, keys: list[str], seed: int, shape: tuple, ensemble: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps, noise = [], []
        for k in keys:
            g = torch.Generator().manual_seed(image_seed(seed, k))
            eps.append(torch.randn(shape, generator=g))
            noise.append(torch.randn((ensemble, *shape), generator=g))
        return torch.stack(eps), torch.stack(noise)

    def features(self, mean: torch.Tensor, std: torch.Tensor, context: torch.Tensor, *, keys: list[str], t: int,
                 ensemble: int, seed: int) -> torch.Tensor:
        """Ensemble-averaged UNet features.

        Args:
            mean, std: VAE posterior ``(B, 4, h, w)``.
            context: ``(B, 77, D)`` prompt embeddings (text or learned prompts).
            keys: one stable key per image (content hash) for the per-image seeded noise.
        Shape: -> ``(B, C, h', w')`` float32. Differentiable with respect to ``context`` (training);
        callers that only evaluate wrap it in ``torch.no_grad()``.
        """
        B = mean.shape[0]
        eps, noise = self._noise(keys, seed, tuple(mean.shape[1:]), ensemble)
        latents = (mean + std * eps.to(mean.device, mean.dtype)) * self.c.vae.config.scaling_factor
        lat = latents[:, None].expand(B, ensemble, *latents.shape[1:]).reshape(B * ensemble, *latents.shape[1:])
        noise = noise.to(lat.device, lat.dtype).reshape(B * ensemble, *latents.shape[1:])
        tt = torch.full((B * ensemble,), int(t), device=lat.device, dtype=torch.long)
        noisy = self.c.scheduler.add_noise(lat, noise, tt)
        ctx = context.to(lat.device, self.dtype)
        ctx = ctx[:, None].expand(B, ensemble, *ctx.shape[1:]).reshape(B * ensemble, *ctx.shape[1:])
        feats = self.unet_features(noisy, tt, ctx)
        return feats.float().reshape(B, ensemble, *feats.shape[1:]).mean(1)

    def unet_features(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Output of ``up_blocks[up_block]`` (the forward stops there)."""
        self._captured = None
        noisy = noisy.contiguous(memory_format=self.memory_format)
        try:
            self.c.unet(noisy, t, encoder_hidden_states=context)
        except _Stop:
            pass
        if self._captured is None:  # pragma: no cover - the hook always fires
            raise RuntimeError("UNet forward did not reach the hooked up block")
        out, self._captured = self._captured, None
        return out
