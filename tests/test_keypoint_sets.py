"""Geometry-aware keypoints and PCK-dagger against the authors' code (``../shared/golden/heads``:
``geoaware_subset.json`` from GeoAware-SC's release, ``metrics.*`` from JamaisVu's), and the
geometry-aware rule worked out by hand on real SPair-71k annotations and crafted visibility cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.keypoint_sets import geo_aware_ids, geo_groups, nearest_is_own

from .test_golden import golden


def _cases():
    return json.loads(golden("heads", "geoaware_subset.json").read_text())["cases"]


def test_both_geometry_aware_variants_equal_the_fixture_on_every_case():
    cases = _cases()
    differ = 0
    for c in cases:
        used = c["used_ids"]
        src = [i for i, v in zip(used, c["src_visible"]) if v]
        trg = [i for i, v in zip(used, c["trg_visible"]) if v]
        groups = geo_groups(c["dataset"], c["category"])
        where = f"{c['dataset']} {c['category']} pair {c['pair']}"
        assert geo_aware_ids(groups, used, src, trg, "geo-aware-release") == c["release_geo_ids"], where
        assert geo_aware_ids(groups, used, src, trg, "geo-aware") == c["defined_geo_ids"], where
        differ += c["release_geo_ids"] != c["defined_geo_ids"]
    assert len(cases) >= 6 and differ >= 1  # the fixture tells the two variants apart


@pytest.mark.parametrize("trg,both,expect", [
    ([2, 3], [2], [2]),            # two of the ear group in the target, one in both: that one
    ([2], [2], []),                # one member in the target: no counterpart to confuse
    ([2, 3], [], []),              # none visible in both images
    ([9, 10, 11], [9, 11], [9, 11]),  # paws: every member visible in both
    ([0, 1], [0, 1], []),          # ids 0 and 1 are singletons in cat's table (below the ears)
])
def test_the_rule_on_crafted_visibility(trg, both, expect):
    groups = geo_groups("spair-71k", "cat")
    used = list(range(15))
    src = sorted(set(both) | {13})
    assert geo_aware_ids(groups, used, src, sorted(set(trg) | set(both)), "geo-aware") == expect


def test_release_positions_on_car_name_other_keypoints():
    """Car's table lists [2, 3, 6, 7] second: the release reads positions 2-5 = ids 2, 3, 4, 5."""
    groups = geo_groups("spair-71k", "car")
    used = list(range(30))
    vis = [2, 3, 4, 5]
    assert geo_aware_ids(groups, used, vis, vis, "geo-aware-release") == [2, 3, 4, 5]
    assert geo_aware_ids(groups, used, vis, vis, "geo-aware") == [2, 3]


def _pairs():
    from safetensors.torch import load_file

    t = load_file(str(golden("heads", "metrics.safetensors")))
    meta = json.loads(golden("heads", "metrics.json").read_text())
    return [{k.split(".", 1)[1]: v.numpy() for k, v in t.items() if k.startswith(f"pair{i}.")}
            for i in range(meta["pairs"])], meta


def test_pck_dagger_equals_jamaisvu_on_the_fixture():
    pairs, meta = _pairs()
    alphas = np.asarray(meta["alphas"], dtype=np.float64)
    correct = np.zeros(len(alphas))
    dagger = np.zeros(len(alphas))
    n = 0
    for p in pairs:
        vis = (p["src_kps"][:, 2] > 0) & (p["trg_kps"][:, 2] > 0)
        own = nearest_is_own(p["pred"], p["trg_kps"][:, :2], valid=vis)[vis]
        assert own.tolist() == p["pckd_valid"].astype(bool).tolist()
        # the same from the mutually visible keypoints alone (what a pair row holds)
        assert nearest_is_own(p["pred"][vis], p["trg_kps"][vis, :2]).tolist() == own.tolist()
        err = np.linalg.norm(p["pred"][vis] - p["trg_kps"][vis, :2], axis=1)
        hit = err[None, :] < alphas[:, None] * float(p["threshold"][0])
        correct += hit.sum(axis=1)
        dagger += (hit & own[None, :]).sum(axis=1)
        n += int(vis.sum())
    assert np.allclose(correct / n, meta["pck_per_keypoint"], atol=1e-7)  # the release stores float32
    assert np.allclose(dagger / n, meta["pck_dagger_per_keypoint"], atol=1e-7)
    assert (dagger <= correct).all() and dagger[0] < correct[0]


