"""GeoAware-SC's training loss for the aggregation head (facts: ``../shared/golden/heads/README.md``).

On an n x n descriptor grid of an image pair (n = 60 at the real sizes, annotation frame 840):

- a keypoint's patch is row = int(s y), col = int(s x), s = n / 840 (truncation); index n row + col;
  only keypoints visible in both images count;
- sparse term: symmetric CLIP cross-entropy over the K matched descriptors, logits =
  exp(logit_scale) d1[idx1] d2[idx2]^T, labels 0..K-1, (CE(rows) + CE(columns)) / 2;
- dense term: for each source keypoint's cell, its correlations with every target cell (optionally
  zeroed outside the (2w+1)^2 cells around their argmax: the zeros stay in the softmax), a softmax
  at temperature 0.02, the expected target position on linspace(-1, 1, n) per axis mapped back to
  0..n-1, minus the source cell's own position: the predicted flow; loss = mean over keypoints of
  || flow - gt ||, gt = s (x2 - x1, y2 - y1) in continuous patch units (plus normal noise of std
  ``gaussian`` x threshold / 2 when asked);
- pose-variant pair augmentation: keypoints flipped (x -> 840 - x) and re-ordered by the category's
  flip permutation; a double-flip dense term (flipped source against flipped target, weight 1) and
  a self-flip dense term (flipped source against the source, weight 0.25) are added, and the sum is
  divided by the weights of the terms that had visible keypoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ANNO_SIZE = 840
TEMPERATURE = 0.02


def patch_index(kps: torch.Tensor, n: int, anno: int = ANNO_SIZE) -> torch.Tensor:
    """(K, 2+) keypoints (x, y) in the annotation frame -> their cell indices (truncation; a point on
    the frame's far edge, x = anno after a mirror of x = 0, stays in the last cell)."""
    s = n / anno
    return (n * (s * kps[:, 1]).long().clamp(0, n - 1) + (s * kps[:, 0]).long().clamp(0, n - 1)).long()


def flip_keypoints(kps: torch.Tensor, perm: list[int], anno: int = ANNO_SIZE) -> torch.Tensor:
    """Mirror (x -> anno - x) and re-order by the flip permutation; rows beyond it dropped."""
    out = kps[torch.as_tensor(perm, dtype=torch.long)].clone()
    out[:, 0] = anno - out[:, 0]
    return out


def sparse_loss(d1: torch.Tensor, d2: torch.Tensor, idx1: torch.Tensor, idx2: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
    logits = logit_scale.exp() * d1[idx1] @ d2[idx2].T
    labels = torch.arange(len(idx1), device=d1.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def dense_loss(d1: torch.Tensor, d2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, n: int, window: int = 0,
               gaussian: float = 0.0, threshold: float = 0.0, generator: torch.Generator | None = None,
               anno: int = ANNO_SIZE) -> torch.Tensor:
    """The flow term for matched keypoints ``k1`` -> ``k2`` (K, 2+) on ``(n*n, C)`` descriptors."""
    s = n / anno
    idx1 = patch_index(k1, n, anno)
    corr = d1[idx1] @ d2.T  # (K, n*n)
    if window > 0:
        arg = corr.argmax(dim=1)
        r, c = arg // n, arg % n
        rows = torch.arange(n, device=corr.device)
        keep_r = (rows[None, :] - r[:, None]).abs() <= window
        keep_c = (rows[None, :] - c[:, None]).abs() <= window
        keep = (keep_r[:, :, None] & keep_c[:, None, :]).reshape(len(idx1), n * n)
        corr = corr * keep
    prob = torch.softmax((corr - corr.max(dim=1, keepdim=True).values) / TEMPERATURE, dim=1).reshape(-1, n, n)
    lin = torch.linspace(-1, 1, n, device=corr.device, dtype=corr.dtype)
    ex = (prob.sum(dim=1) * lin).sum(dim=1)  # over columns
    ey = (prob.sum(dim=2) * lin).sum(dim=1)  # over rows
    px, py = (ex + 1) / 2 * (n - 1), (ey + 1) / 2 * (n - 1)
    flow = torch.stack([px - (idx1 % n).to(px.dtype), py - (idx1 // n).to(py.dtype)], dim=1)
    gt = torch.stack([s * k2[:, 0] - s * k1[:, 0], s * k2[:, 1] - s * k1[:, 1]], dim=1).to(flow.dtype)
    if gaussian > 0:
        std = gaussian * threshold * s / 2
        gt = gt + torch.randn(gt.shape, generator=generator, dtype=gt.dtype).to(gt.device) * std
    return (flow - gt).norm(dim=1).mean()


def _visible(k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    return (k1[:, 2] > 0) & (k2[:, 2] > 0)


def head_loss(d1: torch.Tensor, d2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, logit_scale: torch.Tensor,
              n: int, dense: bool = True, window: int = 0, perm: list[int] | None = None,
              d1_flip: torch.Tensor | None = None, d2_flip: torch.Tensor | None = None, gaussian: float = 0.0,
              threshold: float = 0.0, generator: torch.Generator | None = None,
              anno: float = ANNO_SIZE) -> torch.Tensor:
    """GeoAware-SC's loss of one pair (see the module docstring); ``perm`` with the flipped
    descriptors turns on the pose-variant pair augmentation. ``anno``: the side of the square frame
    the keypoints are given in (840 in the authors' pipeline; the matcher's ``image_size``)."""
    vis = _visible(k1, k2)
    a, b = k1[vis], k2[vis]
    total = sparse_loss(d1, d2, patch_index(a, n, anno), patch_index(b, n, anno), logit_scale)
    if dense:
        total = total + dense_loss(d1, d2, a, b, n, window, gaussian, threshold, generator, anno)
    if perm is None:
        return total
    weight = 1.0
    f1, f2 = flip_keypoints(k1, perm, anno), flip_keypoints(k2, perm, anno)
    k1p = k1[: len(perm)]
    terms = [(d1_flip, d2_flip, f1, f2, 1.0), (d1_flip, d1, f1, k1p, 0.25)]
    for x1, x2, q1, q2, w in terms:
        v = _visible(q1, q2)
        if v.any():
            total = total + w * dense_loss(x1, x2, q1[v], q2[v], n, window, gaussian, threshold, generator, anno)
            weight += w
    return total / weight
