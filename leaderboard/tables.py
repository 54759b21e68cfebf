"""The full leaderboards: every protocol table and every readout.

Per dataset: one table per protocol (frame, threshold, aggregate), its protocol stated once in the
caption; rows = methods x readouts, columns = All (with the 95% bootstrap half-width) and every
category at one alpha, in percent. Presets that compute the same numbers (``dift`` and
``original`` with the same aggregate) share one table, named after both. Then one summary table:
All at every alpha, one row per method, readout and protocol. Published numbers sit beside
measured ones, marked ``reported``; partial runs carry their mark in the method's name.
"""

from __future__ import annotations

import io

import pandas as pd

from benchmarks.protocol import is_strict

from . import render as R
from .runs import WHOLE

ROW = ["kind", "method", "readout", "precision", "tta", "run"]
PROTO = ["frame", "threshold", "aggregate"]


def protocol_groups(d: pd.DataFrame) -> list[tuple[tuple, str]]:
    """(frame, threshold, aggregate) of each table and the preset names that give it, sorted."""
    return [(key, ", ".join(sorted(set(g["protocol"].astype(str))))) for key, g in d.groupby(PROTO, sort=True)]


def _dedupe(g: pd.DataFrame) -> pd.DataFrame:
    """One copy of each row of numbers: presets with the same frame/threshold/aggregate agree."""
    first = sorted(set(g["protocol"].astype(str)))
    keep = []
    for _, rows in g.groupby(ROW, sort=True):
        presets = sorted(set(rows["protocol"].astype(str)))
        keep.append(rows[rows["protocol"] == next(p for p in first if p in presets)])
    return pd.concat(keep) if keep else g


def protocol_table(d: pd.DataFrame, key: tuple, alpha: float) -> pd.DataFrame:
    """Rows = methods x readouts; columns All, categories at ``alpha`` (percent), ``All +-``, pairs, note."""
    g = d[(d["frame"] == key[0]) & (d["threshold"] == key[1]) & (d["aggregate"] == key[2])]
    g = _dedupe(g[(g["alpha"] - alpha).abs() < 1e-9])
    if g.empty:
        return pd.DataFrame()
    cats = sorted(set(g["category"]) - {WHOLE})
    table = g.pivot_table(index=ROW, columns="category", values="pck", aggfunc="first", sort=True) * 100
    table = table.reindex(columns=[WHOLE, *cats]).rename(columns={WHOLE: "All"}).round(1)
    alls = g[g["category"] == WHOLE].set_index(ROW)
    table["All +-"] = ((alls["ci_high"] - alls["ci_low"]) * 50).round(1).reindex(table.index)
    table["pairs"] = [("published" if pd.isna(n) else f"{int(n)}/{'?' if pd.isna(t) else int(t)}")
                      for n, t in zip(alls["n_pairs"].reindex(table.index), alls["split_pairs"].reindex(table.index))]
    table["note"] = alls["note"].reindex(table.index).fillna("")
    table = table.reset_index()
    table["kind"] = pd.Categorical(table["kind"], ["measured", "reported"], ordered=True)
    return table.sort_values(ROW, kind="mergesort").reset_index(drop=True).astype({"kind": str})


def summary_table(d: pd.DataFrame) -> pd.DataFrame:
    """All at every alpha: one row per (method, readout, protocol table)."""
    a = d[d["category"] == WHOLE].copy()
    if a.empty:
        return pd.DataFrame()
    a["protocol table"] = [f"{f} / {t} / {g}" for f, t, g in zip(a["frame"], a["threshold"], a["aggregate"])]
    a["alpha"] = [f"PCK@{x:g}" for x in a["alpha"]]
    keys = ROW + ["protocol table"]
    t = a.pivot_table(index=keys, columns="alpha", values="pck", aggfunc="first", sort=True) * 100
    t = t.round(1).reset_index()
    order = sorted([c for c in t.columns if str(c).startswith("PCK@")], key=lambda c: float(c[4:]))
    t["kind"] = pd.Categorical(t["kind"], ["measured", "reported"], ordered=True)
    return t[keys + order].sort_values(["kind", "method", "readout", "protocol table"], kind="mergesort").astype(
        {"kind": str}).reset_index(drop=True)


def caption(dataset: str, key: tuple, presets: str, alpha: float) -> str:
    frame, threshold, aggregate = key
    strict = is_strict(presets.split(", "), dataset)
    return (f"{dataset}: PCK@{alpha:g} (%). Protocol (presets {presets}): frame {frame}, threshold {threshold}, "
            f"aggregate {aggregate}; correct when {'d < alpha·T' if strict else 'd ≤ alpha·T'}. "
            "All ± = half-width of the 95% bootstrap interval over pairs; best value in bold.")


def tables(d: pd.DataFrame, dataset: str, alpha: float) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for key, presets in protocol_groups(d):
        t = protocol_table(d, key, alpha)
        if not t.empty:
            out.append((caption(dataset, key, presets, alpha), t))
    return out


def _cells(t: pd.DataFrame) -> pd.DataFrame:
    """A protocol or summary table with its numbers as :class:`render.Cell` (All with its ± half-width)."""
    t = t.copy()
    num = [c for c in t.columns if c not in ROW + ["All +-", "pairs", "note", "protocol table"]]
    for c in num:
        half = t["All +-"] if c == "All" and "All +-" in t.columns else [None] * len(t)
        t[c] = [R.Cell(None if pd.isna(v) else float(v), None if h is None or pd.isna(h) else float(h))
                for v, h in zip(t[c], half)]
    t = t.drop(columns=[c for c in ("All +-",) if c in t.columns])
    R.mark_best(t[num])
    t["method"] = [m + (" [reported]" if k == "reported" else "") for m, k in zip(t["method"], t["kind"])]
    return t.drop(columns=["kind"])


def to_markdown(dataset: str, parts: list[tuple[str, pd.DataFrame]], summary: pd.DataFrame) -> str:
    lines = [f"# Leaderboard: {dataset} (full tables)", "",
             "PCK in percent. `[reported]` rows are published numbers with their source (note), never measured "
             "here; a method's name says what made it (settings changed from its defaults, random weights, partial "
             "coverage); `run` is the short run id.", ""]
    for cap, t in [*parts, (f"{dataset}: summary, category All at every alpha (%)", summary)]:
        if not t.empty:
            lines.append(R.to_markdown(_cells(t), cap))
    return "\n".join(lines)


def to_csv(parts: list[tuple[str, pd.DataFrame]]) -> str:
    frames = []
    for cap, t in parts:
        t = t.copy()
        t.insert(0, "table", cap)
        frames.append(t)
    buf = io.StringIO()
    if frames:
        pd.concat(frames, ignore_index=True).to_csv(buf, index=False, float_format="%.1f", lineterminator="\n")
    return buf.getvalue()


def to_latex(dataset: str, parts: list[tuple[str, pd.DataFrame]], summary: pd.DataFrame) -> str:
    """Tables for a paper: ``\\usepackage{booktabs,graphicx}``; wide ones are scaled to the line width."""
    out = [f"% Leaderboard: {dataset}, full tables (corrbench). Needs \\usepackage{{booktabs,graphicx}}.", ""]
    for i, (cap, t) in enumerate([*parts, (f"{dataset}: summary, category All at every alpha (%)", summary)]):
        if t.empty:
            continue
        shown = _cells(t).drop(columns=[c for c in ("note",) if c in t.columns])
        out.append(R.to_latex(shown, cap, R.latex_label(dataset, "full", str(i)), wide=len(shown.columns) > 9))
    return "\n".join(out)
