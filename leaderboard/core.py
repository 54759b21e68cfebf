"""Result rows -> per-dataset leaderboards (CSV, Markdown, PNG plots).

Measured rows come from run folders (``results.csv`` + ``run.json`` written by
``benchmarks.run``); published numbers come from ``leaderboard/data/reported.csv``, each with its
source and protocol, and appear as separate rows with ``kind = reported``: they are never mixed
into measured rows. Output is deterministic: the same inputs give byte-identical files.
"""

from __future__ import annotations

import io
import json
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from loaders.atomic import atomic_path, write_text

KEY = ["kind", "method", "run", "split", "precision", "tta", "protocol", "frame", "threshold", "aggregate", "readout"]


class LeaderboardError(ValueError):
    """A run folder or the reported-numbers file is unusable."""


def read_reported(path: str | Path | None = None) -> pd.DataFrame:
    """Published numbers as tidy rows (``kind = reported``)."""
    if path is None:
        text = resources.files("leaderboard").joinpath("data/reported.csv").read_text()
        df = pd.read_csv(io.StringIO(text))
    else:
        df = pd.read_csv(path)
    df = df.rename(columns={"source": "run"})
    df["kind"] = "reported"
    df["note"] = df["note"].fillna("")
    if "precision" not in df.columns:
        df["precision"] = "unknown"
    df["precision"] = df["precision"].fillna("unknown").astype(str)
    df["tta"] = df["tta"].fillna("none").astype(str) if "tta" in df.columns else "none"
    return df


