"""Predictions files: one row per (pair, readout), predicted target keypoints in original pixels.

Columns: ``pair_id`` string, ``readout`` string, ``pred_kps`` list<fixed_size_list<float32, 2>>
(x, y) in the original target image's pixels, one per ground-truth keypoint in ``kps_ids``
order. Any protocol can be recomputed from this file and the dataset without running a model.

Dense matchers in the padded frame add what KAP needs (:mod:`benchmarks.kap`), on the rows of their
first readout (null elsewhere): ``kap_steps``, per keypoint the four step lists (within squared
distances and raw similarities, beyond squared distances and raw similarities, in grid cells), and
``kap_pair``, the pair's [raw minimum, raw maximum, grid cells per original target pixel].
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loaders.schema import KP_TYPE

from .pck import flat_kps

SCHEMA = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("readout", pa.string(), nullable=False),
    pa.field("pred_kps", KP_TYPE, nullable=False),
])


#: the key under which a dense matcher's ``predict`` returns its per-pair KAP records (not a readout)
KAP_KEY = "__kap__"
KAP_FIELDS = [pa.field("kap_steps", pa.list_(pa.list_(pa.list_(pa.float64())))),
              pa.field("kap_pair", pa.list_(pa.float64()))]
KAP_SCHEMA = pa.schema(list(SCHEMA) + KAP_FIELDS)


class PredictionError(ValueError):
    """A predictions file does not match its dataset."""


def make_table(pair_ids: list[str], readout: str, preds: list[np.ndarray], kap: list | None = None) -> pa.Table:
    """Build a predictions table for one readout; ``preds[i]`` is ``(n_i, 2)``; ``kap[i]`` (optional)
    the pair's KAP record ``{"steps": [(wd, wv, bd, bv), ...], "pair": [lo, hi, cells per px]}``."""
    if kap is not None:
        base = make_table(pair_ids, readout, preds)
        steps = [None if k is None else [[np.asarray(x, np.float64).tolist() for x in rec] for rec in k["steps"]]
                 for k in kap]
        pair = [None if k is None else [float(v) for v in k["pair"]] for k in kap]
        return base.append_column(KAP_FIELDS[0], pa.array(steps, KAP_FIELDS[0].type)).append_column(
            KAP_FIELDS[1], pa.array(pair, KAP_FIELDS[1].type))
    counts = np.array([len(p) for p in preds], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = np.concatenate([np.asarray(p, np.float32).reshape(-1, 2) for p in preds]) if preds else np.zeros((0, 2), np.float32)
    pts = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), 2)
    kps = pa.ListArray.from_arrays(pa.array(offsets), pts, type=KP_TYPE)
    return pa.Table.from_arrays(
        [pa.array(pair_ids, pa.string()), pa.array([readout] * len(pair_ids), pa.string()), kps], schema=SCHEMA
    )


