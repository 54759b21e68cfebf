"""The run and evaluate CLIs end to end with the identity matcher."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import loaders
from benchmarks import predictions as P
from benchmarks.evaluate import main as evaluate_cli
from benchmarks.run import main as run_cli
from loaders.testing import write_pfwillow_root, write_spair_root

from .conftest import shared


@pytest.fixture
def spair_root(tmp_path):
    write_spair_root(tmp_path / "spair", {"test": 40}, seed=3)
    return tmp_path / "spair"


def test_identity_run_outputs(spair_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root),
                    "--out", str(out), "--quiet"]) == 0
    res = pd.read_csv(out / "results.csv")
    for col in ("matcher", "dataset", "split", "protocol", "threshold", "frame", "aggregate", "readout",
                "category", "alpha", "pck", "n_pairs", "n_kps"):
        assert col in res.columns
    assert set(res.protocol) == {"sd4match", "dift", "geoaware", "original"}
    assert set(res.frame) == {"original", "resized-768x768", "isotropic"}
    assert set(res.threshold) == {"bbox"}
    assert set(res["aggregate"]) == {"image", "point", "category"}
    plain = res[(res.metric == "pck") & (res.keypoints == "all")]
    assert res.pck.between(0, 1).all() and (plain[plain.category == "all"].n_pairs == 40).all()
    # PCK-dagger and the geometry-aware subsets stand beside plain PCK, never above it in count or score
    assert set(res.metric) == {"pck", "pck-dagger"} and set(res.keypoints) == {"all", "geo-aware", "geo-aware-release"}
    key = ["protocol", "aggregate", "readout", "category", "alpha"]
    whole = plain[plain.category == "all"].set_index(key)
    dag = res[(res.metric == "pck-dagger") & (res.category == "all")].set_index(key)
    assert (dag.pck <= whole.pck.reindex(dag.index) + 1e-9).all() and (dag.n_kps == whole.n_kps.reindex(dag.index)).all()
    geo = res[(res.keypoints == "geo-aware") & (res.category == "all")].set_index(key)
    assert (geo.n_kps < whole.n_kps.reindex(geo.index)).all() and (geo.n_kps > 0).all()
    br = pd.read_csv(out / "breakdowns.csv")
    assert {"viewpoint_variation", "scale_variation", "truncation", "occlusion", "kps_id"} <= set(br.breakdown)
    run = json.loads((out / "run.json").read_text())
    for key in ("config", "config_hash", "versions", "git", "device", "seed", "timings_s", "protocols"):
        assert key in run
    # the identity prediction, checked by hand for the first pair
    table = loaders.load("spair-71k", spair_root, "test")
    pred = pq.read_table(out / "predictions.parquet")
    r = table.slice(0, 1).to_pylist()[0]
    expect = np.array(r["src_kps"]) * [r["trg_width"] / r["src_width"], r["trg_height"] / r["src_height"]]
    got = np.array(pred.filter(pc.equal(pred.column("pair_id"), r["pair_id"])).column("pred_kps")[0].as_py())
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert not list(out.glob(".partial-*"))


def test_evaluate_recomputes_same_numbers(spair_root, tmp_path):
    out = tmp_path / "run"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root),
                    "--out", str(out), "--quiet"]) == 0
    first = (out / "results.csv").read_text()
    assert evaluate_cli([str(out / "predictions.parquet"), "--dataset", "spair-71k", "--data-root", str(spair_root),
                         "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "results.csv").read_text() == first
    assert evaluate_cli([str(out / "predictions.parquet"), "--dataset", "spair-71k", "--data-root", str(spair_root),
                         "--out", str(tmp_path / "ev2"), "--protocol", "sd4match"]) == 0
    assert set(pd.read_csv(tmp_path / "ev2" / "results.csv").protocol) == {"sd4match"}


def test_limit_and_resume(spair_root, tmp_path):
    out = tmp_path / "run"
    args = ["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root), "--out", str(out),
            "--quiet", "--limit", "7"]
    assert run_cli(args) == 0
    assert pq.read_table(out / "predictions.parquet").num_rows == 7
    assert json.loads((out / "run.json").read_text())["timings_s"]["resumed_shards"] == 0


@pytest.mark.parametrize("argv,msg", [
    (["--matcher", "idenity"], "unknown matcher 'idenity' (did you mean 'identity'?); valid: "),
    (["--matcher", "identity", "--dataset", "spair"], "unknown dataset 'spair'"),
    (["--matcher", "identity", "--split", "train"], "unknown split 'train' for spair-71k; valid: trn, val, test"),
    (["--matcher", "identity", "--protocol", "paper"], "unknown protocol 'paper'; valid: sd4match, dift, original"),
    (["--matcher", "identity", "--model-id", "x/y"], "matcher 'identity' has no setting 'model_id'"),
    (["--matcher", "identity", "--limit", "0"], "--limit must be a positive number"),
])
def test_run_bad_values(spair_root, tmp_path, capsys, argv, msg):
    base = {"--dataset": "spair-71k", "--data-root": str(spair_root), "--out": str(tmp_path / "o")}
    for k, v in base.items():
        if k not in argv:
            argv = argv + [k, v]
    assert run_cli(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "results.csv").exists()


def test_list_matchers(capsys):
    assert run_cli(["--list-matchers"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("identity", "dift", "dinov2", "sd-dino", "geoaware-zs"))


def test_predictions_rejected_naming_first_bad_pair(spair_root, tmp_path, capsys):
    table = loaders.load("spair-71k", spair_root, "test")
    ids = table.column("pair_id").to_pylist()
    kps = [np.array(k) for k in table.column("trg_kps").to_pylist()]
    good = P.make_table(ids, "nn", kps)
    rows, xy = P.align(good, table)
    assert rows.num_rows == 40 and np.allclose(xy["nn"], np.concatenate(kps))
    bad = [k.copy() for k in kps]
    bad[5] = bad[5][:-1] if len(bad[5]) > 1 else np.zeros((2, 2))
    with pytest.raises(P.PredictionError, match=rf"pair '{ids[5]}' \(readout 'nn'\) has \d+ predicted keypoints, the dataset has"):
        P.align(P.make_table(ids, "nn", bad), table)
    with pytest.raises(P.PredictionError, match="pair 'nope' .* is not in the dataset split"):
        P.align(P.make_table(["nope"], "nn", [kps[0]]), table)
    nan = [k.copy() for k in kps]
    nan[2][0, 0] = np.nan
    with pytest.raises(P.PredictionError, match=rf"pair '{ids[2]}' .* non-finite"):
        P.align(P.make_table(ids, "nn", nan), table)
    path = tmp_path / "bad.parquet"
    pq.write_table(P.make_table(ids, "nn", bad), path)
    assert evaluate_cli([str(path), "--dataset", "spair-71k", "--data-root", str(spair_root), "--out", str(tmp_path / "e")]) == 2
    assert ids[5] in capsys.readouterr().err
    assert not (tmp_path / "e" / "results.csv").exists()


def test_identity_on_real_pfwillow(tmp_path):
    root = shared("PF-WILLOW")
    out = tmp_path / "run"
    assert run_cli(["--matcher", "identity", "--dataset", "pf-willow", "--data-root", str(root), "--out", str(out), "--quiet"]) == 0
    res = pd.read_csv(out / "results.csv")
    assert set(res.keypoints) == {"all"}  # PF-Willow has no geometry-aware table
    res = res[res.metric == "pck"]
    allr = res[(res.category == "all") & (res.protocol == "dift") & (res["aggregate"] == "image")]
    assert list(allr.n_pairs) == [900] * 3 and set(allr.threshold) == {"bbox-kp"}
    # a floor, well below real matchers: identity PCK@0.1 on PF-Willow is low but not zero
    assert 0.05 < allr[allr.alpha == 0.1].pck.item() < 0.6


def test_pfwillow_fixture_run(tmp_path):
    write_pfwillow_root(tmp_path / "w")
    assert run_cli(["--matcher", "identity", "--dataset", "pf-willow", "--data-root", str(tmp_path / "w"),
                    "--out", str(tmp_path / "o"), "--quiet"]) == 0


def test_profile_command(capsys):
    from benchmarks.profile import main as profile_cli

    assert profile_cli(["--matcher", "dift", "--preset", "tiny", "--pairs", "3"]) == 0
    out = capsys.readouterr().out
    # the preset it ran is described, not only the method's defaults
    assert out.startswith("matcher dift (preset tiny; random weights: tiny); preset tiny sets model_id=tiny")
    assert "FLOPs per image:" in out and "images/s for features" in out and "of peak" in out
    assert "projected SPair-71k test split (12234 pairs, 481 images)" in out
    flops = float(out.split("FLOPs per image: ")[1].split(" GFLOP")[0].replace(",", ""))
    assert flops > 0
    assert profile_cli(["--matcher", "identity", "--pairs", "3"]) == 0
    assert "pairs/s (no model, no FLOPs)" in capsys.readouterr().out
    assert profile_cli(["--matcher", "dift", "--preset", "tiny", "--pairs", "129"]) == 2


def test_batches_pipelined_in_order():
    """The runner submits batch k+1 before collecting batch k, and yields results in order."""
    from benchmarks.matchers.base import Matcher
    from benchmarks.run import pipelined

    log = []

    class Recorder(Matcher):
        def prefetch(self, pairs):
            return f"data-{pairs[0]}"

        def submit(self, pairs, data=None):
            log.append(("submit", pairs[0], data))

            def finish():
                log.append(("finish", pairs[0]))
                return {"default": pairs}
            return finish

    out = list(pipelined(Recorder(), [(0, ["a"]), (1, ["b"]), (2, ["c"])]))
    assert out == [((0, ["a"]), {"default": ["a"]}), ((1, ["b"]), {"default": ["b"]}), ((2, ["c"]), {"default": ["c"]})]
    assert log == [("submit", "a", "data-a"), ("submit", "b", "data-b"), ("finish", "a"),
                   ("submit", "c", "data-c"), ("finish", "b"), ("finish", "c")]
    assert list(pipelined(Recorder(), [])) == []


def test_evaluate_never_replaces_a_runs_results_silently(spair_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root),
                    "--out", str(out), "--quiet"]) == 0
    before = (out / "results.csv").read_text(), (out / "breakdowns.csv").read_text()
    args = [str(out / "predictions.parquet"), "--dataset", "spair-71k", "--data-root", str(spair_root), "--protocol", "sd4match"]
    assert evaluate_cli(args) == 0  # default: RUN/evaluate/
    assert (out / "evaluate" / "results.csv").is_file()
    assert evaluate_cli(args + ["--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert ((out / "results.csv").read_text(), (out / "breakdowns.csv").read_text()) == before
    assert evaluate_cli(args + ["--out", str(out), "--overwrite"]) == 0
    assert set(pd.read_csv(out / "results.csv").protocol) == {"sd4match"}


def test_keypoint_breakdown_is_per_category(tmp_path):
    from benchmarks.evaluate import evaluate
    from benchmarks.protocol import protocols_for

    root = tmp_path / "willow"
    write_pfwillow_root(root, subsets=("car(G)", "duck(S)"), n_images=3)
    table = loaders.load("pf-willow", root, "test")
    src = np.concatenate([np.asarray(r, dtype=float).reshape(-1, 2) for r in table.column("trg_kps").to_pylist()])
    pred = src.copy()
    cats = np.repeat(np.array(table.column("category").to_pylist()), [len(k) for k in table.column("trg_kps").to_pylist()])
    pred[cats == "duck"] += 1000.0  # every duck keypoint wrong, every car keypoint right
    _, br = evaluate(table, {"r": pred}, protocols_for("pf-willow", ["dift"]), {"matcher": "m", "dataset": "pf-willow", "split": "test"})
    kp = br[(br["breakdown"] == "kps_id") & (br["aggregate"] == "point") & (br["alpha"] == 0.1)]
    assert set(kp.category) == {"car", "duck"}
    assert (kp[kp.category == "car"].pck == 1.0).all() and (kp[kp.category == "duck"].pck == 0.0).all()
    assert len(kp) == 2 * 10  # ten ids in each category, never pooled


def test_alphas_option(spair_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root), "--out", str(out),
                    "--quiet", "--alphas", "0.15,0.01,0.05,0.1"]) == 0
    res = pd.read_csv(out / "results.csv")
    assert sorted(res.alpha.unique()) == [0.01, 0.05, 0.1, 0.15]
    assert evaluate_cli([str(out / "predictions.parquet"), "--dataset", "spair-71k", "--data-root", str(spair_root),
                         "--alphas", "0.01", "--out", str(tmp_path / "e")]) == 0
    assert set(pd.read_csv(tmp_path / "e" / "results.csv").alpha) == {0.01}
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root), "--out",
                    str(tmp_path / "bad"), "--alphas", "0,2"]) == 2
    assert "--alphas must be numbers in (0, 1]" in capsys.readouterr().err


def test_partial_runs_are_marked_everywhere(tmp_path):
    from benchmarks.run import stratified_sample
    from leaderboard.core import LeaderboardError, build

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 54}, seed=3)
    runs = tmp_path / "runs"
    base = ["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(root), "--quiet"]
    assert run_cli(base + ["--out", str(runs / "full")]) == 0
    assert run_cli(base + ["--out", str(runs / "first"), "--limit", "5"]) == 0
    assert run_cli(base + ["--out", str(runs / "sampled"), "--sample", "20", "--sample-seed", "3", "--seed", "5"]) == 0
    full, first, sampled = (pd.read_csv(runs / n / "results.csv") for n in ("full", "first", "sampled"))
    assert set(full.subset) == {"all"} and set(first.subset) == {"first 5"} and set(sampled.subset) == {"sample 20 (seed 3)"}
    assert json.loads((runs / "sampled" / "run.json").read_text())["sample_seed"] == 3
    assert set(first.split_pairs) == {54}
    assert json.loads((runs / "sampled" / "run.json").read_text())["complete"] is False
    # stratified: every category keeps its share of the split
    table = loaders.load("spair-71k", root, "test")
    cats = table.column("category").to_pylist()
    idx = stratified_sample(cats, 20, 3)
    assert len(idx) == 20 == len(set(idx)) and idx == sorted(idx) and stratified_sample(cats, 20, 3) == idx
    picked = pd.Series([cats[i] for i in idx]).value_counts()
    assert picked.max() - picked.min() <= 1 and len(picked) == 18
    # runs over different pair sets are refused side by side unless asked, saying what they share
    with pytest.raises(LeaderboardError, match=r"cover different pairs \(54 and 5, 5 shared; 3 pair sets"):
        build([runs / "full", runs / "first", runs / "sampled"], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    written = build([runs / "full", runs / "first", runs / "sampled"], tmp_path / "lb", mixed_pairs=True)
    md = (tmp_path / "lb" / "spair-71k.md").read_text()
    assert "identity [partial: first 5 of 54 pairs]" in md
    assert "identity (seed=5) [partial: sample 20 (seed 3) of 54 pairs]" in md  # the changed seed is said too
    assert "not ranked" in md and "**" not in md.split("\n\n", 2)[2]
    csv_text = (tmp_path / "lb" / "spair-71k-full.csv").read_text()
    assert "5/54" in csv_text and "54/54" in csv_text
    # categories the first 5 pairs never reach are blank, not 0
    lb = pd.read_csv(tmp_path / "lb" / "spair-71k-wide.csv")
    row = lb[lb.method.str.contains("first 5")].iloc[0]
    assert row[[c for c in lb.columns if c.startswith("tvmonitor@")]].isna().all()
    assert len(written) >= 2


def test_per_pair_table_intervals_and_paired_comparison(spair_root, tmp_path, capsys):
    import pyarrow.parquet as pq

    from leaderboard.__main__ import main as lb_cli

    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root), "--out", str(a), "--quiet"]) == 0
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root), "--out", str(b), "--quiet",
                    "--protocol", "sd4match"]) == 0
    per = pq.read_table(a / "per_pair.parquet").to_pandas()
    assert list(per.columns) == ["pair_id", "category", "readout", "protocol", "threshold", "frame", "alpha",
                                 "fraction_correct", "n_kps", "metric", "keypoints"]
    res = pd.read_csv(a / "results.csv")
    row = res[(res.category == "all") & (res.protocol == "sd4match") & (res.alpha == 0.1) & (res.metric == "pck")
              & (res.keypoints == "all")].iloc[0]
    sub = per[(per.protocol == "sd4match") & (per.alpha == 0.1) & (per.metric == "pck") & (per.keypoints == "all")]
    assert len(sub) == 40 and np.isclose(sub.fraction_correct.mean(), row.pck)  # per-image PCK = mean of the table
    for (metric, kps), rows in per[(per.protocol == "sd4match") & (per.alpha == 0.1)].groupby(["metric", "keypoints"]):
        r = res[(res.category == "all") & (res.protocol == "sd4match") & (res.alpha == 0.1) & (res.metric == metric)
                & (res.keypoints == kps) & (res["aggregate"] == "image")].iloc[0]
        assert np.isclose(rows.fraction_correct.mean(), r.pck) and len(rows) == r.n_pairs and rows.n_kps.sum() == r.n_kps
    assert row.ci_low <= row.pck <= row.ci_high and row.ci_high - row.ci_low > 0
    assert res[res.category != "all"].ci_low.isna().all()
    again = run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair_root), "--out",
                     str(tmp_path / "c"), "--quiet"])
    assert again == 0 and pd.read_csv(tmp_path / "c" / "results.csv").ci_low.equals(res.ci_low)  # seeded
    # the same predictions compared with themselves: difference 0, interval [0, 0]
    assert lb_cli(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "the same 40 pairs in both" in out
    line = [x for x in out.splitlines() if x.strip().startswith("all")][0].split()
    assert [float(v) for v in line[4:]] == [0.0, 0.0, 0.0]
    assert lb_cli(["compare", str(a), str(tmp_path / "nope")]) == 2


def test_data_home_and_download(tmp_path, monkeypatch, capsys):
    import hashlib
    import zipfile

    import loaders.download as D

    home = tmp_path / "home"
    write_pfwillow_root(home / "PF-WILLOW", n_images=2)
    monkeypatch.setenv("CORRBENCH_DATA", str(home))
    assert run_cli(["--matcher", "identity", "--dataset", "pf-willow", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert json.loads((tmp_path / "a" / "run.json").read_text())["data_root"] == str((home / "PF-WILLOW").resolve())
    monkeypatch.setenv("CORRBENCH_DATA", str(tmp_path / "empty"))
    assert run_cli(["--matcher", "identity", "--dataset", "pf-willow", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "pf-willow not found; pass --data-root, set CORRBENCH_DATA" in capsys.readouterr().err
    # --download: the official archive (here a local copy) is fetched, checked file by file, unpacked
    archive = tmp_path / "PF-dataset.zip"
    sums = {}
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((home / "PF-WILLOW" / "PF-dataset").rglob("*.*")):
            rel = p.relative_to(home / "PF-WILLOW" / "PF-dataset").as_posix()
            zf.write(p, f"PF-dataset/{rel}")
            sums[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    monkeypatch.setattr(D, "ARCHIVES", {"pf-willow": [D.Archive(archive.as_uri(), None, 1 << 30)]})
    monkeypatch.setattr(D, "known_file_checksums", lambda dataset: sums)
    assert run_cli(["--matcher", "identity", "--dataset", "pf-willow", "--out", str(tmp_path / "c"), "--quiet",
                    "--download"]) == 0
    assert (tmp_path / "empty" / "PF-WILLOW" / "PF-dataset" / "car(G)" / "img_000.png").is_file()
    assert pd.read_csv(tmp_path / "c" / "results.csv").equals(pd.read_csv(tmp_path / "a" / "results.csv"))


def test_tta_is_recorded_in_results_run_json_and_leaderboard(tmp_path, capsys):
    from leaderboard.__main__ import main as lb_cli

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 4}, seed=5, images=True)
    base = ["--matcher", "dinov2", "--preset", "tiny", "--dataset", "spair-71k", "--data-root", str(root), "--quiet"]
    assert run_cli([*base, "--tta", "flip,mnn", "--out", str(tmp_path / "tta")]) == 0
    assert run_cli([*base, "--out", str(tmp_path / "plain")]) == 0
    res = pd.read_csv(tmp_path / "tta" / "results.csv")
    assert set(res["tta"]) == {"flip=adaptive-mnn,mnn"}
    assert set(pd.read_csv(tmp_path / "plain" / "results.csv")["tta"]) == {"none"}
    record = json.loads((tmp_path / "tta" / "run.json").read_text())
    assert record["tta"] == "flip=adaptive-mnn,mnn" and record["config"]["flip"] == "adaptive-mnn" and record["config"]["mnn"]
    assert record["config_hash"] != json.loads((tmp_path / "plain" / "run.json").read_text())["config_hash"]
    assert lb_cli(["build", str(tmp_path / "tta"), str(tmp_path / "plain"), "--out", str(tmp_path / "lb")]) == 0
    board = pd.read_csv(tmp_path / "lb" / "spair-71k-full.csv")
    assert {"flip=adaptive-mnn,mnn", "none"} <= set(board["tta"])
    compact = pd.read_csv(tmp_path / "lb" / "spair-71k.csv")
    assert {"flip=adaptive-mnn,mnn", "none"} <= set(compact["TTA"])


@pytest.mark.parametrize("argv,msg", [
    (["--matcher", "dift", "--tta", "flip"], "matcher 'dift' has no test-time options"),
    (["--matcher", "dinov2", "--tta", "rotate"], "--tta must be 'none' or a comma-separated subset of flip, mnn"),
    (["--matcher", "dinov2", "--tta", "none,flip"], "--tta must be 'none'"),
])
def test_tta_bad_values(spair_root, tmp_path, capsys, argv, msg):
    code = run_cli([*argv, "--preset", "tiny", "--dataset", "spair-71k", "--data-root", str(spair_root),
                    "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "results.csv").exists()
