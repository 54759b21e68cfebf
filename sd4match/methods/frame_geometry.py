"""Geometry of the padded square frame that sd-dino and GeoAware-SC evaluate in (pure functions).

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
"""

from __future__ import annotations

import numpy as np
import torch


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
