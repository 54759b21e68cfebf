"""The field's zero-shot baselines in the padded square frame: DINOv2 nearest neighbour, SD+DINO
("A Tale of Two Features") and GeoAware-SC's zero-shot variant.

Facts from ``../shared/docs/baselines.md`` (sections 1-3); nothing here is taken from the authors'
code. All three share one geometry, the one sd-dino and GeoAware-SC evaluate in:

- **frame**: the longer image side is resized to S with Pillow's LANCZOS filter, the shorter to
  ``round(S * short / long)`` (round half to even), and the result is pasted centred on a black
  S x S canvas at offset ``(S - resized_short) // 2`` (``pad=edge``: padded with edge pixels instead).
  A keypoint maps as ``x' = x * S / max(W, H) + offset``; predictions map back the same way. The
  frame is an isotropic scaling, so PCK measured in it equals PCK in the original image.
- **source patch**: the cell containing the keypoint, ``j = int(x' * g / S)`` on a g x g grid.
- **readouts**: ``nn`` (argmax cell) or ``geoaware-soft-argmax`` (GeoAware's window soft-argmax);
  the matched cell u maps to ``u * S / g + centre`` in the frame (``centre`` 6.5 in sd-dino, 7 in
  GeoAware-SC: a real half-pixel difference, so a setting). Predictions in the padding are kept
  as they are (they are outside the image; the authors do not clamp either).

Test-time options (off by default, recorded in the run as ``tta``): ``flip=adaptive-mnn`` (adaptive
pose alignment: the mirrored source, with left/right keypoints exchanged, is also matched, and its
predictions are taken for the keypoints whose left/right partner is annotated in the pair when its
mean mutual-nearest-neighbour distance to the target is the smaller; GeoAware-SC's default
criterion uses SAM masks prompted with the ground-truth box, which this toolkit does not have) and
``mnn`` (the match is searched among the target cells whose best source cell is the source
keypoint's cell, falling back to the plain argmax when there is none).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import readouts as R
from benchmarks.console import say
from benchmarks.dense import DenseConfig, DenseMatcher, ImageInfo
from benchmarks.flips import partners, swaps_for
from benchmarks.matchers.base import ConfigError, MatcherError

from . import freeu as freeu_rules
from .base import SD_FOLDERS, ImageStore
from .captioner import CAPTIONERS, CLIP_HUB_ID
from .captioner import HOW as CAPTIONER_HOW
from .dino import DINO_ENV, MEAN, POSITION_RULES, STD, block_tokens, default_dino_id, load_dino
from .features import SDFeaturizer
from .models import load_components

#: SD-1.5, as the SD+DINO and GeoAware-SC baselines use it (the original ``runwayml`` repository has
#: been taken down; this is the copy its maintainers point to)
SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_ENV = "CORRBENCH_SD15_MODEL"
FRAME_READOUTS = ("nn", "geoaware-soft-argmax")
FLIPS = ("off", "adaptive-mnn")
PADS = ("zero", "edge")


def default_sd15_id() -> str:
    return os.environ.get(SD15_ENV) or SD15_HUB_ID


# ----------------------------------------------------------------------------------------------- geometry
def square_layout(W: int, H: int, S: int) -> tuple[float, int, int, int, int]:
    """(scale, offset_x, offset_y, resized_w, resized_h) of an image W x H in the S x S frame."""
    if H <= W:
        nw, nh = S, int(np.around(S * H / W))
    else:
        nw, nh = int(np.around(S * W / H)), S
    nw, nh = max(nw, 1), max(nh, 1)
    return S / max(W, H), (S - nw) // 2, (S - nh) // 2, nw, nh


def to_frame(xy: np.ndarray, W: int, H: int, S: int) -> np.ndarray:
    s, ox, oy, _, _ = square_layout(W, H, S)
    return np.asarray(xy, dtype=np.float64) * s + [ox, oy]


def from_frame(xy: np.ndarray, W: int, H: int, S: int) -> np.ndarray:
    s, ox, oy, _, _ = square_layout(W, H, S)
    return (np.asarray(xy, dtype=np.float64) - [ox, oy]) / s


def square_canvas(image: torch.Tensor, S: int, pad: str = "zero", flip: bool = False) -> torch.Tensor:
    """``(3, H, W)`` image in [0, 1] -> ``(3, S, S)`` frame (LANCZOS resize of the 8-bit image, centred,
    zero or edge padding), optionally mirrored left-right *after* padding (x' -> S - x')."""
    from PIL import Image

    u8 = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    H, W = u8.shape[:2]
    _, ox, oy, nw, nh = square_layout(W, H, S)
    small = np.asarray(Image.fromarray(u8).resize((nw, nh), Image.Resampling.LANCZOS))
    widths = ((oy, S - nh - oy), (ox, S - nw - ox), (0, 0))
    canvas = np.pad(small, widths, mode="edge") if pad == "edge" else np.pad(small, widths)
    out = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1).float() / 255.0
    return out.flip(-1) if flip else out


def source_cells(xy_frame: np.ndarray, S: int, g: int) -> np.ndarray:
    """Grid cell (column, row) containing each frame point: ``int(x * g / S)``, clamped to the grid."""
    return np.clip((np.asarray(xy_frame) * g / S).astype(np.int64), 0, g - 1)


# ----------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class FrameConfig(DenseConfig):
    """Settings of the padded-square-frame matchers (see the module docstring).

    image_size: the annotation frame S (840: DINOv2's 60 x 60 patches of 14 px); pad: ``zero`` or
    ``edge``; centre: frame offset of a cell's predicted point (6.5 sd-dino, 7 GeoAware-SC);
    readout: ``nn`` and/or ``geoaware-soft-argmax``; flip: ``off`` or ``adaptive-mnn``; mnn:
    mutual-nearest-neighbour restricted search; dino_id / dino_layer / dino_final_norm: the DINOv2
    model (hub id, local folder, ``tiny`` or ``random-{small,base,large,giant}``), the block whose
    output is taken (-1: the last) and whether the final LayerNorm is applied; dino_pos: how its
    position table is resampled to the frame's grid (``hub``: DINOv2's torch.hub rule, as the
    authors ran it; ``transformers``: current transformers' rule; :data:`sd4match.dino.POSITION_RULES`).
    """

    image_size: int = 840
    resize: str = "lanczos"
    pad: str = "zero"
    centre: float = 6.5
    readout: str = "nn"
    flip: str = "off"
    mnn: bool = False
    seed: int = 42
    dino_id: str = field(default_factory=default_dino_id)
    dino_layer: int = -1
    dino_final_norm: bool = False
    dino_pos: str = "hub"

    def __post_init__(self):
        super().__post_init__()
        if self.dino_pos not in POSITION_RULES:
            raise ValueError(f"dino_pos must be one of {', '.join(POSITION_RULES)}, got {self.dino_pos!r}")
        if self.pad not in PADS:
            raise ValueError(f"pad must be one of {', '.join(PADS)}, got {self.pad!r}")
        if self.flip not in FLIPS:
            raise ValueError(f"flip must be one of {', '.join(FLIPS)}, got {self.flip!r}")
        if not 0 <= self.centre <= 64:
            raise ValueError(f"centre must be in 0..64 frame pixels, got {self.centre}")
        if self.image_size % 14:
            raise ValueError(f"image_size must be a multiple of DINOv2's 14-pixel patch, got {self.image_size}")


class FrameMatcher(DenseMatcher):
    """Base of the padded-frame matchers: implement :meth:`pair_maps` (features per pair on one
    g x g grid, already in the form compared by cosine)."""

    Config = FrameConfig
    host_images = True
    gpu_dtype = "float32"
    #: predictions can fall in the frame's padding, outside the image (kept, as the authors keep them)
    frame_padding = True

    def __init__(self, config=None):
        super().__init__(config)
        cfg = self.config
        bad = [r for r in self._readouts if r not in FRAME_READOUTS]
        if bad:
            raise ConfigError(f"{self.name}: readout {bad[0]!r} is not offered in the padded frame; valid: "
                              f"{', '.join(FRAME_READOUTS)}")
        self._dino = None
        self._tokens = ImageStore(cfg.cache_dir, "dino", [self.fingerprints()["dino"], cfg.device.split(":")[0],
                                                          "frame", cfg.image_size, cfg.pad, cfg.dino_layer,
                                                          cfg.dino_final_norm, cfg.dtype, cfg.dino_pos],
                                  self.device, limit=2 * self.memory_cache_size, one_at_a_time=cfg.batch_invariant)
        #: per-image stores (DINOv2 tokens, SD layers): cleared by reset_caches, sized by keep_in_memory
        self._stores = [self._tokens]

    # ------------------------------------------------------------------ shared pieces
    def _network_input(self, image):
        return image  # the original: each network's frame is built from it (LANCZOS, padding)

    def fingerprints(self) -> dict[str, str]:
        if not hasattr(self, "_fingerprints"):
            from benchmarks.fingerprint import model_fingerprint

            self._fingerprints = {"dino": model_fingerprint(self.config.dino_id, self.config.seed)}
        return self._fingerprints

    @property
    def dino(self):
        if self._dino is None:
            say(f"loading DINOv2 from {self.config.dino_id} ...")
            model, _ = load_dino(self.config.dino_id, self.config.seed, self.config.dino_pos)
            self._dino = model.to(self.device, self.dtype)
        return self._dino

    def describe(self) -> dict:
        return {**super().describe(), "tta": self.tta, "dino_id": self.config.dino_id, "dino_pos": self.config.dino_pos}

    @property
    def tta(self) -> str:
        """The test-time options in force, as recorded with every result ("none" when off)."""
        parts = ([f"flip={self.config.flip}"] if self.config.flip != "off" else []) + (["mnn"] if self.config.mnn else [])
        return ",".join(parts) or "none"

    def dino_maps(self, images, infos: list[ImageInfo], flip: bool = False) -> torch.Tensor:
        """DINOv2 block tokens per image in the frame, as ``(B, D, g, g)`` (cached per image)."""
        cfg = self.config
        S = cfg.image_size
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)

        def compute(positions):
            x = torch.stack([(square_canvas(images[i], S, cfg.pad, flip) - mean) / std for i in positions])
            tok = block_tokens(self.dino, x.to(self.device, self.dtype), cfg.dino_layer, cfg.dino_final_norm)
            g = int(round(math.sqrt(tok.shape[1])))
            return list(tok.transpose(1, 2).reshape(len(positions), -1, g, g))

        store_infos = [_flipped(i) for i in infos] if flip else infos
        return torch.stack(self._tokens.get(store_infos, compute)).float()

    def preflight(self, dataset: str, categories: list[str]) -> None:
        """``flip`` needs a left/right keypoint table for every category: refused before any model loads."""
        if self.config.flip == "off":
            return
        for c in categories:
            if swaps_for(dataset, c) is None:
                raise MatcherError(f"flip={self.config.flip}: no left/right keypoint table for dataset {dataset!r}, "
                                   f"category {c!r} (known: SPair-71k, SPair-U, AP-10K, CUB-200-2011)")

    def reset_caches(self) -> None:
        super().reset_caches()
        for store in self._stores:
            store.clear()

    def keep_in_memory(self, n_images: int) -> None:
        super().keep_in_memory(n_images)
        for store in self._stores:
            store.limit = max(store.limit or 0, n_images)

    # ------------------------------------------------------------------ to implement
    def image_maps(self, images, infos: list[ImageInfo], flip: bool = False) -> list[torch.Tensor]:
        """``(C, g, g)`` maps of single images (matchers whose maps do not depend on the pair)."""
        raise NotImplementedError

    def pair_maps(self, pairs, flip: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(source, target) ``(C, g, g)`` maps per pair; ``flip``: the source mirrored in the frame.
        By default from :meth:`image_maps`, once per distinct image; pair-dependent matchers override it."""
        images = self.load_images(pairs)
        rels = list(images)
        where = {r: j for j, r in enumerate(rels)}
        maps = self.image_maps([images[r][0] for r in rels], [images[r][1] for r in rels])
        if not flip:
            return [(maps[where[p.row["src_image"]]], maps[where[p.row["trg_image"]]]) for p in pairs]
        src = [p.row["src_image"] for p in pairs]
        mirrored = self.image_maps([images[r][0] for r in src], [images[r][1] for r in src], flip=True)
        return [(mirrored[k], maps[where[p.row["trg_image"]]]) for k, p in enumerate(pairs)]

    # ------------------------------------------------------------------ matching
    def _submit(self, pairs):
        out = self._predict(list(pairs))
        return lambda: out

    @torch.no_grad()
    def _predict(self, pairs) -> dict[str, list[np.ndarray]]:
        cfg = self.config
        S = cfg.image_size
        result: dict[str, list[np.ndarray]] = {r: [] for r in self._readouts}
        todo = [k for k, p in enumerate(pairs) if len(p.row["src_kps"])]
        maps = dict(zip(todo, self.pair_maps([pairs[k] for k in todo]))) if todo else {}
        flipped = {}
        if cfg.flip != "off" and todo:
            for p in (pairs[k] for k in todo):
                if swaps_for(p.row.get("dataset", ""), p.row["category"]) is None:
                    raise MatcherError(f"flip={cfg.flip}: no left/right keypoint table for dataset "
                                       f"{p.row.get('dataset')!r}, category {p.row['category']!r} (known: SPair-71k, "
                                       "SPair-U, AP-10K, CUB-200-2011)")
            flipped = dict(zip(todo, self.pair_maps([pairs[k] for k in todo], flip=True)))
        for k, p in enumerate(pairs):
            n = len(p.row["src_kps"])
            if k not in maps:
                for r in self._readouts:
                    result[r].append(np.zeros((0, 2), np.float32))
                continue
            (W0, H0), (W1, H1) = p.src_size, p.trg_size
            fs, ft = maps[k]
            g = ft.shape[-1]
            src = to_frame(p.src_kps, W0, H0, S)
            preds = self._match(fs, ft, source_cells(src, S, g))
            if k in flipped:
                ffs, fft = flipped[k]
                ids = [int(i) for i in p.row["kps_ids"]]
                mate = partners(swaps_for(p.row["dataset"], p.row["category"]))
                where = {i: j for j, i in enumerate(ids)}
                use = np.array([i in mate and mate[i] in where for i in ids])
                if use.any() and _mnn_distance(ffs, fft) < _mnn_distance(fs, ft):
                    # keypoint i of the mirrored source sits at its partner's mirrored position
                    fsrc = np.stack([[S - src[where[mate[i]], 0], src[where[mate[i]], 1]] if u else src[j]
                                     for j, (i, u) in enumerate(zip(ids, use))])
                    fpreds = self._match(ffs, fft, source_cells(fsrc, S, g))
                    for r in preds:
                        preds[r][use] = fpreds[r][use]
            for r in self._readouts:
                frame_xy = preds[r] * (S / g) + cfg.centre
                result[r].append(from_frame(frame_xy, W1, H1, S).astype(np.float32).reshape(n, 2))
        return result

    def _match(self, fs: torch.Tensor, ft: torch.Tensor, cells: np.ndarray) -> dict[str, np.ndarray]:
        """Readouts for the source cells ``(N, 2)`` (column, row) -> grid positions per readout."""
        cfg = self.config
        C, g, _ = ft.shape
        a = F.normalize(fs.float().reshape(C, -1), dim=0)
        b = F.normalize(ft.float().reshape(C, -1), dim=0)
        idx = torch.as_tensor(cells[:, 1] * g + cells[:, 0], device=a.device)
        sim = a[:, idx].T @ b  # (N, g*g)
        if cfg.mnn:  # keep the target cells whose best source cell is the keypoint's own cell
            back = (a.T @ b).argmax(dim=0)  # (g*g,) best source cell of each target cell
            mutual = back[None, :] == idx[:, None]
            keep = mutual.any(dim=1, keepdim=True)
            sim = torch.where(mutual | ~keep, sim, torch.full_like(sim, -2.0))
        sim = sim.reshape(-1, g, g)
        out = {}
        for r in self._readouts:
            out[r] = R.apply(r, sim, geoaware_window=cfg.geoaware_window, geoaware_beta=cfg.geoaware_beta).cpu().numpy()
        return out


def _mnn_distance(fs: torch.Tensor, ft: torch.Tensor) -> float:
    """Mean L2 distance from source cells to their nearest target cell, over mutual nearest neighbours
    (GeoAware-SC's ``MUTUAL_NN`` pose criterion), on the maps as matched (each cell L2-normalised)."""
    C = ft.shape[0]
    a = F.normalize(fs.float().reshape(C, -1), dim=0).T
    b = F.normalize(ft.float().reshape(C, -1), dim=0).T
    d = torch.cdist(a, b)
    fwd, bwd = d.argmin(dim=1), d.argmin(dim=0)
    mutual = bwd[fwd] == torch.arange(len(a), device=a.device)
    return float(d.min(dim=1).values[mutual].mean()) if bool(mutual.any()) else float("inf")


def _flipped(info: ImageInfo) -> ImageInfo:
    return ImageInfo(info.path, hashlib.sha256(f"flip|{info.key}".encode()).hexdigest(), info.category, info.width,
                     info.height)


# ----------------------------------------------------------------------------------------------- DINOv2
class Dinov2Matcher(FrameMatcher):
    name = "dinov2"
    description = ("DINOv2 nearest neighbour as sd-dino / GeoAware-SC run it: ViT-B/14 block 11 tokens before the "
                   "final norm, 840 padded frame, 60 x 60 cells, argmax, cell centre 14j + 6.5")
    presets = {"tiny": {"dino_id": "tiny", "image_size": 112, "batch_size": 16},
               "geoaware": {"centre": 7.0},
               "hf-normed": {"dino_final_norm": True}}

    def image_maps(self, images, infos, flip: bool = False):
        return list(self.dino_maps(images, infos, flip))


# ----------------------------------------------------------------------------------------------- SD + DINO
@dataclass(frozen=True)
class SDFrameConfig(FrameConfig):
    """Stable Diffusion settings of SD+DINO and GeoAware-SC (see the module docstring and the README).

    model_id: SD-1.5 weights (hub id, local folder, ``tiny``, ``random-sd15``); sd_size: the SD frame
    (960; the same image, padded the same way); window: the side of the sliding windows the UNet
    sees (512, SD-1.5's native size; 0: the whole frame at once), overlapping windows averaged;
    t: noise timestep (one fixed noise tensor for every image, drawn from ``seed`` at 64 x 64 latent
    size and resized bicubically for other latent sizes); latent: the VAE posterior mean; layers:
    the UNet modules whose outputs are taken (SD-1.5 decoder blocks 2, 5, 8 of the LDM numbering:
    the hidden states entering them; UNCONFIRMED by running the original); prompt: the text
    condition (``""``: the empty prompt; ``{category}`` is replaced); captioner: ``none`` (no image
    conditioning: the empty-prompt context) or ``odise`` (ODISE's implicit captioner, as the authors
    run it; :mod:`sd4match.captioner`), with captioner_ckpt (ODISE's checkpoint) and clip_id (CLIP
    ViT-L/14-336 in transformers layout, a folder or hub id);
    freeu: FreeU (b1 1.2, b2 1.4, s1 0.9, s2 0.2) ``off``, by GeoAware-SC's channel rule
    (``geoaware``) or by diffusers' up-block rule (``diffusers``); see :mod:`sd4match.freeu`.
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
            from .captioner import load_captioner

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


@dataclass(frozen=True)
class SDDinoConfig(SDFrameConfig):
    """pca: ``lowrank`` (``torch.pca_lowrank``, as the authors; seeded) or ``exact`` (SVD);
    pca_dims: the per-layer dimensions (s5, s4, s3) of the joint PCA of each pair."""

    pca: str = "lowrank"
    pca_dims: str = "256,256,256"

    def __post_init__(self):
        super().__post_init__()
        if self.pca not in ("lowrank", "exact"):
            raise ValueError(f"pca must be lowrank or exact, got {self.pca!r}")
        try:
            dims = [int(d) for d in self.pca_dims.split(",")]
        except ValueError:
            raise ValueError(f"pca_dims must be 3 integers, got {self.pca_dims!r}") from None
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"pca_dims must be 3 positive integers, got {self.pca_dims!r}")


TINY_SD = {"model_id": "tiny", "dino_id": "tiny", "image_size": 112, "sd_size": 64, "window": 32,
           "batch_size": 16}


class SDDinoMatcher(SDFrameMatcher):
    name = "sd-dino"
    description = ("SD+DINO (A Tale of Two Features): SD-1.5 decoder blocks 2/5/8 at t=100 (960 frame, 512 windows), "
                   "joint PCA per pair to 256 each, + DINOv2-B block 11, each half L2-normalised, argmax; "
                   "plain diffusers, no ODISE captioner")
    Config = SDDinoConfig
    per_pair_features = True
    presets = {"tiny": {**TINY_SD, "pca_dims": "8,8,8"}, "text": {"prompt": "a photo of {category}"}}

    def pair_maps(self, pairs, flip: bool = False):
        cfg = self.config
        images = self.load_images(pairs)
        dims = [int(d) for d in cfg.pca_dims.split(",")]
        srcs = [p.row["src_image"] for p in pairs]
        trgs = [p.row["trg_image"] for p in pairs]
        s_layers = self.sd_layers([images[r][0] for r in srcs], [images[r][1] for r in srcs], flip)
        t_layers = self.sd_layers([images[r][0] for r in trgs], [images[r][1] for r in trgs])
        s_dino = self.dino_maps([images[r][0] for r in srcs], [images[r][1] for r in srcs], flip)
        t_dino = self.dino_maps([images[r][0] for r in trgs], [images[r][1] for r in trgs])
        out = []
        for k in range(len(pairs)):
            gen = torch.Generator().manual_seed(cfg.seed)
            a, b = co_pca(s_layers[k], t_layers[k], dims, cfg.pca, gen)
            g = t_dino.shape[-1]
            a, b = (x if x.shape[-1] == g else F.interpolate(x[None], size=(g, g), mode="bilinear", align_corners=False)[0]
                    for x in (a, b))
            out.append((_fuse(a, s_dino[k]), _fuse(b, t_dino[k])))
        return out


def co_pca(src: tuple[torch.Tensor, ...], trg: tuple[torch.Tensor, ...], dims: list[int], method: str,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SD+DINO's joint PCA of one pair: per layer (s5, s4, s3) the tokens of both images, centred by
    their joint mean, projected on the first ``dims`` principal directions; then s5 resized
    (bilinear) to s4's grid and put after s4, and that resized to s3's grid and put after s3:
    channels [s3 | s4 | s5] on s3's grid."""
    out_s, out_t = [], []
    for fs, ft, q in zip(src, trg, dims):
        C = fs.shape[0]
        x = torch.cat([fs.reshape(C, -1), ft.reshape(C, -1)], dim=1).T.float()  # (tokens, C)
        x = x - x.mean(dim=0, keepdim=True)
        q = min(q, *x.shape)
        if method == "exact":
            V = torch.linalg.svd(x, full_matrices=False).Vh[:q].T
        else:  # torch.pca_lowrank draws a random projection: seeded here, so runs repeat
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
                V = torch.pca_lowrank(x, q=q, center=False)[2][:, :q]
        y = (x @ V).T
        n = fs.shape[1] * fs.shape[2]
        out_s.append(y[:, :n].reshape(q, *fs.shape[1:]))
        out_t.append(y[:, n:].reshape(q, *ft.shape[1:]))

    def stack(s5, s4, s3):
        s5 = F.interpolate(s5[None], size=s4.shape[-2:], mode="bilinear", align_corners=False)[0]
        s45 = torch.cat([s4, s5])
        s45 = F.interpolate(s45[None], size=s3.shape[-2:], mode="bilinear", align_corners=False)[0]
        return torch.cat([s3, s45])

    return stack(*out_s), stack(*out_t)


def _fuse(sd: torch.Tensor, dino: torch.Tensor) -> torch.Tensor:
    """[SD | DINO], each half L2-normalised per cell (equal weights)."""
    return torch.cat([F.normalize(sd.float(), dim=0), F.normalize(dino.float(), dim=0)])


# ----------------------------------------------------------------------------------------------- GeoAware-SC
@dataclass(frozen=True)
class GeoAwareConfig(SDFrameConfig):
    """GeoAware-SC zero-shot: t 50, FreeU by GeoAware's channel rule, window soft-argmax (window 5, beta 0.02), cell centre 7;
    head: a GeoAware post-processor checkpoint (the supervised variant's ``AggregationNetwork`` state
    dict, loaded with ``weights_only``), or "" for the zero-shot features."""

    t: int = 50
    freeu: str = "geoaware"
    centre: float = 7.0
    readout: str = "geoaware-soft-argmax"
    geoaware_window: int = 5
    head: str = ""


class GeoAwareZeroShotMatcher(SDFrameMatcher):
    name = "geoaware-zs"
    description = ("GeoAware-SC zero-shot: SD-1.5 decoder blocks 2/5/8 at t=50 with FreeU (960 frame, 512 windows, no PCA) "
                   "+ DINOv2-B block 11; SD and DINO parts L2-normalised, then the whole; window soft-argmax 5")
    Config = GeoAwareConfig
    presets = {"tiny": {**TINY_SD}, "supervised-eval": {"geoaware_window": 7}}

    def __init__(self, config=None):
        super().__init__(config)
        self._head = None
        if self.config.head:
            self._head = load_head(self.config.head, self.device)

    def fingerprints(self):
        out = super().fingerprints()
        if self.config.head and "head" not in out:
            from benchmarks.fingerprint import file_digest

            path = _head_file(self.config.head)
            try:
                out["head"] = file_digest(path, {})
            except OSError as exc:
                raise MatcherError(f"{self.config.head}: cannot read the GeoAware head checkpoint ({exc.strerror or exc})") from None
        return out

    def descriptors(self, layers: tuple[torch.Tensor, ...], dino: torch.Tensor) -> torch.Tensor:
        s5, s4, s3 = layers
        g = dino.shape[-1]
        up = lambda x: x if x.shape[-1] == g else F.interpolate(x[None], size=(g, g), mode="bilinear",  # noqa: E731
                                                                  align_corners=False)[0]
        parts = [up(s3), up(s4), up(s5)]
        if self._head is not None:
            return F.normalize(self._head(parts + [dino.float()]), dim=0)
        sd = F.normalize(torch.cat(parts), dim=0)
        return F.normalize(torch.cat([sd, F.normalize(dino.float(), dim=0)]), dim=0)

    def image_maps(self, images, infos, flip: bool = False):
        return [self.descriptors(lay, d) for lay, d in zip(self.sd_layers(images, infos, flip),
                                                            self.dino_maps(images, infos, flip))]


# ----------------------------------------------------------------------------------------------- the head
class _Bottleneck(torch.nn.Module):
    """1x1 -> 192, 3x3 192 -> 192, 1x1 -> 768, GroupNorm(32) after each conv, ReLU between, and a
    1x1 projection shortcut when the input is not 768 wide."""

    def __init__(self, cin: int, cout: int = 768, mid: int = 192):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, mid, 1, bias=False)
        self.norm1 = torch.nn.GroupNorm(32, mid)
        self.conv2 = torch.nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.norm2 = torch.nn.GroupNorm(32, mid)
        self.conv3 = torch.nn.Conv2d(mid, cout, 1, bias=False)
        self.norm3 = torch.nn.GroupNorm(32, cout)
        self.shortcut = None if cin == cout else torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, bias=False),
                                                                      torch.nn.GroupNorm(32, cout))

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class AggregationHead(torch.nn.Module):
    """GeoAware-SC's supervised post-processor as ``baselines.md`` 3.5 describes it: one bottleneck
    block per input group ([640, 1280, 1280, 768] -> 768 each), summed with softmax-normalised
    mixing weights (4 scalars, initialised to 1). Input: the list of (C_i, g, g) maps."""

    def __init__(self, feature_dims=(640, 1280, 1280, 768), projection_dim: int = 768):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Bottleneck(c, projection_dim) for c in feature_dims)
        self.mixing = torch.nn.Parameter(torch.ones(len(feature_dims)))

    def forward(self, parts):
        w = torch.softmax(self.mixing, dim=0)
        return sum(w[i] * blk(x[None].float())[0] for i, (blk, x) in enumerate(zip(self.blocks, parts)))


