"""PCK math against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.evaluate import evaluate
from benchmarks.pck import PairArrays, aggregate, hits, per_pair
from benchmarks.protocol import Protocol, protocols_for
from loaders import schema


def make_table(pairs):
    """pairs: list of dicts with category, trg size, trg_kps, optional bbox."""
    cols = schema.empty_columns()
    for i, p in enumerate(pairs):
        n = len(p["trg_kps"])
        cols["pair_id"].append(f"p{i}")
        cols["category"].append(p.get("category", "a"))
        cols["subset"].append(None)
        cols["src_image"].append("s.png")
        cols["trg_image"].append("t.png")
        cols["src_width"].append(p.get("w", 100))
        cols["src_height"].append(p.get("h", 100))
        cols["trg_width"].append(p.get("w", 100))
        cols["trg_height"].append(p.get("h", 100))
        cols["src_kps"].append(p["trg_kps"])
        cols["trg_kps"].append(p["trg_kps"])
        cols["kps_ids"].append(p.get("ids", list(range(n))))
        cols["src_bbox"].append(p.get("bbox"))
        cols["trg_bbox"].append(p.get("bbox"))
        cols["viewpoint_variation"].append(p.get("vp"))
    n = len(pairs)
    cols["dataset"] = ["spair-71k"] * n
    cols["split"] = ["test"] * n
    return schema.to_table(cols)


def pck_of(table, pred, proto):
    pairs = PairArrays.from_table(table)
    hit = hits(pairs, np.asarray(pred, float), proto)
    correct, counts = per_pair(hit, pairs.offsets)
    groups = np.zeros(len(counts), dtype=np.int64)
    return aggregate(correct, counts, groups, 1, proto.aggregate, pairs.category)[:, 0]


def test_bbox_threshold_original_frame_by_hand():
    # bbox 40 x 20 -> T = 40; alpha 0.1 -> 4 px. distances: 0, 3, 4 (boundary counts), 5
    t = make_table([{"trg_kps": [[10, 10], [20, 20], [30, 30], [40, 40]], "bbox": [0, 0, 40, 20]}])
    pred = [[10, 10], [23, 20], [30, 34], [43, 44]]
    got = pck_of(t, pred, Protocol("x", "bbox", "original", "image", alphas=(0.1, 0.05, 0.2)))
    np.testing.assert_allclose(got, [3 / 4, 1 / 4, 4 / 4])


def test_img_threshold_and_anisotropic_frame_by_hand():
    # target 200 x 100 image; resized-100x100 halves x. Error (10, 0) -> 5 px there.
    # img T in frame = max(100, 100) = 100; alpha 0.05 -> 5: hit. Original frame: T = 200, 0.05 -> 10: hit.
    # Error (0, 10) -> 10 px in the frame > 5: miss; original 10 <= 10: hit.
    t = make_table([{"trg_kps": [[50, 50], [60, 60]], "w": 200, "h": 100}])
    pred = [[60, 50], [60, 70]]
    frame = pck_of(t, pred, Protocol("x", "img", "resized-100x100", "image", alphas=(0.05,)))
    orig = pck_of(t, pred, Protocol("x", "img", "original", "image", alphas=(0.05,)))
    iso = pck_of(t, pred, Protocol("x", "img", "isotropic", "image", alphas=(0.05,)))
    np.testing.assert_allclose(frame, [0.5])
    np.testing.assert_allclose(orig, [1.0])
    np.testing.assert_allclose(iso, orig)


def test_bbox_kp_extent_over_valid_points_only():
    # PF-Willow style: extent of the target's (valid) keypoints: x 10..50, y 10..30 -> T = 40.
    # A padded -1 point would have widened it; the loaders drop invalid points, so it is absent here.
    t = make_table([{"trg_kps": [[10, 10], [50, 30], [30, 20]]}])
    pred = [[14, 10], [50, 35], [30, 20]]  # errors 4, 5, 0; alpha 0.1 -> 4
    got = pck_of(t, pred, Protocol("x", "bbox-kp", "original", "image", alphas=(0.1,)))
    np.testing.assert_allclose(got, [2 / 3])


def test_single_keypoint_pair():
    # one keypoint: bbox-kp extent is 0, so only an exact prediction counts; bbox threshold works as usual
    t = make_table([{"trg_kps": [[5, 5]], "bbox": [0, 0, 10, 10]}, {"trg_kps": [[7, 7]], "bbox": [0, 0, 10, 10]}])
    pred = [[5, 5], [7.5, 7]]
    np.testing.assert_allclose(pck_of(t, pred, Protocol("x", "bbox-kp", alphas=(0.1,))), [0.5])
    np.testing.assert_allclose(pck_of(t, pred, Protocol("x", "bbox", alphas=(0.1,))), [1.0])


def test_aggregations_by_hand():
    # pair 0 (cat a): 1 of 1 correct; pair 1 (cat a): 1 of 3; pair 2 (cat b): 0 of 2
    bb = [0, 0, 100, 100]
    t = make_table([
        {"category": "a", "trg_kps": [[0, 0]], "bbox": bb},
        {"category": "a", "trg_kps": [[0, 0], [10, 10], [20, 20]], "bbox": bb},
        {"category": "b", "trg_kps": [[0, 0], [10, 10]], "bbox": bb},
    ])
    pred = [[0, 0], [0, 0], [90, 90], [90, 90], [90, 90], [90, 90]]
    img = pck_of(t, pred, Protocol("x", "bbox", aggregate="image", alphas=(0.1,)))
    pt = pck_of(t, pred, Protocol("x", "bbox", aggregate="point", alphas=(0.1,)))
    cat = pck_of(t, pred, Protocol("x", "bbox", aggregate="category", alphas=(0.1,)))
    np.testing.assert_allclose(img, [(1 + 1 / 3 + 0) / 3])
    np.testing.assert_allclose(pt, [2 / 6])
    np.testing.assert_allclose(cat, [((1 + 1 / 3) / 2 + 0) / 2])


def test_evaluate_rows_categories_breakdowns():
    bb = [0, 0, 100, 100]
    t = make_table([
        {"category": "a", "trg_kps": [[0, 0]], "bbox": bb, "vp": 0, "ids": [3]},
        {"category": "a", "trg_kps": [[0, 0], [10, 10]], "bbox": bb, "vp": 2, "ids": [3, 5]},
        {"category": "b", "trg_kps": [[0, 0]], "bbox": bb, "vp": 2, "ids": [5]},
    ])
    pred = np.array([[0, 0], [0, 0], [90, 90], [90, 90]], float)
    protos = protocols_for("spair-71k")
    res, br = evaluate(t, {"nn": pred}, protos, {"matcher": "m", "dataset": "spair-71k", "split": "test"})
    res = res[(res.metric == "pck") & (res.keypoints == "all")]
    row = res[(res.protocol == "dift") & (res["aggregate"] == "point") & (res.category == "all") & (res.alpha == 0.1)]
    assert row.pck.item() == pytest.approx(2 / 4) and row.n_kps.item() == 4 and row.n_pairs.item() == 3
    row = res[(res.protocol == "dift") & (res["aggregate"] == "image") & (res.category == "a") & (res.alpha == 0.1)]
    assert row.pck.item() == pytest.approx((1 + 0.5) / 2) and row.n_pairs.item() == 2
    vp = br[(br.breakdown == "viewpoint_variation") & (br.protocol == "dift") & (br["aggregate"] == "image") & (br.alpha == 0.1)]
    assert dict(zip(vp.level, vp.pck)) == pytest.approx({0: 1.0, 2: 0.25})
    kid = br[(br.breakdown == "kps_id") & (br.protocol == "dift") & (br.alpha == 0.1)]
    assert dict(zip(kid.level, kid.pck)) == pytest.approx({3: 1.0, 5: 0.0})
    assert set(res.columns) >= {"matcher", "dataset", "split", "protocol", "threshold", "frame", "aggregate",
                                "readout", "category", "alpha", "pck", "n_pairs", "n_kps"}
    assert res.pck.between(0, 1).all()


def test_bbox_threshold_without_boxes_is_an_error():
    t = make_table([{"trg_kps": [[1, 1]]}])
    with pytest.raises(ValueError, match="threshold 'bbox' needs target boxes, pair 'p0'"):
        pck_of(t, [[1, 1]], Protocol("x", "bbox"))


@pytest.mark.parametrize("kw,msg", [
    ({"threshold": "box"}, "unknown threshold 'box'; valid: bbox, img, bbox-kp"),
    ({"threshold": "bbox", "frame": "resized-768"}, "unknown frame"),
    ({"threshold": "bbox", "aggregate": "pair"}, "unknown aggregate 'pair'; valid: image, point, category"),
    ({"threshold": "bbox", "direction": "trg->src"}, "unknown direction"),
])
def test_protocol_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Protocol("x", **kw)


def test_presets():
    sd = protocols_for("pf-pascal", ["sd4match"])
    assert [(p.threshold, p.frame, p.aggregate) for p in sd] == [("img", "resized-768x768", "image")]
    assert [p.threshold for p in protocols_for("pf-willow", ["dift"])] == ["bbox-kp", "bbox-kp"]
    assert {p.aggregate for p in protocols_for("spair-71k", ["original"])} == {"image", "point", "category"}
    with pytest.raises(ValueError, match="unknown protocol 'paper'; valid: sd4match, dift, original"):
        protocols_for("spair-71k", ["paper"])


def test_geoaware_preset_is_strict_and_distilldift_is_cub_only():
    from benchmarks.protocol import default_presets, protocols_for

    geo = protocols_for("spair-71k", ["geoaware"])
    assert [(p.frame, p.aggregate, p.alphas, p.strict) for p in geo] == [
        ("isotropic", "image", (0.01, 0.05, 0.1), True), ("isotropic", "point", (0.01, 0.05, 0.1), True)]
    assert protocols_for("pf-pascal", ["geoaware"])[0].alphas == (0.05, 0.1, 0.15)
    assert protocols_for("pf-pascal", ["geoaware"])[0].threshold == "img"
    cub = protocols_for("cub-200-2011", ["distilldift"])
    assert {(p.threshold, p.aggregate, p.alphas, p.strict) for p in cub} == {("bbox", "point", (0.1,), False),
                                                                            ("img", "point", (0.1,), False)}
    with pytest.raises(ValueError, match="does not apply to spair-71k"):
        protocols_for("spair-71k", ["distilldift"])
    assert default_presets("ap-10k") == ("geoaware", "original") and "sd4match" in default_presets("pf-willow")


def test_strict_comparison_excludes_the_boundary():
    import dataclasses

    from benchmarks.pck import PairArrays, hits
    from benchmarks.protocol import Protocol

    pairs = PairArrays(pair_id=np.array(["p"]), category=np.array(["c"]), gt=np.array([[0.0, 0.0], [0.0, 0.0]]),
                       width=np.array([100.0]), height=np.array([100.0]), bbox=np.array([[0.0, 0.0, 100.0, 50.0]]),
                       offsets=np.array([0, 2]), kps_ids=np.array([0, 1]), levels={}, keep=None)
    pred = np.array([[10.0, 0.0], [9.0, 0.0]])  # exactly at 0.1 * 100, and inside
    loose = Protocol("x", "bbox", alphas=(0.1,))
    assert hits(pairs, pred, loose).tolist() == [[True, True]]
    assert hits(pairs, pred, dataclasses.replace(loose, strict=True)).tolist() == [[False, True]]
