"""Keypoint subsets and stricter correctness that 2024-26 papers report, from predictions alone.

**Geometry-aware keypoints** (GeoAware-SC, CVPR 2024): the keypoints that have a counterpart
(left/right, front/back) visible in the target, where symmetric confusions happen. The groups
below are facts of the datasets' keypoint definitions, as GeoAware-SC's tables list them
(``SPAIR_GEO_AWARE``, ``AP10K_GEO_AWARE``; an int is a keypoint without a counterpart, a list a group).
Rule, per pair: for each group (restricted to the category's *used* ids, those annotated somewhere
in the split), if at least 2 members are visible in the target and at least 1 is visible in both
images, every member visible in both images is geometry-aware.

Two variants, both recorded by name:

- ``geo-aware``: the rule on the tables' keypoint ids (the subset the tables define);
- ``geo-aware-release``: what GeoAware-SC's release computes. It renumbers the filtered groups by
  consecutive positions in the order the table lists them (singletons included) and uses those
  positions as indices into the used ids in ascending order, so where a table is not in ascending
  id order, or a used id is missing, the positions name other keypoints (car's lights group
  [2, 3, 6, 7] becomes positions 2-5, i.e. ids 2, 3, 4, 5, the licence plate among them).

**PCK-dagger** (JamaisVu, NeurIPS 2025): a prediction counts only when it is correct under PCK and
the ground-truth keypoint nearest to it, among the pair's keypoints, is its own.

Pure numpy; no model, no torch.
"""

from __future__ import annotations

import numpy as np

#: SPair-71k's groups (GeoAware-SC's ``SPAIR_GEO_AWARE``; bicycle's last id and bus's ids above 7 as
#: the table writes them, ``11+2`` = 13, ``8+2`` = 10 ...)
SPAIR_GEO_GROUPS: dict[str, list] = {
    "aeroplane": [0, 1, 2, 3, [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15], [16, 17], [18, 19], [20, 21],
                  22, 23, 24],
    "bicycle": [0, 1, [2, 3], 4, 5, [6, 7], 8, [9, 10], 13],
    "bird": [0, [1, 2], 3, 4, 5, 6, 7, 8, 9, [10, 11], [12, 13], [14, 15], 16],
    "boat": [0, [1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], 13],
    "bottle": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
    "bus": [[0, 1], [2, 3, 5, 6], [4, 7], [10, 13, 20, 23], [11, 14, 21, 24], [12, 15, 22, 25], [16, 17, 26, 27],
            [18, 19, 28, 29]],
    "car": [[0, 1], [2, 3, 6, 7], [4, 8], [5, 9], [10, 13, 20, 23], [11, 14, 21, 24], [12, 15, 22, 25],
            [16, 17, 26, 27], [18, 19, 28, 29]],
    "cat": [0, 1, [2, 3], 4, 5, 6, 7, 8, [9, 10, 11, 12], 13, 14],
    "chair": [[0, 1], [2, 3], [4, 5, 6, 7], [8, 9], [10, 11], [12, 13]],
    "cow": [0, 1, [2, 3], 4, 5, 6, 7, 8, [9, 10, 11, 12], 13, 14, [15, 16, 17, 18], [19, 20]],
    "dog": [0, 1, [2, 3], 4, 5, 6, 7, 8, [9, 10, 11, 12], 13, 14, 15],
    "horse": [0, 1, [2, 3], 4, 5, 6, 7, 8, 9, [10, 11, 12, 13], 14, 15, [16, 17, 18, 19]],
    "motorbike": [[0, 1], [2, 3], 4, 5, 6, 7, 8, 9, 10, 11, 12],
    "person": [0, 1, 2, 3, 4, 5, 6, 7, [8, 9], [10, 11], [12, 13], [14, 15], [16, 17], [18, 19]],
    "pottedplant": [[0, 1, 2, 3], [4, 5], [6, 8], 7],
    "sheep": [0, 1, [2, 3], 4, 5, 6, 7, 8, [9, 10, 11, 12], 13, 14, [15, 16, 17, 18], [19, 20]],
    "train": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15], [16, 17]],
    "tvmonitor": [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]],
}
#: AP-10K's groups (``AP10K_GEO_AWARE``): eyes; nose; neck; tail root; shoulders; elbows and knees;
#: front and back paws; hips
AP10K_GEO_GROUPS = [0, 1, 2, 3, 4, [5, 8], [6, 9, 12, 15], [7, 10, 13, 16], [11, 14]]
GEO_VARIANTS = ("geo-aware", "geo-aware-release")


