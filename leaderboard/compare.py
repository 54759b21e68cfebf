"""Paired comparison of two runs on the same pairs: ``python -m leaderboard compare RUN_A RUN_B``.

Reads each run's ``per_pair.parquet`` (fraction of keypoints correct per pair, readout, protocol and
alpha; written by ``benchmarks.run`` and ``benchmarks.evaluate``), validates it, keeps the pairs
both runs evaluated, and reports per category and overall the per-image PCK of each run, the
difference B - A and its 95% interval from a paired bootstrap over pairs (the same resampled pairs
for both runs; 1,000 resamples, seed 0).

Without ``--readout`` each run is read with its matcher's own readout (the first of the matcher's
default readouts that the run computed: DIFT's upsampled argmax, SD4Match's kernel soft-argmax,
GeoAware's window soft-argmax ...), and the header says which; without ``--protocol``, the main
protocol of the runs' dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .runs import WHOLE, LeaderboardError, clean_text, own_readout, read_record

NEED = {"pair_id": "string", "category": "string", "readout": "string", "protocol": "string", "alpha": "number",
        "fraction_correct": "number"}


def _per_pair(run: Path) -> pd.DataFrame:
    """The run's per-pair table, validated: the columns and their types, fractions in [0, 1], alphas
    in (0, 1], one row per (pair, readout, protocol, alpha)."""
    path = Path(run) / "per_pair.parquet"
    if not path.is_file():
        raise LeaderboardError(f"{path}: missing (runs written by benchmarks.run or benchmarks.evaluate have it)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise LeaderboardError(f"{path}: unreadable ({type(exc).__name__})") from None
    missing = sorted(set(NEED) - set(df.columns))
    if missing:
        raise LeaderboardError(f"{path}: missing column(s) {missing}")
    for col, value in (("metric", "pck"), ("keypoints", "all")):  # plain PCK on all keypoints is compared
        if col in df.columns:
            df = df[df[col].fillna(value).astype(str) == value].reset_index(drop=True)
    for col, kind in NEED.items():
        if kind == "number":
            values = pd.to_numeric(df[col], errors="coerce") if df[col].dtype == object else df[col]
            if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                raise LeaderboardError(f"{path}: column {col!r} must hold numbers")
            df[col] = values.astype(float)
        else:
            df[col] = df[col].map(lambda v: clean_text(v) if isinstance(v, str) else v)
            if not df[col].map(lambda v: isinstance(v, str)).all():
                raise LeaderboardError(f"{path}: column {col!r} must hold text")
    bad = ~np.isfinite(df["fraction_correct"]) | (df["fraction_correct"] < 0) | (df["fraction_correct"] > 1)
    if bad.any():
        raise LeaderboardError(f"{path}: fraction_correct must be in [0, 1], found {df['fraction_correct'][bad].iloc[0]!r}")
    bad = ~np.isfinite(df["alpha"]) | (df["alpha"] <= 0) | (df["alpha"] > 1)
    if bad.any():
        raise LeaderboardError(f"{path}: alpha must be in (0, 1], found {df['alpha'][bad].iloc[0]!r}")
    dup = df.duplicated(["pair_id", "readout", "protocol", "alpha"])
    if dup.any():
        r = df[dup].iloc[0]
        raise LeaderboardError(f"{path}: pair {r['pair_id']!r} appears twice for readout {r['readout']!r}, protocol "
                               f"{r['protocol']!r}, alpha {r['alpha']:g} (one row per pair is expected)")
    # a dataset category named like the whole split (older files) is told apart from it
    df["category"] = [f"{c} (category)" if c == WHOLE else c for c in df["category"]]
    return df


def _name(run: Path, record: dict) -> str:
    """The run's label and folder; a folder re-scored by ``benchmarks.evaluate`` is named by the label of
    the run whose predictions it re-scored, and says so."""
    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    label = prov.get("label") if isinstance(prov.get("label"), str) else record.get("matcher", "?")
    if record.get("evaluated_from"):
        src = Path(str(record["evaluated_from"])).parent.name
        return f"{clean_text(label)} [{clean_text(src)}, re-scored in {Path(run).name}]"
    return f"{clean_text(label)} [{Path(run).name}]"


def _main_protocol(run: Path, record: dict, df: pd.DataFrame) -> str:
    present = sorted(set(df["protocol"]))
    try:
        from benchmarks.protocol import default_presets

        for name in default_presets(str(record.get("dataset", ""))):
            if name in present:
                return name
    except (ValueError, KeyError):
        pass
    if len(present) == 1:
        return present[0]
    raise LeaderboardError(f"{run} holds several protocols ({', '.join(present)}); choose one with --protocol")


def compare(run_a: Path, run_b: Path, protocol: str | None = None, readout: str | None = None, alpha: float = 0.1,
            resamples: int = 1000, seed: int = 0, shared_pairs: bool = False) -> tuple[pd.DataFrame, str]:
    """(table with columns category, n_pairs, pck_a, pck_b, diff, ci_low, ci_high in percent; a header).

    Two runs that evaluated different pair sets are refused (with how many pairs they share) unless
    ``shared_pairs``: then only the shared pairs are compared, and the header says so."""
    a, b = _per_pair(run_a), _per_pair(run_b)
    records = {run_a: read_record(run_a), run_b: read_record(run_b)}
    protocol = protocol or _main_protocol(run_a, records[run_a], a)
    sel, used = [], []
    for df, run in ((a, run_a), (b, run_b)):
        d = df[(df["protocol"] == protocol) & np.isclose(df["alpha"], alpha)]
        if d.empty:
            have = sorted(set(df["protocol"]))
            hint = (f"; re-score it with python -m benchmarks.evaluate {Path(run) / 'predictions.parquet'} --dataset "
                    f"{records[run].get('dataset', 'D')} --protocol {protocol}") if protocol not in have else ""
            raise LeaderboardError(f"{run}: no per-pair results for protocol {protocol!r} at alpha {alpha:g} "
                                   f"(it has {', '.join(have)}){hint}")
        present = sorted(set(d["readout"]))
        if readout is not None and readout in present:
            r = readout
        elif readout is not None and len(present) == 1:  # a run with one readout (the identity's "none") uses it
            r = present[0]
        elif readout is not None:
            raise LeaderboardError(f"{run}: no readout {readout!r}; present: {', '.join(present)}")
        else:
            r = own_readout(records[run], present) or None
            if r is None:
                raise LeaderboardError(f"{run} holds several readouts ({', '.join(present)}) and no record of its "
                                       "matcher's own; choose one with --readout")
        used.append(r)
        sel.append(d[d["readout"] == r][["pair_id", "category", "fraction_correct"]])
    both = sel[0].merge(sel[1], on=["pair_id", "category"], suffixes=("_a", "_b"))
    if both.empty:
        raise LeaderboardError(f"{run_a} and {run_b} share no evaluated pairs")
    same = len(both) == len(sel[0]) == len(sel[1])
    if not same and not shared_pairs:
        raise LeaderboardError(f"{run_a} and {run_b} evaluated different pairs (A: {len(sel[0])}, B: {len(sel[1])}, "
                               f"shared: {len(both)}); pass --shared-pairs to compare them on the {len(both)} shared pairs")
    fa, fb = both["fraction_correct_a"].to_numpy(), both["fraction_correct_b"].to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    for cat in [WHOLE, *sorted(both["category"].unique())]:
        m = np.ones(len(both), bool) if cat == WHOLE else (both["category"] == cat).to_numpy()
        da, db = fa[m], fb[m]
        idx = rng.integers(0, len(da), size=(resamples, len(da)))
        diffs = (db[idx] - da[idx]).mean(1)
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        rows.append({"category": cat, "n_pairs": int(m.sum()), "pck_a": 100 * da.mean(), "pck_b": 100 * db.mean(),
                     "diff": 100 * (db.mean() - da.mean()), "ci_low": 100 * lo, "ci_high": 100 * hi})
    how = "" if readout else " (each run's own readout)"
    head = (f"A: {_name(run_a, records[run_a])}, readout {used[0]}\nB: {_name(run_b, records[run_b])}, readout {used[1]}{how}\n"
            f"B - A, per-image PCK@{alpha:g} (%), protocol {protocol}, "
            + (f"the same {len(both)} pairs in both" if same else
               f"{len(both)} shared pairs only (A: {len(sel[0])}, B: {len(sel[1])})")
            + f"; 95% paired bootstrap over pairs ({resamples} resamples, seed {seed})")
    return pd.DataFrame(rows), head