def _real_spair(tmp_path):
    """The 18 real SPair-71k test pairs and the two real image annotations of the aeroplane pair."""
    import shutil

    from .conftest import shared

    src = shared("SPair-71k", "PairAnnotation", "test")
    files = sorted(src.glob("*.json"))
    shutil.copytree(src, tmp_path / "PairAnnotation" / "test")
    shutil.copytree(shared("SPair-71k", "ImageAnnotation"), tmp_path / "ImageAnnotation")
    (tmp_path / "Layout" / "large").mkdir(parents=True)
    (tmp_path / "Layout" / "large" / "test.txt").write_text("\n".join(f.stem for f in files) + "\n")
    return tmp_path


def test_geometry_aware_subsets_of_real_spair_pairs_worked_out_by_hand(tmp_path):
    """Expected sets derived by hand from the rule (module docstring) and the tables; the aeroplane pair
    has its image annotations (target visible: 0, 1, 2, 16, 18, 19, 22, 23), the others only their
    matched keypoints, so that only those are known visible."""
    import loaders
    from benchmarks.keypoint_sets import geo_masks

    table = loaders.load("spair-71k", _real_spair(tmp_path), "test")
    rows = table.to_pylist()
    masks = geo_masks(table, "spair-71k")
    offsets = np.cumsum([0] + [len(r["kps_ids"]) for r in rows])
    got = {v: {r["category"]: [i for i, f in zip(r["kps_ids"], masks[v][offsets[k]:offsets[k + 1]]) if f]
               for k, r in enumerate(rows)} for v in masks}
    plane = next(r for r in rows if r["category"] == "aeroplane")
    assert plane["trg_visible_ids"] == [0, 1, 2, 16, 18, 19, 22, 23] and plane["kps_ids"] == [0, 16, 18, 19, 23]
    # aeroplane: [16, 17] has one member in the target; [18, 19] two, both matched
    # car {1, 11, 14, 17, 19}: only the wheel group [11, 14, 21, 24] has two members
    # cat {1, 2, 3, 4, 5, 7, 8, 9, 10, 13, 14}: ears [2, 3], paws [9, 10, 11, 12]; 0 and 1 are singletons
    # bus {11, 12, 13, 14, 16, 18}: wheels [11, 14, 21, 24] by id; the release's positions 1, 2 are ids 12, 13
    # tvmonitor, chair: every matched id sits in a group with another matched id
    defined = {"aeroplane": [18, 19], "car": [11, 14], "cat": [2, 3, 9, 10], "bus": [11, 14],
               "tvmonitor": [0, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15], "chair": [0, 1, 2, 3, 4, 5, 7, 8, 9]}
    for cat, ids in defined.items():
        assert got["geo-aware"][cat] == ids, cat
    release = {**defined, "bus": [12, 13]}
    for cat, ids in release.items():
        assert got["geo-aware-release"][cat] == ids, cat


def test_image_annotations_are_checked(tmp_path):
    import json as _json

    import loaders
    from loaders import DatasetError

    root = _real_spair(tmp_path)
    path = root / "ImageAnnotation" / "aeroplane" / "2008_007604.json"
    ann = _json.loads(path.read_text())
    ann["kps"]["16"] = None  # a matched keypoint the image annotation calls invisible
    path.write_text(_json.dumps(ann))
    with pytest.raises(DatasetError, match=r"2008_007604.json: keypoints \[16\] of pair .* are not visible"):
        loaders.load("spair-71k", root, "test")
    ann["kps"]["16"] = [1, float("nan")]
    path.write_text(_json.dumps(ann).replace("NaN", "null").replace("[1, null]", '[1, "x"]'))
    with pytest.raises(DatasetError, match="keypoint 16 must be"):
        loaders.load("spair-71k", root, "test")


def test_pck_dagger_rows_through_evaluate_on_a_crafted_swap():
    """Two keypoints whose predictions are swapped: PCK at a large alpha counts both, PCK-dagger neither."""
    import pyarrow as pa

    from benchmarks.evaluate import evaluate
    from benchmarks.protocol import protocols_for
    from loaders.schema import empty_columns, to_table

    cols = empty_columns()
    row = {"pair_id": "p", "dataset": "spair-71k", "split": "test", "category": "cat", "src_image": "a.jpg",
           "trg_image": "b.jpg", "src_width": 100, "src_height": 100, "trg_width": 100, "trg_height": 100,
           "src_kps": [[10, 10], [20, 10]], "trg_kps": [[10, 10], [20, 10]], "kps_ids": [2, 3],
           "src_bbox": [0, 0, 100, 100], "trg_bbox": [0, 0, 100, 100]}
    for k, v in row.items():
        cols[k].append(v)
    table = to_table(cols)
    assert isinstance(table, pa.Table)
    pred = np.array([[20, 10], [10, 10]], float)
    res, _ = evaluate(table, {"nn": pred}, protocols_for("spair-71k", ["original"], (0.2,)),
                      {"matcher": "m", "dataset": "spair-71k", "split": "test"})
    whole = res[(res.category == "all") & (res["aggregate"] == "point")]
    assert whole[(whole.metric == "pck") & (whole.keypoints == "all")].pck.item() == 1.0
    assert whole[whole.metric == "pck-dagger"].pck.item() == 0.0
    # ears 2 and 3 are one group, both matched: both are geometry-aware
    assert whole[whole.keypoints == "geo-aware"].n_kps.item() == 2


