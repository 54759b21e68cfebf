"""Dense-feature matching, implemented once.

A feature matcher subclasses :class:`DenseMatcher` and implements only :meth:`DenseMatcher.extract`
(images -> feature maps). This base does the rest: image loading and resizing, batching, device
and dtype, an on-disk feature cache keyed by image content and settings, bilinear sampling of
source keypoints on the feature grid, cosine similarity, every readout, and the mapping back to
original target pixels.

Geometry (align-corners convention, as in SD4Match): an original pixel x of an image of width W0
maps to x_in = x * S / W0 in the S x S network input, and to grid coordinate
x_g = x_in * (w - 1) / (S - 1) on a w-cell feature map; predictions go back the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import readouts as R
from .dense_io import RESIZE, ImageInfo, ImageIO, pixel_key  # noqa: F401 - part of this module's interface
from .grid import (  # noqa: F401
    KP_MARGIN,
    NORM_EPS,
    cosine_maps,
    from_grid,
    grid_to_pixel,
    patch_at,
    sample_at,
    to_grid,
)
from .matchers.base import ConfigError, Matcher, MatcherConfig, Pair
from .precision_names import (  # noqa: F401 - part of this module's interface
    AUTOCAST,
    DTYPES,
    precision_name,
    resolve_auto,
    resolve_autocast,
    resolve_device,
    resolve_dtype,
)
from .upsampled import upsampled_nn, upsampled_nn_batch, upsampled_sq_norm, upsampled_sq_norms  # noqa: F401

#: readouts a dense matcher offers: the grid readouts plus DIFT's upsampled nearest neighbour
DENSE_READOUTS = (*R.READOUTS, "upsampled-nn")
#: ``resize`` values -> Pillow's resampling filters
#: settings that do not change the features (left out of the feature-cache key)
NON_FEATURE_SETTINGS = ("readout", "batch_size", "cache_dir", "temperature", "kernel_sigma", "window_radius",
                        "geoaware_window", "geoaware_beta", "batch_invariant")


@dataclass(frozen=True)
class DenseConfig(MatcherConfig):
    """Settings of every dense matcher (subclasses add their own).

    image_size: the S x S network input (anisotropic resize).
    resize: the resampling filter of that resize (Pillow's ``bilinear``, ``bicubic``, ``lanczos`` or
        ``nearest``, on the 8-bit RGB image; SD4Match resizes bilinearly, DIFT bicubically).
    readout: comma-separated subset of ``nn, soft-argmax, kernel-soft-argmax,
        window-soft-argmax, upsampled-nn``.
    temperature: softmax temperature of the soft readouts; kernel_sigma: Gaussian sigma in grid
        cells (kernel soft-argmax); window_radius: half-width in cells (window soft-argmax).
    cache_dir: feature cache folder ("" = no cache).
    batch_invariant: every image's network passes are calls of their own (an image's VAE pass and
        its ensemble's UNet pass, its DINOv2 pass; a CPM pair's two images together), so its
        features never depend on which other images shared a batch: a resumed run gives
        byte-identical predictions. ``false`` batches ``batch_size`` images per call (faster on
        small ensembles; results then move within float rounding with the batch composition).
    dtype: ``float32``, ``float16``, ``bfloat16`` or ``auto`` (float32 on the CPU; on a GPU the
        precision the method's authors evaluated in, the matcher's ``gpu_dtype``). The resolved
        precision is what the run records.
    """

    image_size: int = 768
    resize: str = "bilinear"
    device: str = "cpu"
    dtype: str = "auto"
    readout: str = "nn,soft-argmax,kernel-soft-argmax,window-soft-argmax"
    temperature: float = 0.04
    kernel_sigma: float = 7.0
    window_radius: int = 3
    geoaware_window: int = 7
    geoaware_beta: float = 0.02
    cache_dir: str = ""
    batch_invariant: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not 2 <= self.image_size <= 8192:
            raise ValueError(f"image_size must be in 2..8192, got {self.image_size}")
        if not (self.temperature > 0 and self.kernel_sigma > 0 and self.geoaware_beta > 0):
            raise ValueError(f"temperature, kernel_sigma and geoaware_beta must be > 0, got {self.temperature}, "
                             f"{self.kernel_sigma}, {self.geoaware_beta}")
        if self.window_radius < 0 or self.geoaware_window < 0:
            raise ValueError(f"window_radius and geoaware_window must be >= 0, got {self.window_radius}, {self.geoaware_window}")


class DenseMatcher(ImageIO, Matcher):
    """Base of matchers that produce a dense feature map per image. Implement :meth:`extract`."""

    Config = DenseConfig
    needs_images = True
    #: True when a pair's features depend on both images (CPM): nothing is shared between pairs
    per_pair_features = False
    #: the precision ``dtype=auto`` resolves to on a GPU (the authors' evaluation precision)
    gpu_dtype = "float32"
    #: True: :meth:`extract` gets a list of ``(3, S, S)`` host tensors and uploads what it needs itself
    #: (matchers that cache per-image work, so that a cached image costs no host-to-device copy)
    host_images = False

    def __init__(self, config=None):
        super().__init__(config)
        if self.config.dtype == "auto":  # resolved before anything hashes the config
            self.config = dataclasses.replace(self.config, dtype=resolve_auto(self.gpu_dtype, self.config.device))
        cfg = self.config
        names = [r.strip() for r in cfg.readout.split(",") if r.strip()]
        bad = [r for r in names if r not in DENSE_READOUTS]
        if bad or not names:
            raise ConfigError(f"unknown readout {bad[0] if bad else cfg.readout!r}; valid: {', '.join(DENSE_READOUTS)}")
        self._readouts = tuple(names)
        if isinstance(cfg.batch_size, str) or int(cfg.batch_size) < 0 or cfg.batch_size is True:
            raise ConfigError(f"batch_size must be a positive integer or 'auto', got {cfg.batch_size!r}")
        if cfg.resize not in RESIZE:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE)}, got {cfg.resize!r}")
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype)
        self.autocast = resolve_autocast(cfg.dtype)
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NON_FEATURE_SETTINGS}
        settings.update(self.fingerprints())  # the weights themselves, not only their names
        self.feature_hash = _hash(self.name, settings)
        self._cache_dir = Path(cfg.cache_dir) / self.name / self.feature_hash if cfg.cache_dir else None
        self.stats = {"extracted": 0, "cache_hits": 0}
        self._recent: dict[tuple[str, str], torch.Tensor] = {}  # small in-memory cache across batches
        self._prefetched: dict[str, tuple[torch.Tensor, ImageInfo]] = {}
        self._norms: dict[tuple, torch.Tensor] = {}
        self._decoded: dict[tuple, tuple[torch.Tensor, str, tuple[int, int]]] = {}
        self._decoded_lock = threading.Lock()
        self.decoded_cache_size = 256
        self._batch_size = int(cfg.batch_size) or None  # None: found on first use (batch_size 'auto' = 0)
        #: feature maps (and per-target norm maps) kept in memory across batches
        self.memory_cache_size = 64

    @property
    def readouts(self) -> tuple[str, ...]:
        return self._readouts

    # ------------------------------------------------------------------ to implement
    def extract(self, images: torch.Tensor, infos: list[ImageInfo]) -> torch.Tensor:
        """``(B, 3, S, S)`` float images in [0, 1] (on ``self.device``) -> ``(B, C, h, w)`` features."""
        raise NotImplementedError

    def fingerprints(self) -> dict[str, str]:
        """Fingerprints of the weights the features depend on (see :mod:`benchmarks.fingerprint`),
        part of every cache key; none by default."""
        return {}

    def cache_tag(self, info: ImageInfo) -> str:
        """Extra part of an image's cache key (e.g. the prompt when features depend on the category)."""
        return ""

    # ------------------------------------------------------------------ images and cache
    def keep_in_memory(self, n_images: int) -> None:
        """Keep up to ``n_images`` feature maps in memory (timing code: every timed image stays)."""
        self.memory_cache_size = max(self.memory_cache_size, n_images)

    def reset_caches(self) -> None:
        """Forget in-memory features (the disk cache is kept); used by timing code."""
        self._recent.clear()
        self._norms.clear()

    def eager(self):
        """Context in which compiled parts run eagerly (FLOP counting); nothing to do by default."""
        return contextlib.nullcontext()

    def probe(self, batch: int) -> None:
        """Run one forward pass on ``batch`` random images (used to find the batch size that fits)."""
        S = self.config.image_size
        infos = [ImageInfo(Path("probe"), f"probe-{i}", "probe", S, S) for i in range(batch)]
        self.extract(torch.rand(batch, 3, S, S, device=self.device), infos)

    @property
    def batch_size(self) -> int:
        """Images per forward pass; with ``auto`` the largest power of two up to 64 that fits (CUDA),
        8 on the CPU."""
        if self._batch_size is None:
            if self.device.type != "cuda":
                self._batch_size = 8
            else:
                best, b = 1, 1
                while b <= 64:
                    try:
                        with torch.no_grad():
                            self.probe(b)
                        best = b
                        b *= 2
                    except torch.cuda.OutOfMemoryError:
                        break
                    finally:
                        torch.cuda.empty_cache()
                self._batch_size = best
            self.stats["batch_size"] = self._batch_size
        return self._batch_size

    def image_features(self, pairs: list[Pair]) -> tuple[dict[str, torch.Tensor], dict[str, ImageInfo]]:
        """Features of every distinct image of ``pairs`` (cached ones loaded, others extracted in batches)."""
        images = self.load_images(pairs)
        rels = list(images)
        items = [(images[r][0], images[r][1], self.cache_tag(images[r][1])) for r in rels]
        feats = self.cached_features(items, lambda batch, infos, _: self.extract(batch, infos))
        return dict(zip(rels, feats)), {r: images[r][1] for r in rels}

    def pair_features(self, pairs: list[Pair]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(source, target) feature maps per pair. Per-image by default; CPM-like matchers override."""
        feats, _ = self.image_features(pairs)
        return [(feats[p.row["src_image"]], feats[p.row["trg_image"]]) for p in pairs]

    # ------------------------------------------------------------------ matching
    def predict(self, pairs):
        """Readout -> arrays, as :meth:`Matcher.predict` (the KAP records :meth:`submit` may add for the
        run's predictions file are left out)."""
        from .predictions import KAP_KEY

        out = self.submit(pairs)()
        out.pop(KAP_KEY, None)
        return out

    @torch.no_grad()
    def submit(self, pairs, data=None):
        """Queue the work of ``pairs`` on the device and return ``finish()``, which waits for it and
        returns the predictions (as :meth:`predict`). On a GPU nothing here waits for the device,
        so the next batch can be queued before this one's results are read back."""
        self._prefetched = data or {}
        try:
            return self._submit(list(pairs))
        finally:
            self._prefetched = {}

    def _submit(self, pairs):
        cfg = self.config
        S = cfg.image_size
        out: dict[str, list[torch.Tensor]] = {r: [] for r in self._readouts}
        counts = [len(p.row["src_kps"]) for p in pairs]
        # every source keypoint of the batch in one (pinned) host-to-device copy
        flat = torch.from_numpy(np.concatenate([p.src_kps for p in pairs]).astype(np.float32)) if pairs else torch.zeros(0, 2)
        if self.device.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(self.device, non_blocking=True)
        starts = np.concatenate([[0], np.cumsum(counts)])
        grid_readouts = [r for r in self._readouts if r != "upsampled-nn" and r not in R.PATCH_READOUTS]
        patch_readouts = [r for r in self._readouts if r in R.PATCH_READOUTS]
        sims, scales = [], []  # per pair with keypoints: (N, h, w) similarities, grid -> pixel factors
        psims, pscales = [], []  # the same in the patch convention (patch containing the keypoint, patch centres)
        up = []  # upsampled-nn work, done for the whole batch after the loop
        for k, (p, (fs, ft)) in enumerate(zip(pairs, self.pair_features(pairs))):
            if counts[k] == 0:
                continue
            src_xy = flat[starts[k]:starts[k + 1]]
            if grid_readouts:  # SD4Match's evaluator: clamped keypoints, x / (||x|| + 1e-6)
                grid_src = to_grid(src_xy, p.src_size, S, tuple(fs.shape[1:]), clamp=True)
                sims.append(cosine_maps(sample_at(fs, grid_src), ft, eps=NORM_EPS))
                scales.append(grid_to_pixel(p.trg_size, S, tuple(ft.shape[1:])))
            if patch_readouts:
                psims.append(cosine_maps(patch_at(fs, src_xy, p.src_size), ft))
                pscales.append((p.trg_size[0] / ft.shape[2], p.trg_size[1] / ft.shape[1]))
            if "upsampled-nn" in self._readouts:
                # the target's norm map depends on the target image only (not so for CPM-like matchers)
                key = None if self.per_pair_features else (p.row["trg_image"], self.cache_tag_of_row(p.row), p.trg_size)
                up.append((fs, ft, src_xy, p.src_size, p.trg_size, key))
        if up:  # DIFT's readout, batched across the pairs (see upsampled_nn_batch)
            fs_, ft_, xy_, ss_, ts_, keys = zip(*up)
            preds, norms = upsampled_nn_batch(list(fs_), list(ft_), list(xy_), list(ss_), list(ts_),
                                              [self._norms.get(k) if k else None for k in keys])
            for k, sq in zip(keys, norms):
                if k is not None and k not in self._norms:
                    self._norms[k] = sq
                    while len(self._norms) > self.memory_cache_size:
                        self._norms.pop(next(iter(self._norms)))
            out["upsampled-nn"] = [q.float() for q in preds]
        if sims and grid_readouts:
            # grid readouts work row by row: every keypoint of the batch in one call per readout
            # (all feature maps share one grid: every image is resized to S x S)
            sim = torch.cat(sims)
            factor = torch.from_numpy(np.repeat(np.array(scales, dtype=np.float32), [c for c in counts if c], axis=0))
            if self.device.type == "cuda":
                factor = factor.pin_memory()
            factor = factor.to(self.device, non_blocking=True)
            for r in grid_readouts:
                g = R.apply(r, sim, temperature=cfg.temperature, sigma=cfg.kernel_sigma, radius=cfg.window_radius)
                out[r].append(g.float() * factor)
        if psims:
            sim = torch.cat(psims)
            factor = torch.from_numpy(np.repeat(np.array(pscales, dtype=np.float32), [c for c in counts if c], axis=0))
            factor = factor.to(self.device, non_blocking=True)
            for r in patch_readouts:
                g = R.apply(r, sim, geoaware_window=cfg.geoaware_window, geoaware_beta=cfg.geoaware_beta)
                out[r].append((g.float() + 0.5) * factor)  # patch centres
        # one device-to-host transfer per readout and batch, not waited for here
        host = {r: torch.cat(preds).to("cpu", non_blocking=True) if preds else torch.zeros((0, 2))
                for r, preds in out.items()}
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()

        def finish() -> dict[str, list[np.ndarray]]:
            if done is not None:
                done.synchronize()
            result = {}
            for r, flat in host.items():
                arr = flat.double().numpy()
                result[r] = np.split(arr, np.cumsum(counts)[:-1]) if counts else []
            return result

        return finish

    def cache_tag_of_row(self, row: dict) -> str:
        """What besides the image the per-image features depend on (the category, for prompts)."""
        return row["category"]

    def describe(self) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "precision": precision_name(self.dtype, self.autocast),
                "feature_hash": self.feature_hash, **self.stats}


def _hash(name: str, settings: dict) -> str:
    import json

    return hashlib.sha256(json.dumps({"matcher": name, **settings}, sort_keys=True, default=str).encode()).hexdigest()[:12]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
