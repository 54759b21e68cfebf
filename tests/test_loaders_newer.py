"""CUB-200-2011, AP-10K and SPair-U readers: the staged real files read to their exact values, fixture
roots in the official formats, and their bad inputs (one-line DatasetError)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import loaders
from loaders import DatasetError, cub
from loaders.testing import write_spair_root

from .conftest import shared

STAGED_IMAGES = 543  # the staged part_locs.txt holds the parts of images 1..543 (classes 1..10)


# ----------------------------------------------------------------------------------------------- CUB
def _cub_root(tmp_path: Path, images: int = STAGED_IMAGES) -> Path:
    """The staged official lists cut to the images whose parts are staged, with blank images of a
    size that holds each box and part (the images themselves are not staged)."""
    src = shared("CUB-200-2011")
    d = tmp_path / "cub" / "CUB_200_2011"
    (d / "parts").mkdir(parents=True)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        lines = [ln for ln in (src / name).read_text().splitlines() if int(ln.split()[0]) <= images]
        (d / name).write_text("\n".join(lines) + "\n")
    shutil.copy(src / "classes.txt", d / "classes.txt")
    shutil.copy(src / "parts" / "parts.txt", d / "parts" / "parts.txt")
    locs = (src / "parts" / "part_locs.first8145lines.txt").read_text().splitlines()[: 15 * images]
    (d / "parts" / "part_locs.txt").write_text("\n".join(locs) + "\n")
    lists = cub.read_lists(d.parent)
    for k, rel in lists["images"].items():
        x, y, w, h = lists["box"][k]
        pts = [p for p in lists["parts"][k] if p[2]]
        size = (int(max([x + w] + [p[0] for p in pts])) + 2, int(max([y + h] + [p[1] for p in pts])) + 2)
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(d / rel)
    return d.parent


def test_cub_pool_of_the_official_split_has_81878_pairs():
    src = shared("CUB-200-2011")
    col = lambda name: dict(ln.split() for ln in (src / name).read_text().splitlines())  # noqa: E731
    images = {int(k): v for k, v in col("images.txt").items()}
    lists = {"images": images, "cls": {int(k): int(v) for k, v in col("image_class_labels.txt").items()},
             "train": {int(k): v == "1" for k, v in col("train_test_split.txt").items()}}
    pairs = cub.pool(lists)
    assert len(pairs) == 81878 and sum(not t for t in lists["train"].values()) == 5794
    assert all(lists["cls"][a] == lists["cls"][b] and a < b for a, b in pairs[:500])


def test_cub_reads_the_staged_files_to_exact_values(tmp_path):
    root = _cub_root(tmp_path)
    table = loaders.load_uncached("cub-200-2011", root, "test")
    rows = {r["pair_id"]: r for r in table.to_pylist()}
    # images 1 and 3 are the first two test images of class 1 (train_test_split: 1 -> 0, 2 -> 1, 3 -> 0)
    r = rows["1-3"]
    src = shared("CUB-200-2011")
    locs = [ln.split() for ln in (src / "parts" / "part_locs.first8145lines.txt").read_text().splitlines()]
    part = {(int(a), int(b)): (float(x), float(y), int(v)) for a, b, x, y, v in locs}
    common = [j for j in range(15) if part[(1, j + 1)][2] and part[(3, j + 1)][2]]
    assert r["kps_ids"] == common and r["category"] == "001.Black_footed_Albatross"
    assert r["src_kps"] == [[part[(1, j + 1)][0], part[(1, j + 1)][1]] for j in common]
    assert r["trg_kps"] == [[part[(3, j + 1)][0], part[(3, j + 1)][1]] for j in common]
    assert r["src_kps"][0] == [312.0, 182.0]  # line 2 of part_locs.txt: "1 2 312.0 182.0 1"
    assert r["src_bbox"] == [60.0, 27.0, 385.0, 331.0]  # "1 60.0 27.0 325.0 304.0": x, y, w, h
    assert r["src_image"] == "CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    lists = cub.read_lists(root)
    assert table.num_rows == len(cub.pool(lists))  # no staged pair lacks a part visible in both
    assert all(k in rows for k in ("1-3",)) and "1-2" not in rows  # image 2 is a training image


def test_cub_distilldift_split_is_torch_randperm_seed_42(tmp_path):
    import torch

    root = _cub_root(tmp_path, images=120)
    torch.manual_seed(42)
    want = torch.randperm(len(cub.pool(cub.read_lists(root)))).tolist()
    assert cub.distilldift_order(len(want)) == want
    full = loaders.load_uncached("cub-200-2011", root, "test")
    sub = loaders.load_uncached("cub-200-2011", root, "test-distilldift")
    pool = cub.pool(cub.read_lists(root))
    expect = [f"{a}-{b}" for a, b in (pool[i] for i in want[:1000])]
    assert sub.column("pair_id").to_pylist() == [p for p in expect if p in set(full.column("pair_id").to_pylist())]
    assert set(sub.column("split").to_pylist()) == {"test-distilldift"}


def test_cub_verify_checks_the_part_locations_checksum(tmp_path):
    from loaders.verify import verify

    checks = {c.name: c for c in verify("cub-200-2011", _cub_root(tmp_path, images=60))}
    assert checks["test parses"].ok and checks["test images"].ok
    assert not checks["sha256"].ok and "mismatch: parts/part_locs.txt" in checks["sha256"].detail  # a prefix only


@pytest.mark.parametrize("edit,msg", [
    (("images.txt", 0, "1 ../../etc/passwd"), "leaves the dataset root"),
    (("images.txt", 1, "1 001.Black_footed_Albatross/x.jpg"), "listed twice"),
    (("bounding_boxes.txt", 0, "1 60.0 nan 325.0 304.0"), "finite pixel coordinate"),
    (("parts/part_locs.txt", 1, "1 2 312.0 182.0 7"), "visible must be in 0..1"),
    (("parts/part_locs.txt", 1, "1 2 312.0"), "expected 5 space-separated fields"),
    (("parts/part_locs.txt", 1, "1 2 9312.0 182.0 1"), "outside its"),
    (("train_test_split.txt", 0, "1 x"), "is_training flag must be an integer"),
])
def test_cub_bad_inputs(tmp_path, edit, msg):
    root = _cub_root(tmp_path, images=30)
    name, line, text = edit
    path = root / "CUB_200_2011" / name
    lines = path.read_text().splitlines()
    lines[line] = text
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=msg) as exc:
        loaders.load_uncached("cub-200-2011", root, "test")
    assert "\n" not in str(exc.value)


def test_cub_missing_part_lines(tmp_path):
    root = _cub_root(tmp_path, images=30)
    path = root / "CUB_200_2011" / "parts" / "part_locs.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DatasetError, match="image 30 has 14 of its 15 part lines"):
        loaders.load_uncached("cub-200-2011", root, "test")


# ----------------------------------------------------------------------------------------------- AP-10K
def _ap10k_root(tmp_path: Path) -> Path:
    src = shared("AP-10K")
    d = tmp_path / "ap10k"
    shutil.copytree(src / "derived_geoaware_format", d)
    for fam, sp, i in (("Felidae", "jaguar", "000000037516"), ("Bovidae", "antelope", "000000000004")):
        (d / "JPEGImages" / fam / sp).mkdir(parents=True)
        shutil.copy(src / "mmpose_test_fixture" / f"{i}.jpg", d / "JPEGImages" / fam / sp / f"{i}.jpg")
    return d


def test_ap10k_reads_the_staged_pair_to_the_release_values(tmp_path):
    """Checked against AP-10K's own COCO file (mmpose's fixture), not against the derived JSONs."""
    root = _ap10k_root(tmp_path)
    table = loaders.load_uncached("ap-10k", root, "test-cross-family")
    assert table.num_rows == 1
    r = table.to_pylist()[0]
    coco = json.loads((shared("AP-10K") / "mmpose_test_fixture" / "test_ap10k.json").read_text())
    ann = {a["image_id"]: a for a in coco["annotations"]}
    img = {i["id"]: i for i in coco["images"]}
    s, t = ann[37516], ann[4]
    common = [k for k in range(17) if s["keypoints"][3 * k + 2] and t["keypoints"][3 * k + 2]]
    assert r["kps_ids"] == common and 1 not in common  # the jaguar's right eye is not annotated
    assert r["src_kps"] == [[float(s["keypoints"][3 * k]), float(s["keypoints"][3 * k + 1])] for k in common]
    assert r["trg_kps"] == [[float(t["keypoints"][3 * k]), float(t["keypoints"][3 * k + 1])] for k in common]
    x, y, w, h = s["bbox"]
    assert r["src_bbox"] == [x, y, x + w, y + h]
    assert (r["src_width"], r["src_height"]) == (img[37516]["width"], img[37516]["height"])
    assert r["category"] == "all" and r["src_image"] == "JPEGImages/Felidae/jaguar/000000037516.jpg"
    with Image.open(root / r["trg_image"]) as im:
        assert im.size == (r["trg_width"], r["trg_height"])


def _pair(root: Path, name: str, src: str, trg: str, folder="test_cross_family"):
    d = root / "PairAnnotation" / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps({"src_json_path": src, "trg_json_path": trg}))


def _edit_image(root: Path, rel: str, **changes):
    p = root / rel
    ann = json.loads(p.read_text())
    ann.update(changes)
    p.write_text(json.dumps(ann))


JAGUAR = "data/ap-10k/ImageAnnotation/Felidae/jaguar/000000037516.json"
ANTELOPE = "data/ap-10k/ImageAnnotation/Bovidae/antelope/000000000004.json"


@pytest.mark.parametrize("case,msg", [
    ("escape", "leaves the dataset root"),
    ("not-image-json", "must be a path to an ImageAnnotation"),
    ("keypoints", "flat list of 17"),
    ("visibility", "visibility must be 0, 1 or 2"),
    ("outside", "lies outside the 1200 x 867 image"),
    ("name", "pair file name must be"),
    ("species", "category 'jaguar' is not the species of both images"),
    ("json", "malformed JSON"),
])
def test_ap10k_bad_inputs(tmp_path, case, msg):
    root = _ap10k_root(tmp_path)
    split = "test-cross-family"
    jag = "ImageAnnotation/Felidae/jaguar/000000037516.json"
    kp = json.loads((root / jag).read_text())["keypoints"]
    if case == "escape":
        _pair(root, "1-4:all.json", "data/ap-10k/ImageAnnotation/../../../x.json", ANTELOPE)
    elif case == "not-image-json":
        _pair(root, "1-4:all.json", "/etc/passwd", ANTELOPE)
    elif case == "keypoints":
        _edit_image(root, jag, keypoints=kp[:-3])
    elif case == "visibility":
        _edit_image(root, jag, keypoints=kp[:-1] + [3])
    elif case == "outside":
        _edit_image(root, jag, keypoints=[5000] + kp[1:])
    elif case == "name":
        _pair(root, "pair.json", JAGUAR, ANTELOPE)
    elif case == "species":
        _pair(root, "37516-4:jaguar.json", JAGUAR, ANTELOPE, folder="test")
        split = "test"
    elif case == "json":
        (root / "PairAnnotation" / "test_cross_family" / "9-9:all.json").write_text("{")
    with pytest.raises(DatasetError, match=msg) as exc:
        loaders.load_uncached("ap-10k", root, split)
    assert "\n" not in str(exc.value)


def test_ap10k_missing_split_folder(tmp_path):
    with pytest.raises(DatasetError, match="AP-10K pair folder is missing"):
        loaders.load_uncached("ap-10k", _ap10k_root(tmp_path), "test-cross-species")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
                          lambda c: st.lists(c, max_size=60) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                          max_leaves=80),
       field=st.sampled_from(["keypoints", "bbox", "width", "name", "supercategory"]))
def test_ap10k_any_field_value_reads_or_fails_in_one_line(tmp_path_factory, value, field):
    root = _ap10k_root(tmp_path_factory.mktemp("ap"))
    _edit_image(root, "ImageAnnotation/Felidae/jaguar/000000037516.json", **{field: value})
    try:
        table = loaders.load_uncached("ap-10k", root, "test-cross-family")
    except DatasetError as exc:
        assert "\n" not in str(exc)
    else:
        assert table.num_rows == 1


# ----------------------------------------------------------------------------------------------- SPair-U
def _spair_u(tmp_path: Path, layout_folder="SPair-U/PairAnnotation") -> tuple[Path, list[str]]:
    root = tmp_path / "spair"
    write_spair_root(root, {"test": 6}, seed=9)
    names = (root / "Layout" / "large" / "test.txt").read_text().split()
    keep = [names[1], names[4]]  # SPair-U may cover a subset of the test pairs
    for n in keep:
        ann = json.loads((root / "PairAnnotation" / "test" / f"{n}.json").read_text())
        ann["src_kps"], ann["trg_kps"] = ann["src_kps"][:2], ann["trg_kps"][:2]
        del ann["kps_ids"]  # how SPair-U numbers its new keypoints is unconfirmed: numbered 0..
        d = root / layout_folder / "test"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{n}.json").write_text(json.dumps(ann))
    return root, keep


def test_spair_u_reads_the_annotated_subset_in_layout_order(tmp_path):
    root, keep = _spair_u(tmp_path)
    table = loaders.load_uncached("spair-u", root, "test")
    assert table.column("pair_id").to_pylist() == keep
    assert set(table.column("dataset").to_pylist()) == {"spair-u"}
    assert table.column("kps_ids").to_pylist() == [[0, 1], [0, 1]]
    base = json.loads((root / "PairAnnotation" / "test" / f"{keep[0]}.json").read_text())
    assert table.column("src_kps").to_pylist()[0] == [[float(v) for v in p] for p in base["src_kps"][:2]]
    assert table.column("src_image").to_pylist()[0].startswith("JPEGImages/")
    root2, keep2 = _spair_u(tmp_path / "j", "ExtraPairAnnotation")
    assert loaders.load_uncached("spair-u", root2, "test", layout="jamaisvu").column("pair_id").to_pylist() == keep2


def test_spair_u_errors(tmp_path):
    root = tmp_path / "spair"
    write_spair_root(root, {"test": 3}, seed=9)
    with pytest.raises(DatasetError, match="no pair annotation of .*test.txt there"):
        loaders.load_uncached("spair-u", root, "test")
    with pytest.raises(DatasetError, match="unknown spair-u layout 'other'; valid: marco, jamaisvu"):
        loaders.load_uncached("spair-u", root, "test", layout="other")
    with pytest.raises(DatasetError, match="unknown split 'trn' for spair-u"):
        loaders.load_uncached("spair-u", root, "trn")


def test_new_datasets_run_end_to_end_with_their_protocols(tmp_path):
    """run -> results with the geoaware (strict, padded frame) and original presets on AP-10K."""
    import pandas as pd

    from benchmarks.run import main as run_cli

    root = _ap10k_root(tmp_path)
    assert run_cli(["--matcher", "identity", "--dataset", "ap-10k", "--split", "test-cross-family", "--data-root",
                    str(root), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    res = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(res["protocol"]) == {"geoaware", "original"} and set(res["split"]) == {"test-cross-family"}
    assert set(res[res.protocol == "geoaware"]["alpha"]) == {0.01, 0.05, 0.1}
    # the split's one category is literally "all": it never collides with the whole-split rows
    assert set(res["category"]) == {"all", "all (category)"}
    assert not res.duplicated(["protocol", "aggregate", "readout", "category", "alpha", "metric", "keypoints"]).any()
    from leaderboard.__main__ import main as lb_cli

    assert lb_cli(["build", str(tmp_path / "run"), "--out", str(tmp_path / "lb"), "--format", "md,csv,tex,html",
                   "--figures", "png"]) == 0
    wide = pd.read_csv(tmp_path / "lb" / "ap-10k-test-cross-family-wide.csv")  # a split other than test is named
    meas = wide[wide.kind == "measured"]
    assert {"all@0.1", "all (category)@0.1"} <= set(meas.columns)
    compact = (tmp_path / "lb" / "ap-10k-test-cross-family.md").read_text()
    assert "protocol geoaware" in compact and "d < alpha·T" in compact


# ----------------------------------------------------------------------------------------------- AP-10K build
def _raw_ap10k(tmp_path: Path) -> tuple[list[Path], Path, Path]:
    """A COCO-style AP-10K release: family F1 with species a (55 images) and b (52), family F2 with c (51);
    image 3 is a crowd id, image 4 has only 2 keypoints, image 5 has a second annotation (ignored)."""
    import random

    rng = random.Random(0)
    cats = [{"id": 1, "name": "a", "supercategory": "F1"}, {"id": 2, "name": "b", "supercategory": "F1"},
            {"id": 3, "name": "c", "supercategory": "F2"}]
    images, anns, n = [], [], 0
    (tmp_path / "data").mkdir()
    for cat, count in ((1, 55), (2, 52), (3, 51)):
        for _ in range(count):
            n += 1
            kp = []
            for _k in range(17):
                kp += [rng.randint(1, 60), rng.randint(1, 40), 2 if rng.random() < 0.8 else 0]
            if n == 4:
                kp = [10, 10, 2, 11, 11, 2] + [0, 0, 0] * 15
            images.append({"id": n, "file_name": f"{n:012d}.jpg", "width": 64, "height": 48})
            anns.append({"id": 1000 + n, "image_id": n, "category_id": cat, "bbox": [1, 1, 60, 40],
                         "num_keypoints": sum(1 for v in kp[2::3] if v), "keypoints": kp})
            Image.new("RGB", (64, 48)).save(tmp_path / "data" / f"{n:012d}.jpg")
    anns.append({**anns[4], "id": 99999, "category_id": 3})  # a second animal in image 5: dropped
    (tmp_path / "annotations").mkdir()
    files = []
    for k, part in enumerate((anns[:60], anns[60:120], anns[120:])):
        f = tmp_path / "annotations" / f"part{k}.json"
        f.write_text(json.dumps({"images": images, "annotations": part, "categories": cats}))
        files.append(f)
    crowd = tmp_path / "crowd.txt"
    crowd.write_text("000000000003\n")
    return files, tmp_path / "data", crowd


def test_ap10k_build_follows_the_construction_rules(tmp_path):
    from loaders import ap10k_build
    from loaders.__main__ import main as loaders_cli

    files, data, crowd = _raw_ap10k(tmp_path)
    counts = ap10k_build.build(files, data, crowd, tmp_path / "out")
    root = tmp_path / "out"
    filtered = lambda sp, name: [int(x) for x in (root / "ImageAnnotation" / sp / f"{name}_filtered.txt").read_text().split()]  # noqa: E731
    kept_a = [i for i in range(1, 56) if i not in (3, 4)]  # crowd id and a 2-keypoint image dropped
    assert filtered("F1/a", "test") == kept_a[-30:] and filtered("F1/a", "val") == kept_a[-50:-30]
    assert filtered("F1/a", "train") == kept_a[:-50]
    assert json.loads((root / "ImageAnnotation/F1/a/000000000005.json").read_text())["category_id"] == 1  # first annotation
    test = loaders.load_uncached("ap-10k", root, "test")
    assert set(test.column("category").to_pylist()) == {"a", "b", "c"}
    assert test.num_rows == counts["test"] <= 3 * 435
    assert all(len(k) >= 3 for k in test.column("kps_ids").to_pylist())  # mutual visibility >= 3 (v = 2 only here)
    cross = loaders.load_uncached("ap-10k", root, "test-cross-species")
    assert set(cross.column("category").to_pylist()) == {"F1"} and cross.num_rows == min(900, cross.num_rows)
    fam = loaders.load_uncached("ap-10k", root, "test-cross-family")
    assert fam.num_rows == 30 and set(fam.column("category").to_pylist()) == {"all"}
    record = json.loads((root / "build.json").read_text())
    assert record["seed"] == 42 and record["rules"]["crowd_ids_dropped"] == 1
    # deterministic: a second build writes the same lists
    assert loaders_cli(["build-ap10k", "--raw", str(tmp_path), "--annotations", *map(str, files), "--crowd", str(crowd),
                        "--out", str(tmp_path / "again")]) == 0
    for folder in ("test", "trn", "test_cross_species", "test_cross_family"):
        a = sorted(p.name for p in (root / "PairAnnotation" / folder).iterdir())
        assert a == sorted(p.name for p in (tmp_path / "again" / "PairAnnotation" / folder).iterdir())
    with pytest.raises(DatasetError, match="already exists"):
        ap10k_build.build(files, data, crowd, root)


def test_ap10k_build_on_the_real_fixture_equals_the_staged_derived_files(tmp_path):
    from loaders import ap10k_build

    src = shared("AP-10K")
    ap10k_build.build([src / "mmpose_test_fixture" / "test_ap10k.json"], src / "mmpose_test_fixture",
                      src / "geoaware_preprocessing" / "ap-10k_is_crowd.txt", tmp_path / "out")
    for rel in ("Felidae/jaguar/000000037516.json", "Bovidae/antelope/000000000004.json"):
        assert (tmp_path / "out" / "ImageAnnotation" / rel).read_bytes() == \
            (src / "derived_geoaware_format" / "ImageAnnotation" / rel).read_bytes()
    table = loaders.load_uncached("ap-10k", tmp_path / "out", "test-cross-family")
    assert table.column("pair_id").to_pylist() == ["000000000004-000000037516:all"]  # families by name


def test_ap10k_build_bad_inputs_leave_nothing(tmp_path):
    from loaders import ap10k_build

    files, data, crowd = _raw_ap10k(tmp_path)
    files[1].write_text('{"images": [], "annotations": [{"image_id": 1}], "categories": []}')
    with pytest.raises(DatasetError, match="lacks image_id, 17 x 3 keypoints or a known category"):
        ap10k_build.build(files, data, crowd, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_datasets_without_a_download_say_what_to_do(tmp_path):
    from loaders.download import download

    with pytest.raises(DatasetError, match="ap-10k cannot be downloaded by this toolkit: .*build-ap10k"):
        download("ap-10k", tmp_path)
    with pytest.raises(DatasetError, match="spair-u cannot be downloaded by this toolkit: .*SPair-U.zip"):
        download("spair-u", tmp_path)
    assert not any(tmp_path.iterdir())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.text(alphabet=st.sampled_from("0123456789 .-+enaifx\t"), max_size=30),
       name=st.sampled_from(["parts/part_locs.txt", "bounding_boxes.txt", "images.txt", "train_test_split.txt",
                             "image_class_labels.txt"]),
       where=st.integers(0, 40))
def test_cub_any_line_reads_or_fails_in_one_line(tmp_path_factory, line, name, where):
    root = _cub_root(tmp_path_factory.mktemp("cub"), images=3)
    path = root / "CUB_200_2011" / name
    lines = path.read_text().splitlines()
    lines[where % len(lines)] = line
    path.write_text("\n".join(lines) + "\n")
    try:
        table = loaders.load_uncached("cub-200-2011", root, "test")
    except DatasetError as exc:
        assert "\n" not in str(exc)
    else:
        assert table.num_rows <= 1
