"""Evaluate predictions under explicit protocols; tidy result rows.

CLI::

    python -m benchmarks.evaluate PREDICTIONS.parquet --dataset D --data-root DIR \
        [--split test] [--protocol P ...] [--out DIR] [--matcher NAME]

writes ``results.csv`` and ``breakdowns.csv`` to ``--out`` (default: ``evaluate/`` beside the
predictions); existing results there are replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .keypoint_results import extra_hits, kap_rows, keypoint_sets_of, per_pair_extra, subset_rows
from .pck import PairArrays, aggregate, hits, per_pair
from .protocol import Protocol, parse_alphas, protocols_for

RESULT_COLUMNS = [
    "matcher", "dataset", "split", "precision", "tta", "protocol", "threshold", "frame", "aggregate", "readout",
    "direction", "category", "alpha", "pck", "ci_low", "ci_high", "n_pairs", "n_kps", "split_pairs", "subset",
    "metric", "keypoints",
]
#: the bootstrap behind ``ci_low`` / ``ci_high``: pairs resampled with replacement, percentile interval
BOOTSTRAP = {"resamples": 1000, "seed": 0, "level": 0.95}
BREAKDOWN_RESULT_COLUMNS = RESULT_COLUMNS[:11] + ["category", "breakdown", "level", "alpha", "pck", "n_pairs", "n_kps",
                                                   "split_pairs", "subset"]
PER_PAIR_COLUMNS = ["pair_id", "category", "readout", "protocol", "threshold", "frame", "alpha", "fraction_correct", "n_kps",
                    "metric", "keypoints"]


def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)`` counts: how often each pair is drawn in each resample (with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float32)


def bootstrap_interval(W: np.ndarray, correct: np.ndarray, counts: np.ndarray, how: str, cat_idx: np.ndarray,
                       level: float) -> np.ndarray:
    """Percentile interval ``(A, 2)`` of the overall PCK under resampled pairs ``W`` (B, P)."""
    frac = correct / counts  # (A, P)
    with np.errstate(invalid="ignore", divide="ignore"):
        if how == "image":
            est = W @ frac.T / W.sum(1, keepdims=True)
        elif how == "point":
            est = (W @ correct.T) / (W @ counts)[:, None]
        else:  # category: mean over the categories drawn of their per-image PCK
            per = []
            for c in range(int(cat_idx.max()) + 1):
                m = cat_idx == c
                per.append((W[:, m] @ frac[:, m].T) / W[:, m].sum(1, keepdims=True))
            est = np.nanmean(np.stack(per), axis=0)
    lo, hi = np.nanpercentile(est, [(1 - level) / 2 * 100, (1 + level) / 2 * 100], axis=0)
    return np.stack([lo, hi], axis=1)


#: the ``category`` of whole-split rows; a dataset category with this very name (AP-10K's
#: cross-family split calls its one category "all") is written as :func:`category_label` says
WHOLE_SPLIT = "all"


def category_label(name: str) -> str:
    """A dataset category as results name it: never equal to the whole-split marker."""
    return f"{name} (category)" if str(name) == WHOLE_SPLIT else str(name)


def _row(meta, proto: Protocol, readout: str, **kw) -> dict:
    return {
        "precision": "no-model", "tta": "none", "split_pairs": None, "subset": "all", "metric": "pck", "keypoints": "all",
        **meta, "protocol": proto.name, "threshold": proto.threshold, "frame": proto.frame,
        "aggregate": proto.aggregate, "readout": readout, "direction": proto.direction, **kw,
    }


def evaluate(
    dataset_rows: pa.Table,
    preds: dict[str, np.ndarray],
    protocols: list[Protocol],
    meta: dict,
    kap: list | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All protocols x readouts x categories x alphas -> (results, breakdowns) tidy frames.

    ``preds[readout]`` is ``(K, 2)`` aligned with the flattened ``trg_kps`` of ``dataset_rows``;
    ``kap``: the predictions' KAP records (:func:`benchmarks.predictions.kap_records`), which add
    ``metric = kap`` rows (readout ``similarity``).
    """
    pairs = PairArrays.from_table(dataset_rows)
    cats, cat_idx = np.unique(pairs.category.astype(str), return_inverse=True)
    cats = np.array([category_label(c) for c in cats], dtype=object)
    n_pairs_cat = np.bincount(cat_idx, minlength=len(cats))
    counts = np.diff(pairs.offsets)
    n_kps_cat = np.bincount(cat_idx, counts, minlength=len(cats)).astype(int)
    all_idx = np.zeros(len(pairs.pair_id), dtype=np.int64)
    W = bootstrap_weights(len(pairs.pair_id), BOOTSTRAP["resamples"], BOOTSTRAP["seed"]) if len(pairs.pair_id) else None
    rows, brows = [], []
    cache: dict[tuple, tuple] = {}
    sets = keypoint_sets_of(dataset_rows, meta.get("dataset", ""))
    for proto in protocols:
        if kap is not None:
            rows += kap_rows(lambda *a, **k: _row(meta, *a, **k), pairs, kap, proto, cat_idx, cats)
        for readout in sorted(preds):
            key = (proto.threshold, proto.frame, proto.alphas, readout)
            if key not in cache:
                hit = hits(pairs, preds[readout], proto)
                cache[key] = (hit, per_pair(hit, pairs.offsets)[0])
            hit, correct = cache[key]
            overall = aggregate(correct, counts, all_idx, 1, proto.aggregate, pairs.category)[:, 0]
            by_cat = aggregate(correct, counts, cat_idx, len(cats),
                               "image" if proto.aggregate == "category" else proto.aggregate)
            ci = (bootstrap_interval(W, correct, counts, proto.aggregate, cat_idx, BOOTSTRAP["level"]) if W is not None
                  else np.full((len(proto.alphas), 2), np.nan))
            for a, alpha in enumerate(proto.alphas):
                rows.append(_row(meta, proto, readout, category="all", alpha=alpha, pck=float(overall[a]),
                                 ci_low=float(ci[a, 0]), ci_high=float(ci[a, 1]),
                                 n_pairs=len(pairs.pair_id), n_kps=int(counts.sum())))
                for c, cat in enumerate(cats):
                    rows.append(_row(meta, proto, readout, category=str(cat), alpha=alpha,
                                     pck=float(by_cat[a, c]), n_pairs=int(n_pairs_cat[c]), n_kps=int(n_kps_cat[c])))
            for metric, keypoints, h in extra_hits(pairs, hit, preds[readout], proto, sets):
                rows += subset_rows(lambda *a, **k: _row(meta, *a, **k),
                                    lambda *a: bootstrap_interval(*a, BOOTSTRAP["level"]),
                                    proto, readout, metric, keypoints, h, pairs, cat_idx, cats, W)
            # breakdowns: SPair-71k difficulty levels (pair-level), and keypoint ids (point-level)
            if proto.aggregate != "category":
                for col, lv in pairs.levels.items():
                    levels = np.unique(lv[lv >= 0])
                    idx = np.searchsorted(levels, np.where(lv >= 0, lv, levels[0] if len(levels) else 0))
                    valid = lv >= 0
                    res = aggregate(correct[:, valid], counts[valid], idx[valid], len(levels), proto.aggregate)
                    for li, level in enumerate(levels):
                        sel = valid & (lv == level)
                        for a, alpha in enumerate(proto.alphas):
                            brows.append(_row(meta, proto, readout, category="all", breakdown=col, level=int(level),
                                              alpha=alpha, pck=float(res[a, li]), n_pairs=int(sel.sum()),
                                              n_kps=int(counts[sel].sum())))
            if proto.aggregate == "point":
                # keypoint ids name a part *within* a category (SPair-71k, PF-Willow): one row per (category, id)
                kp_cat = np.repeat(cat_idx, counts)
                combo = kp_cat.astype(np.int64) * (int(pairs.kps_ids.max(initial=0)) + 1) + pairs.kps_ids
                keys, key_idx = np.unique(combo, return_inverse=True)
                n_key = np.bincount(key_idx, minlength=len(keys))
                width = int(pairs.kps_ids.max(initial=0)) + 1
                for a, alpha in enumerate(proto.alphas):
                    correct_key = np.bincount(key_idx, hit[a].astype(np.int64), minlength=len(keys))
                    for i, key in enumerate(keys):
                        brows.append(_row(meta, proto, readout, category=str(cats[key // width]), breakdown="kps_id",
                                          level=int(key % width), alpha=alpha, pck=float(correct_key[i] / n_key[i]),
                                          n_pairs=int(n_key[i]), n_kps=int(n_key[i])))
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    breakdowns = pd.DataFrame(brows, columns=BREAKDOWN_RESULT_COLUMNS)
    return results, breakdowns


def per_pair_table(dataset_rows: pa.Table, preds: dict[str, np.ndarray], protocols: list[Protocol],
                   dataset: str = "") -> pa.Table:
    """One row per (pair, readout, protocol, alpha, metric, keypoints): the fraction of the pair's
    keypoints (of that subset; pairs without one left out) correct. Protocols that differ only in
    their aggregate share these rows (named by the first of them)."""
    pairs = PairArrays.from_table(dataset_rows)
    counts = np.diff(pairs.offsets)
    sets = keypoint_sets_of(dataset_rows, dataset)
    cols: dict[str, list] = {c: [] for c in PER_PAIR_COLUMNS}
    seen = set()
    for proto in protocols:
        for readout in sorted(preds):
            key = (proto.threshold, proto.frame, proto.alphas, readout)
            if key in seen:
                continue
            seen.add(key)
            hit = hits(pairs, preds[readout], proto)
            variants = [("pck", "all", hit, None)] + per_pair_extra(pairs, hit, preds[readout], proto, sets)
            for metric, keypoints, h, keep in variants:
                correct = per_pair(h, pairs.offsets)[0]
                n_here = counts if keep is None else np.add.reduceat(keep.astype(np.int64), pairs.offsets[:-1])
                has = n_here > 0
                for a, alpha in enumerate(proto.alphas):
                    n = int(has.sum())
                    cols["pair_id"] += list(pairs.pair_id[has])
                    cols["category"] += [category_label(c) for c in pairs.category[has]]
                    cols["readout"] += [readout] * n
                    cols["protocol"] += [proto.name] * n
                    cols["threshold"] += [proto.threshold] * n
                    cols["frame"] += [proto.frame] * n
                    cols["alpha"] += [float(alpha)] * n
                    cols["fraction_correct"] += (correct[a][has] / n_here[has]).tolist()
                    cols["n_kps"] += n_here[has].tolist()
                    cols["metric"] += [metric] * n
                    cols["keypoints"] += [keypoints] * n
    return pa.table({k: pa.array(v) for k, v in cols.items()})


def to_csv_text(df: pd.DataFrame) -> str:
    """Deterministic CSV text (fixed float formatting, '\\n' line ends)."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


def evaluate_file(predictions: Path, dataset: str, data_root: Path, split: str, protocol_names: list[str] | None,
                  matcher: str, layout: str | None = None, precision: str = "unknown",
                  alphas: tuple[float, ...] | None = None, tta: str = "unknown",
                  per_pair_out: list | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, breakdowns) of a predictions file; ``per_pair_out`` (a list) receives the per-pair
    table and the protocols used."""
    import loaders

    from . import predictions as P

    table = loaders.load(dataset, data_root, split, layout=layout)
    pred = P.read(predictions)
    rows, xy = P.align(pred, table, source=str(predictions))
    kap = P.kap_records(pred, rows, str(predictions))
    protos = protocols_for(dataset, protocol_names, alphas)
    subset = "all" if rows.num_rows == table.num_rows else f"{rows.num_rows} predicted"
    if per_pair_out is not None:
        per_pair_out += [per_pair_table(rows, xy, protos, dataset), protos, subset, table.num_rows, rows.num_rows]
    return evaluate(rows, xy, protos, {"matcher": matcher, "dataset": dataset, "split": split, "precision": precision,
                                       "tta": tta, "split_pairs": table.num_rows, "subset": subset}, kap=kap)


def main(argv: list[str] | None = None) -> int:
    from .protocol import PRESETS

    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description="Recompute PCK from a predictions file.")
    p.add_argument("predictions", type=Path)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", type=Path, default=None, help="default: the data home's folder of --dataset")
    p.add_argument("--split", default="test")
    p.add_argument("--layout", default=None, help="SPair-71k: large (default) or small")
    p.add_argument("--protocol", action="append", help=f"preset name, repeatable ({', '.join(PRESETS)}; default: the dataset's papers' presets and original)")
    p.add_argument("--alphas", default=None, help="PCK thresholds, e.g. 0.01,0.05,0.1,0.15 (default 0.05,0.1,0.15)")
    p.add_argument("--matcher", default=None, help="matcher name for the rows (default: from run.json beside the file)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: an 'evaluate' folder beside the predictions)")
    p.add_argument("--overwrite", action="store_true", help="replace results.csv / breakdowns.csv already in --out")
    args = p.parse_args(argv)
    out = args.out or args.predictions.parent / "evaluate"
    from .outlock import LockedError, lock, unlock

    created = not out.exists()
    try:  # one writer per folder, --overwrite included (a run writing there holds the same lock)
        if out.exists() and not out.is_dir():
            raise LockedError(f"{out}: --out is a file, not a folder")
        lock(out)
    except (LockedError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = 2
    try:
        code = _evaluate_main(args, out, argv)
        return code
    finally:
        unlock()
        if code != 0 and created:  # a refused evaluation leaves no folder behind
            (out / ".corrbench.lock").unlink(missing_ok=True)
            try:
                out.rmdir()
            except OSError:
                pass


def _evaluate_main(args, out: Path, argv) -> int:
    import json

    from loaders import DatasetError
    from loaders.atomic import write_text

    from .predictions import PredictionError

    if not args.overwrite and any((out / f).exists() for f in ("results.csv", "breakdowns.csv", "per_pair.parquet")):
        print(f"error: {out} already holds results.csv; pass --overwrite to replace them or choose another --out "
              "(a run's own results are never replaced silently)", file=sys.stderr)
        return 2
    matcher = args.matcher
    precision = tta = "unknown"
    run_json = args.predictions.parent / "run.json"
    record: dict = {}
    if run_json.exists():  # the predictions' run: a damaged record is refused, never read as 'unknown'
        try:
            record = json.loads(run_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            print(f"error: {run_json}: malformed JSON ({getattr(exc, 'msg', type(exc).__name__)}); repair or remove it "
                  "(the predictions' provenance)", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: {run_json}: unreadable ({exc.strerror or exc})", file=sys.stderr)
            return 2
        if not isinstance(record, dict) or not isinstance(record.get("matcher", ""), str):
            print(f"error: {run_json}: expected a JSON object with the run's 'matcher', got "
                  f"{type(record).__name__ if not isinstance(record, dict) else 'a non-text matcher'}", file=sys.stderr)
            return 2
        matcher = matcher or record.get("matcher")
        precision = str(record.get("precision") or precision)
        tta = str(record.get("tta") or "none")
    else:
        print(f"note: no run.json beside {args.predictions}: provenance missing (recorded as such); "
              "the matcher is " + (repr(matcher) if matcher else "'unknown' (name it with --matcher)"))
    try:
        import loaders

        loaders.api.check_names(args.dataset, args.split, args.layout)
        args.data_root = loaders.api.ensure_root(args.dataset, args.data_root)
        extra: list = []
        results, breakdowns = evaluate_file(args.predictions, args.dataset, args.data_root, args.split,
                                            args.protocol, matcher or "unknown", args.layout, precision,
                                            parse_alphas(args.alphas) if args.alphas is not None else None, tta, extra)
        per_pair, protos, subset, split_pairs, n_pairs = extra
        from loaders.atomic import write_parquet

        write_parquet(per_pair, out / "per_pair.parquet")
        write_text(out / "results.csv", to_csv_text(results))
        write_text(out / "breakdowns.csv", to_csv_text(breakdowns))
        # what made these numbers: the predictions' run (its provenance and settings) and the re-scoring
        rescored = {k: record[k] for k in ("matcher", "preset", "config", "config_hash", "provenance", "readouts",
                                           "matcher_info", "precision", "tta") if k in record}
        rescored.update({"matcher": matcher or "unknown", "dataset": args.dataset, "split": args.split,
                         "layout": args.layout, "protocols": [p.to_dict() for p in protos], "subset": subset,
                         "split_pairs": split_pairs, "n_pairs": n_pairs, "complete": subset == "all",
                         "evaluated_from": str(args.predictions.resolve()),
                         "provenance_missing": not record,
                         "command": " ".join(["python -m benchmarks.evaluate", *(argv or sys.argv[1:])])})
        write_text(out / "run.json", json.dumps(rescored, indent=2, sort_keys=True, default=str) + "\n")
    except (DatasetError, PredictionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {getattr(exc, 'filename', None) or out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    from .console import run_summary

    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {
        "label": f"{matcher or 'unknown'} (provenance missing)" if not record else str(matcher), "run_id": "?"}
    print(run_summary(results, args.dataset, prov, subset, split_pairs))
    print(f"wrote {out / 'results.csv'} ({len(results)} rows), {out / 'breakdowns.csv'} ({len(breakdowns)} rows), "
          f"{out / 'per_pair.parquet'} and {out / 'run.json'}")
    return 0


def summary(results: pd.DataFrame) -> str:
    """A short text table: PCK (percent) of category 'all' per protocol/aggregate/readout and alpha."""
    allr = results[results["category"] == "all"].copy()
    allr["pck"] = (allr["pck"] * 100).round(1)
    pivot = allr.pivot_table(index=["protocol", "frame", "threshold", "aggregate", "readout"],
                             columns="alpha", values="pck", sort=True)
    pivot.columns = [f"PCK@{a:g}" for a in pivot.columns]
    return pivot.to_string()


if __name__ == "__main__":
    sys.exit(main())