def read(path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise PredictionError(f"{path}: no such file") from None
    except Exception as exc:
        raise PredictionError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [c for c in SCHEMA.names if c not in table.column_names]
    if missing:
        raise PredictionError(f"{path}: missing column(s) {missing}; expected {SCHEMA.names}")
    return conform(table, str(path))


def conform(table: pa.Table, where: str = "predictions") -> pa.Table:
    """The table in :data:`SCHEMA`, or in :data:`KAP_SCHEMA` when it carries both KAP columns."""
    schema = KAP_SCHEMA if all(f.name in table.column_names for f in KAP_FIELDS) else SCHEMA
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PredictionError(f"{where}: columns do not have the predictions types ({exc})") from None


def concat(tables: list[pa.Table], where: str = "predictions") -> pa.Table:
    """Shards as one table; the KAP columns kept only when every shard has them."""
    keep = all(all(f.name in t.column_names for f in KAP_FIELDS) for t in tables)
    schema = KAP_SCHEMA if keep else SCHEMA
    try:
        return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as exc:
        raise PredictionError(f"{where}: shards do not have the predictions types ({exc})") from None


def kap_records(pred: pa.Table, rows: pa.Table, source: str = "predictions") -> list | None:
    """Per pair of ``rows`` (the aligned dataset rows, pairs with keypoints), its KAP record, or None
    when the file has none for some pair (a matcher without similarity maps, an older file)."""
    if "kap_steps" not in pred.column_names:
        return None
    sub = pred.filter(pc.invert(pc.is_null(pred.column("kap_pair"))))
    by_id = dict(zip(sub.column("pair_id").to_pylist(), zip(sub.column("kap_steps").to_pylist(),
                                                             sub.column("kap_pair").to_pylist())))
    n_kps = pc.list_value_length(rows.column("trg_kps")).to_numpy(zero_copy_only=False)
    out = []
    for pid, n in zip(rows.column("pair_id").to_pylist(), n_kps):
        if n == 0:
            continue
        got = by_id.get(pid)
        if got is None:
            return None
        steps, pair = got
        if len(steps) != n or len(pair) != 3 or any(len(r) != 4 for r in steps) or not np.isfinite(pair).all() \
                or not pair[1] >= pair[0] or not pair[2] > 0:
            raise PredictionError(f"{source}: pair {pid!r} has a malformed KAP record")
        out.append(([tuple(np.asarray(x, np.float64) for x in r) for r in steps], pair))
    return out


def align(pred: pa.Table, dataset: pa.Table, source: str = "predictions") -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Check ``pred`` against ``dataset`` and align it.

    Returns (the dataset rows that were predicted, in dataset order; readout -> ``(K, 2)`` array
    aligned with those rows' flattened ``trg_kps``). Every readout must cover the same pairs;
    every pair id must exist in the dataset; keypoint counts must match; values must be finite.
    """
    ids = dataset.column("pair_id").to_pylist()
    index = {p: i for i, p in enumerate(ids)}
    readouts = sorted(set(pred.column("readout").to_pylist()))
    if not readouts:
        raise PredictionError(f"{source}: holds no predictions")
    by_readout = {}
    covered = None
    for r in readouts:
        sub = pred.filter(pc.equal(pred.column("readout"), r))
        pids = sub.column("pair_id").to_pylist()
        rows = np.empty(len(pids), dtype=np.int64)
        for j, p in enumerate(pids):
            i = index.get(p)
            if i is None:
                raise PredictionError(f"{source}: pair {p!r} (readout {r!r}) is not in the dataset split")
            rows[j] = i
        if len(np.unique(rows)) != len(rows):
            dup, seen = None, set()
            for p in pids:
                if p in seen:
                    dup = p
                    break
                seen.add(p)
            raise PredictionError(f"{source}: pair {dup!r} appears twice for readout {r!r}")
        order = np.argsort(rows)
        rows_sorted = rows[order]
        if covered is None:
            covered = rows_sorted
        elif not np.array_equal(covered, rows_sorted):
            extra = set(rows_sorted.tolist()) ^ set(covered.tolist())
            raise PredictionError(
                f"{source}: readout {r!r} covers different pairs than {readouts[0]!r} (first: {ids[min(extra)]!r})"
            )
        by_readout[r] = sub.take(pa.array(order))
    subset = dataset.take(pa.array(covered))
    gt_counts = pc.list_value_length(subset.column("trg_kps")).to_numpy(zero_copy_only=False)
    out = {}
    for r, sub in by_readout.items():
        xy, offsets = flat_kps(sub.column("pred_kps"))
        counts = np.diff(offsets)
        bad = np.flatnonzero(counts != gt_counts)
        if bad.size:
            i = bad[0]
            raise PredictionError(
                f"{source}: pair {subset.column('pair_id')[i].as_py()!r} (readout {r!r}) has "
                f"{counts[i]} predicted keypoints, the dataset has {gt_counts[i]}"
            )
        finite = np.isfinite(xy).all(axis=1)
        if not finite.all():
            k = int(np.flatnonzero(~finite)[0])
            i = int(np.searchsorted(offsets, k, side="right") - 1)
            raise PredictionError(
                f"{source}: pair {subset.column('pair_id')[i].as_py()!r} (readout {r!r}) has a non-finite prediction"
            )
        out[r] = xy
    return subset, out
