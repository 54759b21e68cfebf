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


def _willow_pair_list(root, a, b, coords=None):
    """A PF-Willow pair list with one row (imageA, imageB, 40 coordinates)."""
    cells = coords if coords is not None else ["1"] * 40
    (root / "test_pairs.csv").write_text("a,b," + ",".join(f"c{i}" for i in range(40)) + "\n"
                                         + f"{a},{b}," + ",".join(cells) + "\n")


def _edit_pascal_test_row(root, edit):
    """Rewrite the first data row of PF-Pascal's test list with ``edit(cells) -> cells``."""
    path = root / "image_pairs" / "test_pairs.csv"
    lines = path.read_text().splitlines()
    lines[1] = ",".join(edit(lines[1].split(",")))
    path.write_text("\n".join(lines) + "\n")


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
    _willow_pair_list(root, name, good)
    _refused("pf-willow", root, "test", "imageA.*leaves the dataset root|imageA.*outside")


def test_pfpascal_csv_name_cannot_leave_the_root(tmp_path):
    root = tmp_path / "pascal"
    write_pfpascal_root(root, n_pairs=2)
    _edit_pascal_test_row(root, lambda cells: ["../../../../etc/hostname", *cells[1:]])
    _refused("pf-pascal", root, "test", "source_image.*leaves the dataset root")


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "PF-dataset/car(G)/img_000.png", outside / "x.png")
    os.symlink(outside, root / "PF-dataset" / "car(G)" / "link")
    _willow_pair_list(root, "PF-dataset/car(G)/link/x.png", "PF-dataset/car(G)/img_000.png")
    _refused("pf-willow", root, "test", "resolves outside the dataset root")


def test_file_symlink_out_of_the_root_is_refused_and_inside_accepted(tmp_path):
    root = tmp_path / "willow"
    write_pfwillow_root(root, n_images=2)
    outside = tmp_path / "x.png"
    shutil.copy(root / "PF-dataset/car(G)/img_000.png", outside)
    os.symlink(root / "PF-dataset/car(G)/img_000.png", root / "PF-dataset/car(G)/inside.png")
    _willow_pair_list(root, "PF-dataset/car(G)/inside.png", "PF-dataset/car(G)/img_001.png")
    assert loaders.load_uncached("pf-willow", root, "test").num_rows >= 1
    os.symlink(outside, root / "PF-dataset/car(G)/escape.png")
    _willow_pair_list(root, "PF-dataset/car(G)/escape.png", "PF-dataset/car(G)/img_001.png")
    _refused("pf-willow", root, "test", "escape.png.*resolves outside the dataset root")


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
    _willow_pair_list(root, "PF-dataset/car(G)/img_000.png", "PF-dataset/car(G)/img_001.png", ["inf"] + ["1"] * 39)
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
    _edit_pascal_test_row(root, lambda cells: cells[:3])
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


# ------------------------------------------------------------------------------------ resume shards (5, 7)
def _run(root, out, *extra):
    from benchmarks.run import main as run_cli

    return run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(root), "--out", str(out),
                    "--quiet", "--shard-size", "5", *extra])


def _preds(out):
    import pyarrow.parquet as pq

    t = pq.read_table(out / "predictions.parquet").sort_by([("readout", "ascending"), ("pair_id", "ascending")])
    return t.to_pylist()


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_after, where", [(0, "parquet"), (1, "checksum"), (2, "parquet"), (3, "checksum")])
def test_killed_run_resumes_to_the_same_predictions(tmp_path, monkeypatch, crash_after, where):
    """Crash injected at each write of the shard sequence (before a shard, or between a shard and its
    checksum): the rerun ends with the predictions of an uninterrupted run."""
    from loaders.atomic import write_parquet, write_text

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 18}, seed=5)
    assert _run(root, tmp_path / "clean") == 0
    calls = {"parquet": 0, "checksum": 0}

    def parquet(table, path):
        if where == "parquet" and calls["parquet"] == crash_after:
            raise Crash
        calls["parquet"] += 1
        write_parquet(table, path)

    def text(path, content):
        if where == "checksum" and calls["checksum"] == crash_after:
            raise Crash
        calls["checksum"] += 1
        write_text(path, content)

    monkeypatch.setattr("loaders.atomic.write_parquet", parquet)
    monkeypatch.setattr("loaders.atomic.write_text", text)
    with pytest.raises(Crash):
        _run(root, tmp_path / "out")
    monkeypatch.undo()
    assert _run(root, tmp_path / "out") == 0
    assert _preds(tmp_path / "out") == _preds(tmp_path / "clean")
    assert not list((tmp_path / "out").glob(".partial-*"))


