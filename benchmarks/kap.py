"""KAP, keypoint average precision (JamaisVu, NeurIPS 2025): does the similarity map of a source
keypoint peak near its target keypoint, compared with its peak elsewhere?

For a source keypoint with similarity row s over the target's g x g cells (cosine of the
descriptors, min-max normalised jointly over the pair's rows), its target keypoint (u, v) in cell
units and a radius tau = alpha x T x g / S (T the threshold in the S-pixel frame):

- ``within`` = max of s over the cells with (x - u)^2 + (y - v)^2 <= tau^2 (0 when none), cells at
  integer (column, row) indices;
- ``beyond`` = max of s over the other cells (0 when none).

KAP@alpha is the average precision of telling ``within`` values (positives) from ``beyond`` values
(negatives), pooled over all pairs (per keypoint) or per pair and averaged (per image). Two
variants: ``kap-release`` as JamaisVu's release computes it (every keypoint visible in the source
gives a positive and a negative, whatever the target's visibility) and ``kap`` as the metric is
defined (a positive only where the target keypoint is visible; for a hidden one the whole-map
maximum is a negative). They differ only on keypoints visible in the source alone.

Both ``within`` and ``beyond`` are step functions of tau. :func:`records` keeps each step (a
running maximum changes ~ln(g^2) times), so any radius is re-scored exactly later without the maps.
Pure numpy.
"""

from __future__ import annotations

import numpy as np

KAP_VARIANTS = ("kap", "kap-release")


def similarity_rows(src_desc: np.ndarray, trg_desc: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``(K, g*g)`` rows of the source cells ``cells`` (flat indices) against every target cell."""
    return np.asarray(src_desc, np.float64)[cells] @ np.asarray(trg_desc, np.float64).T


def _d2(trg_uv: np.ndarray, g: int) -> np.ndarray:
    """``(K, g*g)`` squared distances from each target keypoint (cell units) to every cell index."""
    ys, xs = np.divmod(np.arange(g * g), g)
    return (xs[None, :] - trg_uv[:, :1]) ** 2 + (ys[None, :] - trg_uv[:, 1:2]) ** 2


def within_beyond(rows: np.ndarray, trg_uv: np.ndarray, tau: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, K)`` within and beyond of normalised rows for radii ``tau`` ``(A,)`` or ``(A, K)`` (cells)."""
    d2 = _d2(np.asarray(trg_uv, np.float64), g)
    tau = np.asarray(tau, np.float64)
    tau2 = (tau[:, None] if tau.ndim == 1 else tau)[..., None] ** 2
    inside = d2[None] <= tau2  # (A, K, g*g)
    s = np.asarray(rows, np.float64)[None]
    return (s * inside).max(axis=2), (s * ~inside).max(axis=2)


def normalise(rows: np.ndarray) -> np.ndarray:
    """Min-max normalisation over all the pair's rows together (the release's)."""
    mn, mx = rows.min(), rows.max()
    return (rows - mn) / (mx - mn)


def records(rows: np.ndarray, trg_uv: np.ndarray, g: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per row: (within squared distances, within values, beyond squared distances, beyond values), the
    steps of the two running maxima of the *raw* similarity (ascending d2 for within, descending for
    beyond): within(tau) = the value of the last within step with d2 <= tau^2, beyond(tau) = the
    value of the last beyond step with d2 > tau^2."""
    d2 = _d2(np.asarray(trg_uv, np.float64), g)
    out = []
    for s, d in zip(np.asarray(rows, np.float64), d2):
        order = np.lexsort((-s, d))  # by distance; at equal distance the best value first
        wd, wv = _steps(d[order], s[order])
        order = np.lexsort((-s, -d))
        bd, bv = _steps(d[order], s[order])
        out.append((wd, wv, bd, bv))
    return out


def _steps(d: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    run = np.maximum.accumulate(s)
    new = np.r_[True, run[1:] > run[:-1]]
    return d[new], run[new]


def from_records(rec, tau: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """``(A,)`` within and beyond of one keypoint's steps at radii ``tau`` (cells), normalised by the
    pair's raw minimum ``lo`` and maximum ``hi`` (a step outside the disc or ring gives 0)."""
    wd, wv, bd, bv = rec
    tau2 = np.asarray(tau, np.float64) ** 2
    span = hi - lo if hi > lo else float("inf")  # a constant map: every value normalises to 0
    within = np.zeros(len(tau2))
    beyond = np.zeros(len(tau2))
    for a, t in enumerate(tau2):
        i = np.searchsorted(wd, t, side="right") - 1  # last step with d2 <= tau^2
        if i >= 0:
            within[a] = (wv[i] - lo) / span
        j = np.searchsorted(-bd, -t, side="left") - 1  # last step (descending d2) with d2 > tau^2
        if j >= 0:
            beyond[a] = (bv[j] - lo) / span
    return within, beyond


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision as scikit-learn's ``average_precision_score``: precision at each distinct
    score (descending), weighted by the recall it adds."""
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    if tps[-1] == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def samples(within: np.ndarray, beyond: np.ndarray, trg_visible: np.ndarray, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) ``(A, n)`` of one set of keypoints under a variant (see the module docstring)."""
    vis = np.asarray(trg_visible, bool)
    if variant == "kap-release":
        pos, neg = within, beyond
    elif variant == "kap":
        pos = within[:, vis]
        neg = np.where(vis[None, :], beyond, np.maximum(within, beyond))
    else:
        raise ValueError(f"unknown KAP variant {variant!r}; valid: {', '.join(KAP_VARIANTS)}")
    labels = np.concatenate([np.ones_like(pos), np.zeros_like(neg)], axis=1)
    return labels, np.concatenate([pos, neg], axis=1)


def kap(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], variant: str = "kap") -> tuple[np.ndarray, np.ndarray]:
    """(pooled ``(A,)``, per image mean ``(A,)``) KAP of pairs given as (within, beyond, target visible)."""
    per_pair = [samples(w, b, v, variant) for w, b, v in pairs]
    labels = np.concatenate([p[0] for p in per_pair], axis=1)
    scores = np.concatenate([p[1] for p in per_pair], axis=1)
    pooled = np.array([average_precision(labels[a], scores[a]) for a in range(labels.shape[0])])
    image = np.array([[average_precision(lab[a], sco[a]) for a in range(lab.shape[0])] for lab, sco in per_pair])
    return pooled, np.nanmean(image, axis=0)


def pair_within_beyond(src_desc, trg_desc, src_xy, trg_xy, src_visible, threshold: float, alphas, g: int,
                       S: float) -> tuple[np.ndarray, np.ndarray]:
    """``(A, K)`` within and beyond of the source-visible keypoints of one pair, from descriptors
    ``(g*g, C)`` (unit rows) and keypoints in the S-pixel frame: source cells by truncation
    (``int(x g / S)``), rows normalised jointly, radii alpha x threshold x g / S."""
    src_xy, trg_xy = np.asarray(src_xy, np.float64), np.asarray(trg_xy, np.float64)
    vis = np.asarray(src_visible, bool)
    s = g / S
    cells = g * (s * src_xy[vis, 1]).astype(np.int64) + (s * src_xy[vis, 0]).astype(np.int64)
    rows = normalise(similarity_rows(src_desc, trg_desc, cells))
    tau = np.asarray(alphas, np.float64) * float(threshold) * s
    return within_beyond(rows, trg_xy[vis] * s, tau, g)
