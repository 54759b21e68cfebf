"""Paired comparison of two runs on the same pairs: ``python -m leaderboard compare RUN_A RUN_B``.

Reads each run's ``per_pair.parquet`` (fraction of keypoints correct per pair, readout, protocol and
alpha), keeps the pairs both runs evaluated, and reports per category and overall the per-image PCK
of each run, the difference B - A and its 95% interval from a paired bootstrap over pairs (the same
resampled pairs for both runs; 1,000 resamples, seed 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .core import LeaderboardError


def _per_pair(run: Path) -> pd.DataFrame:
    path = Path(run) / "per_pair.parquet"
    if not path.is_file():
        raise LeaderboardError(f"{path}: missing (runs written by benchmarks.run since per-pair results exist have it)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise LeaderboardError(f"{path}: unreadable ({type(exc).__name__})") from None


def _pick(df: pd.DataFrame, col: str, value, where: str):
    values = sorted(df[col].unique().tolist())
    if len(values) == 1 and value not in values:  # a run with one readout (the identity's "none") uses it
        return values[0]
    if value is None:
        if len(values) != 1:
            raise LeaderboardError(f"{where} holds several {col}s ({', '.join(map(str, values))}); choose one with --{col}")
        return values[0]
    if value not in values:
        raise LeaderboardError(f"{where}: no {col} {value!r}; present: {', '.join(map(str, values))}")
    return value


def compare(run_a: Path, run_b: Path, protocol: str = "sd4match", readout: str | None = None, alpha: float = 0.1,
            resamples: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """(table with columns category, n_pairs, pck_a, pck_b, diff, ci_low, ci_high in percent; a header line)."""
    a, b = _per_pair(run_a), _per_pair(run_b)
    sel = []
    for df, run in ((a, run_a), (b, run_b)):
        d = df[(df["protocol"] == protocol) & np.isclose(df["alpha"], alpha)]
        if d.empty:
            raise LeaderboardError(f"{run}: no per-pair results for protocol {protocol!r} at alpha {alpha:g}")
        r = _pick(d, "readout", readout, str(run))
        sel.append(d[d["readout"] == r][["pair_id", "category", "fraction_correct"]])
    both = sel[0].merge(sel[1], on=["pair_id", "category"], suffixes=("_a", "_b"))
    if both.empty:
        raise LeaderboardError(f"{run_a} and {run_b} share no evaluated pairs")
    fa, fb = both["fraction_correct_a"].to_numpy(), both["fraction_correct_b"].to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    for cat in ["all", *sorted(both["category"].unique())]:
        m = np.ones(len(both), bool) if cat == "all" else (both["category"] == cat).to_numpy()
        da, db = fa[m], fb[m]
        idx = rng.integers(0, len(da), size=(resamples, len(da)))
        diffs = (db[idx] - da[idx]).mean(1)
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        rows.append({"category": cat, "n_pairs": int(m.sum()), "pck_a": 100 * da.mean(), "pck_b": 100 * db.mean(),
                     "diff": 100 * (db.mean() - da.mean()), "ci_low": 100 * lo, "ci_high": 100 * hi})
    head = (f"B - A, per-image PCK@{alpha:g} (%), protocol {protocol}, {len(both)} common pairs "
            f"(A: {len(sel[0])}, B: {len(sel[1])}); 95% paired bootstrap over pairs ({resamples} resamples, seed {seed})")
    return pd.DataFrame(rows), head
