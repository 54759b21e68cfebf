"""DIFT's upsampled nearest neighbour: features upsampled to the original target size (bilinear,
align corners false), the argmax of the cosine there; per pair and batched (pure tensor functions)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import readouts as R


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
