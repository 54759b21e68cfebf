"""Property-based fault injection on every reader and on the PCK functions.

The promise: whatever bytes a dataset file holds, ``loaders.load_uncached`` returns a table in the
pair schema whose values obey the format's rules, or raises :class:`loaders.DatasetError` (one
line, naming the file); nothing else. PCK, for any table a reader accepts and any predictions
(NaN and infinities included), gives fractions in [0, 1].
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loaders
from loaders import DatasetError, schema
from loaders.testing import (
    spair_annotation,
    write_pfpascal_root,
    write_pfwillow_root,
    write_spair_root,
)

EXAMPLES = 150
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

hostile_text = st.sampled_from(["../../../../dev/zero", "/etc/passwd", "a\x00b", "..", "C:\\x.jpg", "x/../../y",
                                "ok.jpg", "", "é.jpg", "\\\\server\\share"])
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), hostile_text)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                           max_leaves=12)


def check_valid(table) -> None:
    """A table a reader returned: schema, and the value rules every reader promises."""
    schema.check_table(table)
    for row in table.to_pylist():
        assert 0 < row["src_width"] and 0 < row["src_height"] and 0 < row["trg_width"] and 0 < row["trg_height"]
        assert len(row["src_kps"]) == len(row["trg_kps"]) == len(row["kps_ids"])
        for p in row["src_kps"] + row["trg_kps"]:
            assert all(math.isfinite(v) for v in p)
        for side in ("src", "trg"):
            box = row[f"{side}_bbox"]
            if box is not None:
                assert box[0] < box[2] and box[1] < box[3]
            rel = row[f"{side}_image"]
            assert not rel.startswith("/") and ".." not in Path(rel).parts and "\x00" not in rel


def _load_or_dataset_error(dataset, root, split, **kw):
    try:
        table = loaders.load_uncached(dataset, root, split, **kw)
    except DatasetError as exc:
        assert "\n" not in str(exc)
        return None
    check_valid(table)
    return table


@pytest.fixture(scope="module")
def spair_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("spair")
    write_spair_root(root, {"test": 3}, seed=1)
    return root


FIELDS = ["src_kps", "trg_kps", "kps_ids", "src_imname", "trg_imname", "src_imsize", "trg_imsize", "src_bndbox",
          "trg_bndbox", "category", "mirror", "viewpoint_variation", "truncation", "src_pose"]


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=json_values, drop=st.booleans())
def test_spair_annotation_fields(spair_base, field, value, drop):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "r"
        shutil.copytree(spair_base, root)
        path = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
        ann = json.loads(path.read_text())
        if drop:
            ann.pop(field, None)
        else:
            ann[field] = value
        path.write_text(json.dumps(ann))
        _load_or_dataset_error("spair-71k", root, "test")


@SETTINGS
@given(data=st.binary(max_size=300), which=st.sampled_from(["layout", "annotation"]))
def test_spair_raw_bytes(spair_base, data, which):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "r"
        shutil.copytree(spair_base, root)
        if which == "layout":
            path = root / "Layout" / "large" / "test.txt"
        else:
            path = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
        path.write_bytes(data)
        _load_or_dataset_error("spair-71k", root, "test")


@SETTINGS
@given(depth=st.integers(1, 100_000))
def test_spair_deep_json(spair_base, depth):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "r"
        shutil.copytree(spair_base, root)
        path = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
        path.write_text("[" * depth + "]" * depth)
        _load_or_dataset_error("spair-71k", root, "test")


@pytest.fixture(scope="module")
def willow_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("willow")
    write_pfwillow_root(root, n_images=2)
    return root


cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str), hostile_text,
                  st.text(max_size=6))


@SETTINGS
@given(row=st.lists(cells, min_size=0, max_size=44), raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_pfwillow_pair_list(willow_base, row, raw):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "r"
        shutil.copytree(willow_base, root)
        imgs = sorted(str(p.relative_to(root)) for p in root.glob("PF-dataset/car(G)/*.png"))
        good = [imgs[0], imgs[1]] + ["1.0"] * 40
        body = ",".join(good) + "\n" + ",".join(row[:2] + good[2:] if len(row) < 2 else row) + "\n"
        data = raw if raw is not None else ("imageA,imageB," + ",".join(f"c{i}" for i in range(40)) + "\n" + body).encode()
        (root / "test_pairs.csv").write_bytes(data)
        _load_or_dataset_error("pf-willow", root, "test")


mat_values = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=30).map(np.array),
    st.integers(0, 5).flatmap(lambda r: st.lists(st.floats(-1e9, 1e9), min_size=r * 2, max_size=r * 2)
                              .map(lambda v, r=r: np.array(v).reshape(2, r) if r else np.zeros((2, 0)))),
    st.text(max_size=5).map(np.array),
    st.just(np.array([[1, 2], [3, 4]], dtype=object)),
    st.just({"a": 1}),
)


@SETTINGS
@given(value=mat_values, raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_pfwillow_mat_files(willow_base, value, raw):
    from loaders.testing import write_mat

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "r"
        shutil.copytree(willow_base, root)
        mat = sorted(root.glob("PF-dataset/duck(S)/*.mat"))[0]
        if raw is not None:
            mat.write_bytes(raw)
        else:
            try:
                write_mat(mat, pts_coord=value)
            except Exception:  # scipy cannot write this value: nothing to test
                return
        _load_or_dataset_error("pf-willow", root, "test")


@pytest.fixture(scope="module")
def pascal_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("pascal")
    write_pfpascal_root(root, n_pairs=3)
    return root


@SETTINGS
@given(split=st.sampled_from(["test", "trn"]), col=st.integers(0, 6), value=cells,
       raw=st.one_of(st.none(), st.binary(max_size=200)), truncate=st.booleans())
def test_pfpascal_pair_lists(pascal_base, split, col, value, raw, truncate):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "r"
        shutil.copytree(pascal_base, root)
        path = root / "image_pairs" / ("test_pairs.csv" if split == "test" else "train_pairs.csv")
        if raw is not None:
            path.write_bytes(raw)
        else:
            lines = path.read_text().splitlines()
            row = lines[1].split(",")
            row[col % len(row)] = value.replace(",", ";").replace("\n", " ")
            lines[1] = ",".join(row[: max(1, col % len(row))] if truncate else row)
            path.write_text("\n".join(lines) + "\n")
        _load_or_dataset_error("pf-pascal", root, split)


@SETTINGS
@given(kps=mat_values, bbox=st.one_of(mat_values, st.lists(st.floats(allow_nan=True, allow_infinity=True),
                                                              min_size=4, max_size=4).map(np.array)))
def test_pfpascal_mat_files(pascal_base, kps, bbox):
    from loaders.testing import write_mat

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "r"
        shutil.copytree(pascal_base, root)
        mat = sorted(root.glob("PF-dataset-PASCAL/Annotations/*/*.mat"))[0]
        try:
            write_mat(mat, kps=kps, bbox=bbox)
        except Exception:
            return
        _load_or_dataset_error("pf-pascal", root, "trn")


# --------------------------------------------------------------------------------------------- PCK
@SETTINGS
@given(seed=st.integers(0, 2**16), noise=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=8),
       threshold=st.sampled_from(["bbox", "img", "bbox-kp"]), frame=st.sampled_from(["original", "resized-768x768", "isotropic"]),
       agg=st.sampled_from(["image", "point", "category"]))
def test_pck_is_a_fraction_for_any_predictions(spair_base, seed, noise, threshold, frame, agg):
    from benchmarks.pck import PairArrays, aggregate, hits, per_pair
    from benchmarks.protocol import Protocol

    table = loaders.load_uncached("spair-71k", spair_base, "test")
    arrays = PairArrays.from_table(table)
    rng = random.Random(seed)
    pred = arrays.gt + np.array([[rng.choice(noise), rng.choice(noise)] for _ in range(len(arrays.gt))])
    proto = Protocol(name="p", threshold=threshold, frame=frame, aggregate=agg, alphas=(0.05, 0.1))
    with np.errstate(invalid="ignore", over="ignore"):
        hit = hits(arrays, pred, proto)
    assert hit.dtype == bool and hit.shape == (2, len(arrays.gt))
    correct, counts = per_pair(hit, arrays.offsets)
    assert (0 <= correct).all() and (correct <= counts).all()
    groups = np.zeros(len(counts), dtype=np.int64)
    value = aggregate(correct, counts, groups, 1, agg, arrays.category)
    assert ((0 <= value) & (value <= 1)).all()
    bad = ~np.isfinite(pred).all(axis=1)
    assert not hit[:, bad].any()  # a NaN or infinite prediction is never correct


def test_annotation_helper_is_valid():
    ann = spair_annotation(1, "cat", "a", "b", random.Random(0))
    assert ann["src_bndbox"][2] < ann["src_imsize"][0]
