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
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import readouts as R
from .matchers.base import ConfigError, Matcher, MatcherConfig, MatcherError, Pair

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
#: precisions that keep the weights in float32 and run the networks under ``torch.autocast`` (as
#: SD4Match's evaluation does: float16 autocast on CUDA), as opposed to casting the weights
AUTOCAST = {"float16-autocast": torch.float16, "bfloat16-autocast": torch.bfloat16}
#: readouts a dense matcher offers: the grid readouts plus DIFT's upsampled nearest neighbour
DENSE_READOUTS = (*R.READOUTS, "upsampled-nn")
#: ``resize`` values -> Pillow's resampling filters
RESIZE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "lanczos": "LANCZOS", "nearest": "NEAREST"}
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


@dataclass
class ImageInfo:
    """One image handed to :meth:`DenseMatcher.extract`."""

    path: Path
    key: str  # sha256 of the decoded pixels (:func:`pixel_key`)
    category: str
    width: int
    height: int


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MatcherError(f"--device {name} requested but no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MatcherError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; valid: cpu, cuda, cuda:N")
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    """The dtype the weights are stored in (float32 under autocast)."""
    if name in AUTOCAST:
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; valid: auto, float32, float16, bfloat16, "
                          f"{', '.join(AUTOCAST)}")
    return DTYPES[name]


