"""Figures a paper can take: PCK against alpha (one panel per protocol table, in a grid) and PCK
per category at one alpha; every series distinct by colour *and* marker (or hatch), legends outside
the data, titles that state the protocol, written as PNG, PDF and SVG (deterministic bytes)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from loaders.atomic import atomic_path

from .runs import WHOLE
from .tables import _dedupe

#: what makes one line (one bar series) of a plot
LINE = ["kind", "method", "readout", "tta", "run"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p"]
HATCHES = ["", "//", "..", "xx", "\\\\", "oo", "--", "++"]
FIGURE_FORMATS = ("png", "pdf", "svg")


def style(i: int, colors) -> tuple:
    """(colour, marker, hatch) of series i: colours cycle fastest, markers and hatches change with
    each cycle, so no two of the first len(colours) x len(markers) series look alike."""
    return colors[i % len(colors)], MARKERS[(i // len(colors)) % len(MARKERS)], HATCHES[(i // len(colors)) % len(HATCHES)]


def plain(text: str) -> str:
    """A label as plain text for matplotlib: '$' would start its math parser, so it is escaped."""
    return str(text).replace("$", r"\$")


def label(key: tuple, all_keys: list) -> str:
    """A series' legend: method (readout), test-time options, run id, [reported]; a partial run's
    name already carries its coverage (``[partial: ...]``) and its line is dashed. Plain text."""
    kind, method, readout, tta, run = key
    text = f"{method}" + (f" ({readout})" if readout not in ("none", "") else "") + (f", tta {tta}" if tta not in ("none", "") else "")
    text += f" [{run}]" if kind == "measured" else " [reported]"
    return plain(text)


def _line_style(key: tuple, partial: bool) -> str:
    return ":" if key[0] == "reported" else "--" if partial else "-"


def headline(d: pd.DataFrame, alpha: float = 0.1, all_readouts: bool = False, readout: str = "own") -> pd.DataFrame:
    """The rows drawn: per (kind, method, run) and protocol table the readout the compact table shows
    (``own`` by default; see :func:`leaderboard.compact.select_readout`), every readout with ``all_readouts``."""
    from .compact import select_readout

    if all_readouts or d.empty:
        return d
    return select_readout(d, alpha, readout, ["kind", "method", "run", "precision", "tta", "frame", "threshold", "aggregate"])


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _save(fig, base: Path, formats) -> list[Path]:
    out = []
    meta = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
            "svg": {"Date": None, "Creator": None}}
    for fmt in formats:
        path = base.with_suffix(f".{fmt}")
        with atomic_path(path, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata=meta[fmt], bbox_inches="tight")
        out.append(path)
    return out


def plots(df: pd.DataFrame, dataset: str, out: Path, alpha: float = 0.1, all_readouts: bool = False,
          formats=FIGURE_FORMATS, readout: str = "own") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "corrbench"  # stable ids: the same inputs give the same SVG bytes
    colors = plt.get_cmap("tab10").colors
    written = []
    # every preset that computes a protocol table names it (dift and original share their tables)
    names = {k: ", ".join(sorted(set(g["protocol"].astype(str)))) for k, g in
             df.groupby(["frame", "threshold", "aggregate"], sort=True)} if not df.empty else {}
    d = headline(df, alpha, all_readouts, readout)
    d = pd.concat([_dedupe(g) for _, g in d.groupby(["frame", "threshold", "aggregate"], sort=True)]) if not d.empty else d
    groups = list(d[d["category"] == WHOLE].groupby(["frame", "threshold", "aggregate"], sort=True))
    if groups and "dataset" in df.columns:  # the main protocol (the compact table's) is the first panel
        from .compact import main_protocol

        main = main_protocol(df, str(df["dataset"].iloc[0]))[0]
        groups.sort(key=lambda kv: tuple(kv[0]) != tuple(main))
    series = sorted({k for _, g in groups for k, _ in g.groupby(LINE, sort=True)})
    index = {k: i for i, k in enumerate(series)}  # one style per series across all panels
    n = max(1, len(groups))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    handles = {}
    for ax, ((frame, threshold, aggregate), g) in zip(axes.flat, groups):
        presets = names.get((frame, threshold, aggregate)) or ", ".join(sorted(set(g["protocol"].astype(str))))
        for key, h in g.groupby(LINE, sort=True):
            h = h.sort_values("alpha")
            color, marker, _ = style(index[key], colors)
            partial = bool(h["partial"].astype(bool).any()) if "partial" in h.columns else False
            line, = ax.plot(h["alpha"], h["pck"] * 100, _line_style(key, partial), marker=marker, color=color,
                            markersize=5, label=label(key, series))
            handles.setdefault(label(key, series), line)
        ax.set_title(plain(_wrap(f"{presets}: frame {frame}, T = {threshold}, aggregate {aggregate}", 48)), fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_ylabel("PCK (%), all")
        ax.grid(True, alpha=0.3)
    fig.suptitle(plain(f"{dataset}: PCK against alpha"), fontsize=11)
    fig.tight_layout()
    if handles:  # one legend for every panel, below the grid, outside the data
        fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8,
                   ncol=1 if len(handles) > 6 else 2, frameon=False)
    written += _save(fig, out / f"{dataset}-pck-vs-alpha", formats)
    plt.close(fig)

    c = d[(d["category"] != WHOLE) & ((d["alpha"] - alpha).abs() < 1e-9)]
    if not c.empty:
        # the dataset's main protocol table, the one the compact table shows
        from .compact import main_protocol

        proto = main_protocol(df, str(df["dataset"].iloc[0]))[0] if "dataset" in df.columns else None
        if proto is None or c[(c["frame"] == proto[0]) & (c["threshold"] == proto[1]) & (c["aggregate"] == proto[2])].empty:
            proto = max(c.groupby(["frame", "threshold", "aggregate"], sort=True),
                        key=lambda kv: kv[1][["kind", "method", "run"]].drop_duplicates().shape[0])[0]
        c = c[(c["frame"] == proto[0]) & (c["threshold"] == proto[1]) & (c["aggregate"] == proto[2])]
        presets = names.get(tuple(proto)) or ", ".join(sorted(set(c["protocol"].astype(str))))
        cats = sorted(set(c["category"]))
        bars = list(c.groupby(LINE, sort=True))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(cats) * max(1, len(bars)) ** 0.5 + 3), 4.2))
        width = 0.8 / max(1, len(bars))
        for i, (key, g) in enumerate(bars):
            vals = g.set_index("category")["pck"].reindex(cats) * 100  # a missing category: no bar, not 0
            color, _, hatch = style(index.get(key, i), colors)
            ax.bar([j + i * width for j in range(len(cats))], vals, width, label=label(key, series), color=color,
                   hatch=hatch or ("//" if key[0] == "reported" else None), edgecolor="black", linewidth=0.3)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))])
        ax.set_xticklabels([plain(c) for c in cats], rotation=45, ha="right")
        ax.set_ylabel(f"PCK@{alpha:g} (%)")
        ax.set_title(plain(f"{dataset}: PCK@{alpha:g} per category\n" + _wrap(f"{presets}: frame {proto[0]}, "
                                                                                f"T = {proto[1]}, aggregate {proto[2]}", 70)),
                     fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        # below the axes, outside the data (the saved figure grows to hold it)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), fontsize=7, frameon=False, ncol=1)
        written += _save(fig, out / f"{dataset}-categories", formats)
        plt.close(fig)
    return written