def test_edited_annotation_after_a_kill_is_not_served_from_old_shards(tmp_path, monkeypatch):
    from loaders.atomic import write_parquet

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 12}, seed=5)
    n = {"k": 0}

    def parquet(table, path):
        if n["k"] == 2:
            raise Crash
        n["k"] += 1
        write_parquet(table, path)

    monkeypatch.setattr("loaders.atomic.write_parquet", parquet)
    with pytest.raises(Crash):
        _run(root, tmp_path / "out")
    monkeypatch.undo()
    # edit the first pair's source keypoints (already in a finished shard)
    first = sorted((root / "PairAnnotation" / "test").glob("*.json"))
    layout = (root / "Layout" / "large" / "test.txt").read_text().split()
    path = root / "PairAnnotation" / "test" / f"{layout[0]}.json"
    assert path in first
    ann = json.loads(path.read_text())
    ann["src_kps"] = [[1.0, 2.0] for _ in ann["src_kps"]]
    path.write_text(json.dumps(ann))
    assert _run(root, tmp_path / "out") == 0
    assert _run(root, tmp_path / "fresh") == 0
    assert _preds(tmp_path / "out") == _preds(tmp_path / "fresh")


def test_bit_flip_in_a_shard_is_recomputed(tmp_path, monkeypatch):
    import benchmarks.shards as R  # where the run writes its shards

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 12}, seed=5)
    assert _run(root, tmp_path / "clean") == 0
    written = []
    real = R.write_shard

    def keep(table, path):
        real(table, path)
        written.append(path)
        if len(written) == 2:
            raise Crash

    monkeypatch.setattr(R, "write_shard", keep)
    with pytest.raises(Crash):
        _run(root, tmp_path / "out")
    monkeypatch.undo()
    data = bytearray(written[0].read_bytes())
    data[len(data) // 2] ^= 0x10
    written[0].write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="fails its checksum"):
        assert _run(root, tmp_path / "out") == 0
    assert _preds(tmp_path / "out") == _preds(tmp_path / "clean")


# ------------------------------------------------------------------------------------ caches (6, 7, 12)
def test_feature_cache_bit_flip_is_recomputed(tmp_path):
    import torch

    from benchmarks.dense import ImageInfo
    from sd4match.methods.dift import DiftMatcher

    cache = tmp_path / "cache"
    img = [torch.rand(3, 64, 64)]
    info = [ImageInfo(None, "k" * 64, "car", 64, 64)]
    m = DiftMatcher.from_settings("tiny", cache_dir=str(cache))
    items = [(img[0], info[0], m.cache_tag(info[0]))]
    with torch.no_grad():
        first = m.cached_features(items, lambda b, i, _: m.extract(b, i))[0]
    files = [p for p in cache.rglob("*.pt") if "vae" not in p.parts]
    assert len(files) == 1
    data = bytearray(files[0].read_bytes())
    idx = data.find(first.numpy().tobytes()[:64])
    assert idx > 0
    data[idx + 3] ^= 0x01  # one bit of one stored feature value
    files[0].write_bytes(bytes(data))
    m2 = DiftMatcher.from_settings("tiny", cache_dir=str(cache))
    with pytest.warns(UserWarning, match="checksum|damaged"), torch.no_grad():
        again = m2.cached_features(items, lambda b, i, _: m2.extract(b, i))[0]
    assert torch.equal(again, first) and m2.stats["extracted"] == 1


def test_unwritable_cache_dir_falls_back_with_a_warning(tmp_path):
    import torch

    from benchmarks.dense import ImageInfo
    from sd4match.methods.dift import DiftMatcher

    blocker = tmp_path / "file"
    blocker.write_text("x")
    m = DiftMatcher.from_settings("tiny", cache_dir=str(blocker / "cache"))
    info = ImageInfo(None, "k" * 64, "car", 64, 64)
    with pytest.warns(UserWarning, match="cannot write to the cache"), torch.no_grad():
        out = m.cached_features([(torch.rand(3, 64, 64), info, m.cache_tag(info))], lambda b, i, _: m.extract(b, i))
    assert out[0].shape[0] > 0


