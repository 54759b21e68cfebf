"""PCK math: vectorised numpy over the pair table's Arrow columns.

Keypoints of all pairs are flattened into one ``(K, 2)`` array with pair offsets ``(P + 1,)``;
every per-pair quantity is an array of length P. No Python loop runs over pairs or keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .protocol import Protocol, parse_frame

BREAKDOWN_COLUMNS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")


def flat_kps(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list<fixed_size_list<float32, 2>> column -> (``(K, 2)`` float64 array, offsets ``(P + 1,)``)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    flat = arr.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return flat.reshape(-1, 2), offsets


def bbox_array(column) -> np.ndarray:
    """A nullable fixed_size_list<float32, 4> column -> ``(P, 4)`` float64 with NaN rows for null."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.full((len(arr), 4), np.nan)
    valid = ~arr.is_null().to_numpy(zero_copy_only=False)
    if valid.any():
        out[valid] = np.asarray(arr.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(-1, 4)
    return out


def frame_scale(frame: str, width: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair (sx, sy) that map original target pixels into ``frame``.

    ``isotropic`` (aspect-preserving resize, padding irrelevant) scales x and y by the same
    factor, which scales distances and thresholds alike: it equals ``original``, so (1, 1).
    """
    kind, w, h = parse_frame(frame)
    if kind in ("original", "isotropic"):
        one = np.ones(len(width))
        return one, one
    return w / width.astype(np.float64), h / height.astype(np.float64)


def segment_extent(xy: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """max(w, h) of the bounding extent of each segment's points; segments must be non-empty.

    Shape: xy (K, 2), offsets (P + 1,) -> (P,)
    """
    starts = offsets[:-1]
    mx = np.maximum.reduceat(xy, starts, axis=0)
    mn = np.minimum.reduceat(xy, starts, axis=0)
    return (mx - mn).max(axis=1)


def thresholds(
    kind: str,
    *,
    width: np.ndarray,
    height: np.ndarray,
    bbox: np.ndarray,
    gt_xy: np.ndarray,
    offsets: np.ndarray,
    sx: np.ndarray,
    sy: np.ndarray,
) -> np.ndarray:
    """Per-pair threshold T in the evaluation frame (already scaled by (sx, sy))."""
    if kind == "img":
        return np.maximum(width * sx, height * sy)
    if kind == "bbox":
        return np.maximum((bbox[:, 2] - bbox[:, 0]) * sx, (bbox[:, 3] - bbox[:, 1]) * sy)
    if kind == "bbox-kp":
        reps = np.diff(offsets)
        scaled = gt_xy * np.stack([np.repeat(sx, reps), np.repeat(sy, reps)], 1)
        return segment_extent(scaled, offsets)
    raise ValueError(f"unknown threshold {kind!r}")


@dataclass
class PairArrays:
    """The columns PCK needs, as numpy, in table order (pairs without keypoints removed)."""

    pair_id: np.ndarray  # (P,) object
    category: np.ndarray  # (P,) object
    width: np.ndarray  # (P,) target width
    height: np.ndarray
    bbox: np.ndarray  # (P, 4), NaN where absent
    gt: np.ndarray  # (K, 2) target ground truth, original pixels
    offsets: np.ndarray  # (P + 1,)
    kps_ids: np.ndarray  # (K,)
    levels: dict[str, np.ndarray]  # breakdown column -> (P,) int (-1 where null)
    keep: np.ndarray  # (P_table,) bool: rows of the table kept

    @classmethod
    def from_table(cls, table: pa.Table) -> PairArrays:
        n_kps = pc.list_value_length(table.column("trg_kps")).to_numpy(zero_copy_only=False)
        keep = n_kps > 0
        t = table.filter(pa.array(keep)) if not keep.all() else table
        gt, offsets = flat_kps(t.column("trg_kps"))
        ids = t.column("kps_ids").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        levels = {}
        for c in BREAKDOWN_COLUMNS:
            col = t.column(c)
            if col.null_count < len(col):
                levels[c] = pc.fill_null(col, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return cls(
            pair_id=np.asarray(t.column("pair_id").to_pylist(), dtype=object),
            category=np.asarray(t.column("category").to_pylist(), dtype=object),
            width=t.column("trg_width").to_numpy().astype(np.float64),
            height=t.column("trg_height").to_numpy().astype(np.float64),
            bbox=bbox_array(t.column("trg_bbox")),
            gt=gt,
            offsets=offsets,
            kps_ids=ids,
            levels=levels,
            keep=keep,
        )


def hits(pairs: PairArrays, pred_xy: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Boolean ``(A, K)``: keypoint k is within alpha_a * T of its ground truth.

    ``pred_xy`` is ``(K, 2)`` in original target pixels, aligned with ``pairs.gt``.
    """
    sx, sy = frame_scale(protocol.frame, pairs.width, pairs.height)
    if protocol.threshold == "bbox" and np.isnan(pairs.bbox).any():
        first = pairs.pair_id[np.isnan(pairs.bbox).any(axis=1)][0]
        raise ValueError(f"threshold 'bbox' needs target boxes, pair {first!r} has none; use 'img' or 'bbox-kp'")
    T = thresholds(protocol.threshold, width=pairs.width, height=pairs.height, bbox=pairs.bbox,
                   gt_xy=pairs.gt, offsets=pairs.offsets, sx=sx, sy=sy)
    reps = np.diff(pairs.offsets)
    scale = np.stack([np.repeat(sx, reps), np.repeat(sy, reps)], 1)
    dist = np.linalg.norm((pred_xy - pairs.gt) * scale, axis=1)
    alphas = np.asarray(protocol.alphas)[:, None]
    limit = alphas * np.repeat(T, reps)[None, :]
    return dist[None, :] < limit if protocol.strict else dist[None, :] <= limit


def per_pair(hit: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct count ``(A, P)``, keypoint count ``(P,)``) from ``(A, K)`` hits."""
    counts = np.diff(offsets)
    correct = np.add.reduceat(hit.astype(np.int64), offsets[:-1], axis=1)
    return correct, counts


def aggregate(correct: np.ndarray, counts: np.ndarray, groups: np.ndarray, n_groups: int,
              how: str, category: np.ndarray | None = None) -> np.ndarray:
    """PCK per group, ``(A, n_groups)``; empty groups give NaN.

    ``image``: mean over the group's pairs of correct / count. ``point``: sum correct / sum count.
    ``category``: mean over the categories present in the group of their ``image`` PCK.
    """
    A = correct.shape[0]
    if how == "image":
        frac = correct / counts
        num = np.stack([np.bincount(groups, frac[a], minlength=n_groups) for a in range(A)])
        den = np.bincount(groups, minlength=n_groups)
    elif how == "point":
        num = np.stack([np.bincount(groups, correct[a], minlength=n_groups) for a in range(A)])
        den = np.bincount(groups, counts, minlength=n_groups)
    elif how == "category":
        cats, cat_idx = np.unique(category, return_inverse=True)
        combo = groups * len(cats) + cat_idx
        per = aggregate(correct, counts, combo, n_groups * len(cats), "image").reshape(A, n_groups, len(cats))
        present = ~np.isnan(per)
        total = np.where(present, per, 0.0).sum(axis=2)
        n = present.sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / np.where(n == 0, np.nan, n)
    else:
        raise ValueError(f"unknown aggregate {how!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.where(den == 0, np.nan, den)