def test_compact_leaderboard_shows_dagger_and_geometry_aware_columns(tmp_path):
    import pandas as pd

    from benchmarks.run import main as run_cli
    from leaderboard.__main__ import main as lb_cli
    from loaders.testing import write_spair_root

    write_spair_root(tmp_path / "spair", {"test": 40}, seed=3)
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(tmp_path / "spair"),
                    "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert lb_cli(["build", str(tmp_path / "run"), "--out", str(tmp_path / "lb"), "--format", "md,csv,tex",
                   "--figures", "png"]) == 0
    compact = pd.read_csv(tmp_path / "lb" / "spair-71k.csv")
    res = pd.read_csv(tmp_path / "run" / "results.csv")
    pick = lambda m, k: res[(res.protocol == "sd4match") & (res.category == "all") & (res.alpha == 0.1)  # noqa: E731
                            & (res.metric == m) & (res.keypoints == k)].pck.item()
    row = compact[compact.Method == "identity"].iloc[0]  # (the bundled published rows stand beside it)
    assert f"{100 * pick('pck-dagger', 'all'):.1f}" == str(row["PCK-dagger@0.1"]).split(" ")[0]
    assert f"{100 * pick('pck', 'geo-aware'):.1f}" == str(row["Geo-aware@0.1"]).split(" ")[0]
    assert "PCK-dagger: correct and nearest to its own" in (tmp_path / "lb" / "spair-71k.md").read_text()
    # SPair-71k's headline protocol (sd4match) has no alpha 0.01: the column comes from geoaware, said so
    fine = res[(res.protocol == "geoaware") & (res["aggregate"] == "image") & (res.category == "all")
               & (res.alpha == 0.01) & (res.metric == "pck") & (res.keypoints == "all")].pck.item()
    assert f"{100 * fine:.1f}" == str(row["PCK@0.01"]).split(" ")[0].strip("*")
    assert "PCK@0.01 beside them: protocol geoaware" in (tmp_path / "lb" / "spair-71k.md").read_text()


def test_kap_equals_jamaisvu_on_the_fixture_and_its_steps_rescore_exactly():
    from benchmarks.kap import (
        from_records,
        kap,
        normalise,
        pair_within_beyond,
        records,
        similarity_rows,
    )

    pairs, meta = _pairs()
    alphas, g, S = meta["alphas"], meta["grid"], meta["anno_size"]
    release, defined = [], []
    for p in pairs:
        src_vis = p["src_kps"][:, 2] > 0
        w, b = pair_within_beyond(p["src_desc"], p["trg_desc"], p["src_kps"][:, :2], p["trg_kps"][:, :2], src_vis,
                                  float(p["threshold"][0]), alphas, g, S)
        assert np.abs(w - p["kap_within"]).max() <= 1e-6 and np.abs(b - p["kap_beyond"]).max() <= 1e-6
        trg_vis = p["trg_kps"][src_vis, 2] > 0
        release.append((w, b, trg_vis))
        # the stored steps give the same values at every radius without the maps
        cells = g * (p["src_kps"][src_vis, 1] * g / S).astype(int) + (p["src_kps"][src_vis, 0] * g / S).astype(int)
        raw = similarity_rows(p["src_desc"], p["trg_desc"], cells)
        norm = normalise(raw)
        tau = np.asarray(alphas) * float(p["threshold"][0]) * g / S
        steps = records(raw, p["trg_kps"][src_vis, :2] * g / S, g)
        for k, rec in enumerate(steps):
            wk, bk = from_records(rec, tau, raw.min(), raw.max())
            assert np.abs(wk - w[:, k]).max() <= 1e-9 and np.abs(bk - b[:, k]).max() <= 1e-9
        assert norm.min() == 0.0
        defined.append((w, b, trg_vis))
    pooled, image = kap(release, "kap-release")
    assert np.abs(pooled - meta["kap_pooled_release"]).max() <= 1e-9
    assert np.abs(image - meta["kap_per_image_mean_release"]).max() <= 1e-9
    pooled_def, _ = kap(defined, "kap")
    assert not np.allclose(pooled_def, pooled)  # hidden target keypoints are negatives only, as defined