def test_resaved_model_folder_changes_the_cache_key(tmp_path):
    """Features cached for a folder's weights are not served after new weights are saved there."""
    import torch
    from safetensors.torch import load_file, save_file

    from benchmarks.dense import ImageInfo
    from sd4match.methods.dift import DiftMatcher

    from .test_golden import golden

    model = tmp_path / "sd"
    shutil.copytree(golden("sd-stack"), model)
    cache = tmp_path / "cache"
    info = ImageInfo(None, "k" * 64, "car", 64, 64)
    img = torch.rand(3, 64, 64)

    def features():
        m = DiftMatcher.from_settings(None, model_id=str(model), image_size=64, ensemble=1, cache_dir=str(cache))
        with torch.no_grad():
            return m.cached_features([(img, info, m.cache_tag(info))], lambda b, i, _: m.extract(b, i))[0], m

    first, m1 = features()
    again, m2 = features()
    assert torch.equal(first, again) and m2.stats["cache_hits"] == 1
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v * 1.5 for k, v in tensors.items()}, str(weights))
    changed, m3 = features()
    assert m3.stats["cache_hits"] == 0 and m3.feature_hash != m1.feature_hash
    assert not torch.equal(changed, first)


def test_random_preset_posterior_cache_is_keyed_by_seed(tmp_path):
    from sd4match.methods.dift import DiftMatcher

    a = DiftMatcher.from_settings("tiny", cache_dir=str(tmp_path), seed=0)
    b = DiftMatcher.from_settings("tiny", cache_dir=str(tmp_path), seed=1)
    assert a._posteriors.dir != b._posteriors.dir and a.feature_hash != b.feature_hash


# ------------------------------------------------------------------------------------ leaderboard (3, 12)
def _identity_run(tmp_path):
    from benchmarks.run import main as run_cli

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 6}, seed=5)
    out = tmp_path / "run"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(root), "--out", str(out),
                    "--quiet"]) == 0
    return out


@pytest.mark.parametrize("name", ["../ESCAPED", "/tmp/abs", ".hidden", "a/b"])
def test_leaderboard_output_names_stay_inside_out(tmp_path, capsys, name):
    import pandas as pd

    from leaderboard.__main__ import main

    run = _identity_run(tmp_path)
    res = pd.read_csv(run / "results.csv")
    res["dataset"] = name
    res.to_csv(run / "results.csv", index=False)
    assert main(["build", str(run), "--out", str(tmp_path / "lb")]) == 2
    assert "not a dataset name" in capsys.readouterr().err
    assert not (tmp_path / "ESCAPED.csv").exists() and not list(tmp_path.glob("lb/*"))


@pytest.mark.parametrize("col, value, match", [("pck", "abc", "'pck' must hold numbers"), ("alpha", "x", "'alpha'"),
                                                ("pck", "7", "in \\[0, 1\\]")])
