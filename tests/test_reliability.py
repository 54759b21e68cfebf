"""Reliability and security: each test injects one fault and checks the one-line refusal (or the
exact recovery) that the toolkit promises."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import loaders
from loaders import DatasetError
from loaders.testing import write_pfpascal_root, write_pfwillow_root, write_spair_root


def _spair(tmp_path, **changes):
    root = tmp_path / "spair"
    write_spair_root(root, {"test": 2}, seed=3)
    path = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
    ann = json.loads(path.read_text())
    ann.update(changes)
    path.write_text(json.dumps(ann))
    return root, path


def _refused(dataset, root, split, match):
    with pytest.raises(DatasetError, match=match) as info:
        loaders.load_uncached(dataset, root, split)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------------ path escapes (2)
@pytest.mark.parametrize("name", ["../../../../dev/zero", "../x.jpg", "/etc/passwd", "a\x00.jpg"])
def test_spair_image_name_cannot_leave_the_root(tmp_path, name):
    root, path = _spair(tmp_path, src_imname=name)
    msg = _refused("spair-71k", root, "test", "src_imname")
    assert path.name in msg


def test_spair_layout_line_cannot_leave_the_root(tmp_path):
    root, _ = _spair(tmp_path)
    (root / "Layout" / "large" / "test.txt").write_text("../../../etc/x-a-b:cat\n")
    _refused("spair-71k", root, "test", r"test.txt:1: malformed pair line")


@pytest.mark.parametrize("name", ["../outside.png", "/tmp/x.png", "PF-dataset/car(G)/../../../x.png"])
def test_pfwillow_csv_name_cannot_leave_the_root(tmp_path, name):
    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)
    good = "PF-dataset/car(G)/img_000.png"
    (root / "test_pairs.csv").write_text("a,b," + ",".join(f"c{i}" for i in range(40)) + "\n"
                                         + f"{name},{good}," + ",".join(["1"] * 40) + "\n")
    _refused("pf-willow", root, "test", "imageA.*leaves the dataset root|imageA.*outside")


def test_pfpascal_csv_name_cannot_leave_the_root(tmp_path):
    root = tmp_path / "pascal"
    write_pfpascal_root(root, n_pairs=2)
    path = root / "image_pairs" / "test_pairs.csv"
    lines = path.read_text().splitlines()
    row = lines[1].split(",")
    row[0] = "../../../../etc/hostname"
    lines[1] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")
    _refused("pf-pascal", root, "test", "source_image.*leaves the dataset root")


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "PF-dataset/car(G)/img_000.png", outside / "x.png")
    os.symlink(outside, root / "PF-dataset" / "car(G)" / "link")
    (root / "test_pairs.csv").write_text("a,b," + ",".join(f"c{i}" for i in range(40)) + "\n"
                                         + "PF-dataset/car(G)/link/x.png,PF-dataset/car(G)/img_000.png,"
                                         + ",".join(["1"] * 40) + "\n")
    _refused("pf-willow", root, "test", "resolves outside the dataset root")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_in_place_of_an_image_does_not_hang(tmp_path):
    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)
    img = root / "PF-dataset" / "duck(S)" / "img_001.png"
    img.unlink()
    os.mkfifo(img)
    _refused("pf-willow", root, "test", "img_001.png: image file is not a regular file")


# ------------------------------------------------------------------------------------ values (9)
@pytest.mark.parametrize("changes, match", [
    ({"src_kps": [[float("nan"), 1.0]], "trg_kps": [[1.0, 1.0]], "kps_ids": ["0"]}, "src_kps.*not a finite"),
    ({"trg_kps": [[True, 2]], "src_kps": [[1, 2]], "kps_ids": ["0"]}, "trg_kps.*not \\[x, y\\] numbers"),
    ({"src_imsize": [0, 100, 3]}, "src_imsize.*sides must be"),
    ({"src_imsize": [-5, 100, 3]}, "src_imsize.*sides must be"),
    ({"trg_bndbox": [0, 0, 1e9, 1e9]}, "trg_bndbox.*outside the"),
    ({"trg_bndbox": [50, 50, 10, 10]}, "trg_bndbox.*inverted"),
    ({"mirror": "no"}, "mirror.*0 or 1"),
    ({"viewpoint_variation": 7}, "viewpoint_variation.*0..2"),
    ({"truncation": True}, "truncation"),
])
def test_spair_values_are_validated(tmp_path, changes, match):
    root, path = _spair(tmp_path, **changes)
    assert path.name in _refused("spair-71k", root, "test", match)


def test_pfpascal_box_outside_image_is_refused(tmp_path):
    from loaders.testing import write_mat

    root = tmp_path / "pascal"
    info = write_pfpascal_root(root, n_pairs=2)
    rel = next(iter(info["images"]))
    mat = next(root.glob(f"PF-dataset-PASCAL/Annotations/*/{Path(rel).stem}.mat"))
    write_mat(mat, kps=info["kps"][rel], bbox=np.array([[0, 0, 1e9, 1e9]]))
    _refused("pf-pascal", root, "trn", "bbox.*outside")


def test_inf_keypoint_in_csv_is_refused(tmp_path):
    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)
    (root / "test_pairs.csv").write_text("a,b," + ",".join(f"c{i}" for i in range(40)) + "\n"
                                         + "PF-dataset/car(G)/img_000.png,PF-dataset/car(G)/img_001.png,"
                                         + ",".join(["inf"] + ["1"] * 39) + "\n")
    _refused("pf-willow", root, "test", "finite")


# ------------------------------------------------------------------------------------ one-line errors (11)
def test_non_utf8_files(tmp_path):
    root, _ = _spair(tmp_path)
    (root / "Layout" / "large" / "test.txt").write_bytes(b"\xff\xfe\x00bad\n")
    _refused("spair-71k", root, "test", "not UTF-8")
    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)
    (root / "test_pairs.csv").write_bytes(b"a,b\n\xff\xff,\x80\n")
    _refused("pf-willow", root, "test", "test_pairs.csv: PF-Willow pair list is not UTF-8")
    root = tmp_path / "pascal"
    write_pfpascal_root(root, n_pairs=2)
    (root / "image_pairs" / "test_pairs.csv").write_bytes(b"\xff" * 10)
    _refused("pf-pascal", root, "test", "not UTF-8")


def test_short_pascal_row(tmp_path):
    root = tmp_path / "pascal"
    write_pfpascal_root(root, n_pairs=2)
    path = root / "image_pairs" / "test_pairs.csv"
    lines = path.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:3])
    path.write_text("\n".join(lines) + "\n")
    _refused("pf-pascal", root, "test", "row 2 is short")


def test_arrow_range_and_type_errors_are_one_line(tmp_path):
    root, _ = _spair(tmp_path, src_pose=["a"], trg_imsize=[2**70, 5, 3])
    _refused("spair-71k", root, "test", "trg_imsize|src_pose")


def test_deeply_nested_json(tmp_path):
    root, path = _spair(tmp_path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    _refused("spair-71k", root, "test", "nested too deeply|malformed JSON|expected a JSON object")


def test_png_header_claiming_30000_squared(tmp_path):
    import struct
    import zlib

    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    (root / "PF-dataset" / "car(G)" / "img_000.png").write_bytes(png)
    _refused("pf-willow", root, "test", "img_000.png: (cannot read image header|image header claims)")


def test_mat_cell_array(tmp_path):
    from loaders.testing import write_mat

    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)
    cell = np.empty((2, 2), dtype=object)
    cell[:] = [[np.array([1.0]), "x"], [np.array([2.0]), "y"]]
    write_mat(root / "PF-dataset" / "car(G)" / "img_000.mat", pts_coord=cell)
    _refused("pf-willow", root, "test", "pts_coord.*numeric array")


def test_cli_exit_2_one_line(tmp_path, capsys):
    from loaders.__main__ import main

    root, _ = _spair(tmp_path, src_imname="../../x.jpg")
    assert main(["convert", "spair-71k", "--root", str(root), "--split", "test", "--out", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "o.parquet").exists()
