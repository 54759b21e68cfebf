"""Loaders on the real dataset files in ../shared/data (skipped when absent)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

import loaders
from loaders import spair
from loaders.testing import write_image

from .conftest import shared


def test_pfwillow_real_900_pairs_match_mat_and_png():
    root = shared("PF-WILLOW")
    table = loaders.load("pf-willow", root, "test")
    assert table.num_rows == 900
    rows = table.to_pylist()
    assert len({r["pair_id"] for r in rows}) == 900
    assert {r["category"] for r in rows} == {"car", "duck", "motorbike", "winebottle"}
    assert len({r["subset"] for r in rows}) == 10
    for r in rows[::7]:
        for side in ("src", "trg"):
            rel = r[f"{side}_image"]
            pts = scipy.io.loadmat(str((root / rel).with_suffix(".mat")))["pts_coord"]
            np.testing.assert_allclose(np.array(r[f"{side}_kps"]), pts.T.astype(np.float32), rtol=0, atol=0)
            with Image.open(root / rel) as im:
                assert (r[f"{side}_width"], r[f"{side}_height"]) == im.size
        assert r["kps_ids"] == list(range(10))
        assert r["src_bbox"] is None and r["trg_bbox"] is None
        assert r["src_image"].split("/")[1] == r["subset"]


def test_pfpascal_real_test_list(tmp_path):
    lists = shared("PF-PASCAL", "image_pairs")
    shutil.copytree(lists, tmp_path / "image_pairs")
    with open(lists / "test_pairs.csv") as fh:
        rows = list(csv.DictReader(fh))
    images = {r["source_image"] for r in rows} | {r["target_image"] for r in rows}
    sizes = {}
    for i, rel in enumerate(sorted(images)):  # placeholder JPEGs: the real images are not in shared/
        sizes[rel] = (300 + i % 7, 200 + i % 11)
        write_image(tmp_path / rel, *sizes[rel])
    table = loaders.load("pf-pascal", tmp_path, "test")
    assert table.num_rows == 299
    got = table.to_pylist()
    for row, r in zip(rows, got):
        xa = [float(v) for v in row["XA"].split(";")]
        yb = [float(v) for v in row["YB"].split(";")]
        np.testing.assert_array_equal(np.array(r["src_kps"])[:, 0], np.float32(xa))
        np.testing.assert_array_equal(np.array(r["trg_kps"])[:, 1], np.float32(yb))
        assert r["category"] == loaders.pfpascal.CLASSES[int(row["class"]) - 1]
        assert (r["trg_width"], r["trg_height"]) == sizes[row["target_image"]]
        assert r["flip"] is False
    assert len({r["pair_id"] for r in got}) == 299


@pytest.mark.parametrize("layout,counts", [("large", (53340, 5384, 12234)), ("small", (10652, 1070, 2438))])
def test_spair_layout_counts(layout, counts):
    root = shared("SPair-71k")
    assert tuple(len(spair.read_layout(root, s, layout)) for s in ("trn", "val", "test")) == counts


def test_spair_18_real_annotations(tmp_path):
    src = shared("SPair-71k", "PairAnnotation", "test")
    files = sorted(src.glob("*.json"))
    assert len(files) == 18
    (tmp_path / "PairAnnotation").mkdir()
    shutil.copytree(src, tmp_path / "PairAnnotation" / "test")
    (tmp_path / "Layout" / "large").mkdir(parents=True)
    names = [f.stem for f in files]
    (tmp_path / "Layout" / "large" / "test.txt").write_text("\n".join(names) + "\n")
    table = loaders.load("spair-71k", tmp_path, "test")
    assert table.num_rows == 18
    assert sorted(set(table.column("category").to_pylist())) == sorted(spair.CATEGORIES)
    for f, r in zip(files, table.to_pylist()):
        ann = json.loads(f.read_text())
        assert r["pair_id"] == ann["filename"] == f.stem
        assert r["src_kps"] == [[float(x), float(y)] for x, y in ann["src_kps"]]
        assert r["trg_kps"] == [[float(x), float(y)] for x, y in ann["trg_kps"]]
        assert r["kps_ids"] == [int(i) for i in ann["kps_ids"]]
        assert r["src_bbox"] == [float(v) for v in ann["src_bndbox"]]
        assert r["trg_bbox"] == [float(v) for v in ann["trg_bndbox"]]
        assert (r["src_width"], r["src_height"]) == tuple(ann["src_imsize"][:2])
        assert (r["trg_width"], r["trg_height"]) == tuple(ann["trg_imsize"][:2])
        assert r["src_image"] == f"JPEGImages/{ann['category']}/{ann['src_imname']}"
        for k in ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "src_pose", "trg_pose"):
            assert r[k] == ann[k]
        assert r["mirror"] == bool(ann["mirror"])
        assert r["flip"] is None and r["subset"] is None
