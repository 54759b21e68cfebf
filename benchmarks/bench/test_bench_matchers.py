"""Tiny-preset throughput on CPU (run with ``tox -e bench``; not part of the test suite).

Prints: end-to-end pairs/s of DIFT-tiny through ``benchmarks.run``; the second run with a warm
feature cache against the first (ratio); batched feature extraction against one image at a time
(ratio). All ratios are measured in the same process.
"""

from __future__ import annotations

import time

import pytest

import loaders
from benchmarks.matchers.base import Pair
from benchmarks.run import main as run_cli
from loaders.testing import write_spair_root

N_PAIRS = 24


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-spair")
    write_spair_root(d, {"test": N_PAIRS}, seed=11, images=True)
    return d


def test_end_to_end_pairs_per_s(benchmark, root, tmp_path):
    args = ["--matcher", "dift", "--preset", "tiny", "--dataset", "spair-71k", "--data-root", str(root), "--quiet",
            "--batch-size", "8"]
    counter = iter(range(1000))

    def once():
        assert run_cli([*args, "--out", str(tmp_path / f"r{next(counter)}")]) == 0

    benchmark.pedantic(once, rounds=3, iterations=1)
    rate = N_PAIRS / benchmark.stats.stats.mean
    benchmark.extra_info["pairs_per_s"] = rate
    print(f"\nDIFT-tiny end to end (load, features, 5 readouts, all protocols): {rate:.1f} pairs/s")


def test_cached_vs_uncached(benchmark, root, tmp_path):
    args = ["--matcher", "dift", "--preset", "tiny", "--dataset", "spair-71k", "--data-root", str(root), "--quiet",
            "--batch-size", "8", "--cache-dir", str(tmp_path / "cache")]
    t0 = time.perf_counter()
    assert run_cli([*args, "--out", str(tmp_path / "first")]) == 0
    first = time.perf_counter() - t0
    counter = iter(range(1000))
    benchmark.pedantic(lambda: run_cli([*args, "--out", str(tmp_path / f"again{next(counter)}")]), rounds=3, iterations=1)
    ratio = first / benchmark.stats.stats.mean
    benchmark.extra_info["uncached_over_cached"] = ratio
    print(f"\nfirst run {first:.2f} s, cached re-run {benchmark.stats.stats.mean:.2f} s: {ratio:.1f}x faster")


def test_batched_vs_one_at_a_time(benchmark, root):
    from benchmarks import registry

    DiftMatcher = registry.load_class("dift")

    table = loaders.load("spair-71k", root, "test", use_cache=False)
    pairs = [Pair(r, root) for r in table.to_pylist()]

    def features(bs):
        m = DiftMatcher.from_settings("tiny", batch_size=bs)
        m.predict(pairs[:1])  # loads the model outside the timing
        m.reset_caches()
        t0 = time.perf_counter()
        m.image_features(pairs)
        return time.perf_counter() - t0

    single = min(features(1) for _ in range(2))
    benchmark.pedantic(lambda: features(16), rounds=3, iterations=1)
    ratio = single / benchmark.stats.stats.min
    benchmark.extra_info["one_at_a_time_over_batched"] = ratio
    print(f"\nfeatures of {2 * N_PAIRS} images: one at a time {single:.2f} s, batch 16 "
          f"{benchmark.stats.stats.min:.2f} s: {ratio:.2f}x")
