"""Leaderboards and match drawings from real run folders (identity matcher on fixtures)."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from benchmarks.run import main as run_cli
from benchmarks.visualize import main as vis_cli
from leaderboard.__main__ import main as lb_cli
from leaderboard.core import read_reported
from loaders.testing import write_pfwillow_root, write_spair_root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    write_spair_root(d / "spair", {"test": 36}, seed=5, images=True)
    write_pfwillow_root(d / "willow")
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(d / "spair"),
                    "--out", str(d / "r1"), "--quiet"]) == 0
    assert run_cli(["--matcher", "identity", "--dataset", "pf-willow", "--data-root", str(d / "willow"),
                    "--out", str(d / "r2"), "--quiet"]) == 0
    return d


def test_build_files_and_reported_rows(runs, tmp_path):
    out = tmp_path / "lb"
    assert lb_cli(["build", str(runs / "r1"), str(runs / "r2"), "--out", str(out), "--format", "md,csv,tex"]) == 0
    names = sorted(p.name for p in out.iterdir())
    per = [f"{ds}{s}" for ds in ("pf-willow", "spair-71k")
           for s in ("-categories.pdf", "-categories.png", "-categories.svg", "-full.csv", "-full.md", "-full.tex",
                     "-pck-vs-alpha.pdf", "-pck-vs-alpha.png", "-pck-vs-alpha.svg", "-wide.csv", ".csv", ".md", ".tex")]
    assert names == sorted(["all-datasets.csv", "all-datasets.md", "all-datasets.tex", *per])
    wide = pd.read_csv(out / "spair-71k-wide.csv")
    rep = wide[wide.kind == "reported"]
    cpm = rep[(rep.method == "SD4Match-CPM") & (rep.protocol == "sd4match")]
    assert cpm["all@0.1"].item() == 75.5 and cpm["bird@0.1"].item() == 85.7
    meas = wide[wide.kind == "measured"]
    assert set(meas.method) == {"identity"} and set(meas.protocol) == {"sd4match", "dift", "geoaware", "original"}
    # measured values equal the run's own results.csv
    res = pd.read_csv(runs / "r1" / "results.csv")
    res = res[(res.metric == "pck") & (res.keypoints == "all")]
    r = res[(res.protocol == "dift") & (res["aggregate"] == "point") & (res.category == "all") & (res.alpha == 0.1)]
    m = meas[(meas.protocol == "dift") & (meas["aggregate"] == "point")]
    assert m["all@0.1"].item() == round(r.pck.item() * 100, 1)
    # paper-style tables: one per protocol, its protocol in the caption, presets with equal numbers merged
    paper = pd.read_csv(out / "spair-71k-full.csv")
    assert list(paper.columns[:7]) == ["table", "kind", "method", "readout", "precision", "tta", "run"]
    assert {"All", "All +-", "pairs", "aeroplane", "tvmonitor"} <= set(paper.columns)
    tables = sorted(set(paper.table))
    # image (dift = original), point (dift = original), category, resized-768 image, GeoAware-SC's published
    # number under its own (partly unconfirmed) protocol, and the baselines' published numbers in the padded
    # (isotropic) frame per image and per point; Unified-SC's 840 anisotropic frame and DistillDIFT's
    # unconfirmed frame and threshold each stand alone, never beside a measured row
    assert len(tables) == 9 and any("aggregate unconfirmed" in t for t in tables)
    assert any("frame resized-840x840" in t for t in tables) and any("threshold unconfirmed" in t for t in tables)
    iso = [t for t in tables if "frame isotropic, threshold bbox, aggregate point" in t]
    assert len(iso) == 1
    dino = paper[(paper.table == iso[0]) & (paper.method == "DINOv2-B/14 NN")]
    assert dino["All"].item() == 55.6 and dino["tvmonitor"].item() == 24.2 and dino["pairs"].item() == "published"
    geo = paper[paper.method == "GeoAware-SC zero-shot"]
    assert geo["tta"].item() == "flip=adaptive-mask" and geo["All"].item() == 65.4
    merged = [t for t in tables if "presets dift, original" in t and "aggregate image" in t]
    assert len(merged) == 1 and len(paper[(paper.table == merged[0]) & (paper.kind == "measured")]) == 1
    cpm_row = paper[(paper.method == "SD4Match-CPM") & paper.table.str.contains("resized-768x768")]
    assert cpm_row["All"].item() == 75.5 and cpm_row["bird"].item() == 85.7
    md = (out / "spair-71k-full.md").read_text()
    assert "| SD4Match-CPM [reported] |" in md.replace("  ", "") and "| identity " in md
    assert "**spair-71k: PCK@0.1 (%). Protocol (presets sd4match): frame resized-768x768, threshold bbox" in md
    assert "summary, category All at every alpha" in md and "PCK@0.05" in md and "PCK@0.15" in md
    tex = (out / "spair-71k-full.tex").read_text()
    assert tex.count("\\begin{tabular}") == len(tables) + 1 and "\\toprule" in tex and "resized-768x768" in tex
    assert "bbox\\_kp" not in tex and "\\%" in tex
    # the compact table: each method once, at the dataset's main protocol, "value ± half-width", best in bold
    compact = (out / "spair-71k.md").read_text()
    assert "protocol sd4match: frame resized-768x768, threshold bbox, aggregate image" in compact
    assert "d ≤ alpha·T" in compact and "**75.5**" in compact and " ± " in compact
    ctex = (out / "spair-71k.tex").read_text()
    assert "\\textbf{75.5}" in ctex and "$\\pm$" in ctex and "\\label{tab:spair-71k-pck}" in ctex and "+-" not in ctex
    assert "\\leq" in ctex  # the comparison rule in the caption
    cross = pd.read_csv(out / "all-datasets.csv")
    assert {"spair-71k", "pf-willow"} <= set(cross.columns) and "identity" in set(cross["Method"])
    with Image.open(out / "spair-71k-pck-vs-alpha.png") as im:
        assert im.size[0] > 300
    # pf-willow: no reported rows invented
    assert set(pd.read_csv(out / "pf-willow-wide.csv").kind) == {"measured"}


def test_rebuild_is_byte_identical(runs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert lb_cli(["build", str(runs / "r1"), str(runs / "r2"), "--out", str(a)]) == 0
    assert lb_cli(["build", str(runs / "r2"), str(runs / "r1"), "--out", str(b)]) == 0
    for f in a.iterdir():
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name


def test_bad_run_dir(tmp_path, capsys):
    assert lb_cli(["build", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder written by benchmarks.run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_reported_file_has_sources():
    rep = read_reported()
    assert rep["run"].notna().all() and rep["pck"].between(0, 1).all()
    cpm = rep[(rep.method == "SD4Match-CPM") & (rep.dataset == "spair-71k") & (rep.alpha == 0.1) & (rep.category != "all")]
    assert len(cpm) == 18


def test_visualize_pngs(runs, tmp_path, capsys):
    out = tmp_path / "vis"
    assert vis_cli([str(runs / "r1"), "--data-root", str(runs / "spair"), "--pairs", "3", "--worst", "--out", str(out)]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 3
    with Image.open(files[0]) as im:
        assert im.size[0] > 200
    assert vis_cli([str(runs / "r1"), "--data-root", str(runs / "spair"), "--category", "cat", "--out", str(out / "c")]) == 0
    assert len(list((out / "c").glob("*.png"))) == 2  # 36 pairs over 18 categories
    assert vis_cli([str(runs / "r1"), "--data-root", str(runs / "spair"), "--category", "unicorn"]) == 2
    assert "unknown category 'unicorn'" in capsys.readouterr().err
