"""The compact tables a paper prints: per dataset, one row per method (its best readout) at the
dataset's main protocol, ``75.5 ± 0.4`` cells with the best value in bold; and one cross-dataset
table (methods x SPair-71k / PF-Pascal / PF-Willow / AP-10K / CUB / SPair-U at PCK@0.1).

The main protocol of a dataset is the first protocol of its default presets (``benchmarks.protocol``):
SPair-71k, PF-Pascal, PF-Willow: ``sd4match`` (768 x 768 frame, per image); AP-10K, SPair-U:
``geoaware`` (padded frame, strict <, per image); CUB-200-2011: ``distilldift`` (box, per point).
When no row of a dataset has it, the protocol table holding the most rows is used (and named).
"""

from __future__ import annotations

import pandas as pd

from benchmarks.protocol import is_strict

from .render import Cell, mark_best
from .runs import WHOLE

#: row identity in the compact tables (the readout is chosen: each method's best)
IDENT = ["kind", "method", "precision", "tta", "run"]
PROTO = ["frame", "threshold", "aggregate"]
DATASET_ORDER = ["spair-71k", "pf-pascal", "pf-willow", "ap-10k", "cub-200-2011", "spair-u"]


def _protocols(dataset: str):
    try:
        from benchmarks.protocol import protocols_for

        return protocols_for(dataset)
    except (ValueError, KeyError):
        return []


def main_protocol(d: pd.DataFrame, dataset: str) -> tuple[tuple, str, bool]:
    """((frame, threshold, aggregate), preset names, strict) of the dataset's main protocol table."""
    rows = d[d["dataset"] == dataset]
    have = {tuple(k) for k in rows[PROTO].drop_duplicates().itertuples(index=False)}
    for p in _protocols(dataset):
        key = (p.frame, p.threshold, p.aggregate)
        if key in have:
            return key, p.name, bool(p.strict)
    counts = rows.groupby(PROTO, sort=True).size()
    key = tuple(counts.idxmax()) if len(counts) else ("?", "?", "?")
    names = sorted(set(rows[(rows["frame"] == key[0]) & (rows["threshold"] == key[1])]["protocol"].astype(str)))
    return key, ", ".join(names), is_strict(names, dataset)


def rule(strict: bool) -> str:
    return "d < alpha·T" if strict else "d ≤ alpha·T"


def _best_readout(g: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per row identity, the rows of the readout with the highest All at ``alpha`` (ties: name order)."""
    a = g[(g["category"] == WHOLE) & ((g["alpha"] - alpha).abs() < 1e-9)]
    if a.empty:
        a = g[g["category"] == WHOLE]
    best = (a.sort_values(["pck", "readout"], ascending=[False, True], kind="mergesort")
             .drop_duplicates(IDENT)[IDENT + ["readout"]])
    return g.merge(best, on=IDENT + ["readout"])


def _half(r) -> float | None:
    lo, hi = r.get("ci_low"), r.get("ci_high")
    return None if pd.isna(lo) or pd.isna(hi) else (hi - lo) * 50


def compact_table(d: pd.DataFrame, dataset: str, alpha: float = 0.1) -> tuple[pd.DataFrame, str]:
    """(table of display values, caption) for one dataset."""
    key, presets, strict = main_protocol(d, dataset)
    g = d[(d["dataset"] == dataset) & (d["frame"] == key[0]) & (d["threshold"] == key[1]) & (d["aggregate"] == key[2])]
    g = _best_readout(g, alpha)
    alls = g[g["category"] == WHOLE]
    alphas = sorted(set(alls["alpha"]))
    rows = []
    for ident, h in alls.groupby(IDENT, sort=False):
        kind, method, precision, tta, run = ident
        row = {"Method": method + (" [reported]" if kind == "reported" else ""),
               "Run / source": run, "Readout": h["readout"].iloc[0], "TTA": tta, "Precision": precision}
        for a in alphas:
            r = h[(h["alpha"] - a).abs() < 1e-9]
            row[f"PCK@{a:g}"] = Cell(float(r["pck"].iloc[0]) * 100, _half(r.iloc[0])) if len(r) else Cell(None)
        n, t = h["n_pairs"].iloc[0], h["split_pairs"].iloc[0]
        row["Pairs"] = "published" if pd.isna(n) else f"{int(n)}/{'?' if pd.isna(t) else int(t)}"
        rows.append((0 if kind == "measured" else 1, method, row))
    rows.sort(key=lambda x: (x[0], x[1]))
    table = pd.DataFrame([r for _, _, r in rows])
    if not table.empty:
        mark_best(table[[c for c in table.columns if c.startswith("PCK@")]])
    split = ", ".join(sorted(set(g["split"].astype(str)))) or "?"
    cap = (f"{dataset} ({split}): PCK (%), protocol {presets}: frame {key[0]}, threshold {key[1]}, aggregate {key[2]}; "
           f"a keypoint is correct when {rule(strict)}. Each method's best readout by PCK@{alpha:g}; "
           "± is the half-width of the 95% bootstrap interval over pairs; best value in bold; "
           "[reported] rows are published numbers, not measured here.")
    return table, cap


def cross_dataset_table(d: pd.DataFrame, alpha: float = 0.1) -> tuple[pd.DataFrame, str]:
    """Methods x datasets at PCK@``alpha`` (each dataset's main protocol, each method's best readout)."""
    order = {x: i for i, x in enumerate(DATASET_ORDER)}
    meas = d[d["kind"] == "measured"]
    pairs = sorted(set(zip(meas["dataset"], meas["split"])), key=lambda p: (order.get(p[0], len(order)), p[0], p[1] != "test", p[1]))
    datasets = []
    cells: dict[tuple, dict] = {}
    notes = []
    for ds, split in pairs:
        col = ds if split == "test" else f"{ds} ({split})"
        datasets.append(col)
        key, presets, strict = main_protocol(d[d["split"] == split], ds)
        g = d[(d["dataset"] == ds) & (d["split"] == split) & (d["frame"] == key[0]) & (d["threshold"] == key[1])
              & (d["aggregate"] == key[2])]
        g = _best_readout(g, alpha)
        a = g[(g["category"] == WHOLE) & ((g["alpha"] - alpha).abs() < 1e-9)]
        if a.empty:
            continue
        notes.append(f"{col}: {presets} ({key[0]}, {key[1]}, {key[2]}, {rule(strict)})")
        for _, r in a.iterrows():
            ident = (0 if r["kind"] == "measured" else 1, r["method"] + (" [reported]" if r["kind"] == "reported" else ""),
                     r["precision"], r["tta"])
            cells.setdefault(ident, {})[col] = Cell(float(r["pck"]) * 100, _half(r))
    rows = []
    for ident in sorted(cells):
        _, method, precision, tta = ident
        rows.append({"Method": method, "TTA": tta, "Precision": precision,
                     **{ds: cells[ident].get(ds, Cell(None)) for ds in datasets}})
    table = pd.DataFrame(rows)
    if not table.empty:
        mark_best(table[[c for c in datasets if c in table.columns]])
    cap = (f"PCK@{alpha:g} (%) across datasets, each at its main protocol: " + "; ".join(notes) +
           ". Each method's best readout per dataset; ± is the 95% bootstrap half-width; best value in bold.")
    return table, cap
