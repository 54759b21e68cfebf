"""``python -m leaderboard explain``: the differences between two runs, and how much of their gap the
protocol and readout explain (re-scored from A's predictions)."""

from __future__ import annotations

import re

from benchmarks.run import main as run_cli
from leaderboard.__main__ import main as lb_cli

from .conftest import shared


def _run(out, *extra, matcher="patch", limit="30"):
    root = shared("PF-WILLOW")
    assert run_cli(["--matcher", matcher, "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
                    "--limit", limit, "--out", str(out), "--quiet", *extra]) == 0


def _points(text: str, pattern: str) -> float:
    return float(re.search(pattern, text).group(1))


def test_a_gap_of_protocol_and_readout_is_explained_in_full(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, "--readout", "upsampled-nn,nn", "--protocol", "sd4match")  # headline: sd4match, nn (the matcher's own)
    _run(b, "--readout", "upsampled-nn", "--protocol", "dift")  # headline: dift, upsampled-nn
    capsys.readouterr()
    assert lb_cli(["explain", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    table = out.split("PCK@0.1")[0]
    assert "readout (headline)" in table and "protocol (headline)" in table and "setting readout" in table
    assert "seed" not in table and "weights" not in table  # nothing else differs
    gap = _points(out, r"B - A = ([-+]\d+\.\d) points")
    closed = _points(out, r"protocol and readout: ([-+]\d+\.\d) of the")
    rest = _points(out, r"the other differences: ([-+]\d+\.\d)")
    assert abs(gap) >= 1.0 and closed == gap and rest == 0.0
    assert "from A's predictions.parquet" in out  # A never computed the dift protocol: re-scored


def test_a_gap_of_another_seed_stays_unexplained(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, matcher="dift", limit="6")
    _run(b, "--seed", "1", matcher="dift", limit="6")
    capsys.readouterr()
    assert lb_cli(["explain", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"setting seed\s+0\s+1", out)
    assert abs(_points(out, r"B - A = ([-+]\d+\.\d) points")) > 0
    assert "protocol and readout explain none of the gap" in out


def test_explain_errors_are_one_line(tmp_path, capsys):
    a = tmp_path / "a"
    _run(a, limit="4")
    capsys.readouterr()
    assert lb_cli(["explain", str(a), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
