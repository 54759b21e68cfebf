"""Readouts: similarity maps -> points, as pure tensor functions.

Every function takes ``sim`` of shape ``(N, h, w)`` (one map per query keypoint) and returns
``(N, 2)`` float (x, y) positions in grid-cell units (0 .. w-1, 0 .. h-1).
"""

from __future__ import annotations

import torch

READOUTS = ("nn", "soft-argmax", "kernel-soft-argmax", "window-soft-argmax", "geoaware-soft-argmax")
#: readouts whose source feature is the patch *containing* the keypoint and whose predictions are patch
#: centres (GeoAware-SC's conventions); the others sample bilinearly with align corners
PATCH_READOUTS = ("geoaware-soft-argmax",)


def _grid(h: int, w: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, device=device, dtype=dtype)
    xs = torch.arange(w, device=device, dtype=dtype)
    return ys[:, None].expand(h, w), xs[None, :].expand(h, w)


def nearest_neighbour(sim: torch.Tensor) -> torch.Tensor:
    """Argmax cell. Shape: (N, h, w) -> (N, 2)."""
    N, h, w = sim.shape
    idx = sim.reshape(N, -1).argmax(dim=1)
    return torch.stack([(idx % w), (idx // w)], dim=1).to(sim.dtype if sim.is_floating_point() else torch.float32)


def _expectation(weights: torch.Tensor) -> torch.Tensor:
    N, h, w = weights.shape
    gy, gx = _grid(h, w, weights.device, weights.dtype)
    return torch.stack([(weights * gx).sum((1, 2)), (weights * gy).sum((1, 2))], dim=1)


def soft_argmax(sim: torch.Tensor, temperature: float = 0.04) -> torch.Tensor:
    """Expected position under softmax(sim / temperature) over the whole map. (N, h, w) -> (N, 2)."""
    N, h, w = sim.shape
    p = torch.softmax(sim.reshape(N, -1).float() / temperature, dim=1).reshape(N, h, w)
    return _expectation(p)


def gaussian_around(points: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
    """``(N, h, w)`` unnormalised Gaussians exp(-d^2 / (2 sigma^2)) centred at ``points`` (x, y)."""
    gy, gx = _grid(h, w, points.device, torch.float32)
    d2 = (gx[None] - points[:, 0, None, None]) ** 2 + (gy[None] - points[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def kernel_soft_argmax(sim: torch.Tensor, sigma: float = 7.0, temperature: float = 0.04) -> torch.Tensor:
    """Similarity multiplied by a Gaussian (sigma in cells) centred at the argmax, then soft-argmax."""
    N, h, w = sim.shape
    centre = nearest_neighbour(sim).float()
    return soft_argmax(sim.float() * gaussian_around(centre, h, w, sigma), temperature)


def window_soft_argmax(sim: torch.Tensor, radius: int = 3, temperature: float = 0.04) -> torch.Tensor:
    """Soft-argmax restricted to the (2 radius + 1)^2 cells around the argmax (cut at the borders).

    This toolkit's own window readout: cells outside the window get probability 0 (-inf logits),
    temperature 0.04, align-corners grid. GeoAware-SC's differs (outside cells keep similarity 0
    and still take part in the softmax, beta 0.02, patch centres): see :func:`geoaware_soft_argmax`.
    """
    N, h, w = sim.shape
    centre = nearest_neighbour(sim).float()
    gy, gx = _grid(h, w, sim.device, torch.float32)
    inside = ((gx[None] - centre[:, 0, None, None]).abs() <= radius) & ((gy[None] - centre[:, 1, None, None]).abs() <= radius)
    logits = torch.where(inside, sim.float() / temperature, torch.full_like(sim, float("-inf"), dtype=torch.float32))
    p = torch.softmax(logits.reshape(N, -1), dim=1).reshape(N, h, w)
    return _expectation(p)


def geoaware_soft_argmax(sim: torch.Tensor, window: int = 7, beta: float = 0.02) -> torch.Tensor:
    """GeoAware-SC's soft evaluation readout (its ``get_flow`` + ``soft_argmax``).

    The similarity is *multiplied* by a 0/1 mask that keeps the (2 window + 1)^2 cells around the
    argmax (cut at the borders), so cells outside become 0, not -inf; then softmax(sim / beta) over
    **all** cells and the expected position, clamped to the map. ``window <= 0``: no mask (plain
    soft-argmax with beta). Shape: (N, h, w) -> (N, 2) grid cells; map them back with patch
    centres (pixel = (g + 0.5) x patch size), not align corners.
    """
    N, h, w = sim.shape
    s = sim.float()
    if window > 0:
        centre = nearest_neighbour(s)
        gy, gx = _grid(h, w, sim.device, torch.float32)
        inside = ((gx[None] - centre[:, 0, None, None]).abs() <= window) & ((gy[None] - centre[:, 1, None, None]).abs() <= window)
        s = s * inside
    p = torch.softmax(s.reshape(N, -1) / beta, dim=1).reshape(N, h, w)
    g = _expectation(p)
    return torch.stack([g[:, 0].clamp(0, w - 1), g[:, 1].clamp(0, h - 1)], dim=1)


def apply(name: str, sim: torch.Tensor, *, temperature: float = 0.04, sigma: float = 7.0, radius: int = 3,
          geoaware_window: int = 7, geoaware_beta: float = 0.02) -> torch.Tensor:
    """Run the readout called ``name`` (one of :data:`READOUTS`)."""
    if name == "nn":
        return nearest_neighbour(sim).float()
    if name == "soft-argmax":
        return soft_argmax(sim, temperature)
    if name == "kernel-soft-argmax":
        return kernel_soft_argmax(sim, sigma, temperature)
    if name == "window-soft-argmax":
        return window_soft_argmax(sim, radius, temperature)
    if name == "geoaware-soft-argmax":
        return geoaware_soft_argmax(sim, geoaware_window, geoaware_beta)
    raise ValueError(f"unknown readout {name!r}; valid: {', '.join(READOUTS)}")