def test_leaderboard_non_numeric(tmp_path, capsys, col, value, match):
    import pandas as pd

    from leaderboard.__main__ import main

    run = _identity_run(tmp_path)
    res = pd.read_csv(run / "results.csv")
    res[col] = res[col].astype(object)
    res.loc[3, col] = value
    res.to_csv(run / "results.csv", index=False)
    capsys.readouterr()  # the run's own lines
    assert main(["build", str(run), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(match, err) and err.count("\n") == 1


def test_leaderboard_duplicate_run_and_list_run_json(tmp_path, capsys):
    from leaderboard.__main__ import main

    run = _identity_run(tmp_path)
    assert main(["build", str(run), str(run), "--out", str(tmp_path / "lb")]) == 2
    assert "given twice" in capsys.readouterr().err
    (run / "run.json").write_text("[]")
    assert main(["build", str(run), "--out", str(tmp_path / "lb")]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ run outputs (12)
def test_run_out_in_the_way_locked_or_full(tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    from benchmarks.run import main as run_cli

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 6}, seed=5)
    args = ["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(root), "--quiet"]
    f = tmp_path / "file"
    f.write_text("x")
    assert run_cli(args + ["--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert run_cli(args + ["--out", str(f / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the output folder" in err and err.count("\n") == 1
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".corrbench.lock", "a+") as fh:  # another run holds the folder
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_cli(args + ["--out", str(out)]) == 2
        assert "another run or evaluation is writing into this folder" in capsys.readouterr().err
    assert not (out / "results.csv").exists()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "predictions.parquet"))

    monkeypatch.setattr("loaders.atomic.write_parquet", full)
    assert run_cli(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("\n") == 1
    assert not (out / "results.csv").exists() and not (out / "predictions.parquet").exists()
    monkeypatch.undo()
    assert run_cli(args + ["--out", str(out)]) == 0  # the lock died with its holder


# ------------------------------------------------------------------------------------ visualize memory (13)
def test_visualize_decodes_huge_images_downscaled(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from benchmarks.run import main as run_cli

    root = tmp_path / "spair"
    anns = write_spair_root(root, {"test": 1}, seed=5, images=True)["test"]
    a = anns[0]
    big = Image.new("RGB", (10000, 10000), (90, 120, 150))  # 100 megapixels
    big.save(root / "JPEGImages" / a["category"] / a["src_imname"], quality=50)
    del big
    out = tmp_path / "run"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(root), "--out", str(out),
                    "--quiet"]) == 0
    # peak RSS of the child's own address space (VmHWM; ru_maxrss can carry the forking parent's peak)
    code = ("import resource, sys\nfrom benchmarks.visualize import main\n"
            f"rc = main([{str(out)!r}, '--data-root', {str(root)!r}, '--pairs', '1'])\n"
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
            "print('RSS_KB', hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'RC', rc)\n")
    env = {**__import__("os").environ, "CORRBENCH_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    line = [x for x in res.stdout.splitlines() if x.startswith("RSS_KB")][0].split()
    rss_kb, rc = int(line[1]), int(line[3])
    assert rc == 0, res.stderr
    assert rss_kb < 1_000_000, f"peak RSS {rss_kb / 1e6:.2f} GB for one 100-megapixel image"
    png = next((out / "vis").glob("*.png"))
    with Image.open(png) as im:
        assert max(im.size) <= 2 * 1200 + 200


# ------------------------------------------------------------------------------------ downloads (4)
def _zip(path, members):
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dl(tmp_path, archive, **kw):
    from loaders.download import Archive, download

    root = tmp_path / "root"
    cap = kw.pop("cap", 1 << 20)
    sha = kw.pop("recorded", None)
    return root, lambda: download("pf-willow", root, archives=[Archive(archive.as_uri(), sha, cap)], **kw)


def test_download_verifies_the_checksum(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"PF-dataset/x.txt": b"hello"})
    root, go = _dl(tmp_path, archive, recorded=_sha(archive))
    go()
    assert (root / "PF-dataset" / "x.txt").read_bytes() == b"hello"
    tampered = _zip(tmp_path / "b.zip", {"PF-dataset/x.txt": b"HELLO"})
    root, go = _dl(tmp_path / "t", tampered, recorded=_sha(archive))
    with pytest.raises(DatasetError, match="does not match the expected"):
        go()
    assert not (root / "PF-dataset").exists() and not list(root.glob(".download-*"))
    root, go = _dl(tmp_path / "u", tampered)  # nothing recorded, nothing passed
    with pytest.raises(DatasetError, match="no checksum is recorded.*--sha256 HEX"):
        go()
    assert not (root / "PF-dataset").exists()
    root, go = _dl(tmp_path / "v", tampered, sha256=_sha(tampered))
    go()
    assert (root / "PF-dataset" / "x.txt").read_bytes() == b"HELLO"


def test_zip_bomb_is_capped(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"PF-dataset/zeros.bin": b"\0" * (8 << 20)})
    assert archive.stat().st_size < 100_000
    root, go = _dl(tmp_path, archive, cap=1 << 20, allow_unverified=True)
    with pytest.raises(DatasetError, match="unpacks to more than"):
        go()
    assert not list(root.iterdir())  # nothing moved in, the .download-* folder removed


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device", "hardlink"])
def test_tar_members_that_escape_or_are_special(tmp_path, kind):
    import io
    import tarfile

    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        ok = tarfile.TarInfo("PF-dataset/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt"}.get(kind, "PF-dataset/evil"))
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "device":
            bad.type, bad.devmajor, bad.devminor = tarfile.CHRTYPE, 1, 5
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "/etc/passwd"
        else:
            bad.size = 4
        tf.addfile(bad, io.BytesIO(b"evil") if bad.isfile() else None)
    root, go = _dl(tmp_path, archive, allow_unverified=True)
    with pytest.raises(DatasetError, match="unsafe member path|link, device or FIFO"):
        go()
    assert not (tmp_path / "evil.txt").exists() and not list(root.iterdir())


