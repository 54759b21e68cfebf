"""The field's zero-shot baselines in the padded square frame: DINOv2 nearest neighbour, SD+DINO
("A Tale of Two Features") and GeoAware-SC's zero-shot variant.

Facts from ``../shared/docs/baselines.md`` (sections 1-3); nothing here is taken from the authors'
code. All three share one geometry, the one sd-dino and GeoAware-SC evaluate in:

- **frame**, **source patch**, **readouts** and the mapping back: :mod:`sd4match.methods.frame_geometry`
  (the frame is an isotropic scaling, so PCK measured in it equals PCK in the original image).

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
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import readouts as R
from benchmarks.console import say
from benchmarks.dense import DenseConfig, DenseMatcher, ImageInfo
from benchmarks.flips import partners, swaps_for
from benchmarks.matchers.base import ConfigError, MatcherError
from benchmarks.predictions import KAP_KEY

from ..backbones.dino import (
    MEAN,
    POSITION_RULES,
    STD,
    block_tokens,
    default_dino_id,
    load_dino,
)
from .frame_geometry import from_frame, source_cells, square_canvas, to_frame
from .store import ImageStore

FRAME_READOUTS = ("nn", "geoaware-soft-argmax")
FLIPS = ("off", "adaptive-mnn")
PADS = ("zero", "edge")


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
    authors ran it; ``transformers``: current transformers' rule; :data:`sd4match.backbones.dino.POSITION_RULES`).
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
    #: the backbone's patch side in pixels (a class constant: the frame must hold whole patches)
    patch_size: ClassVar[int] = 14

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
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size must be a multiple of the backbone's {self.patch_size}-pixel patch, "
                             f"got {self.image_size}")


class FrameMatcher(DenseMatcher):
    """Base of the padded-frame matchers: implement :meth:`pair_maps` (features per pair on one
    g x g grid, already in the form compared by cosine)."""

    Config = FrameConfig
    host_images = True
    gpu_dtype = "float32"
    #: predictions can fall in the frame's padding, outside the image (kept, as the authors keep them)
    frame_padding = True
    #: also return KAP's records (``benchmarks.predictions.KAP_KEY``); the run's shard writer turns it on
    record_kap = False

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
        """The ViT backbone, loaded on first use (:meth:`load_backbone`)."""
        if self._dino is None:
            say(f"loading {self.backbone_name} from {self.config.dino_id} ...")
            self._dino = self.load_backbone().to(self.device, self.dtype)
        return self._dino

    #: the backbone's name in messages; a family with another backbone overrides the three hooks below
    backbone_name = "DINOv2"

    def load_backbone(self):
        """The ViT (eval mode, frozen) named by ``dino_id``."""
        model, _ = load_dino(self.config.dino_id, self.config.seed, self.config.dino_pos)
        return model

    def frame_pixels(self, image: torch.Tensor, flip: bool) -> torch.Tensor:
        """One image as the backbone's normalised ``(3, S, S)`` input in the padded frame."""
        cfg = self.config
        return (square_canvas(image, cfg.image_size, cfg.pad, flip) - torch.tensor(MEAN).view(3, 1, 1)) / \
            torch.tensor(STD).view(3, 1, 1)

    def backbone_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, (S/p)^2, D)`` patch tokens of the configured block."""
        return block_tokens(self.dino, pixels, self.config.dino_layer, self.config.dino_final_norm)

    def describe(self) -> dict:
        return {**super().describe(), "tta": self.tta, "dino_id": self.config.dino_id, "dino_pos": self.config.dino_pos}

    @property
    def tta(self) -> str:
        """The test-time options in force, as recorded with every result ("none" when off)."""
        parts = ([f"flip={self.config.flip}"] if self.config.flip != "off" else []) + (["mnn"] if self.config.mnn else [])
        return ",".join(parts) or "none"

    def dino_maps(self, images, infos: list[ImageInfo], flip: bool = False) -> torch.Tensor:
        """The backbone's patch tokens per image in the frame, as ``(B, D, g, g)`` (cached per image)."""

        def compute(positions):
            x = torch.stack([self.frame_pixels(images[i], flip) for i in positions])
            tok = self.backbone_tokens(x.to(self.device, self.dtype))
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
        # what KAP needs, per pair (benchmarks.kap), when the run writes a predictions file
        kap = result.setdefault(KAP_KEY, []) if self.record_kap else []
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
                kap.append(None)
                continue
            (W0, H0), (W1, H1) = p.src_size, p.trg_size
            fs, ft = maps[k]
            g = ft.shape[-1]
            src = to_frame(p.src_kps, W0, H0, S)
            preds, raw = self._match(fs, ft, source_cells(src, S, g), with_raw=True)
            if self.record_kap:
                kap.append(self._kap_record(raw, g, p))
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

    def _kap_record(self, sim: torch.Tensor, g: int, p) -> dict:
        """KAP's steps of a pair's keypoints on the maps as matched (no test-time flip, no mnn): the raw
        cosine rows ``(N, g*g)``, target keypoints in grid cells of the frame, the pair's raw range."""
        from benchmarks.kap import records

        raw = sim.double().cpu().numpy()
        W1, H1 = p.trg_size
        S = self.config.image_size
        trg = to_frame(np.asarray(p.row["trg_kps"], np.float64).reshape(-1, 2), W1, H1, S) * g / S
        return {"steps": records(raw, trg, g), "pair": [float(raw.min()), float(raw.max()), g / max(W1, H1)]}

    def _match(self, fs: torch.Tensor, ft: torch.Tensor, cells: np.ndarray, with_raw: bool = False):
        """Readouts for the source cells ``(N, 2)`` (column, row) -> grid positions per readout (and,
        ``with_raw``, the cosine rows ``(N, g*g)`` before mnn)."""
        cfg = self.config
        C, g, _ = ft.shape
        a = F.normalize(fs.float().reshape(C, -1), dim=0)
        b = F.normalize(ft.float().reshape(C, -1), dim=0)
        idx = torch.as_tensor(cells[:, 1] * g + cells[:, 0], device=a.device)
        sim = raw = a[:, idx].T @ b  # (N, g*g)
        if cfg.mnn:  # keep the target cells whose best source cell is the keypoint's own cell
            back = (a.T @ b).argmax(dim=0)  # (g*g,) best source cell of each target cell
            mutual = back[None, :] == idx[:, None]
            keep = mutual.any(dim=1, keepdim=True)
            sim = torch.where(mutual | ~keep, sim, torch.full_like(sim, -2.0))
        sim = sim.reshape(-1, g, g)
        out = {}
        for r in self._readouts:
            out[r] = R.apply(r, sim, geoaware_window=cfg.geoaware_window, geoaware_beta=cfg.geoaware_beta).cpu().numpy()
        return (out, raw) if with_raw else out


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
