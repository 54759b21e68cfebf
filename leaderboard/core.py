"""Result rows -> per-dataset leaderboards (CSV, Markdown, LaTeX, HTML, figures).

Measured rows come from run folders (``results.csv`` + ``run.json`` written by
``benchmarks.run``); published numbers come from ``leaderboard/data/reported.csv``, each with its
source and protocol, and appear as separate rows with ``kind = reported``: they are never mixed
into measured rows. Every row says what made it (:mod:`leaderboard.runs`). Output is
deterministic: the same inputs give byte-identical files.

Per dataset: ``<dataset>.{md,csv,tex}`` (the compact table: each method's best readout at the
dataset's main protocol, :mod:`leaderboard.compact`), ``<dataset>-full.{md,csv,tex}`` (every
protocol table and readout, :mod:`leaderboard.tables`), ``<dataset>-wide.csv`` (every row at every
alpha) and the figures (:mod:`leaderboard.plots`); across datasets ``all-datasets.{md,csv,tex}``;
with ``html``, ``index.html`` holding everything (:mod:`leaderboard.html`).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from loaders.atomic import write_text

from .runs import (  # noqa: F401 - the public names of the leaderboard
    COLUMNS,
    KEY,
    WHOLE,
    LeaderboardError,
    clean_text,
    parse_labels,
    read_reported,
    read_run,
    safe_name,
)
from .sources import collect  # noqa: F401 - part of the public names

FORMATS = ("md", "csv", "tex", "html")


def _col_name(category: str, alpha: float) -> str:
    return f"{category}@{alpha:g}"


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (kind, method, run, protocol, ...), columns ``<category>@<alpha>`` in percent, with
    the weights behind each row."""
    if df.empty:
        return pd.DataFrame(columns=KEY)
    d = df.copy()
    d["column"] = [_col_name(c, a) for c, a in zip(d["category"], d["alpha"])]
    d["pck"] = (d["pck"] * 100).round(1)
    table = d.pivot_table(index=KEY, columns="column", values="pck", aggfunc="first", sort=True)
    cats = sorted(set(d["category"]) - {WHOLE})
    alphas = sorted(set(d["alpha"]))
    order = [_col_name(c, a) for a in alphas for c in [WHOLE, *cats] if _col_name(c, a) in table.columns]
    table = table[order].reset_index()
    extra = d.groupby(KEY, sort=True)[["note", "weights", "random_weights", "source", "status"]].first().reset_index()
    table = table.merge(extra, on=KEY, how="left")
    cover = d[d["category"] == WHOLE].groupby(KEY, sort=True)[["n_pairs", "split_pairs"]].first().reset_index()
    cover["pairs"] = [("published" if pd.isna(n) else f"{int(n)}/{'?' if pd.isna(t) else int(t)}")
                      for n, t in zip(cover["n_pairs"], cover["split_pairs"])]
    table = table.merge(cover[KEY + ["pairs"]], on=KEY, how="left")
    table["pairs"] = table["pairs"].fillna("published")
    # half-width of the 95% bootstrap interval of each 'all' number (see results.csv ci_low / ci_high)
    allr = d[d["category"] == WHOLE].copy()
    allr["half"] = ((allr["ci_high"] - allr["ci_low"]) * 50).round(1)
    for a in alphas:
        sub = allr[allr["alpha"] == a].groupby(KEY, sort=True)["half"].first().rename(f"all@{a:g} ci95 +-").reset_index()
        if sub.iloc[:, -1].notna().any():
            table = table.merge(sub, on=KEY, how="left")
    table["kind"] = pd.Categorical(table["kind"], ["measured", "reported"], ordered=True)
    table = table.sort_values(KEY, kind="mergesort").reset_index(drop=True)
    table["kind"] = table["kind"].astype(str)
    return table


def csv_text(table: pd.DataFrame) -> str:
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.1f", lineterminator="\n")
    return buf.getvalue()


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """A table of display cells as plain values for CSV (value and half-width in two columns)."""
    from .render import Cell

    out = {}
    for col in table.columns:
        if any(isinstance(c, Cell) for c in table[col]):
            out[col] = [c.value if isinstance(c, Cell) else None for c in table[col]]
            if any(isinstance(c, Cell) and c.half is not None for c in table[col]):
                out[f"{col} ci95 +-"] = [c.half if isinstance(c, Cell) else None for c in table[col]]
        else:
            out[col] = table[col]
    return pd.DataFrame(out)


def _write(out: Path, name: str, written: list[Path], text: str) -> None:
    target = (out / name).resolve()
    if target.parent != out.resolve():
        raise LeaderboardError(f"{name!r}: output would leave {out}")
    write_text(out / name, text)
    written.append(out / name)


