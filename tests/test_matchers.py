"""Every registered matcher (tiny preset) on real PF-Willow pairs and on fixture pairs, plus the
geometry check of the dense base on known transforms of real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import loaders
from benchmarks import registry
from benchmarks.matchers.base import Pair
from loaders.testing import write_spair_root

from .conftest import shared
from .transforms import known_transform_pairs


def _pairs(table, root, n):
    return [Pair(r, Path(root)) for r in table.slice(0, n).to_pylist()]


def _check(matcher, pairs, tmp_path):
    out1 = matcher.predict(pairs)
    assert set(out1) == set(matcher.readouts)
    for r, preds in out1.items():
        assert len(preds) == len(pairs)
        for p, pred in zip(pairs, preds):
            pred = np.asarray(pred)
            assert pred.shape == (len(p.row["src_kps"]), 2), r
            assert np.isfinite(pred).all(), r
            w, h = p.trg_size
            if getattr(matcher, "frame_padding", False):  # padded square frame: the padding is a valid place
                lo, hi = (np.array([w, h]) - max(w, h)) / 2 - 1, (np.array([w, h]) + max(w, h)) / 2 + 1
                assert (pred >= lo).all() and (pred <= hi).all(), r
                continue
            assert (pred >= -1e-6).all() and (pred[:, 0] <= w - 1 + 1e-4).all() and (pred[:, 1] <= h - 1 + 1e-4).all(), r
    return out1


@pytest.mark.parametrize("name", sorted(registry.BUILTIN))
def test_matcher_on_real_pfwillow(name, tmp_path):
    root = shared("PF-WILLOW")
    table = loaders.load("pf-willow", root, "test")
    pairs = _pairs(table, root, 3)
    cls = registry.load_class(name)
    out1 = _check(cls.from_settings("tiny"), pairs, tmp_path)
    out2 = cls.from_settings("tiny").predict(pairs)  # a fresh instance, same seed
    for r in out1:
        for a, b in zip(out1[r], out2[r]):
            np.testing.assert_array_equal(a, b)  # bit for bit on CPU


@pytest.mark.parametrize("name", sorted(registry.BUILTIN))
def test_matcher_on_fixture_pairs(name, tmp_path):
    write_spair_root(tmp_path, {"test": 4}, seed=2, images=True)
    table = loaders.load("spair-71k", tmp_path, "test")
    _check(registry.load_class(name).from_settings("tiny"), _pairs(table, tmp_path, 4), tmp_path)


def test_geometry_known_transforms_patch_matcher(tmp_path):
    """Crops + translations + anisotropic scalings of real PF-Willow images: PCK@0.05 >= 0.95."""
    cls = registry.load_class("patch")
    matcher = cls.from_settings()
    pairs, gts = known_transform_pairs(tmp_path, [(1.4, 0.9), (0.7, 0.7), (1.0, 1.6)])
    assert len(pairs) >= 15
    out = matcher.predict(pairs)
    for readout, preds in out.items():
        hits = np.concatenate([np.linalg.norm(pr - g, axis=1) <= 0.05 * max(p.trg_size) for p, g, pr in zip(pairs, gts, preds)])
        assert hits.mean() >= 0.95, f"{readout}: PCK@0.05 {hits.mean():.3f}"
    # the check is sharp enough to catch an x/y swap in the mapping back
    swapped = [pr[:, ::-1] for pr in out["nn"]]
    hits = np.concatenate([np.linalg.norm(pr - g, axis=1) <= 0.05 * max(p.trg_size) for p, g, pr in zip(pairs, gts, swapped)])
    assert hits.mean() < 0.5


def test_batched_readouts_equal_one_pair_at_a_time(tmp_path):
    """The grid readouts of a batch run in one call per readout; each pair's predictions equal
    those of the pair predicted alone (DIFT-tiny and the patch matcher, every readout)."""
    write_spair_root(tmp_path, {"test": 6}, seed=3, images=True)
    table = loaders.load("spair-71k", tmp_path, "test", use_cache=False)
    pairs = [Pair(r, tmp_path) for r in table.to_pylist()]
    for name in ("patch", "dift"):
        m = registry.load_class(name).from_settings("tiny", readout="nn,soft-argmax,kernel-soft-argmax,"
                                                                     "window-soft-argmax,upsampled-nn")
        together = m.predict(pairs)
        for k, p in enumerate(pairs):
            alone = m.predict([p])
            for r in m.readouts:
                assert together[r][k].shape == (len(p.src_kps), 2)
                np.testing.assert_allclose(together[r][k], alone[r][0], rtol=0, atol=1e-6, err_msg=f"{name} {r} pair {k}")


def test_keep_in_memory_serves_a_second_pass_without_extraction(tmp_path):
    """Timing code keeps every timed feature map: more images than the default memory cache."""
    write_spair_root(tmp_path, {"test": 40}, seed=4, images=True)
    table = loaders.load("spair-71k", tmp_path, "test", use_cache=False)
    pairs = [Pair(r, tmp_path) for r in table.to_pylist()]
    m = registry.load_class("patch").from_settings("tiny")
    n_images = len({p.row["src_image"] for p in pairs} | {p.row["trg_image"] for p in pairs})
    assert n_images > m.memory_cache_size
    m.predict(pairs)
    m.predict(pairs)
    assert m.stats["extracted"] > n_images  # the default cache dropped the first images
    m = registry.load_class("patch").from_settings("tiny")
    m.keep_in_memory(n_images)
    first = m.predict(pairs)
    assert m.stats["extracted"] == n_images
    second = m.predict(pairs)
    assert m.stats["extracted"] == n_images
    for r in m.readouts:
        for a, b in zip(first[r], second[r]):
            np.testing.assert_array_equal(a, b)
