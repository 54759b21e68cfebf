"""The compact tables a paper prints: per dataset, one row per method (its own readout by default:
never a readout chosen on the test split unless asked, and then marked) at the dataset's main
protocol, ``75.5 ± 0.4`` cells sorted by score with a unique best value in bold; and one cross-dataset
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

#: row identity in the compact tables (the readout is chosen: see select_readout)
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


#: ``leaderboard build --readout``: each method's own readout (default), the best on the test split, or a name
READOUT_MODES = ("own", "best")
BEST_NOTE = "readout selected on the test split"


def check_readout_mode(mode: str) -> str:
    from .runs import LeaderboardError, clean_text

    mode = clean_text(mode or "")
    if not mode or len(mode) > 64:
        raise LeaderboardError(f"--readout takes own, best or a readout name, got {mode[:64]!r}")
    return mode


def select_readout(g: pd.DataFrame, alpha: float, mode: str = "own", ident: list[str] | None = None) -> pd.DataFrame:
    """Per row identity, the rows of one readout.

    ``own``: the method's own readout (its matcher's declared default, recorded in ``run.json``; a
    reported row its only one); ``best``: the readout with the highest All at ``alpha`` (ties: name
    order) -- a choice made on the test split, marked as such by the callers; any other value: that
    readout (a run with a single readout, such as the identity's ``none``, keeps it)."""
    ident = ident or IDENT
    if g.empty:
        return g
    if mode == "best":
        a = g[(g["category"] == WHOLE) & ((g["alpha"] - alpha).abs() < 1e-9)]
        if a.empty:
            a = g[g["category"] == WHOLE]
        best = (a.sort_values(["pck", "readout"], ascending=[False, True], kind="mergesort")
                 .drop_duplicates(ident)[ident + ["readout"]])
        return g.merge(best, on=ident + ["readout"])
    keep = []
    for key, h in g.groupby(ident, sort=False, dropna=False):
        present = sorted(set(h["readout"].astype(str)))
        own = str(h["own_readout"].iloc[0]) if "own_readout" in h.columns and pd.notna(h["own_readout"].iloc[0]) else ""
        want = own if mode == "own" else mode
        if want in present:
            r = want
        elif len(present) == 1 and (mode != "own" or not own or h["kind"].iloc[0] == "reported"):
            r = present[0]
        elif mode == "own":  # no record of the matcher's own readout: the first by name, never the best
            r = present[0]
        else:
            continue  # this run did not compute the named readout
        keep.append((*(key if isinstance(key, tuple) else (key,)), r))
    k = pd.DataFrame(keep, columns=ident + ["readout"])
    return g.merge(k, on=ident + ["readout"])


def _half(r) -> float | None:
    lo, hi = r.get("ci_low"), r.get("ci_high")
    if r.get("kind") == "measured" and pd.notna(r.get("n_pairs")) and float(r.get("n_pairs")) < 2:
        return float("nan")  # an interval over fewer than 2 pairs is undefined: printed as '–'
    return None if pd.isna(lo) or pd.isna(hi) else (hi - lo) * 50


def _pairs_text(n, t) -> str:
    return "published" if pd.isna(n) else f"{int(n)}/{'?' if pd.isna(t) else int(t)}"


def _readout_words(mode: str) -> str:
    if mode == "own":
        return "each method's own readout (its declared default; the others are in the full tables)"
    if mode == "best":
        return f"each method's best readout by PCK, {BEST_NOTE} (marked *)"
    return f"readout {mode}"


def _names(rows: list[dict]) -> None:
    """Two rows with the same method name are told apart by their run id."""
    names = [r["Method"] for r in rows]
    for r in rows:
        if names.count(r["Method"]) > 1 and r.get("_run"):
            r["Method"] = f"{r['Method']} [{r['_run']}]"


def _drop_constant(table: pd.DataFrame, cols: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Columns holding one value on every row (with more than one row, or always for TTA/Precision
    defaults) are dropped and stated in the caption instead."""
    said = []
    for c in cols:
        if c in table.columns and len(table) and table[c].astype(str).nunique() == 1:
            said.append(f"{c.lower()} {table[c].iloc[0]}")
            table = table.drop(columns=c)
    return table, said


def compact_table(d: pd.DataFrame, dataset: str, alpha: float = 0.1, readout: str = "own",
                  ranked: bool = True) -> tuple[pd.DataFrame, str]:
    """(table of display values, caption) for one dataset: one row per method at its readout
    (:func:`select_readout`), sorted by PCK@``alpha``; constant columns are said in the caption;
    the best value is bold only when it is unique, its interval defined and the rows ``ranked``
    (they cover one pair set)."""
    key, presets, strict = main_protocol(d, dataset)
    g = d[(d["dataset"] == dataset) & (d["frame"] == key[0]) & (d["threshold"] == key[1]) & (d["aggregate"] == key[2])]
    g = select_readout(g, alpha, readout)
    alls = g[g["category"] == WHOLE]
    alphas = sorted(set(alls["alpha"]))
    rows = []
    for ident, h in alls.groupby(IDENT, sort=False):
        kind, method, precision, tta, run = ident
        ro = str(h["readout"].iloc[0]) + (" *" if readout == "best" and kind == "measured" else "")
        row = {"Method": method + (" [reported]" if kind == "reported" else ""), "_run": run if kind == "measured" else "",
               "Readout": ro, "TTA": tta, "Precision": precision,
               "Status": str(h["status"].iloc[0]) if "status" in h.columns and str(h["status"].iloc[0]) else kind}
        for a in alphas:
            r = h[(h["alpha"] - a).abs() < 1e-9]
            row[f"PCK@{a:g}"] = Cell(float(r["pck"].iloc[0]) * 100, _half(r.iloc[0])) if len(r) else Cell(None)
        at = h[(h["alpha"] - alpha).abs() < 1e-9]
        fine = [] if any(abs(x - 0.01) < 1e-9 for x in alphas) else [("pck_001", "PCK@0.01")]
        for col, name in (*fine, ("pck_dagger", f"PCK-dagger@{alpha:g}"), ("pck_geo", f"Geo-aware@{alpha:g}"),
                          ("kap", f"KAP@{alpha:g}")):
            v = at[col].iloc[0] if col in at.columns and len(at) else None
            row[name] = Cell(float(v) * 100) if v is not None and pd.notna(v) else Cell(None)
        row["Pairs"] = _pairs_text(h["n_pairs"].iloc[0], h["split_pairs"].iloc[0])
        rows.append(row)
    _names(rows)
    main = f"PCK@{alpha:g}"
    score = lambda r: -r[main].value if main in r and r[main].value is not None else float("inf")  # noqa: E731
    rows.sort(key=lambda r: (score(r), r["Method"]))
    table = pd.DataFrame(rows).drop(columns="_run", errors="ignore")
    has_fine = any(abs(x - 0.01) < 1e-9 for x in alphas)
    extra = [c for c in ([] if has_fine else ["PCK@0.01"]) + [f"PCK-dagger@{alpha:g}", f"Geo-aware@{alpha:g}",
                                                             f"KAP@{alpha:g}"] if c in table.columns]
    empty = [c for c in extra if all(cell.value is None for cell in table[c])]
    table = table.drop(columns=empty)
    beside = [c for c in extra if c not in empty]
    fine_from = sorted({v for v in alls["protocol_001"].dropna().astype(str) if v}) if "protocol_001" in alls.columns else []
    table, said = _drop_constant(table, ["Readout", "TTA", "Precision", "Pairs", "Status"])
    if not table.empty and ranked:
        mark_best(table[[c for c in table.columns if c.startswith("PCK@")]])
    split = ", ".join(sorted(set(g["split"].astype(str)))) or "?"
    cap = (f"{dataset} ({split}): PCK (%), protocol {presets}: frame {key[0]}, threshold {key[1]}, aggregate {key[2]}; "
           f"a keypoint is correct when {rule(strict)}. {_readout_words(readout).capitalize()}"
           + (f"; all rows: {', '.join(said)}" if said else "") + "; sorted by "
           f"{main}; ± is the half-width of the 95% bootstrap interval over pairs (– when undefined); "
           + ("best value in bold when unique" if ranked else "rows cover different pair sets: not ranked, no bold")
           + (f"; PCK@0.01 beside them: protocol {', '.join(fine_from)}, same readout" if
              "PCK@0.01" in beside else "")
           + ("; PCK-dagger: correct and nearest to its own ground-truth keypoint (JamaisVu)" if
              f"PCK-dagger@{alpha:g}" in beside else "")
           + ("; Geo-aware: PCK on the geometry-aware keypoints, GeoAware-SC's groups by keypoint id (the "
              "release's variant is in results.csv)" if f"Geo-aware@{alpha:g}" in beside else "")
           + ("; KAP: keypoint average precision as defined (kap: a keypoint hidden in the target is a negative "
              "only; JamaisVu's release also counts it as a positive), on the matcher's similarity maps, same "
              "threshold and aggregate" if f"KAP@{alpha:g}" in beside else "")
           + "; status: verified = re-scored here from the run's predictions and this dataset copy, unverified = "
           "numbers as their run claims, reported = a paper's number, not measured here.")
    return table, cap


def cross_dataset_table(d: pd.DataFrame, alpha: float = 0.1, readout: str = "own") -> tuple[pd.DataFrame, str]:
    """Methods x datasets at PCK@``alpha`` (each dataset's main protocol, each method's readout as in
    :func:`select_readout`)."""
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
        g = select_readout(g, alpha, readout)
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
           f". {_readout_words(readout).capitalize()}; ± is the 95% bootstrap half-width; best value in bold when unique.")
    return table, cap