def _head_file(path: str):
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise MatcherError(f"{path}: no GeoAware head checkpoint there (the supervised post-processor, e.g. "
                           "results_spair/best_856.PTH of the GeoAware-SC release); set head= to its path or leave it empty")
    return p


def load_head(path: str, device) -> AggregationHead:
    """An :class:`AggregationHead` state dict from ``path`` (``torch.load`` with ``weights_only``);
    a missing file or a state dict that does not fit is a one-line :class:`MatcherError`."""
    from .convert import read_tensors

    state = read_tensors(_head_file(path), "the GeoAware head checkpoint")
    head = AggregationHead()
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # the names fit, the shapes do not
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise MatcherError(f"{path}: the state dict's shapes do not fit this toolkit's AggregationHead ({first[:200]})") from None
    if missing or unexpected:
        raise MatcherError(f"{path}: the state dict does not fit this toolkit's AggregationHead "
                           f"({len(missing)} missing keys, e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]}); "
                           "the released file's key names are UNCONFIRMED")
    return head.to(device).eval().requires_grad_(False)


__all__ = ["Dinov2Matcher", "SDDinoMatcher", "GeoAwareZeroShotMatcher", "square_layout", "to_frame", "from_frame",
           "square_canvas", "co_pca", "AggregationHead", "load_head", "DINO_ENV", "SD15_ENV"]
