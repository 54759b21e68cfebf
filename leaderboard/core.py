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

KEY = ["kind", "method", "run", "split", "precision", "protocol", "frame", "threshold", "aggregate", "readout"]


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


def markdown(table: pd.DataFrame, dataset: str) -> str:
    """A Markdown table; the protocol of every row is spelled out in its columns."""
    lines = [f"# Leaderboard: {dataset}", "",
             "PCK in percent. Every row names its protocol (frame, threshold, aggregate) and readout; "
             "`reported` rows are published numbers with their source, never measured here.", ""]
    cols = [c for c in table.columns if c != "note"] + ["note"]
    ci_cols = {c: c.replace(" ci95 +-", "") for c in cols if c.endswith(" ci95 +-")}
    cols = [c for c in cols if c not in ci_cols]
    lines[2] += " `all` numbers of measured rows carry their 95% bootstrap interval over pairs (+- half-width)."
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    half = {v: k for k, v in ci_cols.items()}
    for _, r in table.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            text = "" if (isinstance(v, float) and pd.isna(v)) else (f"{v:.1f}" if isinstance(v, float) else str(v))
            if c in half and text and not pd.isna(r[half[c]]):
                text += f" +- {r[half[c]]:.1f}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _savefig(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})


def _label(r) -> str:
    tag = " (reported)" if r["kind"] == "reported" else ""
    return f"{r['method']}{tag} {r['protocol']}/{r['aggregate']}/{r['readout']}"


def plots(df: pd.DataFrame, dataset: str, out: Path) -> list[Path]:
    """PCK against alpha per row (category all) and per-category bars at alpha 0.1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    d = df[df["category"] == "all"]
    protos = sorted(set(zip(d["protocol"], d["frame"], d["threshold"])))
    n_lines = max(len(list(g.groupby(KEY))) for _, g in d.groupby(["protocol", "frame", "threshold"], sort=True))
    fig, axes = plt.subplots(1, len(protos), figsize=(5.5 * len(protos), 4 + 0.18 * n_lines), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, (proto, frame, threshold) in zip(axes[0], protos):
        sub = d[(d["protocol"] == proto) & (d["frame"] == frame) & (d["threshold"] == threshold)]
        for i, (key, g) in enumerate(sub.groupby(KEY, sort=True)):
            r = dict(zip(KEY, key))
            g = g.sort_values("alpha")
            tag = " (reported)" if r["kind"] == "reported" else ""
            ax.plot(g["alpha"], g["pck"] * 100, "--o" if tag else "-o", color=colors[i % len(colors)],
                    label=f"{r['method']}{tag} {r['aggregate']}/{r['readout']}")
        ax.set_title(f"{proto}: frame {frame}, T = {threshold}", fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_ylabel("PCK (%), category all")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)
    fig.suptitle(f"{dataset}: PCK against alpha")
    fig.tight_layout()
    path = out / f"{dataset}-pck-vs-alpha.png"
    _savefig(fig, path)
    plt.close(fig)
    written.append(path)

    c = df[(df["category"] != "all") & (df["alpha"].round(6) == 0.1)]
    if not c.empty:
        cats = sorted(set(c["category"]))
        groups = list(c.groupby(KEY, sort=True))
        fig, ax = plt.subplots(figsize=(max(11, len(cats) * 0.9), 5))
        width = 0.8 / max(1, len(groups))
        for i, (key, g) in enumerate(groups):
            r = dict(zip(KEY, key))
            vals = g.set_index("category")["pck"].reindex(cats) * 100
            ax.bar([j + i * width for j in range(len(cats))], vals, width,  # a missing category: no bar, not 0
                   label=_label(r), hatch="//" if r["kind"] == "reported" else None)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))])
        ax.set_xticklabels(cats, rotation=45, ha="right")
        ax.set_ylabel("PCK@0.1 (%)")
        ax.set_title(f"{dataset}: PCK@0.1 per category")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
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


def build(run_dirs: list[str | Path], out: str | Path, reported: pd.DataFrame | None = None) -> list[Path]:
    """Write ``<dataset>.csv``, ``<dataset>.md`` and plots for every dataset in the runs."""
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
        table = wide(d)
        write_text(out / f"{dataset}.csv", csv_text(table))
        write_text(out / f"{dataset}.md", markdown(table, dataset))
        written += [out / f"{dataset}.csv", out / f"{dataset}.md"]
        written += plots(d, dataset, out)
    return written