def geo_groups(dataset: str, category: str) -> list | None:
    """The table of ``category`` in ``dataset`` (None: no table, no geometry-aware subset)."""
    if dataset in ("spair-71k", "spair-u"):
        return SPAIR_GEO_GROUPS.get(category)
    if dataset == "ap-10k":
        return AP10K_GEO_GROUPS
    return None


def _filtered(groups: list, used: list[int]) -> list[list[int]]:
    used_set = set(used)
    out = []
    for item in groups:
        members = [i for i in ([item] if isinstance(item, int) else item) if i in used_set]
        if members:
            out.append(members)
    return out


def geo_aware_ids(groups: list, used_ids, src_visible, trg_visible, variant: str = "geo-aware") -> list[int]:
    """The geometry-aware keypoint ids of one pair (ascending).

    ``used_ids``: the category's ids annotated somewhere in the split; ``src_visible`` /
    ``trg_visible``: the ids visible in each image. ``variant``: ``geo-aware`` (the rule on the
    table's ids) or ``geo-aware-release`` (the release's positions; see the module docstring)."""
    used = sorted(int(i) for i in used_ids)
    src, trg = {int(i) for i in src_visible}, {int(i) for i in trg_visible}
    filtered = _filtered(groups, used)
    if variant == "geo-aware-release":
        pos, renumbered = 0, []
        for g in filtered:
            renumbered.append([used[p] for p in range(pos, pos + len(g)) if p < len(used)])
            pos += len(g)
        filtered = renumbered
    elif variant != "geo-aware":
        raise ValueError(f"unknown geometry-aware variant {variant!r}; valid: {', '.join(GEO_VARIANTS)}")
    out = set()
    for g in filtered:
        both = [i for i in g if i in src and i in trg]
        if sum(1 for i in g if i in trg) >= 2 and both:
            out.update(both)
    return sorted(out)