def test_kap_rows_of_a_run_equal_the_release_computation_on_the_matchers_own_maps(tmp_path):
    """A dinov2 run writes KAP's steps into predictions.parquet; its KAP rows equal JamaisVu's
    computation (:func:`benchmarks.kap.pair_within_beyond`, checked on the fixture above) run on the
    matcher's own maps; and a bundle of the run verifies, KAP rows included."""
    import pandas as pd

    import loaders
    from benchmarks.kap import kap, pair_within_beyond
    from benchmarks.matchers.base import Pair
    from benchmarks.pck import PairArrays, thresholds
    from benchmarks.run import main as run_cli
    from leaderboard.__main__ import main as lb_cli
    from sd4match.methods.dinov2 import Dinov2Matcher
    from sd4match.methods.frame_geometry import to_frame

    from .conftest import shared

    root = shared("PF-WILLOW")
    out = tmp_path / "run"
    assert run_cli(["--matcher", "dinov2", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
                    "--limit", "5", "--out", str(out), "--quiet"]) == 0
    res = pd.read_csv(out / "results.csv")
    got = res[(res.metric == "kap") & (res.protocol == "dift") & (res.category == "all")]
    assert set(got.readout) == {"similarity"} and len(got) == 6

    table = loaders.load("pf-willow", root, "test").slice(0, 5)
    m = Dinov2Matcher.from_settings("tiny")
    S = m.config.image_size
    arrays = PairArrays.from_table(table)
    one = np.ones(len(arrays.width))
    T = thresholds("bbox-kp", width=arrays.width, height=arrays.height, bbox=arrays.bbox, gt_xy=arrays.gt,
                   offsets=arrays.offsets, sx=one, sy=one)
    alphas = sorted(set(got.alpha))
    per = []
    for r, t in zip(table.to_pylist(), T):
        p = Pair(r, root)
        (fs, ft), = m.pair_maps([p])
        g = ft.shape[-1]
        src = to_frame(p.src_kps, *p.src_size, S)
        trg = to_frame(np.asarray(r["trg_kps"]), *p.trg_size, S)
        w, b = pair_within_beyond(torch_normalise(fs), torch_normalise(ft), src, trg, np.ones(len(src), bool),
                                  t * S / max(p.trg_size), alphas, g, S)
        per.append((w, b, np.ones(len(src), bool)))
    pooled, image = kap(per, "kap-release")
    for a, alpha in enumerate(alphas):
        at = got[got.alpha == alpha]
        point, img = (at[at["aggregate"] == agg].pck.item() for agg in ("point", "image"))
        assert abs(point - pooled[a]) <= 2e-6 and abs(img - image[a]) <= 2e-6
    # the compact leaderboard shows KAP beside PCK (the per-image value at alpha 0.1), its definition in the caption
    assert lb_cli(["build", str(out), "--out", str(tmp_path / "lb"), "--format", "md,csv", "--figures", "png"]) == 0
    compact = pd.read_csv(tmp_path / "lb" / "pf-willow.csv")
    mine = compact[compact.Method.str.startswith("dinov2")].iloc[0]
    assert float(str(mine["KAP@0.1"]).split()[0]) == round(100 * image[alphas.index(0.1)], 1)
    assert "KAP: keypoint average precision as defined" in (tmp_path / "lb" / "pf-willow.md").read_text()
    assert lb_cli(["pack", str(out), "--out", str(tmp_path / "r.corrbench.zip")]) == 0
    assert lb_cli(["verify", str(tmp_path / "r.corrbench.zip"), "--data-root", str(root)]) == 0


def torch_normalise(x):
    """``(C, g, g)`` map -> ``(g*g, C)`` unit descriptors."""
    import torch

    return torch.nn.functional.normalize(x.float().reshape(x.shape[0], -1), dim=0).T.double().numpy()


def test_disagreement_counts_per_category_on_the_real_pairs(tmp_path, capsys):
    from benchmarks.keypoint_sets import main

    assert main(["--dataset", "spair-71k", "--data-root", str(_real_spair(tmp_path))]) == 0
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["bus"] == ["6", "2", "2", "4"]  # {11, 14} against {12, 13}
    assert lines["car"] == ["5", "2", "2", "0"] and lines["aeroplane"][1:] == ["2", "2", "0"]
    assert main(["--dataset", "spair-71k", "--data-root", str(tmp_path / "nope")]) == 2
