"""SD4Match's training loss: Gaussian-smoothed cross-entropy, source -> target.

Equal to the reference loss (``../shared/golden/loss``, tested to 1e-5):

- the source feature is sampled bilinearly at each keypoint (grid coordinates, align corners);
- its cosine similarity with every target cell (vectors divided by ``norm + 1e-6``), divided by
  the temperature (0.04), goes through a softmax over the h x w cells;
- the probability map is read bilinearly (border padding) at a 7 x 7 window of positions
  centred on the ground-truth target location (offsets -3..3 cells in x and y);
- each window position is weighted by the **fixed, unnormalised** Gaussian density
  ``exp(-d^2 / (2 sigma^2)) / (2 pi sigma^2)`` (sigma 1.5 cells; the 49 weights sum to 0.9654)
  and masked **strictly**: only positions with ``0 < x < w - 1`` and ``0 < y < h - 1`` count, and
  the weights of the others are not redistributed;
- no clamp before the log;
- a pair's loss is ``-sum(weight * mask * log p) / n_valid``; the batch loss is the mean over the
  pairs that have at least one valid keypoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: SD4Match's L2 normalisation: x / (||x|| + NORM_EPS)
NORM_EPS = 1e-6


def l2_normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / (x.norm(dim=dim, keepdim=True) + NORM_EPS)


def frame_to_grid(xy: torch.Tensor, size: tuple[float, float], S: int, hw: tuple[int, int]) -> torch.Tensor:
    """Original pixels -> the S x S frame (float32, as the reference's dataset does) -> grid cells
    (align corners, computed as ``x / (S - 1) * (w - 1)`` like the reference)."""
    (W0, H0), (h, w) = size, hw
    fx, fy = xy[:, 0] * (S / W0), xy[:, 1] * (S / H0)
    return torch.stack([fx / (S - 1) * (w - 1), fy / (S - 1) * (h - 1)], dim=1)


def _sample(maps: torch.Tensor, xy: torch.Tensor, padding: str) -> torch.Tensor:
    """Bilinear sample ``(N, C, h, w)`` at ``(N, M, 2)`` grid coords (align corners) -> ``(N, C, M)``."""
    N, C, h, w = maps.shape
    g = torch.stack([xy[..., 0] / max(w - 1, 1) * 2 - 1, xy[..., 1] / max(h - 1, 1) * 2 - 1], dim=-1)
    return F.grid_sample(maps, g[:, :, None, :], mode="bilinear", align_corners=True, padding_mode=padding)[..., 0]


def gaussian_window(window: int = 7, sigma: float = 1.5, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets ``(window^2, 2)`` (x, y), row-major from (-r, -r), and their fixed Gaussian density weights."""
    r = window // 2
    off = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    offsets = torch.stack([ox.reshape(-1), oy.reshape(-1)], dim=-1)
    weight = torch.exp(-(offsets**2).sum(-1) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    return offsets, weight


def gaussian_ce_loss(src_feat: torch.Tensor, trg_feat: torch.Tensor, src_xy: torch.Tensor, trg_xy: torch.Tensor,
                     valid: torch.Tensor, temperature: float = 0.04, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Shape: feats ``(B, C, h, w)``; keypoints ``(B, K, 2)`` in grid coordinates; valid ``(B, K)`` bool.

    Invalid slots may hold anything (they are replaced before sampling and never counted).
    """
    B, C, h, w = trg_feat.shape
    K = src_xy.shape[1]
    valid = valid.bool()
    src_xy = torch.where(valid[..., None], src_xy.float(), torch.zeros_like(src_xy, dtype=torch.float32))
    trg_xy = torch.where(valid[..., None], trg_xy.float(), torch.zeros_like(trg_xy, dtype=torch.float32))
    vec = l2_normalise(_sample(src_feat.float(), src_xy, "zeros"), dim=1)  # (B, C, K)
    trg = l2_normalise(trg_feat.float().reshape(B, C, h * w), dim=1)
    logits = torch.einsum("bck,bcn->bkn", vec, trg) / temperature
    prob = torch.softmax(logits, dim=-1).reshape(B * K, 1, h, w)
    offsets, weight = gaussian_window(window, sigma, trg_feat.device)
    pos = trg_xy[:, :, None, :] + offsets[None, None]  # (B, K, W2, 2)
    inside = (pos[..., 0] > 0) & (pos[..., 0] < w - 1) & (pos[..., 1] > 0) & (pos[..., 1] < h - 1)
    p = _sample(prob, pos.reshape(B * K, -1, 2), "border").reshape(B, K, -1)  # (B, K, W2)
    per_kp = -(weight[None, None] * inside * torch.log(p)).sum(-1)  # (B, K)
    n = valid.sum(-1)
    per_pair = torch.where(valid, per_kp, torch.zeros_like(per_kp)).sum(-1) / n.clamp_min(1)
    has = n > 0
    if not has.any():
        return per_pair.sum() * 0.0
    return per_pair[has].mean()
