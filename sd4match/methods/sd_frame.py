"""Stable Diffusion decoder layers in the padded frame (the base of SD+DINO and GeoAware-SC):
sliding windows, fixed noise, FreeU, ODISE's captioner, windows assembled into the frame.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks.console import say
from benchmarks.dense import ImageInfo
from benchmarks.matchers.base import MatcherError

from ..backbones import freeu as freeu_rules
from ..backbones.captioner import CAPTIONERS, CLIP_HUB_ID
from ..backbones.captioner import HOW as CAPTIONER_HOW
from ..backbones.sd import SDFeaturizer
from ..backbones.sd_models import load_components
from .frame import FrameConfig, FrameMatcher, _flipped
from .frame_geometry import square_canvas
from .sd_base import SD_FOLDERS
from .store import ImageStore

#: SD-1.5, as the SD+DINO and GeoAware-SC baselines use it (the original ``runwayml`` repository has
#: been taken down; this is the copy its maintainers point to)
SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_ENV = "CORRBENCH_SD15_MODEL"


def default_sd15_id() -> str:
    return os.environ.get(SD15_ENV) or SD15_HUB_ID


@dataclass(frozen=True)
class SDFrameConfig(FrameConfig):
    """Stable Diffusion settings of SD+DINO and GeoAware-SC (see the module docstring and the README).

    model_id: SD-1.5 weights (hub id, local folder, ``tiny``, ``random-sd15``); sd_size: the SD frame
    (960; the same image, padded the same way); window: the side of the sliding windows the UNet
    sees (512, SD-1.5's native size; 0: the whole frame at once), overlapping windows averaged;
    t: noise timestep (one fixed noise tensor for every image, drawn from ``seed`` at 64 x 64 latent
    size and resized bicubically for other latent sizes); latent: the VAE posterior mean; layers:
    the UNet modules whose outputs are taken (SD-1.5 decoder blocks 2, 5, 8 of the LDM numbering:
    the hidden states entering them; equal to the authors' pipeline on the golden fixtures); prompt: the text
    condition (``""``: the empty prompt; ``{category}`` is replaced); captioner: ``none`` (no image
    conditioning: the empty-prompt context) or ``odise`` (ODISE's implicit captioner, as the authors
    run it; :mod:`sd4match.backbones.captioner`), with captioner_ckpt (ODISE's checkpoint) and clip_id (CLIP
    ViT-L/14-336 in transformers layout, a folder or hub id);
    freeu: FreeU (b1 1.2, b2 1.4, s1 0.9, s2 0.2) ``off``, by GeoAware-SC's channel rule
    (``geoaware``) or by diffusers' up-block rule (``diffusers``); see :mod:`sd4match.backbones.freeu`.
    """

    model_id: str = field(default_factory=default_sd15_id)
    sd_size: int = 960
    window: int = 512
    t: int = 100
    layers: str = "up_blocks.0.resnets.1,up_blocks.1.attentions.1,up_blocks.2.attentions.1"
    prompt: str = ""
    captioner: str = "none"
    captioner_ckpt: str = ""
    clip_id: str = CLIP_HUB_ID
    freeu: str = "off"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "freeu", freeu_rules.parse(self.freeu))
        if not 0 <= self.t <= 999:
            raise ValueError(f"t must be in 0..999, got {self.t}")
        if self.captioner not in CAPTIONERS:
            raise ValueError(f"captioner must be one of {', '.join(CAPTIONERS)}, got {self.captioner!r}")
        if self.captioner == "odise" and not self.captioner_ckpt:
            raise ValueError(f"captioner: {CAPTIONER_HOW}")
        if self.window < 0 or (self.window and self.window > self.sd_size) or self.sd_size < 8:
            raise ValueError(f"window must be 0 or in 1..sd_size ({self.sd_size}), got {self.window}")
        if len([n for n in self.layers.split(",") if n.strip()]) != 3:
            raise ValueError(f"layers must name 3 UNet modules (s5, s4, s3), got {self.layers!r}")


#: the tiny preset shared by the SD frame matchers (random weights built in code)
TINY_SD = {"model_id": "tiny", "dino_id": "tiny", "image_size": 112, "sd_size": 64, "window": 32,
           "batch_size": 16}


def window_offsets(S: int, window: int) -> list[int]:
    """Offsets of the sliding windows along one side: ``ceil(S / window)`` windows spread evenly from
    0 to ``S - window`` (960 / 512: 0 and 448, a 64-pixel overlap)."""
    if not window or window >= S:
        return [0]
    n = math.ceil(S / window)
    return [round(k * (S - window) / (n - 1)) for k in range(n)]


class SDFrameMatcher(FrameMatcher):
    """SD-1.5 decoder features in the padded frame (shared by SD+DINO and GeoAware-SC zero-shot)."""

    Config = SDFrameConfig

    def __init__(self, config=None):
        super().__init__(config)
        cfg = self.config
        self._sd: SDFeaturizer | None = None
        self._captioner = None
        self._layers = [n.strip() for n in cfg.layers.split(",") if n.strip()]
        self._prompts: dict[str, torch.Tensor] = {}
        self._sd_store = ImageStore(cfg.cache_dir, "sd-layers",
                                    [self.fingerprints()["model"], cfg.sd_size, cfg.window, cfg.t, cfg.layers,
                                     cfg.prompt, cfg.freeu, cfg.pad, cfg.seed, cfg.dtype, cfg.device.split(":")[0],
                                     cfg.captioner, self.fingerprints().get("captioner"), self.fingerprints().get("clip")],
                                    self.device, limit=2 * self.memory_cache_size, one_at_a_time=cfg.batch_invariant)
        self._stores.append(self._sd_store)

    def fingerprints(self):
        out = super().fingerprints()
        if "model" not in out:
            from benchmarks.fingerprint import model_fingerprint

            out["model"] = model_fingerprint(self.config.model_id, self.config.seed, SD_FOLDERS)
        if self.config.captioner == "odise" and "captioner" not in out:
            from pathlib import Path

            from benchmarks.fingerprint import file_digest, model_fingerprint

            path = Path(self.config.captioner_ckpt).expanduser()
            if not path.is_file():
                raise MatcherError(f"{self.config.captioner_ckpt}: no ODISE checkpoint there; {CAPTIONER_HOW}")
            out["captioner"] = file_digest(path, {})
            out["clip"] = model_fingerprint(self.config.clip_id, self.config.seed)
        return out

    @property
    def sd(self) -> SDFeaturizer:
        if self._sd is None:
            say(f"loading Stable Diffusion from {self.config.model_id} ...")
            comps = load_components(self.config.model_id, seed=self.config.seed)
            blocks = [int(n.split(".")[1]) for n in self._layers if n.split(".")[0] == "up_blocks" and n.split(".")[1:2]
                      and n.split(".")[1].isdigit()]
            # the featurizer's own stop hook sits after the last up block named (the layer hooks stop earlier)
            last = min(max(blocks, default=len(comps.unet.up_blocks) - 1), len(comps.unet.up_blocks) - 1)
            self._sd = SDFeaturizer(comps, last, self.device, self.dtype)
            freeu_rules.enable(comps.unet, self.config.freeu)
        return self._sd

    @property
    def captioner(self):
        """ODISE's captioner (``captioner=odise``), loaded on first use and checked against the UNet."""
        if self._captioner is None and self.config.captioner == "odise":
            from ..backbones.captioner import load_captioner

            cfg = self.config
            say(f"loading the ODISE captioner from {cfg.captioner_ckpt} and CLIP from {cfg.clip_id} ...")
            cap = load_captioner(cfg.captioner_ckpt, cfg.clip_id)
            unet = self.sd.c.unet
            cap.check_fits(int(unet.config.cross_attention_dim), int(unet.time_embedding.linear_2.out_features),
                           cfg.captioner_ckpt)
            self._captioner = cap.to(self.device, self.dtype)
        return self._captioner

    def close(self) -> None:
        if self._sd is not None:
            self._sd.close()
            self._sd = None
        self._captioner = None

    def describe(self) -> dict:
        out = {**super().describe(), "model_id": self.config.model_id, "captioner": self.config.captioner,
               "freeu": self.config.freeu}
        if self.config.captioner == "odise":
            out.update(captioner_ckpt=self.config.captioner_ckpt, clip_id=self.config.clip_id)
        return out

    def _context(self, category: str) -> torch.Tensor:
        text = self.config.prompt.replace("{category}", category)
        if text not in self._prompts:
            self._prompts[text] = self.sd.encode_text([text])[0]
        return self._prompts[text]

    def _noise(self, h: int, w: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.config.seed)
        noise = torch.randn((1, 4, 64, 64), generator=g)
        if (h, w) != (64, 64):
            noise = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
        return noise

    def sd_layers(self, images, infos: list[ImageInfo], flip: bool = False) -> list[tuple[torch.Tensor, ...]]:
        """(s5, s4, s3) maps of each image over the whole SD frame (windows averaged), cached per image."""
        cfg = self.config
        S, win = cfg.sd_size, cfg.window or cfg.sd_size
        offs = window_offsets(S, win)

        def compute(positions):
            sd = self.sd
            out = []
            for i in positions:
                canvas = square_canvas(images[i], S, cfg.pad, flip)
                crops = torch.stack([canvas[:, y:y + win, x:x + win] for y in offs for x in offs])
                x = (crops.to(self.device, self.dtype) * 2 - 1)
                mean, _ = sd.posterior(x)
                lat = mean * sd.c.vae.config.scaling_factor
                noise = self._noise(*lat.shape[-2:]).to(lat.device, lat.dtype).expand_as(lat)
                tt = torch.full((len(lat),), int(cfg.t), device=lat.device, dtype=torch.long)
                noisy = sd.c.scheduler.add_noise(lat, noise, tt)
                ctx = self._context(infos[i].category).to(lat.device, self.dtype)
                time_add = None
                if self.captioner is not None:  # ODISE: a context and a time addition per window
                    ctx, time_add = self.captioner(crops.to(self.device), ctx, ctx if cfg.prompt else None)
                    ctx, time_add = ctx.to(self.dtype), time_add.to(self.dtype)
                else:
                    ctx = ctx[None].expand(len(lat), -1, -1)
                feats = sd.layer_features(noisy, tt, ctx, self._layers, time_add)
                out.append(tuple(_assemble(f.float(), offs, win, S) for f in feats))
            return out

        store_infos = [_flipped(i) for i in infos] if flip else infos
        return self._sd_store.get(store_infos, compute)


def _assemble(f: torch.Tensor, offs: list[int], win: int, S: int) -> torch.Tensor:
    """Window maps ``(n*n, C, m, m)`` -> the whole frame's ``(C, M, M)``, overlaps averaged."""
    m = f.shape[-1]
    stride = win / m
    M = round(S / stride)
    total = torch.zeros((f.shape[1], M, M), device=f.device)
    count = torch.zeros((1, M, M), device=f.device)
    k = 0
    for y in offs:
        for x in offs:
            cy, cx = round(y / stride), round(x / stride)
            total[:, cy:cy + m, cx:cx + m] += f[k]
            count[:, cy:cy + m, cx:cx + m] += 1
            k += 1
    return total / count.clamp_min(1)