def nearest_is_own(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """PCK-dagger's extra condition for one pair: ``(n,)`` bool, the ground-truth keypoint nearest to
    prediction i (among the ``valid`` ones; invalid ones are pushed beyond every valid distance) is i."""
    pred, gt = np.asarray(pred, np.float64).reshape(-1, 2), np.asarray(gt, np.float64).reshape(-1, 2)
    if len(pred) == 0:
        return np.zeros(0, bool)
    d = np.linalg.norm(pred[:, None, :] - gt[None, :, :], axis=2)
    if valid is not None:
        valid = np.asarray(valid, bool)
        d = np.where(valid[None, :], d, d.max() + 1 + d)
    return d.argmin(axis=1) == np.arange(len(pred))


def _padded(values: np.ndarray, offsets: np.ndarray, fill=np.nan) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(K, ...)`` values with pair offsets -> ``(P, Kmax, ...)`` padded with ``fill``, and the mask."""
    counts = np.diff(offsets)
    P, kmax = len(counts), int(counts.max(initial=0))
    rank = np.arange(len(values)) - np.repeat(offsets[:-1], counts)
    pair = np.repeat(np.arange(P), counts)
    out = np.full((P, kmax, *values.shape[1:]), fill, dtype=np.float64)
    out[pair, rank] = values
    mask = np.zeros((P, kmax), bool)
    mask[pair, rank] = True
    return out, mask


def dagger(pred_xy: np.ndarray, gt_xy: np.ndarray, offsets: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """``(K,)`` bool: the ground-truth keypoint nearest to each prediction (distances in the evaluation
    frame, among its own pair's keypoints) is its own; vectorised over pairs."""
    counts = np.diff(offsets)
    scale = np.stack([np.repeat(sx, counts), np.repeat(sy, counts)], 1)
    p, mask = _padded(pred_xy * scale, offsets)
    g, _ = _padded(gt_xy * scale, offsets)
    d = np.linalg.norm(p[:, :, None, :] - g[:, None, :, :], axis=3)  # (P, Kmax, Kmax)
    d = np.where(mask[:, None, :], d, np.inf)
    own = d.argmin(axis=2) == np.arange(d.shape[1])[None, :]
    return own[mask]


def geo_masks(table, dataset: str) -> dict[str, np.ndarray] | None:
    """``{variant: (K,) bool}`` over the flattened keypoints of the pairs with keypoints (the order
    of :class:`benchmarks.pck.PairArrays`), or None when the dataset has no table. Visibility beyond
    the pair's matched keypoints comes from ``src_visible_ids`` / ``trg_visible_ids`` where known
    (null: only the matched keypoints are known visible, a lower bound of the subset); a category's
    used ids are those seen visible anywhere in the table."""
    rows = [r for r in table.select(["category", "kps_ids", "src_visible_ids", "trg_visible_ids"]).to_pylist()
            if r["kps_ids"]]
    if not rows or all(geo_groups(dataset, r["category"]) is None for r in rows):
        return None
    used: dict[str, set] = {}
    for r in rows:
        seen = used.setdefault(r["category"], set())
        seen.update(r["kps_ids"], r["src_visible_ids"] or (), r["trg_visible_ids"] or ())
    out = {}
    for variant in GEO_VARIANTS:
        flags = []
        for r in rows:
            groups = geo_groups(dataset, r["category"])
            ids = r["kps_ids"]
            if groups is None:
                flags += [False] * len(ids)
                continue
            src = set(r["src_visible_ids"] or ()) | set(ids)
            trg = set(r["trg_visible_ids"] or ()) | set(ids)
            geo = set(geo_aware_ids(groups, sorted(used[r["category"]]), src, trg, variant))
            flags += [i in geo for i in ids]
        out[variant] = np.asarray(flags, bool)
    return out


def disagreement(table, dataset: str) -> list[tuple[str, int, int, int, int]]:
    """Per category: (category, keypoints, geo-aware, geo-aware-release, keypoints in exactly one of
    the two), over a dataset split's table."""
    masks = geo_masks(table, dataset)
    if masks is None:
        return []
    cats = [c for r, c in zip(table.column("kps_ids").to_pylist(), table.column("category").to_pylist())
            for _ in range(len(r))]
    cats = np.asarray(cats, dtype=object)
    a, b = masks["geo-aware"], masks["geo-aware-release"]
    return [(c, int((cats == c).sum()), int(a[cats == c].sum()), int(b[cats == c].sum()),
             int((a[cats == c] != b[cats == c]).sum())) for c in sorted(set(cats))]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.keypoint_sets --dataset D --data-root DIR [--split test]``: per category,
    the geometry-aware keypoints of both variants and how many keypoints they disagree on."""
    import argparse
    import sys

    import loaders

    p = argparse.ArgumentParser(prog="python -m benchmarks.keypoint_sets", description=main.__doc__)
    p.add_argument("--dataset", default="spair-71k")
    p.add_argument("--data-root", dest="data_root", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--layout", default=None)
    args = p.parse_args(argv)
    try:
        table = loaders.load(args.dataset, args.data_root, args.split, layout=args.layout)
    except (loaders.DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = disagreement(table, args.dataset)
    if not rows:
        print(f"{args.dataset} has no geometry-aware table")
        return 0
    print(f"{'category':<12} {'keypoints':>9} {'geo-aware':>9} {'release':>9} {'disagree':>9}")
    for c, n, a, b, d in rows:
        print(f"{c:<12} {n:>9} {a:>9} {b:>9} {d:>9}")
    tot = [sum(r[i] for r in rows) for i in range(1, 5)]
    print(f"{'all':<12} {tot[0]:>9} {tot[1]:>9} {tot[2]:>9} {tot[3]:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
