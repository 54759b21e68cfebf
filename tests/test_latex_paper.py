"""The compact LaTeX table pastes into a two-column paper: compiled with a real LaTeX (Debian's
``texlive-latex-base`` + ``texlive-latex-recommended``) inside ``\\documentclass[twocolumn]{article}``,
with no overfull box wider than 1pt; constant columns are said in the caption, rows sorted by
score, no bold when the best is not unique or its interval undefined.

LaTeX is required where ``CORRBENCH_REQUIRE_LATEX`` is set (``.ci/run`` sets it and installs
it); elsewhere the compile test is skipped with the reason when ``pdflatex`` is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

PAPER = r"""\documentclass[twocolumn]{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs,graphicx}
\begin{document}
Some text of the paper that flows in two columns.
\input{table}
More text.
\end{document}
"""


def _pdflatex():
    exe = shutil.which("pdflatex")
    if not exe:
        why = "pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)"
        if os.environ.get("CORRBENCH_REQUIRE_LATEX"):
            pytest.fail(why + "; CORRBENCH_REQUIRE_LATEX is set")
        pytest.skip(why)
    return exe


def _overfull(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"Overfull \\hbox \(([0-9.]+)pt too wide\)", log)]


def _compile(tex_table: str, where) -> tuple[int, str]:
    exe = _pdflatex()
    (where / "table.tex").write_text(tex_table)
    (where / "paper.tex").write_text(PAPER)
    proc = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=where,
                          capture_output=True, text=True, timeout=120)
    log = (where / "paper.log").read_text(errors="replace") if (where / "paper.log").exists() else proc.stdout
    return proc.returncode, log


def _rows(lb, n=3):
    """A results table with ``n`` methods in one compact layout (as leaderboard.collect gives)."""
    rows = []
    for i in range(n):
        for a in (0.05, 0.1, 0.15):
            rows.append({"kind": "measured", "method": lb[i], "run": f"{i:07x}", "split": "test", "precision": "float32",
                         "tta": "none", "protocol": "sd4match", "frame": "resized-768x768", "threshold": "bbox-kp",
                         "aggregate": "image", "readout": "nn", "weights": "", "random_weights": False, "partial": False,
                         "source": "x", "own_readout": "nn", "pairs_key": "k", "dataset": "spair-71k",
                         "category": "all", "alpha": a, "pck": 0.3 + 0.1 * i + a, "note": "",
                         "n_pairs": 12234, "split_pairs": 12234, "ci_low": 0.3 + 0.1 * i + a - 0.004,
                         "ci_high": 0.3 + 0.1 * i + a + 0.004})
    return pd.DataFrame(rows)


def test_compact_table_fits_a_two_column_paper(tmp_path):
    from leaderboard import render as R
    from leaderboard.compact import compact_table

    names = ["SD4Match-CPM (preset tiny; model_id=stable-diffusion-2-1-base@1a2b3c4; checkpoint=cpm-spair@abcdef0)",
             "GeoAware-SC zero-shot with every readout and a very long name that a paper would never print",
             "DIFT"]
    table, cap = compact_table(_rows(names), "spair-71k", 0.1)
    # constant columns (readout, TTA, precision, pairs) leave the table and are said in the caption
    assert list(table.columns) == ["Method", "PCK@0.05", "PCK@0.1", "PCK@0.15"]
    assert "readout nn" in cap and "tta none" in cap and "precision float32" in cap and "pairs 12234/12234" in cap
    # rows sorted by score, the unique best in bold
    assert list(table["Method"]) == names[::-1]
    text = R.to_latex(table, cap, R.latex_label("spair-71k", "pck"), fit=True)
    assert text.count("\\textbf{") == 3 and "\\resizebox{\\ifdim\\width>\\columnwidth" in text
    code, log = _compile(text, tmp_path)
    assert code == 0, log[-2000:]
    too_wide = [w for w in _overfull(log) if w > 1.0]
    assert not too_wide, f"overfull boxes: {too_wide}"
    assert (tmp_path / "paper.pdf").read_bytes()[:4] == b"%PDF"


def test_the_check_catches_a_table_too_wide(tmp_path):
    """The overfull-box check can fail: the same table without the fit is wider than a column."""
    from leaderboard import render as R
    from leaderboard.compact import compact_table

    names = ["a method name long enough to push the table past one column of a two-column paper " * 2, "b", "c"]
    table, cap = compact_table(_rows(names), "spair-71k", 0.1)
    code, log = _compile(R.to_latex(table, cap, "tab:x", fit=False), tmp_path)
    assert any(w > 1.0 for w in _overfull(log))


def test_no_bold_for_ties_or_undefined_intervals():
    from leaderboard import render as R
    from leaderboard.compact import compact_table

    tied = _rows(["a", "b", "c"])
    tied.loc[tied["method"] == "b", "pck"] = tied.loc[tied["method"] == "c", "pck"].to_numpy()
    table, _ = compact_table(tied, "spair-71k", 0.1)
    shown = R.to_markdown(table, "")
    assert "**" not in shown.split("\n", 2)[2]  # the tie at the top: nobody bold
    one = _rows(["a", "b", "c"])
    one.loc[one["method"] == "c", ["n_pairs", "ci_low", "ci_high"]] = [1, float("nan"), float("nan")]
    table, _ = compact_table(one, "spair-71k", 0.1)
    shown = R.to_markdown(table, "")
    row_c = next(line for line in shown.splitlines() if line.startswith("| c "))
    assert "± –" in row_c and "**" not in row_c  # one pair: no interval, and no bold for it
