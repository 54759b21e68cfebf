"""Writing a table of display strings as Markdown (``DataFrame.to_markdown``) and LaTeX
(``Styler.to_latex``, booktabs): escaping, bold best values, ``75.5 ± 0.4`` cells, captions and labels."""

from __future__ import annotations

import math
import re

import pandas as pd

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
        "±": r"$\pm$", "≤": r"$\leq$", "·": r"$\cdot$"}


def tex(text) -> str:
    """Plain text as LaTeX (special characters escaped)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def md(text) -> str:
    """Plain text as one Markdown table cell (pipes escaped, line breaks removed)."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).replace("|", r"\|")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class Cell:
    """A PCK cell: value and half-width in percent (either may be missing) and whether it is the best."""

    def __init__(self, value: float | None, half: float | None = None, best: bool = False):
        self.value, self.half, self.best = value, half, best

    def text(self, pm: str, bold) -> str:
        if _missing(self.value):
            return "–"
        v = f"{self.value:.1f}"
        v = bold(v) if self.best else v
        if self.half is None:
            return v
        return f"{v} {pm} –" if _missing(self.half) else f"{v} {pm} {self.half:.1f}"


def mark_best(cells: pd.DataFrame) -> pd.DataFrame:
    """Set ``best`` on the cell holding each column's highest value, only when that value is unique
    (at the printed precision) and its interval is not undefined (a NaN half-width: under 2 pairs)."""
    for col in cells.columns:
        vals = [c for c in cells[col] if isinstance(c, Cell) and not _missing(c.value)]
        if not vals:
            continue
        top = round(max(c.value for c in vals), 1)
        at_top = [c for c in vals if round(c.value, 1) == top]
        if len(at_top) == 1 and not (at_top[0].half is not None and _missing(at_top[0].half)):
            at_top[0].best = True
    return cells


def to_markdown(table: pd.DataFrame, caption: str) -> str:
    """``**caption**`` then the table; Cell columns as ``**75.5** ± 0.4``."""
    shown = table.map(lambda c: c.text("±", lambda s: f"**{s}**") if isinstance(c, Cell) else md(c))
    shown.columns = [md(c) for c in shown.columns]
    body = shown.to_markdown(index=False, disable_numparse=True)
    return f"**{md(caption)}**\n\n{body}\n"


def to_latex(table: pd.DataFrame, caption: str, label: str, wide: bool = False, fit: bool = False) -> str:
    """A booktabs table (``\\usepackage{booktabs}``; ``\\usepackage{graphicx}`` for ``wide`` ones,
    which are scaled to the line width)."""
    shown = table.map(lambda c: c.text(r"$\pm$", lambda s: f"\\textbf{{{s}}}") if isinstance(c, Cell) else tex(c))
    shown.columns = [tex(c) for c in shown.columns]
    spec = "".join("r" if any(isinstance(c, Cell) for c in table[col]) else "l" for col in table.columns)
    text = shown.style.hide(axis="index").to_latex(hrules=True, column_format=spec, position="t", position_float="centering",
                                                   caption=tex(caption), label=label)
    if wide:
        text = re.sub(r"(\\begin\{tabular\}.*?\\end\{tabular\})", lambda m: "\\resizebox{\\linewidth}{!}{%\n" + m.group(1) + "}",
                      text, flags=re.S)
    elif fit:  # shrink to the column only when wider than it (a two-column paper's \columnwidth)
        text = re.sub(r"(\\begin\{tabular\}.*?\\end\{tabular\})",
                      lambda m: "\\resizebox{\\ifdim\\width>\\columnwidth\\columnwidth\\else\\width\\fi}{!}{%\n"
                      + m.group(1) + "}", text, flags=re.S)
    return text


def latex_label(*parts: str) -> str:
    return "tab:" + "-".join(re.sub(r"[^A-Za-z0-9]+", "-", p).strip("-").lower() for p in parts if p)
