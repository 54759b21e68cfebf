"""Leaderboards laid out as papers print them.

Per dataset: one table per protocol (frame, threshold, aggregate), its protocol stated once in the
caption; rows = methods (and readouts where they differ), columns = All and every category at one
alpha, in percent, with the 95% bootstrap half-width beside each measured All. Presets that
compute the same numbers (``dift`` and ``original`` with the same aggregate) share one table,
named after both. Then one compact summary table: All at every alpha, one row per method,
readout and protocol. Published numbers sit beside measured ones, marked ``reported``; partial
runs carry their mark in the method's name. Output as Markdown, CSV and LaTeX.
"""

from __future__ import annotations

import io

import pandas as pd

ROW = ["kind", "method", "readout", "precision", "tta", "run"]
PROTO = ["frame", "threshold", "aggregate"]


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else (f"{v:.1f}" if isinstance(v, float) else str(v))


def protocol_groups(d: pd.DataFrame) -> list[tuple[tuple, str]]:
    """(frame, threshold, aggregate) of each table and the preset names that give it, sorted."""
    groups = []
    for key, g in d.groupby(PROTO, sort=True):
        groups.append((key, ", ".join(sorted(set(g["protocol"].astype(str))))))
    return groups


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
    cats = sorted(set(g["category"]) - {"all"})
    table = g.pivot_table(index=ROW, columns="category", values="pck", aggfunc="first", sort=True) * 100
    table = table.reindex(columns=["all", *cats]).rename(columns={"all": "All"}).round(1)
    alls = g[g["category"] == "all"].set_index(ROW)
    table["All +-"] = ((alls["ci_high"] - alls["ci_low"]) * 50).round(1).reindex(table.index)
    table["pairs"] = [("published" if pd.isna(n) else f"{int(n)}/{'?' if pd.isna(t) else int(t)}")
                      for n, t in zip(alls["n_pairs"].reindex(table.index), alls["split_pairs"].reindex(table.index))]
    table["note"] = alls["note"].reindex(table.index).fillna("")
    table = table.reset_index()
    table["kind"] = pd.Categorical(table["kind"], ["measured", "reported"], ordered=True)
    return table.sort_values(["kind", "method", "readout", "precision", "tta", "run"], kind="mergesort").reset_index(drop=True).astype(
        {"kind": str})


def summary_table(d: pd.DataFrame) -> pd.DataFrame:
    """All at every alpha: one row per (method, readout, protocol table)."""
    a = d[d["category"] == "all"].copy()
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
    return (f"{dataset}: PCK@{alpha:g} (%). Protocol (presets {presets}): frame {frame}, threshold {threshold}, "
            f"aggregate {aggregate}. All +- = half-width of the 95% bootstrap interval over pairs.")


def tables(d: pd.DataFrame, dataset: str, alpha: float) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for key, presets in protocol_groups(d):
        t = protocol_table(d, key, alpha)
        if not t.empty:
            out.append((caption(dataset, key, presets, alpha), t))
    return out


def to_markdown(dataset: str, parts: list[tuple[str, pd.DataFrame]], summary: pd.DataFrame) -> str:
    lines = [f"# Leaderboard: {dataset}", "",
             "PCK in percent. `reported` rows are published numbers with their source (note), never measured "
             "here; a partial run's method name says what it covers.", ""]
    for cap, t in [*parts, (f"{dataset}: summary, category All at every alpha (%)", summary)]:
        if t.empty:
            continue
        lines += [f"**{cap}**", "", "| " + " | ".join(map(str, t.columns)) + " |",
                  "|" + "|".join("---" for _ in t.columns) + "|"]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in t.itertuples(index=False)]
        lines.append("")
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


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(value) -> str:
    """A cell or caption as LaTeX text (special characters escaped)."""
    return "".join(_TEX.get(ch, ch) for ch in _fmt(value))


def to_latex(dataset: str, parts: list[tuple[str, pd.DataFrame]], summary: pd.DataFrame) -> str:
    """Tables for a paper (booktabs): ``\\usepackage{booktabs}``."""
    out = [f"% Leaderboard: {dataset} (corrbench). Needs \\usepackage{{booktabs}}.", ""]
    for cap, t in [*parts, (f"{dataset}: summary, category All at every alpha (%)", summary)]:
        if t.empty:
            continue
        cols = [c for c in t.columns if c not in ("run", "note")]
        spec = "".join("l" if c in ROW or c in ("pairs", "protocol table") else "r" for c in cols)
        out += ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                " & ".join(_tex(c) for c in cols) + " \\\\", "\\midrule"]
        out += [" & ".join(_tex(row[c]) for c in cols) + " \\\\" for _, row in t.iterrows()]
        out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{_tex(cap)}}}", "\\end{table}", ""]
    return "\n".join(out)