def resolve_autocast(name: str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of a precision name, or None (no autocast)."""
    return AUTOCAST.get(name)


def resolve_auto(gpu_dtype: str, device: str) -> str:
    """What ``dtype=auto`` means for a matcher whose authors evaluated on GPUs in ``gpu_dtype``:
    that precision on a CUDA device, float32 on the CPU."""
    return gpu_dtype if str(device).startswith("cuda") else "float32"


def _scale_xy(xy: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    # Python scalars, not a new tensor: no host-to-device copy (and no GPU sync) per call
    return torch.stack([xy[:, 0] * sx, xy[:, 1] * sy], dim=1)


def to_grid(xy: torch.Tensor, size: tuple[float, float], S: int, hw: tuple[int, int], clamp: bool = False) -> torch.Tensor:
    """Original pixels (x, y) of an image of ``size`` (W0, H0) -> grid coordinates on ``hw`` (via the
    S x S frame, align corners). ``clamp``: the frame position is first clamped into
    [1e-4, S - 1 - 1e-4], as SD4Match's pair datasets clamp their keypoints."""
    (W0, H0), (h, w) = size, hw
    if not clamp:
        return _scale_xy(xy, S / W0 * (w - 1) / (S - 1), S / H0 * (h - 1) / (S - 1))
    # SD4Match's arithmetic, bit for bit: x times the float32 ratio S / W0, clamped, then divided by
    # S - 1 and multiplied by the grid size - 1, all in float32
    ratio = torch.tensor([S / W0, S / H0], dtype=torch.float32, device=xy.device)
    frame = (xy.float() * ratio).clamp(KP_MARGIN, S - 1 - KP_MARGIN)
    return torch.stack([frame[:, 0] / (S - 1) * (w - 1), frame[:, 1] / (S - 1) * (h - 1)], dim=1)


#: SD4Match's keypoint clamp (frame pixels from the border) and normalisation epsilon (grid readouts)
KP_MARGIN = 1e-4
NORM_EPS = 1e-6


def grid_to_pixel(size: tuple[float, float], S: int, hw: tuple[int, int]) -> tuple[float, float]:
    """(x, y) factors from grid coordinates on ``hw`` to original pixels of an image of ``size``."""
    (W0, H0), (h, w) = size, hw
    return (S - 1) / (w - 1) * W0 / S, (S - 1) / (h - 1) * H0 / S


def from_grid(g: torch.Tensor, size: tuple[float, float], S: int, hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_grid`."""
    return _scale_xy(g, *grid_to_pixel(size, S, hw))


def sample_at(feat: torch.Tensor, grid_xy: torch.Tensor) -> torch.Tensor:
    """Bilinear sample ``(C, h, w)`` features at ``(N, 2)`` grid coordinates -> ``(N, C)`` (align corners)."""
    C, h, w = feat.shape
    norm = torch.stack([grid_xy[:, 0] / max(w - 1, 1) * 2 - 1, grid_xy[:, 1] / max(h - 1, 1) * 2 - 1], dim=1)
    out = F.grid_sample(feat[None].float(), norm[None, :, None, :].float(), mode="bilinear", align_corners=True)
    return out[0, :, :, 0].T


def patch_at(feat: torch.Tensor, xy: torch.Tensor, size: tuple[float, float]) -> torch.Tensor:
    """The feature of the cell *containing* each original pixel (x, y) of an image of ``size`` (W0, H0)
    (GeoAware-SC's convention: cell = floor(x * w / W0)). Shape: (C, h, w), (N, 2) -> (N, C)."""
    C, h, w = feat.shape
    (W0, H0) = size
    cx = (xy[:, 0] * (w / W0)).floor().long().clamp(0, w - 1)
    cy = (xy[:, 1] * (h / H0)).floor().long().clamp(0, h - 1)
    return feat[:, cy, cx].T.float()


def cosine_maps(src_vec: torch.Tensor, trg_feat: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Cosine similarity of ``(N, C)`` vectors with every cell of ``(C, h, w)`` -> ``(N, h, w)``.

    ``eps`` None: ``x / max(||x||, 1e-12)`` (PyTorch's normalisation); a number: ``x / (||x|| + eps)``,
    SD4Match's formula (``eps`` 1e-6), which the grid readouts use."""
    C, h, w = trg_feat.shape
    a, b = src_vec.float(), trg_feat.float().reshape(C, -1)
    if eps is None:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=0)
    else:
        a, b = a / (a.norm(dim=1, keepdim=True) + eps), b / (b.norm(dim=0, keepdim=True) + eps)
    return (a @ b).reshape(-1, h, w)


def upsampled_sq_norm(feat: torch.Tensor, size: tuple[int, int], channel_chunk: int = 256) -> torch.Tensor:
    """Squared L2 norm, per pixel, of ``(C, h, w)`` features upsampled (bilinear) to ``size`` (W, H)."""
    tw, th = size
    tf = feat.float()
    sq = torch.zeros((th, tw), device=tf.device)
    for c in range(0, tf.shape[0], channel_chunk):
        up = F.interpolate(tf[None, c:c + channel_chunk], size=(th, tw), mode="bilinear", align_corners=False)[0]
        sq += (up * up).sum(0)
    return sq


def upsampled_nn(src_feat: torch.Tensor, trg_feat: torch.Tensor, src_xy: torch.Tensor,
                 src_size: tuple[int, int], trg_size: tuple[int, int], trg_sq: torch.Tensor | None = None) -> torch.Tensor:
    """DIFT's readout: features upsampled (bilinear) to each original image, argmax of the cosine.

    The source feature is taken at the keypoint's (rounded) pixel of the upsampled source map;
    the target map is compared at every target pixel. Computed without materialising the
    upsampled target features: bilinear upsampling is linear, so the dot products are the
    upsampled grid dot products, and the per-pixel norms are accumulated over channel chunks.
    ``trg_sq`` (from :func:`upsampled_sq_norm`) depends on the target image only and may be reused.
    Shape: src_xy (N, 2) original source pixels -> (N, 2) original target pixels.
    """
    (sw, sh), (tw, th) = src_size, trg_size
    px = src_xy.round().clamp(min=0)
    px[:, 0] = px[:, 0].clamp(max=sw - 1)
    px[:, 1] = px[:, 1].clamp(max=sh - 1)
    # bilinear (align_corners=False) sample of the source map at pixel centres == upsampled map at that pixel
    h, w = src_feat.shape[1:]
    norm = torch.stack([(px[:, 0] + 0.5) / sw * 2 - 1, (px[:, 1] + 0.5) / sh * 2 - 1], dim=1)
    vec = F.grid_sample(src_feat[None].float(), norm[None, :, None, :], mode="bilinear", align_corners=False)[0, :, :, 0].T
    vec = F.normalize(vec, dim=1)
    tf = trg_feat.float()
    dots = F.interpolate(torch.einsum("nc,chw->nhw", vec, tf)[None], size=(th, tw), mode="bilinear", align_corners=False)[0]
    sq = upsampled_sq_norm(trg_feat, trg_size) if trg_sq is None else trg_sq
    cos = dots / sq.clamp_min(1e-12).sqrt()[None]
    return R.nearest_neighbour(cos).float()


def _taps(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source taps of PyTorch's bilinear resize (``align_corners=False``) from ``n_in`` to ``n_out``
    samples along one axis: ``(i0, i1, w0, w1)``, output k = w0[k] * in[i0[k]] + w1[k] * in[i1[k]].
    Past the last cell centre both taps are that cell; its weight is then exactly 1, so the resized
    map is exactly constant there (an exact tie, which the argmax breaks by raster order)."""
    src = ((torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = torch.where(i1 > i0, src - i0, torch.zeros_like(src))
    return i0, i1, 1 - w1, w1


def upsampled_sq_norms(feats: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-pixel squared norms of ``(B, C, h, w)`` features upsampled (bilinear) to ``sizes[b]`` (W, H),
    as float64 ``(H, W)`` maps, with no upsampled feature materialised.

    An upsampled pixel is a weighted sum of (at most) 4 neighbouring cells, so its squared norm is a
    quadratic form in their inner products: each cell's own, and those with its right, lower,
    lower-right neighbours and the lower-left / upper-right cross term. These 5 low-resolution maps
    cost 5 C h w; the per-pixel work (float64) is then independent of C.
    """
    f = feats.float()
    B, C, h, w = f.shape
    dev = f.device

    def inner(a, b):  # channel inner products (float32, as the per-pair path accumulates)
        return (a * b).sum(1)

    own = inner(f, f)
    # neighbour products; past the last row / column the neighbour is the cell itself (clamped taps)
    horiz, vert, cross = own.clone(), own.clone(), own.clone()
    horiz[:, :, :-1] = inner(f[..., :-1], f[..., 1:])
    vert[:, :-1] = inner(f[:, :, :-1], f[:, :, 1:])
    if h > 1 and w > 1:
        cross[:, :-1, :-1] = inner(f[:, :, :-1, :-1], f[:, :, 1:, 1:]) + inner(f[:, :, :-1, 1:], f[:, :, 1:, :-1])
    cross[:, -1, :] = 2 * horiz[:, -1, :]  # lower row clamped: <F00, F01> + <F01, F00>
    cross[:, :, -1] = 2 * vert[:, :, -1]  # right column clamped: <F00, F10> + <F00, F10>
    own, horiz, vert, cross = (t.double() for t in (own, horiz, vert, cross))
    out = []
    for b, (W, H) in enumerate(sizes):
        j0, j1, b0, b1 = _taps(w, W, dev)
        i0, i1, a0, a1 = _taps(h, H, dev)
        # columns first: per low-res row r, the x-interpolated terms of rows r (P) and (r, r+1) (Q)
        P = b0 ** 2 * own[b][:, j0] + b1 ** 2 * own[b][:, j1] + 2 * b0 * b1 * horiz[b][:, j0]
        Q = b0 ** 2 * vert[b][:, j0] + b1 ** 2 * vert[b][:, j1] + b0 * b1 * cross[b][:, j0]
        a0, a1 = a0[:, None], a1[:, None]
        out.append(a0 ** 2 * P[i0] + a1 ** 2 * P[i1] + 2 * a0 * a1 * Q[i0])
    return out


def upsampled_nn_batch(src_feats: list[torch.Tensor], trg_feats: list[torch.Tensor], src_xy: list[torch.Tensor],
                       src_sizes: list[tuple[int, int]], trg_sizes: list[tuple[int, int]],
                       trg_sq: list[torch.Tensor | None] | None = None,
                       max_elements: int = 1 << 25) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:func:`upsampled_nn` for many pairs at once, equal to it pair by pair (up to float rounding in
    exact ties; the per-pixel arithmetic is float64 here).

    Pairs are batched by feature shape (source vectors and grid dot products in one batched call
    each) and bucketed by target size (one resize, one norm division and one argmax per chunk of
    at most ``max_elements`` pixels). Target norm maps come from :func:`upsampled_sq_norms` unless
    given in ``trg_sq`` (float64 ``(H, W)``; a ``None`` entry is computed). Returns the ``(N_b, 2)``
    original target pixels per pair and every pair's norm map (for reuse).
    """
    n = len(src_feats)
    trg_sq = list(trg_sq) if trg_sq is not None else [None] * n
    missing = [b for b in range(n) if trg_sq[b] is None]
    by_shape: dict[tuple, list[int]] = {}
    for b in missing:
        by_shape.setdefault(tuple(trg_feats[b].shape), []).append(b)
    for idx in by_shape.values():
        for b, sq in zip(idx, upsampled_sq_norms(torch.stack([trg_feats[b] for b in idx]), [trg_sizes[b] for b in idx])):
            trg_sq[b] = sq
    dots: list[torch.Tensor | None] = [None] * n
    groups: dict[tuple, list[int]] = {}
    for b in range(n):
        if len(src_xy[b]):
            groups.setdefault((tuple(src_feats[b].shape), tuple(trg_feats[b].shape)), []).append(b)
    for idx in groups.values():
        fs = torch.stack([src_feats[b] for b in idx]).float()
        ft = torch.stack([trg_feats[b] for b in idx]).float()
        counts = [len(src_xy[b]) for b in idx]
        grid = torch.zeros((len(idx), max(counts), 1, 2), device=fs.device)
        for k, b in enumerate(idx):
            sw, sh = src_sizes[b]
            px = src_xy[b].float().round()
            px = torch.stack([px[:, 0].clamp(0, sw - 1), px[:, 1].clamp(0, sh - 1)], dim=1)
            # bilinear sample at the pixel centre == the upsampled source map at that pixel
            grid[k, :counts[k], 0] = torch.stack([(px[:, 0] + 0.5) / sw * 2 - 1, (px[:, 1] + 0.5) / sh * 2 - 1], dim=1)
        vec = F.normalize(F.grid_sample(fs, grid, mode="bilinear", align_corners=False)[..., 0], dim=1)  # (B, C, N)
        for k, b in enumerate(idx):  # one product per pair: the same arithmetic whatever the batch holds
            dots[b] = (vec[k, :, :counts[k]].T @ ft[k].reshape(ft.shape[1], -1)).reshape(counts[k], *ft.shape[2:])
    out = [torch.zeros((0, 2), device=trg_feats[b].device) for b in range(n)]
    buckets: dict[tuple, list[int]] = {}
    for b in range(n):
        if dots[b] is not None:
            buckets.setdefault((trg_sizes[b], tuple(dots[b].shape[1:])), []).append(b)
    for ((tw, th), _), idx in buckets.items():
        rows = torch.cat([dots[b] for b in idx])
        ends = np.cumsum([len(dots[b]) for b in idx])
        inv = [trg_sq[b].clamp_min(1e-12).rsqrt().to(rows.dtype) for b in idx]
        step = max(1, max_elements // (th * tw))
        best = []
        for r in range(0, len(rows), step):
            # the dot products' resize is the per-pair path's (float32, PyTorch's kernel)
            up = F.interpolate(rows[None, r:r + step], size=(th, tw), mode="bilinear", align_corners=False)[0]
            for k, b in enumerate(idx):  # divide each pair's rows by its target's norms, in place
                lo, hi = max(int(ends[k]) - len(dots[b]), r), min(int(ends[k]), r + len(up))
                if lo < hi:
                    up[lo - r:hi - r] *= inv[k]
            best.append(up.reshape(len(up), -1).argmax(dim=1))
        flat = torch.cat(best)
        xy = torch.stack([flat % tw, flat // tw], dim=1).float()
        start = 0
        for b in idx:
            out[b] = xy[start:start + len(dots[b])]
            start += len(dots[b])
    return out, trg_sq


class DenseMatcher(Matcher):
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
    def load_image(self, path: Path) -> tuple[torch.Tensor, str, tuple[int, int]]:
        """Read, hash and resize one image -> ((3, S, S) in [0, 1], sha256, (W0, H0)).

        Decoded images are kept (uint8) in a small LRU keyed by path, size and mtime: a dataset's
        pairs reuse each image many times (SPair-71k: 12,234 pairs on 481 images).
        """
        try:
            st = path.stat()
        except FileNotFoundError:
            raise MatcherError(f"{path}: image file is missing") from None
        memo_key = (str(path), st.st_size, st.st_mtime_ns)
        with self._decoded_lock:
            hit = self._decoded.pop(memo_key, None)
            if hit is not None:
                self._decoded[memo_key] = hit  # most recently used
        if hit is None:
            hit = self._decode(path)
            with self._decoded_lock:
                self._decoded[memo_key] = hit
                while len(self._decoded) > self.decoded_cache_size:
                    self._decoded.pop(next(iter(self._decoded)))
        arr, key, size = hit
        return arr.float() / 255.0, key, size

    def _decode(self, path: Path) -> tuple[torch.Tensor, str, tuple[int, int]]:
        from PIL import Image, UnidentifiedImageError

        from loaders import DatasetError
        from loaders._common import MAX_PIXELS, regular_file

        try:
            regular_file(path, "image file")  # a FIFO or device would block or never end
            data = path.read_bytes()
        except DatasetError as exc:
            raise MatcherError(str(exc)) from None
        except OSError as exc:
            raise MatcherError(f"{path}: cannot read image ({exc.strerror or exc})") from None
        try:
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                if size[0] * size[1] > MAX_PIXELS:
                    raise MatcherError(f"{path}: image header claims {size[0]} x {size[1]} pixels; refusing to decode")
                full = im.convert("RGB")
                key = pixel_key(full)
                rgb = self._network_input(full)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise MatcherError(f"{path}: cannot decode image ({type(exc).__name__}: {str(exc)[:120]})") from None
        arr = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return arr, key, size

    def _network_input(self, image):
        """The decoded RGB image -> what is kept per image: the S x S resize (matchers that build
        their own inputs from the original, such as the padded-frame ones, keep the original)."""
        from PIL import Image

        return image.resize((self.config.image_size,) * 2, getattr(Image.Resampling, RESIZE[self.config.resize]))

    def _cache_path(self, info: ImageInfo, tag: str) -> Path | None:
        if self._cache_dir is None:
            return None
        suffix = "-" + hashlib.sha256(tag.encode()).hexdigest()[:12] if tag else ""
        return self._cache_dir / f"{info.key[:32]}{suffix}.pt"

    def _cache_get(self, info: ImageInfo, tag: str) -> torch.Tensor | None:
        path = self._cache_path(info, tag)
        if path is None:
            return None
        from . import cachefile

        return cachefile.load(path, self.device)  # a damaged file (checksum, truncation) is recomputed

    def _cache_put(self, info: ImageInfo, feat: torch.Tensor, tag: str) -> None:
        path = self._cache_path(info, tag)
        if path is None:
            return
        from . import cachefile

        if not cachefile.save(path, feat):
            self._cache_dir = None  # read-only or full: go on without a disk cache

    def keep_in_memory(self, n_images: int) -> None:
        """Keep up to ``n_images`` feature maps in memory (timing code: every timed image stays)."""
        self.memory_cache_size = max(self.memory_cache_size, n_images)

    def reset_caches(self) -> None:
        """Forget in-memory features (the disk cache is kept); used by timing code."""
        self._recent.clear()
        self._norms.clear()

    def prefetch(self, pairs):
        """Decode and resize the images of ``pairs`` (background thread; pinned memory for CUDA)."""
        out = self.load_images(pairs)
        if self.device.type == "cuda":
            out = {k: (img.pin_memory(), info) for k, (img, info) in out.items()}
        return out

    def predict_prefetched(self, pairs, data):
        return self.submit(pairs, data)()

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

    def load_images(self, pairs: list[Pair]) -> dict[str, tuple[torch.Tensor, ImageInfo]]:
        """Every distinct image of ``pairs``: relative path -> ((3, S, S) in [0, 1], info)."""
        out = {}
        for p in pairs:
            for side in ("src", "trg"):
                rel = p.row[f"{side}_image"]
                if rel in self._prefetched:
                    out[rel] = self._prefetched[rel]
                elif rel not in out:
                    path = p.image_path(side)
                    img, key, (w, h) = self.load_image(path)
                    out[rel] = (img, ImageInfo(path, key, p.row["category"], w, h))
        return out

    def cached_features(self, items: list[tuple[torch.Tensor, ImageInfo, str]], compute) -> list[torch.Tensor]:
        """Features of ``(image, info, tag)`` items: memory cache, then disk cache, then
        ``compute(images, infos, positions)`` in batches of ``batch_size`` for the rest."""
        result: list[torch.Tensor | None] = [None] * len(items)
        todo = []
        for i, (_img, info, tag) in enumerate(items):
            mem_key = (info.key, tag)
            if mem_key in self._recent:
                result[i] = self._recent[mem_key]
                continue
            cached = self._cache_get(info, tag)
            if cached is not None:
                result[i] = cached
                self.stats["cache_hits"] += 1
            else:
                todo.append(i)
        if self.config.batch_invariant:
            # one call per image (per pair when a pair's features depend on both images): an image's
            # features are the same whatever else is computed around it (resumes are byte-identical)
            group = (lambda i: i // 2) if self.per_pair_features else (lambda i: i)
            chunks = [[i for i in todo if group(i) == g] for g in dict.fromkeys(group(i) for i in todo)]
            bs = 2 if self.per_pair_features else 1
        else:
            bs = self.batch_size if todo else 1
            chunks = [todo[b:b + bs] for b in range(0, len(todo), bs)]
        for chunk in chunks:
            if self.host_images:  # the matcher uploads what it needs (see ``host_images``)
                batch = [items[i][0] for i in chunk]
            else:
                batch = torch.stack([items[i][0] for i in chunk])
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                batch = batch.to(self.device, non_blocking=True)
            try:
                out = compute(batch, [items[i][1] for i in chunk], chunk)
            except torch.cuda.OutOfMemoryError:
                raise MatcherError(
                    f"batch size {bs} does not fit on {self.device}; rerun with a smaller --batch-size "
                    "(features computed so far are kept in the cache)"
                ) from None
            for i, f in zip(chunk, out):
                result[i] = f
                self._cache_put(items[i][1], f, items[i][2])
                self.stats["extracted"] += 1
        for (_, info, tag), f in zip(items, result):
            self._recent[(info.key, tag)] = f
        while len(self._recent) > self.memory_cache_size:
            self._recent.pop(next(iter(self._recent)))
        return result

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
        return self.submit(pairs)()

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


def pixel_key(rgb) -> str:
    """An image's identity for noise seeds and caches: sha256 of its decoded RGB pixels and size, so
    the same picture saved again (other compression, metadata, format) keeps its key."""
    h = hashlib.sha256(f"RGB {rgb.size[0]}x{rgb.size[1]}|".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def precision_name(dtype: torch.dtype, autocast: torch.dtype | None = None) -> str:
    """The name a results row records: float32, float16, bfloat16, float16-autocast or bfloat16-autocast."""
    if autocast is not None:
        return str(autocast).replace("torch.", "") + "-autocast"
    return str(dtype).replace("torch.", "")


def _hash(name: str, settings: dict) -> str:
    import json

    return hashlib.sha256(json.dumps({"matcher": name, **settings}, sort_keys=True, default=str).encode()).hexdigest()[:12]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
