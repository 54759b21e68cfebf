"""Stable Diffusion features: VAE posterior, noise at timestep t, UNet stopped after an up block.

The steps follow ../docs (method facts): the image is resized to S x S and scaled to [-1, 1]; the
VAE posterior is *sampled* (mean + std * eps) and multiplied by the VAE scaling factor; noise is
added with the scheduler's ``add_noise`` at timestep ``t``; the UNet runs with the prompt
embeddings as cross-attention context and is stopped right after ``up_blocks[up_block]`` by a
forward hook (diffusers' own forward is used unchanged); the ensemble repeats this E times with
independent noise and averages the feature maps.

Randomness is seeded per image: the posterior sample(s) and the E noise draws come from a CPU
generator seeded with ``hash(seed, image key)``, so a result does not depend on batch
composition or device. ``posterior="per-member"`` (DIFT: the image is repeated E times before the
VAE) draws one posterior sample per ensemble member; ``"per-image"`` (SD4Match: the latent is
repeated after sampling) draws one shared by the E members. Either way the VAE encoder runs once
per image: the posterior (mean, std) is cached and sampled as ``mean + std * eps``.

The draws come from :attr:`SDFeaturizer.noise_source`, a callable that can be replaced to replay
recorded draws (the faithfulness tests feed the reference code's own ``eps`` and ``noise``);
production code never changes it.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from .components import SDComponents


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
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, compile: bool = False,
                 attention: str = "auto", autocast: torch.dtype | None = None):
        n_up = len(components.unet.up_blocks)
        if not 0 <= up_block < n_up:
            raise ValueError(f"up_block must be in 0..{n_up - 1}, got {up_block}")
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()  # casting frozen modules with .to() is intended here
        self.c = components
        self.up_block = up_block
        self.device = torch.device(device)
        self.dtype = dtype
        #: run the networks under ``torch.autocast`` in this dtype (weights stay in ``dtype``), or None
        self.autocast = autocast
        for m in (components.vae, components.unet, components.text_encoder):
            m.to(self.device, dtype=dtype)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:  # NHWC convolutions: faster on tensor-core GPUs
            components.vae.to(memory_format=self.memory_format)
            components.unet.to(memory_format=self.memory_format)
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        self.attention = attention
        self.compiled = compile
        #: with ``compile``: UNet batches are padded up to this many latents, so one static-shape graph
        #: serves every call (the last, partial batch of a run included); set by the matcher
        self.pad_to: int | None = None
        self._eager = False
        #: a list to collect (start, end) CUDA events around each UNet call (GPU busy time), or None
        self.events: list | None = None
        if compile:  # torch.compile each UNet block that runs (diffusers' modules, compiled in place)
            unet = components.unet
            for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks[: up_block + 1]]:
                if block is not None:
                    block.compile(dynamic=False)
        #: ``(keys, seed, shape, ensemble, n_eps) -> (eps (B, n_eps, *shape), noise (B, E, *shape))``;
        #: replaceable to replay recorded draws (tests); the default is the per-image seeded draw
        self.noise_source = self._noise
        self._captured: torch.Tensor | None = None
        self._hook = components.unet.up_blocks[up_block].register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self._captured = output[0] if isinstance(output, tuple) else output
        raise _Stop

    def close(self) -> None:
        self._hook.remove()

    @property
    def in_eager(self) -> bool:
        """True inside :meth:`eager`."""
        return self._eager

    @contextlib.contextmanager
    def eager(self):
        """Run compiled blocks eagerly and without batch padding (FLOP counting, batch-size probes)."""
        previous, self._eager = self._eager, True
        try:
            with torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext():
                yield
        finally:
            self._eager = previous

    def amp(self):
        """The autocast context of this featurizer (a no-op without autocast)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompt strings -> ``(B, 77, D)`` context from the tokenizer and text encoder (no CFG)."""
        tok = self.c.tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        with self.amp():
            return self.c.text_encoder(ids)[0]

    # ------------------------------------------------------------------ image
    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of ``(B, 3, S, S)`` images in [-1, 1]; unscaled latents."""
        x = images.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        with self.amp():
            dist = self.c.vae.encode(x).latent_dist
        return dist.mean, dist.std

    def _noise(self, keys: list[str], seed: int, shape: tuple, ensemble: int, n_eps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior-sample noise ``(B, n_eps, *shape)`` and ensemble noise ``(B, E, *shape)``, drawn on the
        CPU per image. For CUDA they are written into pinned memory, so the copy to the GPU does
        not wait for the work already queued there."""
        pin = self.device.type == "cuda"
        eps = torch.empty((len(keys), n_eps, *shape), pin_memory=pin)
        noise = torch.empty((len(keys), ensemble, *shape), pin_memory=pin)
        for j, k in enumerate(keys):
            g = torch.Generator().manual_seed(image_seed(seed, k))
            torch.randn((n_eps, *shape), generator=g, out=eps[j])
            torch.randn((ensemble, *shape), generator=g, out=noise[j])
        return eps, noise

    def features(self, mean: torch.Tensor, std: torch.Tensor, context: torch.Tensor, *, keys: list[str], t: int,
                 ensemble: int, seed: int, posterior: str = "per-image") -> torch.Tensor:
        """Ensemble-averaged UNet features.

        Args:
            mean, std: VAE posterior ``(B, 4, h, w)``.
            context: ``(B, 77, D)`` prompt embeddings (text or learned prompts).
            keys: one stable key per image (content hash) for the per-image seeded noise.
            posterior: ``per-image`` (one latent sample shared by the E members) or ``per-member``.
        Shape: -> ``(B, C, h', w')`` float32. Differentiable with respect to ``context`` (training);
        callers that only evaluate wrap it in ``torch.no_grad()``.
        """
        if posterior not in POSTERIOR:
            raise ValueError(f"posterior must be one of {', '.join(POSTERIOR)}, got {posterior!r}")
        B, shape = mean.shape[0], tuple(mean.shape[1:])
        n_eps = ensemble if posterior == "per-member" else 1
        eps, noise = self.noise_source(keys, seed, shape, ensemble, n_eps)
        if tuple(eps.shape) != (B, n_eps, *shape) or tuple(noise.shape) != (B, ensemble, *shape):
            raise ValueError(f"noise_source gave eps {tuple(eps.shape)} and noise {tuple(noise.shape)}, expected "
                             f"{(B, n_eps, *shape)} and {(B, ensemble, *shape)}")
        eps = eps.to(mean.device, non_blocking=True).to(mean.dtype)
        latents = (mean[:, None] + std[:, None] * eps) * self.c.vae.config.scaling_factor  # (B, n_eps, ...)
        lat = latents.expand(B, ensemble, *shape).reshape(B * ensemble, *shape)
        noise = noise.to(lat.device, non_blocking=True).to(lat.dtype).reshape(B * ensemble, *shape)
        tt = torch.full((B * ensemble,), int(t), device=lat.device, dtype=torch.long)
        noisy = self.c.scheduler.add_noise(lat, noise, tt)
        ctx = context.to(lat.device, self.dtype)
        ctx = ctx[:, None].expand(B, ensemble, *ctx.shape[1:]).reshape(B * ensemble, *ctx.shape[1:])
        feats = self.unet_features(noisy, tt, ctx)
        return feats.float().reshape(B, ensemble, *feats.shape[1:]).mean(1)

    def unet_features(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Output of ``up_blocks[up_block]`` (the forward stops there)."""
        n = noisy.shape[0]
        if self.compiled and not self._eager and self.pad_to and n < self.pad_to:
            # every latent is computed independently, so padding rows change nothing in the first n
            fill = self.pad_to - n
            noisy, t, context = (torch.cat([x, x[-1:].expand(fill, *x.shape[1:])]) for x in (noisy, t, context))
        self._captured = None
        noisy = noisy.contiguous(memory_format=self.memory_format)
        timed = self.events is not None and noisy.is_cuda
        if timed:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        backend = contextlib.nullcontext() if self.attention == "auto" else _sdpa_backend(self.attention)
        try:
            with backend, self.amp():
                self.c.unet(noisy, t, encoder_hidden_states=context)
        except _Stop:
            pass
        if timed:
            end.record()
            self.events.append((start, end))
        if self._captured is None:  # pragma: no cover - the hook always fires
            raise RuntimeError("UNet forward did not reach the hooked up block")
        out, self._captured = self._captured, None
        return out[:n]

    def layer_features(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                       layers: list[str], time_add: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Outputs of the named UNet submodules (``up_blocks.2.attentions.1`` ...), in ``layers`` order.

        The forward stops when the up-block layer after the last of them is about to run: FreeU scales
        the backbone state entering a layer in place, so a stored state carries the factor of the
        layer it enters, as in the authors' code (without FreeU this changes nothing).
        ``time_add``: ``(B, T)`` added to the output of the UNet's time-embedding MLP (ODISE's
        captioner), or None."""
        got: dict[str, torch.Tensor] = {}
        stop_at = self._next_up_layer(layers)

        def hook(name):
            def capture(module, inputs, output):
                got[name] = output[0] if isinstance(output, tuple) else output
                if stop_at is None and len(got) == len(set(layers)):
                    raise _Stop
            return capture

        def stop(module, inputs):
            if len(got) == len(set(layers)):
                raise _Stop

        try:
            handles = [self.c.unet.get_submodule(n).register_forward_hook(hook(n)) for n in dict.fromkeys(layers)]
            if stop_at is not None:
                handles.append(self.c.unet.get_submodule(stop_at).register_forward_pre_hook(stop))
            if time_add is not None:
                add = time_add.to(noisy.device)
                handles.append(self.c.unet.time_embedding.register_forward_hook(lambda m, i, out: out + add.to(out.dtype)))
        except AttributeError as exc:
            raise ValueError(f"the UNet has no module {exc}; layers are names such as up_blocks.2.attentions.1") from None
        try:
            with self.amp():
                self.c.unet(noisy.contiguous(memory_format=self.memory_format), t, encoder_hidden_states=context)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in layers if n not in got]
        if missing:
            raise RuntimeError(f"UNet forward ended before {missing[0]} ran")
        return [got[n] for n in layers]

    def _next_up_layer(self, layers: list[str]) -> str | None:
        """The up-block resnet that runs after the last of ``layers`` (where FreeU would scale the
        state that layer produced), or None (stop right after the last layer)."""
        resnets = [(i, j) for i, b in enumerate(self.c.unet.up_blocks) for j in range(len(b.resnets))]
        last = None
        for n in layers:
            parts = n.split(".")
            if parts[0] == "mid_block":
                pos = (-1, 0)
            elif parts[0] == "up_blocks" and len(parts) >= 4 and parts[1].isdigit() and parts[3].isdigit():
                i, j = int(parts[1]), int(parts[3])
                pos = (i, j + 1) if parts[2] in ("resnets", "attentions") else (i + 1, 0)
            else:
                continue
            last = pos if last is None or pos > last else last
        if last is None:
            return None
        after = [r for r in resnets if r >= last]
        return f"up_blocks.{after[0][0]}.resnets.{after[0][1]}" if after else None

    def busy_seconds(self) -> float:
        """GPU time of the UNet calls recorded in :attr:`events` (synchronises)."""
        if not self.events:
            return 0.0
        self.events[-1][1].synchronize()
        return sum(s.elapsed_time(e) for s, e in self.events) / 1e3


#: ``posterior`` values: one VAE posterior sample per image (SD4Match) or per ensemble member (DIFT)
POSTERIOR = ("per-image", "per-member")

#: ``attention`` values: PyTorch's own choice, or one scaled-dot-product-attention backend forced
ATTENTION = ("auto", "flash", "efficient", "cudnn", "math")


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name])
