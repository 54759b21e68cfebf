"""Loaders on small fixtures written in each official format (always run)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

import loaders
from loaders import DatasetError, schema
from loaders.__main__ import main as cli
from loaders.testing import (
    write_image,
    write_mat,
    write_pfpascal_root,
    write_pfwillow_root,
    write_spair_root,
)


# ----------------------------------------------------------------------------- SPair-71k
def test_spair_fixture_every_column(tmp_path):
    anns = write_spair_root(tmp_path, {"trn": 5, "val": 3, "test": 20})
    for split, n in (("trn", 5), ("val", 3), ("test", 20)):
        table = loaders.load("spair-71k", tmp_path, split)
        assert table.schema.equals(schema.SCHEMA, check_metadata=False)
        assert table.num_rows == n
        for ann, r in zip(anns[split], table.to_pylist()):
            assert r["pair_id"] == ann["filename"]
            assert r["dataset"] == "spair-71k" and r["split"] == split
            assert r["category"] == ann["category"]
            assert r["src_image"] == f"JPEGImages/{ann['category']}/{ann['src_imname']}"
            assert r["trg_image"] == f"JPEGImages/{ann['category']}/{ann['trg_imname']}"
            assert [r["src_width"], r["src_height"]] == ann["src_imsize"][:2]
            assert [r["trg_width"], r["trg_height"]] == ann["trg_imsize"][:2]
            assert r["src_kps"] == ann["src_kps"] and r["trg_kps"] == ann["trg_kps"]
            assert r["kps_ids"] == [int(i) for i in ann["kps_ids"]]
            assert r["src_bbox"] == ann["src_bndbox"] and r["trg_bbox"] == ann["trg_bndbox"]
            for k in ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "src_pose", "trg_pose"):
                assert r[k] == ann[k]
            assert r["mirror"] == bool(ann["mirror"])
            assert r["flip"] is None and r["subset"] is None


def test_spair_small_layout(tmp_path):
    write_spair_root(tmp_path, {"test": 4}, layout="small")
    assert loaders.load("spair-71k", tmp_path, "test", layout="small").num_rows == 4
    with pytest.raises(DatasetError, match=r"Layout/large/test.txt: SPair-71k split list is missing"):
        loaders.load("spair-71k", tmp_path, "test")


def _first_ann(root, split="test"):
    return sorted((root / "PairAnnotation" / split).glob("*.json"))[0]


def test_spair_truncated_json(tmp_path):
    write_spair_root(tmp_path, {"test": 3})
    f = _first_ann(tmp_path)
    f.write_text(f.read_text()[:40])
    with pytest.raises(DatasetError, match=rf"{f.name}: malformed JSON"):
        loaders.load("spair-71k", tmp_path, "test")


def test_spair_keypoint_count_mismatch(tmp_path):
    write_spair_root(tmp_path, {"test": 3})
    f = _first_ann(tmp_path)
    ann = json.loads(f.read_text())
    ann["trg_kps"].append([1, 2])
    f.write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match=r"keypoint counts differ: src_kps \d+, trg_kps \d+"):
        loaders.load("spair-71k", tmp_path, "test")


@pytest.mark.parametrize("field,value,msg", [
    ("src_bndbox", [1, 2, 3], "src_bndbox"),
    ("category", "unicorn", "category"),
    ("trg_imsize", "big", "trg_imsize"),
    ("src_kps", [[1, 2, 3]], "src_kps"),
    ("occlusion", None, "occlusion"),
])
def test_spair_bad_fields(tmp_path, field, value, msg):
    write_spair_root(tmp_path, {"test": 2})
    f = _first_ann(tmp_path)
    ann = json.loads(f.read_text())
    ann[field] = value
    f.write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match=rf"{f.name}: field '{msg}'"):
        loaders.load("spair-71k", tmp_path, "test")


def test_spair_missing_annotations_reported(tmp_path):
    write_spair_root(tmp_path, {"test": 10})
    files = sorted((tmp_path / "PairAnnotation" / "test").glob("*.json"))
    for f in files[:4]:
        f.unlink()
    with pytest.raises(DatasetError) as info:
        loaders.load("spair-71k", tmp_path, "test")
    msg = str(info.value)
    assert "4 of 10 pair annotation files missing" in msg and files[0].name in msg
    assert "\n" not in msg


# ----------------------------------------------------------------------------- PF-Pascal
def test_pfpascal_fixture_train_and_test(tmp_path):
    info = write_pfpascal_root(tmp_path, n_pairs=6)
    trn = loaders.load("pf-pascal", tmp_path, "trn").to_pylist()
    assert len(trn) == 6
    for (s, t, c, flip), r in zip(info["lists"]["trn"], trn):
        assert r["category"] == loaders.pfpascal.CLASSES[c - 1]
        assert r["flip"] is bool(flip)
        ks, kt = info["kps"][s], info["kps"][t]
        valid = [k for k in range(len(ks)) if not (np.isnan(ks[k]).any() or np.isnan(kt[k]).any())]
        assert r["kps_ids"] == valid and len(valid) < len(ks)  # NaN rows dropped pairwise
        np.testing.assert_array_equal(np.array(r["src_kps"]), ks[valid].astype(np.float32))
        np.testing.assert_array_equal(np.array(r["trg_kps"]), kt[valid].astype(np.float32))
        np.testing.assert_allclose(r["trg_bbox"], info["bbox"][t], rtol=1e-6)
        assert (r["src_width"], r["src_height"]) == info["images"][s]
        assert r["viewpoint_variation"] is None and r["subset"] is None
    test = loaders.load("pf-pascal", tmp_path, "test").to_pylist()
    for (_s, _t, _c, xa, ya, xb, yb), r in zip(info["lists"]["test"], test):
        np.testing.assert_array_equal(np.array(r["src_kps"]), np.stack([xa, ya], 1).astype(np.float32))
        np.testing.assert_array_equal(np.array(r["trg_kps"]), np.stack([xb, yb], 1).astype(np.float32))
        assert r["kps_ids"] == list(range(len(xa))) and r["flip"] is False
    assert len({r["pair_id"] for r in test}) == len(test)


def test_pfpascal_root_level_lists(tmp_path):
    write_pfpascal_root(tmp_path)
    (tmp_path / "image_pairs" / "test_pairs.csv").rename(tmp_path / "test_pairs.csv")
    assert loaders.load("pf-pascal", tmp_path, "test").num_rows == 4


def test_pfpascal_csv_length_mismatch(tmp_path):
    write_pfpascal_root(tmp_path)
    p = tmp_path / "image_pairs" / "test_pairs.csv"
    lines = p.read_text().splitlines()
    cells = lines[2].split(",")
    cells[4] = cells[4] + ";7.5"  # YA one longer
    lines[2] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"test_pairs.csv: row 3: keypoint lists differ in length: XA \d+, YA \d+"):
        loaders.load("pf-pascal", tmp_path, "test")


def test_pfpascal_mat_without_kps(tmp_path):
    info = write_pfpascal_root(tmp_path)
    s = info["lists"]["trn"][0][0]
    mat = tmp_path / "PF-dataset-PASCAL" / "Annotations" / "aeroplane" / (os.path.basename(s)[:-4] + ".mat")
    write_mat(mat, points=np.zeros((3, 2)))
    with pytest.raises(DatasetError, match=rf"{mat.name}: variable 'kps' not found"):
        loaders.load("pf-pascal", tmp_path, "trn")


def test_pfpascal_corrupt_mat_and_missing_image(tmp_path):
    info = write_pfpascal_root(tmp_path)
    s = info["lists"]["trn"][0][0]
    mat = tmp_path / "PF-dataset-PASCAL" / "Annotations" / "aeroplane" / (os.path.basename(s)[:-4] + ".mat")
    mat.write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(DatasetError, match=rf"{mat.name}: not a readable .mat file"):
        loaders.load("pf-pascal", tmp_path, "trn")
    (tmp_path / info["lists"]["test"][0][1]).unlink()
    with pytest.raises(DatasetError, match=r"image file is missing"):
        loaders.load("pf-pascal", tmp_path, "test")


def test_pfpascal_bad_class(tmp_path):
    write_pfpascal_root(tmp_path)
    p = tmp_path / "image_pairs" / "val_pairs.csv"
    p.write_text(p.read_text().replace(",1,0\n", ",21,0\n", 1))
    with pytest.raises(DatasetError, match=r"val_pairs.csv: row 2: column 'class' must be in 1..20"):
        loaders.load("pf-pascal", tmp_path, "val")


# ----------------------------------------------------------------------------- PF-Willow
def test_pfwillow_generated_pairs_order_and_values(tmp_path):
    info = write_pfwillow_root(tmp_path, subsets=("duck(S)", "car(G)"), n_images=3)
    rows = loaders.load("pf-willow", tmp_path, "test").to_pylist()
    assert len(rows) == 2 * 3 * 2
    expected = []
    for sub in ("car(G)", "duck(S)"):
        imgs = [f"PF-dataset/{sub}/img_{k:03d}.png" for k in range(3)]
        expected += [(s, t) for s in imgs for t in imgs if s != t]
    assert [(r["src_image"], r["trg_image"]) for r in rows] == expected
    for r in rows:
        (w, h), pts = info[r["trg_image"]]
        assert (r["trg_width"], r["trg_height"]) == (w, h)
        np.testing.assert_array_equal(np.array(r["trg_kps"]), pts.T.astype(np.float32))
        assert r["category"] == r["subset"].split("(")[0]


def test_pfwillow_pair_csv_and_nan_points(tmp_path):
    info = write_pfwillow_root(tmp_path, subsets=("car(G)",), n_images=2)
    a, b = sorted(info)
    xa = [1.0] * 10
    xa[3] = math.nan
    ya, xb, yb = [2.0] * 10, [3.0] * 10, [4.0] * 10
    text = "imageA,imageB," + ",".join(f"c{i}" for i in range(40)) + "\n"
    text += f"{a},{b}," + ",".join(str(v) for v in xa + ya + xb + yb) + "\n"
    (tmp_path / "test_pairs_pf.csv").write_text(text)
    rows = loaders.load("pf-willow", tmp_path, "test").to_pylist()
    assert len(rows) == 1
    assert rows[0]["kps_ids"] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert rows[0]["src_kps"][0] == [1.0, 2.0] and rows[0]["trg_kps"][0] == [3.0, 4.0]


def test_pfwillow_only_test_split(tmp_path):
    write_pfwillow_root(tmp_path)
    with pytest.raises(DatasetError, match="unknown split 'trn' for pf-willow; valid: test"):
        loaders.load("pf-willow", tmp_path, "trn")


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'spair71k'.*did you mean 'spair-71k'.*valid: spair-71k, "
                                           r"pf-pascal, pf-willow, spair-u, ap-10k, cub-200-2011"):
        loaders.load("spair71k", tmp_path, "test")


# ----------------------------------------------------------------------------- cache, export, CLI
def test_cache_hit_and_invalidation(tmp_path):
    write_spair_root(tmp_path / "d", {"test": 6})
    cache = tmp_path / "cache"
    t1 = loaders.load("spair-71k", tmp_path / "d", "test", cache_dir=cache)
    files = list(cache.glob("*.parquet"))
    assert len(files) == 1
    assert loaders.load("spair-71k", tmp_path / "d", "test", cache_dir=cache).equals(t1)
    f = _first_ann(tmp_path / "d")
    ann = json.loads(f.read_text())
    ann["src_kps"][0] = [0, 0]
    f.write_text(json.dumps(ann))
    os.utime(f, ns=(1, 1))
    t2 = loaders.load("spair-71k", tmp_path / "d", "test", cache_dir=cache)
    assert t2.column("src_kps")[0].as_py()[0] == [0.0, 0.0]
    assert len(list(cache.glob("*.parquet"))) == 2


def test_hf_export(tmp_path):
    write_pfwillow_root(tmp_path)
    table = loaders.load("pf-willow", tmp_path, "test")
    ds = loaders.to_hf_dataset(table)
    assert ds.num_rows == table.num_rows
    assert ds[0]["src_kps"] == table.column("src_kps")[0].as_py()
    assert ds.column_names == list(schema.COLUMNS)
    # self-contained: the images travel with the table; saved and reloaded without the root
    full = loaders.to_hf_dataset(table, tmp_path, images=True)
    assert str(tmp_path.resolve()) not in full.info.description and tmp_path.name in full.info.description
    full.save_to_disk(str(tmp_path / "hf"))
    saved = b"".join(p.read_bytes() for p in (tmp_path / "hf").rglob("*") if p.is_file())
    assert str(tmp_path.resolve()).encode() not in saved  # no absolute path of this machine travels with it
    import datasets

    again = datasets.load_from_disk(str(tmp_path / "hf"))
    from PIL import Image

    img = again[0]["src_img"]
    with Image.open(tmp_path / table.column("src_image")[0].as_py()) as want:
        assert img.size == want.size and img.convert("RGB").tobytes() == want.convert("RGB").tobytes()
    with pytest.raises(ValueError, match="needs the dataset root"):
        loaders.to_hf_dataset(table, images=True)


def test_cli_convert_and_stats(tmp_path, capsys):
    write_spair_root(tmp_path / "d", {"test": 36})
    out = tmp_path / "o" / "t.parquet"
    assert cli(["convert", "spair-71k", "--root", str(tmp_path / "d"), "--split", "test", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 36
    capsys.readouterr()
    assert cli(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "aeroplane" in text and "tvmonitor" in text
    kps = sum(len(k) for k in table.column("kps_ids").to_pylist())
    assert text.strip().splitlines()[-1].split() == ["all", "36", str(kps)]


def test_cli_bad_input_exit_2_and_no_partial_output(tmp_path, capsys):
    write_spair_root(tmp_path / "d", {"test": 5})
    f = _first_ann(tmp_path / "d")
    f.write_text("{not json")
    out = tmp_path / "o" / "t.parquet"
    assert cli(["convert", "spair-71k", "--root", str(tmp_path / "d"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f.name in err and err.count("\n") == 1
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert cli(["convert", "nope", "--root", str(tmp_path), "--out", str(out)]) == 2
    assert cli(["convert", "spair-71k", "--root", str(tmp_path / "d"), "--split", "train", "--out", str(out)]) == 2
    assert "valid: trn, val, test" in capsys.readouterr().err


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from loaders.atomic import atomic_path

    target = tmp_path / "x.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_cli_verify_fixture(tmp_path, capsys):
    write_pfwillow_root(tmp_path)
    assert cli(["verify", "pf-willow", "--root", str(tmp_path)]) == 1  # 12 pairs, not the official 900
    out = capsys.readouterr().out
    assert "FAIL test pair count: 12 (official 900)" in out and "ok   test images: 6 images readable" in out


def test_cli_download_offline(tmp_path, capsys, monkeypatch):
    import urllib.request

    def refuse(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert cli(["download", "pf-willow", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot download https://" in err and "network unreachable" in err
    assert list(tmp_path.iterdir()) == []


def test_stats_rejects_non_parquet(tmp_path, capsys):
    p = tmp_path / "x.parquet"
    p.write_text("hello")
    assert cli(["stats", str(p)]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err


def test_image_bad_header(tmp_path):
    write_pfwillow_root(tmp_path, subsets=("car(G)",), n_images=2)
    bad = tmp_path / "PF-dataset" / "car(G)" / "img_000.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="img_000.png: cannot read image header"):
        loaders.load("pf-willow", tmp_path, "test")
    write_image(bad, 10, 10)
