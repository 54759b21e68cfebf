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


def kap_rows(row, pairs, kap_recs, proto, cat_idx, cats) -> list[dict]:
    """KAP rows (``metric`` kap, ``readout`` similarity) of one protocol from the predictions' KAP
    records: radius alpha x T x (grid cells per target pixel), T the protocol's threshold in
    original pixels; ``point`` pools every keypoint, ``image`` averages the pairs' KAP. Only
    frames that keep distances as in the original (``original``, ``isotropic``)."""
    from .kap import average_precision, from_records
    from .pck import thresholds

    if proto.aggregate not in ("image", "point") or not proto.frame.startswith(("original", "isotropic")):
        return []
    one = np.ones(len(pairs.width))
    T = thresholds(proto.threshold, width=pairs.width, height=pairs.height, bbox=pairs.bbox, gt_xy=pairs.gt,
                   offsets=pairs.offsets, sx=one, sy=one)
    alphas = np.asarray(proto.alphas, np.float64)
    per_pair = []
    for (steps, (lo, hi, cpp)), t in zip(kap_recs, T):
        tau = alphas * t * cpp
        wb = [from_records(rec, tau, lo, hi) for rec in steps]
        per_pair.append((np.stack([w for w, _ in wb], 1), np.stack([b for _, b in wb], 1)))
    A = len(alphas)

    def ap(parts, a):
        pos = np.concatenate([w[a] for w, _ in parts])
        neg = np.concatenate([b[a] for _, b in parts])
        return average_precision(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])

    def value(sel):
        parts = [per_pair[i] for i in sel]
        if proto.aggregate == "point":
            return [ap(parts, a) for a in range(A)]
        return list(np.nanmean([[ap([p], a) for a in range(A)] for p in parts], axis=0))

    counts = np.diff(pairs.offsets)
    groups = [("all", np.arange(len(per_pair)))] + [(str(c), np.flatnonzero(cat_idx == i)) for i, c in enumerate(cats)]
    rows = []
    for name, sel in groups:
        if not len(sel):
            continue
        v = value(sel)
        for a, alpha in enumerate(proto.alphas):
            rows.append(row(proto, "similarity", metric="kap", keypoints="all", category=name, alpha=alpha,
                            pck=float(v[a]), n_pairs=int(len(sel)), n_kps=int(counts[sel].sum())))
    return rows
