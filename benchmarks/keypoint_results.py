"""Result rows of the keypoint subsets and stricter metrics (:mod:`benchmarks.keypoint_sets`) beside
plain PCK: ``metric`` (``pck``, ``pck-dagger``) and ``keypoints`` (``all``, ``geo-aware``,
``geo-aware-release``) are two columns of ``results.csv`` and ``per_pair.parquet``; plain PCK on all
keypoints is the row every table uses, the others stand beside it with their own ``n_kps``."""

from __future__ import annotations

import numpy as np

from .keypoint_sets import dagger, geo_masks
from .pck import aggregate, frame_scale, per_pair


def keypoint_sets_of(table, dataset: str) -> dict[str, np.ndarray]:
    """``{keypoints label: (K,) mask}`` of the dataset's subsets (none where it has no tables)."""
    return geo_masks(table, dataset) or {}


def _dagger_hits(pairs, hit, pred_xy, proto):
    sx, sy = frame_scale(proto.frame, pairs.width, pairs.height)
    return hit & dagger(pred_xy, pairs.gt, pairs.offsets, sx, sy)[None, :]


def extra_hits(pairs, hit, pred_xy, proto, sets) -> list[tuple[str, str, tuple]]:
    """(metric, keypoints, (hits, keypoint mask)) of every extra row set."""
    out = [("pck-dagger", "all", (_dagger_hits(pairs, hit, pred_xy, proto), None))]
    out += [("pck", name, (hit, mask)) for name, mask in sets.items()]
    return out


def per_pair_extra(pairs, hit, pred_xy, proto, sets) -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """The same as (metric, keypoints, hits masked to the subset, the subset mask) for per-pair rows."""
    return [(m, k, h if mask is None else h & mask[None, :], mask) for m, k, (h, mask) in
            extra_hits(pairs, hit, pred_xy, proto, sets)]


def subset_rows(row, interval, proto, readout, metric, keypoints, hm, pairs, cat_idx, cats, W) -> list[dict]:
    """Result rows (whole split and per category) of one metric on one keypoint subset; ``row`` and
    ``interval`` are the evaluation's row builder and bootstrap interval."""
    hit, mask = hm
    counts = np.diff(pairs.offsets)
    if mask is not None:
        hit = hit & mask[None, :]
        counts = np.add.reduceat(mask.astype(np.int64), pairs.offsets[:-1])
    correct = per_pair(hit, pairs.offsets)[0]
    has = counts > 0
    if not has.any():
        return []
    correct, counts, ci_idx = correct[:, has], counts[has], cat_idx[has]
    zero = np.zeros(int(has.sum()), dtype=np.int64)
    overall = aggregate(correct, counts, zero, 1, proto.aggregate, pairs.category[has])[:, 0]
    by_cat = aggregate(correct, counts, ci_idx, len(cats), "image" if proto.aggregate == "category" else proto.aggregate)
    ci = (interval(W[:, has], correct, counts, proto.aggregate, ci_idx) if W is not None else np.full((len(proto.alphas), 2), np.nan))
    n_pairs_cat = np.bincount(ci_idx, minlength=len(cats))
    n_kps_cat = np.bincount(ci_idx, counts, minlength=len(cats)).astype(int)
    rows = []
    for a, alpha in enumerate(proto.alphas):
        rows.append(row(proto, readout, metric=metric, keypoints=keypoints, category="all", alpha=alpha,
                         pck=float(overall[a]), ci_low=float(ci[a, 0]), ci_high=float(ci[a, 1]),
                         n_pairs=int(has.sum()), n_kps=int(counts.sum())))
        for c, cat in enumerate(cats):
            if n_pairs_cat[c]:
                rows.append(row(proto, readout, metric=metric, keypoints=keypoints, category=str(cat),
                                 alpha=alpha, pck=float(by_cat[a, c]), n_pairs=int(n_pairs_cat[c]),
                                 n_kps=int(n_kps_cat[c])))
    return rows
