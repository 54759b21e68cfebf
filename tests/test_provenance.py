"""Results that name what made them: provenance in run.json, labels in every output, compact and
cross-dataset tables, evaluate's per-pair table and run.json, compare on dense runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmarks.run import main as run_cli
from leaderboard.__main__ import main as lb_cli
from loaders.testing import write_pfwillow_root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("prov")
    root = d / "willow"
    write_pfwillow_root(root, subsets=("car(G)",), n_images=3)
    base = ["--dataset", "pf-willow", "--data-root", str(root), "--quiet"]
    assert run_cli(["--matcher", "dift", "--preset", "tiny", "--out", str(d / "run-a"), *base]) == 0
    assert run_cli(["--matcher", "dift", "--preset", "tiny", "--set", "t=101", "--out", str(d / "run-c"), *base]) == 0
    assert run_cli(["--matcher", "patch", "--out", str(d / "run-b"), *base]) == 0
    return d


def test_run_json_records_provenance(runs):
    a = json.loads((runs / "run-a" / "run.json").read_text())["provenance"]
    assert a["label"] == "dift (preset tiny; random weights: tiny)" and a["random_weights"] == ["tiny"]
    assert a["weights"] == {"model_id": "tiny"} and a["changed"] == {} and len(a["run_id"]) == 7
    assert a["default_readout"] == "upsampled-nn"
    c = json.loads((runs / "run-c" / "run.json").read_text())["provenance"]
    assert c["changed"] == {"t": 101} and "t=101" in c["label"]
    b = json.loads((runs / "run-b" / "run.json").read_text())["provenance"]
    assert b["label"] == "patch" and b["random_weights"] == []


def test_every_output_names_what_made_the_rows(runs, tmp_path):
    out = tmp_path / "lb"
    assert lb_cli(["build", str(runs / "run-a"), str(runs / "run-b"), str(runs / "run-c"), "--out", str(out),
                   "--format", "md,csv,tex,html", "--label", f"{runs / 'run-b'}=Patch baseline"]) == 0
    md = (out / "pf-willow.md").read_text()
    tex = (out / "pf-willow.tex").read_text()
    for text in (md, tex):
        assert "dift (preset tiny; random weights: tiny)" in text  # the random (tiny) weights are said
        assert "t=101" in text  # two DIFT runs that differ only in t read differently
        assert "Patch baseline" in text and "| patch " not in text  # the display label replaces the name
    assert "$\\pm$" in tex and "\\textbf{" in tex and "+-" not in tex and "\\label{tab:pf-willow-pck}" in tex
    assert " ± " in md and "**" in md
    ids = {json.loads((runs / r / "run.json").read_text())["provenance"]["run_id"] for r in ("run-a", "run-b", "run-c")}
    full_md = (out / "pf-willow-full.md").read_text()
    assert all(i in full_md for i in ids) and not any(i in md for i in ids)  # run ids in the full tables only
    html = (out / "index.html").read_text()
    assert html.count("<html") == 1 and "<script src" not in html and "<link" not in html  # one self-contained file
    assert "random weights: tiny" in html and "Patch baseline" in html
    assert (out / "pf-willow-pck-vs-alpha.pdf").read_bytes()[:4] == b"%PDF"
    assert b"<svg" in (out / "pf-willow-categories.svg").read_bytes()[:400]
    full = pd.read_csv(out / "pf-willow-wide.csv")
    assert set(full[full.kind == "measured"]["weights"]) == {"model_id=tiny", "none"}
    # a label for a folder that was not given is an error, not silently ignored
    assert lb_cli(["build", str(runs / "run-a"), "--out", str(tmp_path / "x"), "--label", "nope=Name"]) == 2


def test_figures_series_are_distinct_past_ten():
    from leaderboard.plots import MARKERS, style

    colors = [f"c{i}" for i in range(10)]
    looks = {style(i, colors)[:2] for i in range(10 * len(MARKERS))}
    assert len(looks) == 10 * len(MARKERS)


def test_compare_dense_runs_with_their_own_readouts(runs, capsys):
    assert lb_cli(["compare", str(runs / "run-a"), str(runs / "run-b")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("A: dift (preset tiny; random weights: tiny) [run-a], readout upsampled-nn")
    assert lines[1].startswith("B: patch [run-b], readout nn") and "each run's own readout" in lines[1]
    assert "protocol sd4match" in out  # the dataset's main protocol
    # an explicit readout is used for both
    assert lb_cli(["compare", str(runs / "run-a"), str(runs / "run-b"), "--readout", "soft-argmax"]) == 0
    assert "readout soft-argmax" in capsys.readouterr().out


def test_evaluate_writes_per_pair_and_run_json(runs, tmp_path, capsys):
    from benchmarks.evaluate import main as eval_cli

    out = tmp_path / "rescored"
    assert eval_cli([str(runs / "run-a" / "predictions.parquet"), "--dataset", "pf-willow", "--data-root",
                     str(runs / "willow"), "--protocol", "dift", "--out", str(out)]) == 0
    per = pd.read_parquet(out / "per_pair.parquet")
    assert {"pair_id", "readout", "protocol", "alpha", "fraction_correct"} <= set(per.columns)
    assert set(per["protocol"]) == {"dift"}
    record = json.loads((out / "run.json").read_text())
    assert record["provenance"]["label"].startswith("dift (preset tiny") and record["protocols"][0]["name"] == "dift"
    # the re-scored protocol can be compared with another run
    assert lb_cli(["compare", str(out), str(runs / "run-b"), "--protocol", "dift"]) == 0
    assert "readout upsampled-nn" in capsys.readouterr().out
    # and goes through the leaderboard
    assert lb_cli(["build", str(out), "--out", str(tmp_path / "lb")]) == 0
