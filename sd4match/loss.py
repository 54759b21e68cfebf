"""SD4Match's training loss: Gaussian-smoothed cross-entropy, source -> target.

For each valid keypoint: the source feature is sampled bilinearly at the keypoint (grid
coordinates, align corners); its cosine similarity with every target cell, divided by the
temperature (0.04), goes through a softmax over the h x w cells. The probability map is read
bilinearly at a 7 x 7 window of positions centred on the ground-truth target location (offsets
-3..3 cells in x and y; positions outside the map are masked). The log-probabilities are weighted
by a 2-D Gaussian of the offset (sigma 1.5 cells), the weights normalised to sum to 1 over the
unmasked positions. A pair's loss is the negative weighted sum averaged over its valid keypoints;
the batch loss is the mean over pairs that have at least one valid keypoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sample(maps: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear sample ``(N, C, h, w)`` at ``(N, M, 2)`` grid coords (align corners, zeros outside) -> ``(N, C, M)``."""
    N, C, h, w = maps.shape
    g = torch.stack([xy[..., 0] / max(w - 1, 1) * 2 - 1, xy[..., 1] / max(h - 1, 1) * 2 - 1], dim=-1)
    return F.grid_sample(maps, g[:, :, None, :], mode="bilinear", align_corners=True, padding_mode="zeros")[..., 0]


def gaussian_ce_loss(src_feat: torch.Tensor, trg_feat: torch.Tensor, src_xy: torch.Tensor, trg_xy: torch.Tensor,
                     valid: torch.Tensor, temperature: float = 0.04, window: int = 7, sigma: float = 1.5,
                     eps: float = 1e-8) -> torch.Tensor:
    """Shape: feats ``(B, C, h, w)``; keypoints ``(B, K, 2)`` in grid coordinates; valid ``(B, K)`` bool."""
    B, C, h, w = trg_feat.shape
    vec = _sample(src_feat.float(), src_xy.float())  # (B, C, K)
    vec = F.normalize(vec, dim=1)
    trg = F.normalize(trg_feat.float().reshape(B, C, h * w), dim=1)
    logits = torch.einsum("bck,bcn->bkn", vec, trg) / temperature
    prob = torch.softmax(logits, dim=-1).reshape(B, -1, h, w)  # (B, K, h, w)
    r = window // 2
    off = torch.arange(-r, r + 1, device=trg_feat.device, dtype=torch.float32)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    offsets = torch.stack([ox.reshape(-1), oy.reshape(-1)], dim=-1)  # (W2, 2)
    K = src_xy.shape[1]
    pos = trg_xy.float()[:, :, None, :] + offsets[None, None]  # (B, K, W2, 2)
    inside = (pos[..., 0] >= 0) & (pos[..., 0] <= w - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= h - 1)
    # sample each keypoint's own probability map at its window positions
    maps = prob.reshape(B * K, 1, h, w)
    p = _sample(maps, pos.reshape(B * K, -1, 2)).reshape(B, K, -1)  # (B, K, W2)
    weight = torch.exp(-(offsets ** 2).sum(-1) / (2 * sigma**2))[None, None] * inside
    weight = weight / weight.sum(-1, keepdim=True).clamp_min(eps)
    per_kp = -(weight * torch.log(p.clamp_min(eps))).sum(-1)  # (B, K)
    valid = valid & inside.any(-1)
    n = valid.sum(-1)
    per_pair = (per_kp * valid).sum(-1) / n.clamp_min(1)
    has = n > 0
    if not has.any():
        return per_pair.sum() * 0.0
    return per_pair[has].mean()