def test_stale_download_folders_are_removed(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"PF-dataset/x.txt": b"x"})
    root, go = _dl(tmp_path, archive, recorded=_sha(archive))
    (root / ".download-killed").mkdir(parents=True)
    (root / ".download-killed" / "half.zip").write_bytes(b"12")
    go()
    assert not list(root.glob(".download-*")) and (root / "PF-dataset" / "x.txt").is_file()


def test_zip_symlink_member_is_refused(tmp_path):
    import stat
    import zipfile

    archive = tmp_path / "l.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("PF-dataset/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    root, go = _dl(tmp_path, archive, allow_unverified=True)
    with pytest.raises(DatasetError, match="link or special file"):
        go()


def test_convert_refuses_empty_and_mixed_width_files(tmp_path, capsys):
    import torch

    from sd4match.convert import main as convert_cli

    torch.save({}, tmp_path / "empty.pt")
    assert convert_cli(["--variant", "single", "--input", str(tmp_path / "empty.pt"), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "non-empty mapping" in capsys.readouterr().err
    torch.save({"car": torch.randn(1, 77, 16), "dog": torch.randn(1, 77, 32)}, tmp_path / "mixed.pt")
    assert convert_cli(["--variant", "class", "--input", str(tmp_path / "mixed.pt"), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "different widths" in capsys.readouterr().err
    torch.save({"dataset": torch.full((1, 77, 16), float("nan"))}, tmp_path / "nan.pt")
    assert convert_cli(["--variant", "single", "--input", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_matcher_refuses_a_fifo_image(tmp_path):
    from benchmarks.matchers.base import MatcherError
    from sd4match.methods.dift import DiftMatcher

    os.mkfifo(tmp_path / "img.png")
    with pytest.raises(MatcherError, match="not a regular file"):
        DiftMatcher.from_settings("tiny")._decode(tmp_path / "img.png")


def test_atomic_outputs_respect_the_umask(tmp_path):
    import stat

    from loaders.atomic import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.csv", "x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644


def test_failed_run_leaves_no_empty_folder_and_leaderboard_skips_strays(tmp_path, monkeypatch, capsys):
    import warnings

    from benchmarks.run import main as run_cli
    from leaderboard.core import LeaderboardError, collect

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 6}, seed=5)

    def boom(*a, **k):
        raise Crash

    monkeypatch.setattr("benchmarks.run.predict_shards", boom)
    with pytest.raises(Crash):
        run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(root), "--out",
                 str(tmp_path / "runs" / "failed"), "--quiet"])
    monkeypatch.undo()
    assert not list((tmp_path / "runs" / "failed").glob(".partial-*"))
    good = _identity_run(tmp_path)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one clean line, never a Python warning with its source
        board = collect([tmp_path / "runs" / "failed", good])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("skipped ") and "not a run folder" in err
    assert {Path(s).name for s in board[board["kind"] == "measured"]["source"]} == {good.name}
    with pytest.raises(LeaderboardError, match="is a folder written by benchmarks.run"):
        collect([tmp_path / "runs" / "failed"])


def test_download_verifies_each_file_where_the_package_records_them(tmp_path, monkeypatch):
    """PF-Willow: no archive checksum is published, but every data file's sha256 is recorded."""
    import hashlib

    import loaders.download as D

    files = {"car(G)/a.png": b"png-bytes", "car(G)/a.mat": b"mat-bytes"}
    sums = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    monkeypatch.setattr(D, "known_file_checksums", lambda dataset: sums)
    good = _zip(tmp_path / "good.zip", {f"PF-dataset/{k}": v for k, v in files.items()})
    monkeypatch.setattr(D, "ARCHIVES", {"pf-willow": [D.Archive(good.as_uri(), None, 1 << 20)]})
    D.download("pf-willow", tmp_path / "ok")
    assert (tmp_path / "ok" / "PF-dataset" / "car(G)" / "a.png").read_bytes() == b"png-bytes"
    bad = _zip(tmp_path / "bad.zip", {"PF-dataset/car(G)/a.png": b"tampered", "PF-dataset/car(G)/a.mat": b"mat-bytes"})
    monkeypatch.setattr(D, "ARCHIVES", {"pf-willow": [D.Archive(bad.as_uri(), None, 1 << 20)]})
    with pytest.raises(DatasetError, match="1 of 2 data files are missing or differ.*car\\(G\\)/a.png"):
        D.download("pf-willow", tmp_path / "no")
    assert not (tmp_path / "no" / "PF-dataset").exists()
