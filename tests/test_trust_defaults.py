"""Defaults that cannot put a wrong number in a paper: no readout chosen on the test split unless
asked (and then marked), one sample for every matcher, no silent overwrite, every weight named by
its content, checkpoints that carry their feature settings, and the hostile names and files of
the newer surfaces (each a one-line error or a bounded, plain-text name)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.run import main as run_cli
from leaderboard.__main__ import main as lb_cli
from loaders.testing import write_pfwillow_root, write_spair_root

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def spair(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust") / "spair"
    write_spair_root(root, {"test": 36}, seed=1, images=True)
    return root


@pytest.fixture(scope="module")
def willow(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust-willow") / "willow"
    write_pfwillow_root(root, subsets=("car(G)",), n_images=3)
    return root


@pytest.fixture(scope="module")
def patch_run(spair, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch") / "run"
    assert run_cli(["--matcher", "patch", "--preset", "tiny", "--dataset", "spair-71k", "--data-root", str(spair),
                    "--out", str(out), "--quiet"]) == 0
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# ------------------------------------------------------------------------------------------ 1. readouts
def _rigged(patch_run: Path, to: Path) -> Path:
    """A copy of the patch run whose own readout (nn) is the worst and soft-argmax the best."""
    run = _copy(patch_run, to)
    df = pd.read_csv(run / "results.csv")
    df.loc[df.readout == "nn", ["pck", "ci_low", "ci_high"]] = [0.1, 0.05, 0.15]
    df.loc[df.readout == "soft-argmax", ["pck", "ci_low", "ci_high"]] = [0.9, 0.85, 0.95]
    df.to_csv(run / "results.csv", index=False)
    return run


def test_compact_tables_take_each_methods_own_readout_not_the_best_on_test(patch_run, tmp_path):
    run = _rigged(patch_run, tmp_path / "rigged")
    assert json.loads((run / "run.json").read_text())["provenance"]["default_readout"] == "nn"
    assert lb_cli(["build", str(run), "--out", str(tmp_path / "own"), "--format", "md,csv,tex"]) == 0
    md = (tmp_path / "own" / "spair-71k.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| patch"))
    assert "10.0" in row and "90.0" not in row  # the own readout (nn), although soft-argmax scores higher
    assert "own readout" in md and "selected on the test split" not in md
    cross = (tmp_path / "own" / "all-datasets.md").read_text()
    assert "10.0" in cross and "90.0" not in cross
    full = (tmp_path / "own" / "spair-71k-full.md").read_text()
    assert "90.0" in full  # every other readout stays in the full tables
    # best: a choice on the test split, marked on the row and in the caption
    assert lb_cli(["build", str(run), "--out", str(tmp_path / "best"), "--format", "md", "--readout", "best"]) == 0
    md = (tmp_path / "best" / "spair-71k.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| patch"))
    assert "90.0" in row and "selected on the test split" in md and "soft-argmax *" in md
    # a named readout
    assert lb_cli(["build", str(run), "--out", str(tmp_path / "named"), "--format", "md", "--readout",
                   "kernel-soft-argmax"]) == 0
    assert "readout kernel-soft-argmax" in (tmp_path / "named" / "spair-71k.md").read_text()


def test_figures_draw_the_own_readout(patch_run, tmp_path):
    from leaderboard.core import collect
    from leaderboard.plots import headline

    run = _rigged(patch_run, tmp_path / "rigged")
    d = collect([run])
    d = d[d["kind"] == "measured"]
    assert set(headline(d, 0.1)["readout"]) == {"nn"}
    assert set(headline(d, 0.1, readout="best")["readout"]) == {"soft-argmax"}


# ------------------------------------------------------------------------------------------- 2. samples
def test_sample_is_the_same_pairs_for_every_matcher_and_seed(spair, tmp_path):
    base = ["--dataset", "spair-71k", "--data-root", str(spair), "--sample", "9", "--quiet"]
    assert run_cli(["--matcher", "identity", "--out", str(tmp_path / "a"), *base]) == 0
    assert run_cli(["--matcher", "patch", "--preset", "tiny", "--seed", "7", "--out", str(tmp_path / "b"), *base]) == 0
    assert run_cli(["--matcher", "identity", "--sample-seed", "1", "--out", str(tmp_path / "c"), *base]) == 0
    ids = {k: set(pd.read_parquet(tmp_path / k / "per_pair.parquet").pair_id) for k in "abc"}
    assert ids["a"] == ids["b"] and len(ids["a"]) == 9  # another matcher, another model seed: the same pairs
    assert ids["c"] != ids["a"]  # the sample's own seed draws other pairs
    rec = json.loads((tmp_path / "b" / "run.json").read_text())
    assert rec["sample_seed"] == 0 and rec["subset"] == "sample 9 (seed 0)" and rec["seed"] == 7
    # the default folder name says the sample and its seed, never the model's
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert run_cli(["--matcher", "identity", *base]) == 0
    finally:
        os.chdir(cwd)
    assert [p.name.endswith("-sample9s0") for p in (tmp_path / "runs").iterdir()] == [True]


def test_compare_and_leaderboard_refuse_different_pair_sets_unless_asked(spair, tmp_path, capsys):
    base = ["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair), "--sample", "12", "--quiet"]
    assert run_cli([*base, "--out", str(tmp_path / "a")]) == 0
    assert run_cli([*base, "--sample-seed", "5", "--out", str(tmp_path / "b")]) == 0
    shared = len(set(pd.read_parquet(tmp_path / "a" / "per_pair.parquet").pair_id)
                 & set(pd.read_parquet(tmp_path / "b" / "per_pair.parquet").pair_id))
    capsys.readouterr()
    assert lb_cli(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = _one_line_error(capsys)
    assert f"evaluated different pairs (A: 12, B: 12, shared: {shared})" in err and "--shared-pairs" in err
    assert lb_cli(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--shared-pairs"]) == 0
    assert f"{shared} shared pairs only (A: 12, B: 12)" in capsys.readouterr().out
    assert lb_cli(["build", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "lb")]) == 2
    err = _one_line_error(capsys)
    assert f"cover different pairs (12 and 12, {shared} shared" in err and "--mixed-pairs" in err
    assert not (tmp_path / "lb").exists()
    assert lb_cli(["build", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "lb"),
                   "--mixed-pairs"]) == 0
    assert "not ranked" in (tmp_path / "lb" / "spair-71k.md").read_text()


# ------------------------------------------------------------------------------------------ 3. overwrite
def test_a_finished_run_is_never_overwritten_without_overwrite(spair, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair), "--out", str(out), "--quiet"]
    assert run_cli(base) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    for extra in ([], ["--protocol", "sd4match"], ["--limit", "3"]):  # the same settings or others
        assert run_cli(base + extra) == 2
        err = _one_line_error(capsys)
        assert "already holds a finished run" in err and "--overwrite" in err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        assert not list(out.glob(".partial-*"))
    assert run_cli(base + ["--protocol", "sd4match", "--overwrite"]) == 0
    assert set(pd.read_csv(out / "results.csv").protocol) == {"sd4match"}


def test_an_interrupted_run_before_its_first_shard_leaves_no_folder(spair, tmp_path, monkeypatch, capsys):
    import benchmarks.run as R

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "predict_shards", stop)
    out = tmp_path / "killed"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair), "--out", str(out),
                    "--quiet"]) == 130
    assert not out.exists()  # no folder holding only a lock or an empty partial


# --------------------------------------------------------------------------------------------- 4. weights
def test_local_weights_are_named_by_content(tmp_path):
    from benchmarks.provenance import provenance
    from benchmarks.registry import load_class

    folder = tmp_path / "my-dinov2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-1")
    cls = load_class("dinov2")
    cfg = cls.Config(dino_id=str(folder))
    p1 = provenance("dinov2", cls, None, cfg, "0" * 12)
    name = p1["weights"]["dino_id"]
    assert name.startswith("my-dinov2@") and len(name.split("@")[1]) == 7
    assert name in p1["label"] and p1["changed"]["dino_id"] == name and f"dino_id={name}" in p1["marks"]
    (folder / "model.safetensors").write_bytes(b"weights-2")
    p2 = provenance("dinov2", cls, None, cfg, "0" * 12)
    assert p2["weights"]["dino_id"] != name  # the same folder name, other weights: another name
    hub = provenance("dinov2", cls, None, cls.Config(), "0" * 12)
    assert hub["marks"] == [] and "dino_id" not in hub["changed"]  # the default hub id is no change


# ----------------------------------------------------------------------------------------- 5. checkpoints
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from sd4match import checkpoint as ckpt
    from sd4match.backbones.tiny_sd import TINY_TEXT_DIM
    from sd4match.prompts import build_prompt

    file = tmp_path_factory.mktemp("ckpt") / "prompt.safetensors"
    ckpt.save(build_prompt("single", TINY_TEXT_DIM, []), file, variant="single", text_width=TINY_TEXT_DIM,
              config={"model_id": "tiny", "dino_id": "tiny", "image_size": 48, "up_block": 1, "t": 261, "ensemble": 1})
    return file


def test_a_checkpoint_carries_its_feature_settings(tiny_ckpt, willow, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--matcher", "single", "--checkpoint", str(tiny_ckpt), "--dataset", "pf-willow", "--data-root",
                    str(willow), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    for said in ("using preset tiny", "using model_id 'tiny'", "using image_size 48"):
        assert said in err
    rec = json.loads((out / "run.json").read_text())
    assert rec["preset"] == "tiny" and rec["config"]["image_size"] == 48 and rec["config"]["model_id"] == "tiny"
    assert rec["config"]["t"] == 50  # t and ensemble follow SD4Match's test protocol, not its training
    prov = rec["provenance"]
    assert prov["weights"]["checkpoint"].startswith("prompt.safetensors@")
    assert any(m.startswith("checkpoint=prompt.safetensors@") for m in prov["marks"])
    # --label renames the run but keeps the weights' marks
    assert lb_cli(["build", str(out), "--out", str(tmp_path / "lb"), "--label", f"{out}=My prompt"]) == 0
    md = (tmp_path / "lb" / "pf-willow.md").read_text()
    assert "My prompt (checkpoint=prompt.safetensors@" in md and "random weights: tiny" in md


@pytest.mark.parametrize("extra,msg", [
    (["--set", "image_size=64"], "image_size=64 contradicts --checkpoint"),
    (["--set", "up_block=2"], "up_block=2 contradicts --checkpoint"),
    (["--preset", "fast"], "--preset fast contradicts --checkpoint"),
])
def test_a_setting_that_contradicts_the_checkpoint_is_refused_before_the_model(tiny_ckpt, willow, tmp_path, capsys,
                                                                               extra, msg, monkeypatch):
    import sd4match.methods.sd_base as base

    monkeypatch.setattr(base, "load_components", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "refused"
    assert run_cli(["--matcher", "single", "--checkpoint", str(tiny_ckpt), *extra, "--dataset", "pf-willow",
                    "--data-root", str(willow), "--out", str(out)]) == 2
    assert msg in _one_line_error(capsys)
    assert not out.exists()


# ---------------------------------------------------------------------------------------- 12. hostile
def test_hostile_labels_in_figures_and_huge_names_are_bounded(patch_run, tmp_path, capsys):
    run = _copy(patch_run, tmp_path / "math")
    rec = json.loads((run / "run.json").read_text())
    rec["provenance"]["label"] = "$\\foo{x}$ and $x^"
    (run / "run.json").write_text(json.dumps(rec))
    rep = tmp_path / "reported.csv"
    pd.DataFrame([{"method": "$\\bar{$", "dataset": "spair-71k", "split": "test", "protocol": "sd4match",
                   "threshold": "bbox-kp", "frame": "resized-768x768", "aggregate": "image", "readout": "nn",
                   "category": "all", "alpha": 0.1, "pck": 0.5, "source": "paper"}]).to_csv(rep, index=False)
    assert lb_cli(["build", str(run), "--out", str(tmp_path / "lb"), "--reported", str(rep), "--format", "md",
                   "--label", f"{run}=$\\frac{{1}}{{0}}$"]) == 0
    assert (tmp_path / "lb" / "spair-71k-pck-vs-alpha.png").stat().st_size > 0
    # a 100,000-character label: cut with an ellipsis, the build's memory bounded (a 2 GiB address space)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from leaderboard.__main__ import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "build", str(run), "--out", str(tmp_path / "big"), "--format",
                           "md,html", "--figures", "png", "--label", f"{run}={'x' * 100_000}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "big" / "spair-71k.md").read_text()
    assert "x" * 150 + "…" in md and "x" * 200 not in md


def test_duplicate_rows_are_one_line_errors(patch_run, tmp_path, capsys):
    run = _copy(patch_run, tmp_path / "dup")
    df = pd.read_csv(run / "results.csv")
    pd.concat([df, df.iloc[:1]]).to_csv(run / "results.csv", index=False)
    assert lb_cli(["build", str(run), "--out", str(tmp_path / "lb")]) == 2
    err = _one_line_error(capsys)
    assert "results.csv" in err and "repeats the key" in err and "readout=" in err
    rep = tmp_path / "reported.csv"
    row = {"method": "X", "dataset": "spair-71k", "split": "test", "protocol": "sd4match", "threshold": "bbox-kp",
           "frame": "resized-768x768", "aggregate": "image", "readout": "nn", "category": "all", "alpha": 0.1,
           "pck": 0.5, "source": "paper"}
    pd.DataFrame([row, row]).to_csv(rep, index=False)
    assert lb_cli(["build", str(patch_run), "--out", str(tmp_path / "lb"), "--reported", str(rep)]) == 2
    assert "reported.csv: row 3 repeats the key" in _one_line_error(capsys)


@pytest.mark.parametrize("content", ["null", "{not json", "[1, 2]", '{"matcher": 5}'])
def test_evaluate_refuses_a_damaged_run_json(patch_run, tmp_path, capsys, content):
    run = _copy(patch_run, tmp_path / "r")
    (run / "run.json").write_text(content)
    assert __import__("benchmarks.evaluate", fromlist=["main"]).main(
        [str(run / "predictions.parquet"), "--dataset", "spair-71k", "--data-root", str(Path(patch_run).parent)]) == 2
    assert "run.json" in _one_line_error(capsys)
    assert not (run / "evaluate").exists()


def test_evaluate_without_run_json_says_so_and_prints_the_run_summary(patch_run, spair, tmp_path, capsys):
    from benchmarks.evaluate import main as evaluate_cli

    run = _copy(patch_run, tmp_path / "r")
    (run / "run.json").unlink()
    assert evaluate_cli([str(run / "predictions.parquet"), "--dataset", "spair-71k", "--data-root", str(spair)]) == 0
    out = capsys.readouterr().out
    assert "provenance missing" in out and "PCK (%), protocol sd4match" in out and "± = 95% bootstrap" in out
    assert json.loads((run / "evaluate" / "run.json").read_text())["provenance_missing"] is True


def test_empty_alphas_is_an_error(spair, tmp_path, capsys):
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair), "--alphas", "",
                    "--out", str(tmp_path / "x")]) == 2
    assert "--alphas must be numbers in (0, 1]" in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()


def test_list_matchers_into_a_full_or_closed_output(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--list-matchers"], stdout=full, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: cannot write to standard output")
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    proc = subprocess.run(f"{sys.executable} -m benchmarks.run --list-matchers | head -1", shell=True, cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr and "Exception" not in proc.stderr


def test_spair_u_annotation_that_is_not_a_file_is_named(tmp_path):
    from loaders import DatasetError
    from loaders.spairu import load

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 4}, seed=0)
    names = (root / "Layout" / "large" / "test.txt").read_text().split()
    folder = root / "SPair-U" / "PairAnnotation" / "test"
    folder.mkdir(parents=True)
    shutil.copy(root / "PairAnnotation" / "test" / f"{names[0]}.json", folder / f"{names[0]}.json")
    os.mkfifo(folder / f"{names[1]}.json")
    with pytest.raises(DatasetError, match="is not a regular file"):
        load(root, "test")


def test_a_real_width_head_on_the_tiny_preset_is_one_line(willow, tmp_path, capsys):
    import torch

    from sd4match.methods.geoaware_head import AggregationHead

    head = tmp_path / "head.pth"
    torch.save(AggregationHead().state_dict(), head)  # the real widths: [640, 1280, 1280, 768]
    out = tmp_path / "run"
    assert run_cli(["--matcher", "geoaware-zs", "--preset", "tiny", "--set", f"head={head}", "--dataset", "pf-willow",
                    "--data-root", str(willow), "--out", str(out), "--quiet", "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: ")
    err = err.splitlines()[-1]
    assert not out.exists() and "the head takes inputs of widths [640, 1280, 1280, 768]" in err and "tiny preset" in err


def test_visualize_fits_a_long_title(patch_run, spair, tmp_path):
    from PIL import Image

    from benchmarks.visualize import main as vis_cli

    run = _copy(patch_run, tmp_path / "r")
    rec = json.loads((run / "run.json").read_text())
    rec["provenance"]["label"] = "a very long method label with $math$ " * 6
    (run / "run.json").write_text(json.dumps(rec))
    assert vis_cli([str(run), "--data-root", str(spair), "--pairs", "1", "--out", str(tmp_path / "vis")]) == 0
    png = next((tmp_path / "vis").glob("*.png"))
    with Image.open(png) as im:
        w, h = im.size
        top = np.asarray(im.convert("L"))[: h // 6]
    assert w < 3000  # the title wraps instead of widening the figure
    cols = np.nonzero((top < 128).any(axis=0))[0]
    assert len(cols) and cols.min() > 0 and cols.max() < w - 1  # no title text cut at the figure's edges


@pytest.fixture(scope="module")
def board_rows(patch_run):
    from leaderboard.core import collect

    return collect([patch_run])


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(alphabet=list("<>&!-/\"' scriptSCRIPT=()\\u2028$"), min_size=1, max_size=40),
                      st.sampled_from(["<!--<script>document.title='x'</script>", "</script><script>alert(1)</script>",
                                       "<!--", "a & b > c", "<![CDATA[", "\\u2028</SCRIPT >"])))
def test_html_page_carries_any_name_as_data(board_rows, name):
    """Any text in a method name, a run id or a note reaches the page inside its JSON only as data:
    no '<', '>' or '&' in the embedded element, and the rows parse back to the same text."""
    from leaderboard.html import page

    df = board_rows.copy()
    df["method"] = name
    df["note"] = name
    html = page(df, [], readout=name)
    blob = html.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert not set(blob) & set("<>&")
    rows = json.loads(blob)
    assert rows and all(r["method"] == name for r in rows)
    assert html.count("<script") == 4  # data, main, provenance, the page's own script: nothing injected


def test_the_console_marks_the_methods_own_readout(patch_run):
    from benchmarks.console import run_summary

    prov = json.loads((patch_run / "run.json").read_text())["provenance"]
    text = run_summary(pd.read_csv(patch_run / "results.csv"), "spair-71k", prov, "all", 36)
    rows = [line.split()[0] + (" (own)" if "(own)" in line.split()[:2] else "") for line in text.splitlines()
            if line.strip().startswith(("nn", "soft-argmax", "kernel", "window", "upsampled"))]
    assert "nn (own)" in rows and sum("(own)" in r for r in rows) == 1
