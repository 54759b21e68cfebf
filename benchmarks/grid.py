"""Grid geometry and similarity (pure tensor functions): original pixels <-> the S x S frame <-> a
w x h feature grid (align corners, SD4Match's arithmetic), bilinear sampling, the patch containing a
point, cosine maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