def check_pairs(d: pd.DataFrame, dataset: str, mixed_pairs: bool) -> bool:
    """True when the measured rows of one leaderboard cover one pair set (or their sets are unknown);
    otherwise a one-line refusal naming two runs and how many pairs they share, or with
    ``mixed_pairs`` False (shown side by side, not ranked)."""
    from .runs import PAIR_SETS

    meas = d[(d["kind"] == "measured") & (d["pairs_key"].astype(str) != "")]
    keys = meas.drop_duplicates("pairs_key")[["pairs_key", "run"]].values.tolist()
    if len(keys) <= 1:
        return True
    if mixed_pairs:
        return False
    (ka, ra), (kb, rb) = keys[0], keys[1]
    a, b = PAIR_SETS.get(ka, frozenset()), PAIR_SETS.get(kb, frozenset())
    raise LeaderboardError(f"{dataset}: runs {ra} and {rb} cover different pairs ({len(a)} and {len(b)}, {len(a & b)} shared; "
                           f"{len(keys)} pair sets in all); build them apart, or pass --mixed-pairs to show them side by "
                           "side unranked")


def build(run_dirs: list[str | Path], out: str | Path, reported: pd.DataFrame | None = None,
          formats: tuple[str, ...] = ("md", "csv"), alpha: float = 0.1, all_readouts: bool = False,
          labels: dict[str, str] | None = None, figure_formats: tuple[str, ...] | None = None,
          readout: str = "own", mixed_pairs: bool = False, verify_root: str | Path | None = None) -> list[Path]:
    """Write every output for the runs (see the module docstring); returns the paths written.

    ``readout``: ``own`` (each method's own readout, the default), ``best`` (chosen on the test split,
    marked) or a readout name, for the compact tables, the figures and the HTML page's first view.
    Measured rows of one dataset that cover different pair sets are refused (naming the runs and how
    many pairs they share) unless ``mixed_pairs``: then they are shown side by side, never ranked."""
    import math

    from . import compact as C
    from . import render as R
    from . import tables as T
    from .plots import FIGURE_FORMATS, plots

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise LeaderboardError(f"--format takes a comma-separated subset of {', '.join(FORMATS)}, got {','.join(formats)}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 < alpha <= 1):
        raise LeaderboardError(f"--alpha must be a number in (0, 1], got {alpha!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LeaderboardError(f"{out}: --out is a file, not a folder")
    readout = C.check_readout_mode(readout)
    df = collect(run_dirs, reported, labels, verify_root)
    # one leaderboard per dataset and split (a split other than test is named in the file names)
    groups = sorted(set(zip(df.loc[df["kind"] == "measured", "dataset"], df.loc[df["kind"] == "measured", "split"])))
    for dataset, split in groups:
        safe_name(dataset, "dataset")
        safe_name(split, "split")
    df = df[[(ds, sp) in set(groups) for ds, sp in zip(df["dataset"], df["split"])]].reset_index(drop=True)
    # refusals come before anything is written
    ranked = {(ds, sp): check_pairs(df[(df["dataset"] == ds) & (df["split"] == sp)], ds if sp == "test" else f"{ds}-{sp}",
                                    mixed_pairs) for ds, sp in groups}
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures: list[Path] = []
    for ds, split in groups:
        dataset = ds if split == "test" else f"{ds}-{split}"
        d = df[(df["dataset"] == ds) & (df["split"] == split)]
        table, cap = C.compact_table(d, ds, alpha, readout, ranked=ranked[(ds, split)])
        parts, summary = T.tables(d, dataset, alpha), T.summary_table(d)
        if "md" in formats:
            _write(out, f"{dataset}.md", written, f"# Leaderboard: {dataset}\n\n" + R.to_markdown(table, cap))
            _write(out, f"{dataset}-full.md", written, T.to_markdown(dataset, parts, summary))
        if "csv" in formats:
            _write(out, f"{dataset}.csv", written, csv_text(_plain(table)))
            _write(out, f"{dataset}-full.csv", written, T.to_csv(parts))
        if "tex" in formats:
            head = f"% Leaderboard: {dataset} (corrbench). Needs \\usepackage{{booktabs,graphicx}}.\n"
            _write(out, f"{dataset}.tex", written, head + R.to_latex(table, cap, R.latex_label(dataset, "pck"), fit=True))
            _write(out, f"{dataset}-full.tex", written, T.to_latex(dataset, parts, summary))
        _write(out, f"{dataset}-wide.csv", written, csv_text(wide(d)))
        figs = plots(d, dataset, out, alpha, all_readouts, figure_formats or FIGURE_FORMATS, readout=readout)
        written += figs
        figures += figs
    table, cap = C.cross_dataset_table(df, alpha, readout)
    if not table.empty:
        if "md" in formats:
            _write(out, "all-datasets.md", written, "# Leaderboard: all datasets\n\n" + R.to_markdown(table, cap))
        if "csv" in formats:
            _write(out, "all-datasets.csv", written, csv_text(_plain(table)))
        if "tex" in formats:
            _write(out, "all-datasets.tex", written, "% corrbench. Needs \\usepackage{booktabs,graphicx}.\n"
                   + R.to_latex(table, cap, R.latex_label("all-datasets", "pck"), wide=len(table.columns) > 6))
    if "html" in formats:
        from .html import page

        _write(out, "index.html", written, page(df, figures, alpha=alpha, readout=readout))
    return written