def read_run(run_dir: str | Path) -> pd.DataFrame:
    """Measured rows of one run folder (``kind = measured``; ``run`` = folder name + config hash)."""
    run_dir = Path(run_dir)
    res, meta = run_dir / "results.csv", run_dir / "run.json"
    if not res.is_file():
        raise LeaderboardError(f"{res}: missing; is {run_dir} a folder written by benchmarks.run?")
    try:
        df = pd.read_csv(res)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LeaderboardError(f"{res}: not a results CSV ({exc})") from None
    need = {"matcher", "dataset", "split", "protocol", "threshold", "frame", "aggregate", "readout", "category", "alpha", "pck"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise LeaderboardError(f"{res}: missing column(s) {missing}")
    for col in ("pck", "alpha"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values < 0) | (values > 1)
        if bad.any():
            first = df[col][bad].iloc[0]
            raise LeaderboardError(f"{res}: column {col!r} must hold numbers in [0, 1], found {first!r} "
                                   f"(row {int(bad.to_numpy().nonzero()[0][0]) + 2})")
        df[col] = values
    for name in set(df["dataset"].astype(str)):
        safe_name(name, f"{res}: column 'dataset'")
    chash = ""
    if meta.is_file():
        try:
            record = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LeaderboardError(f"{meta}: malformed JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(record, dict):
            raise LeaderboardError(f"{meta}: expected a JSON object, got {type(record).__name__}")
        chash = str(record.get("config_hash", ""))
    df = df.rename(columns={"matcher": "method"})
    if "subset" not in df.columns:  # results written before coverage was recorded
        df["subset"] = "unknown"
    if "split_pairs" not in df.columns:
        df["split_pairs"] = float("nan")
    partial = df["subset"].astype(str) != "all"
    # a partial run can never pass for a full one: its name carries what it covers
    if partial.any():
        total = ["?" if pd.isna(v) else str(int(v)) for v in df.loc[partial, "split_pairs"]]
        df.loc[partial, "method"] = [f"{m} [coverage not recorded]" if sub == "unknown" else f"{m} [partial: {sub} of {t} pairs]"
                                     for m, sub, t in zip(df.loc[partial, "method"].astype(str),
                                                          df.loc[partial, "subset"].astype(str), total)]
    if "precision" not in df.columns:  # results written before precision was recorded
        df["precision"] = "unknown"
    df["precision"] = df["precision"].fillna("unknown").astype(str)
    # results written before test-time options existed used none
    df["tta"] = df["tta"].fillna("none").astype(str) if "tta" in df.columns else "none"
    df["kind"] = "measured"
    df["run"] = f"{run_dir.name}" + (f" [{chash}]" if chash and chash not in run_dir.name else "")
    df["note"] = ""
    return df


def safe_name(name: str, where: str) -> str:
    """A dataset name used in output file names: letters, digits, '.', '_' and '-', no leading dot."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", str(name)):
        raise LeaderboardError(f"{where}: {str(name)[:80]!r} is not a dataset name (letters, digits, '.', '_', '-')")
    return str(name)


def _is_run(d) -> bool:
    """True for a run folder; anything else (a failed run's leftovers, a stray file) is skipped with a warning."""
    import warnings

    d = Path(d)
    if (d / "results.csv").is_file():
        return True
    warnings.warn(f"{d}: not a run folder (no results.csv); skipped", stacklevel=3)
    return False


def collect(run_dirs: list[str | Path], reported: pd.DataFrame | None = None) -> pd.DataFrame:
    seen: dict[Path, str] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise LeaderboardError(f"{d}: run folder given twice (also as {seen[key]})")
        seen[key] = str(d)
    runs = [d for d in run_dirs if _is_run(d)]
    if not runs:
        raise LeaderboardError(f"none of {', '.join(map(str, run_dirs[:5]))} is a folder written by benchmarks.run "
                               "(results.csv and run.json)")
    frames = [read_run(d) for d in runs]
    frames.append(read_reported() if reported is None else reported)
    cols = KEY + ["dataset", "category", "alpha", "pck", "note", "n_pairs", "split_pairs", "ci_low", "ci_high"]
    for f in frames:
        for c in ("n_pairs", "split_pairs", "ci_low", "ci_high"):
            if c not in f.columns:
                f[c] = float("nan")
    return pd.concat([f[cols] for f in frames], ignore_index=True)


def _col_name(category: str, alpha: float) -> str:
    return f"{category}@{alpha:g}"


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (kind, method, run, protocol, ...), columns ``<category>@<alpha>`` in percent."""
    if df.empty:
        return pd.DataFrame(columns=KEY)
    d = df.copy()
    d["column"] = [_col_name(c, a) for c, a in zip(d["category"], d["alpha"])]
    d["pck"] = (d["pck"] * 100).round(1)
    table = d.pivot_table(index=KEY, columns="column", values="pck", aggfunc="first", sort=True)
    cats = sorted(set(d["category"]) - {"all"})
    alphas = sorted(set(d["alpha"]))
    order = [_col_name(c, a) for a in alphas for c in ["all", *cats] if _col_name(c, a) in table.columns]
    table = table[order].reset_index()
    notes = d.groupby(KEY, sort=True)["note"].first().reset_index()
    table = table.merge(notes, on=KEY, how="left")
    cover = d[d["category"] == "all"].groupby(KEY, sort=True)[["n_pairs", "split_pairs"]].first().reset_index()
    cover["pairs"] = [("published" if pd.isna(n) else f"{int(n)}/{'?' if pd.isna(t) else int(t)}")
                      for n, t in zip(cover["n_pairs"], cover["split_pairs"])]
    table = table.merge(cover[KEY + ["pairs"]], on=KEY, how="left")
    table["pairs"] = table["pairs"].fillna("published")
    # half-width of the 95% bootstrap interval of each 'all' number (see results.csv ci_low / ci_high)
    allr = d[d["category"] == "all"].copy()
    allr["half"] = ((allr["ci_high"] - allr["ci_low"]) * 50).round(1)
    for a in alphas:
        sub = allr[allr["alpha"] == a].groupby(KEY, sort=True)["half"].first().rename(f"all@{a:g} ci95 +-").reset_index()
        if sub.iloc[:, -1].notna().any():
            table = table.merge(sub, on=KEY, how="left")
    table["kind"] = pd.Categorical(table["kind"], ["measured", "reported"], ordered=True)
    table = table.sort_values(KEY, kind="mergesort").reset_index(drop=True)
    table["kind"] = table["kind"].astype(str)
    return table


def _savefig(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")


def headline(d: pd.DataFrame, alpha: float = 0.1, all_readouts: bool = False) -> pd.DataFrame:
    """The rows drawn: per (kind, method) the readout with the best All at ``alpha`` in its protocol
    table (every readout with ``all_readouts``)."""
    if all_readouts or d.empty:
        return d
    a = d[(d["category"] == "all") & ((d["alpha"] - alpha).abs() < 1e-9)]
    keep = []
    for _, g in a.groupby(["kind", "method", "frame", "threshold", "aggregate"], sort=True):
        best = g.sort_values(["pck", "readout"], ascending=[False, True], kind="mergesort").iloc[0]
        keep.append((best["kind"], best["method"], best["frame"], best["threshold"], best["aggregate"], best["readout"]))
    k = pd.DataFrame(keep, columns=["kind", "method", "frame", "threshold", "aggregate", "readout"]).drop_duplicates()
    return d.merge(k, on=list(k.columns))


#: what makes one line (one bar series) of a plot
LINE = ["kind", "method", "readout", "tta", "run"]


def _label(key: tuple, all_keys: list) -> str:
    """A line's legend: method (readout), its test-time options, [reported]; the run's name only
    where two lines would otherwise read the same."""
    kind, method, readout, tta, run = key
    text = f"{method}" + (f" ({readout})" if readout != "none" else "") + (f" tta {tta}" if tta not in ("none", "") else "")
    twins = [k for k, _ in all_keys if k[:4] == key[:4]]
    return text + (f" {run}" if len(twins) > 1 else "") + (" [reported]" if kind == "reported" else "")


def plots(df: pd.DataFrame, dataset: str, out: Path, alpha: float = 0.1, all_readouts: bool = False) -> list[Path]:
    """PCK against alpha, one panel per protocol table and one line per method (its best readout at
    ``alpha`` unless ``all_readouts``); per-category bars at ``alpha`` for the protocol table with the
    most methods. Legends sit inside the figure; nothing is clipped (tight bounding box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .tables import _dedupe

    written = []
    d = headline(df, alpha, all_readouts)
    d = pd.concat([_dedupe(g) for _, g in d.groupby(["frame", "threshold", "aggregate"], sort=True)]) if not d.empty else d
    groups = list(d[d["category"] == "all"].groupby(["frame", "threshold", "aggregate"], sort=True))
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.2 * max(1, len(groups)), 4.2), squeeze=False)
    for ax, ((frame, threshold, aggregate), g) in zip(axes[0], groups):
        lines = list(g.groupby(LINE, sort=True))
        for i, (key, h) in enumerate(lines):
            h = h.sort_values("alpha")
            kind, label = key[0], _label(key, lines)
            ax.plot(h["alpha"], h["pck"] * 100, "--o" if kind == "reported" else "-o", color=colors[i % len(colors)],
                    label=label, markersize=4)
        ax.set_title(f"frame {frame}, T = {threshold}\naggregate {aggregate}", fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_ylabel("PCK (%), all")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.9)
    fig.suptitle(f"{dataset}: PCK against alpha")
    fig.tight_layout()
    path = out / f"{dataset}-pck-vs-alpha.png"
    _savefig(fig, path)
    plt.close(fig)
    written.append(path)

    c = d[(d["category"] != "all") & ((d["alpha"] - alpha).abs() < 1e-9)]
    if not c.empty:
        # the protocol table that holds the most methods
        key = max(c.groupby(["frame", "threshold", "aggregate"], sort=True),
                  key=lambda kv: kv[1][["kind", "method"]].drop_duplicates().shape[0])[0]
        c = c[(c["frame"] == key[0]) & (c["threshold"] == key[1]) & (c["aggregate"] == key[2])]
        cats = sorted(set(c["category"]))
        bars = list(c.groupby(LINE, sort=True))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(cats) * max(1, len(bars)) ** 0.5 + 3), 4.6))
        width = 0.8 / max(1, len(bars))
        for i, (key, g) in enumerate(bars):
            kind = key[0]
            vals = g.set_index("category")["pck"].reindex(cats) * 100  # a missing category: no bar, not 0
            label = _label(key, bars)
            ax.bar([j + i * width for j in range(len(cats))], vals, width, label=label, color=colors[i % len(colors)],
                   hatch="//" if kind == "reported" else None)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))])
        ax.set_xticklabels(cats, rotation=45, ha="right")
        ax.set_ylabel(f"PCK@{alpha:g} (%)")
        ax.set_title(f"{dataset}: PCK@{alpha:g} per category (frame {key[0]}, T = {key[1]}, {key[2]})", fontsize=9)
        ax.legend(fontsize=7, loc="best", framealpha=0.9)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"{dataset}-categories.png"
        _savefig(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def csv_text(table: pd.DataFrame) -> str:
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.1f", lineterminator="\n")
    return buf.getvalue()


FORMATS = ("md", "csv", "tex")


def build(run_dirs: list[str | Path], out: str | Path, reported: pd.DataFrame | None = None,
          formats: tuple[str, ...] = ("md", "csv"), alpha: float = 0.1, all_readouts: bool = False) -> list[Path]:
    """Per dataset: ``<dataset>.md`` / ``.csv`` / ``.tex`` (paper-style tables at ``alpha``, see
    :mod:`leaderboard.tables`), ``<dataset>-wide.csv`` (every row at every alpha) and the plots."""
    from . import tables as T

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise LeaderboardError(f"--format takes a comma-separated subset of {', '.join(FORMATS)}, got {','.join(formats)}")
    out = Path(out)
    df = collect(run_dirs, reported)
    measured_datasets = sorted(set(df.loc[df["kind"] == "measured", "dataset"]))
    written = []
    if out.exists() and not out.is_dir():
        raise LeaderboardError(f"{out}: --out is a file, not a folder")
    for dataset in measured_datasets:
        safe_name(dataset, "dataset")
        target = (out / f"{dataset}.csv").resolve()
        if target.parent != out.resolve():
            raise LeaderboardError(f"{dataset!r}: output would leave {out}")
        d = df[df["dataset"] == dataset]
        parts, summary = T.tables(d, dataset, alpha), T.summary_table(d)
        render = {"md": lambda: T.to_markdown(dataset, parts, summary), "csv": lambda: T.to_csv(parts),  # noqa: B023
                  "tex": lambda: T.to_latex(dataset, parts, summary)}  # noqa: B023 - called within this iteration
        for f in formats:
            write_text(out / f"{dataset}.{f}", render[f]())
            written.append(out / f"{dataset}.{f}")
        write_text(out / f"{dataset}-wide.csv", csv_text(wide(d)))
        written.append(out / f"{dataset}-wide.csv")
        written += plots(d, dataset, out, alpha, all_readouts)
    return written
