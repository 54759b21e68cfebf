"""Loader throughput on a synthetic SPair-71k of full size (70,958 pair files, official format).

Run with ``tox -e bench`` or ``pytest benchmarks/bench --benchmark-enable``. Targets on a 2-core
machine: converting >= 5,000 pairs/s, loading the cached test split in < 0.2 s.
"""

from __future__ import annotations

import time

import pytest

import loaders
from loaders import spair
from loaders.testing import write_spair_root

FULL = {"trn": 53340, "val": 5384, "test": 12234}


@pytest.fixture(scope="module")
def full_spair(tmp_path_factory):
    root = tmp_path_factory.mktemp("spair-full")
    t0 = time.perf_counter()
    write_spair_root(root, FULL, seed=1)
    print(f"\nwrote {sum(FULL.values())} synthetic pair files in {time.perf_counter() - t0:.1f} s")
    return root


def test_convert_full_spair(benchmark, full_spair, tmp_path):
    def convert():
        n = 0
        for split in FULL:
            n += loaders.load_uncached("spair-71k", full_spair, split).num_rows
        return n

    n = benchmark.pedantic(convert, rounds=1, iterations=1)
    assert n == sum(FULL.values()) == 70958
    rate = n / benchmark.stats.stats.mean
    benchmark.extra_info["pairs_per_s"] = rate
    print(f"\nconvert: {n} pairs, {rate:,.0f} pairs/s (target >= 5,000)")


def test_load_cached_test_split(benchmark, full_spair, tmp_path):
    cache = tmp_path / "cache"
    first = loaders.load("spair-71k", full_spair, "test", cache_dir=cache)
    table = benchmark(loaders.load, "spair-71k", full_spair, "test", cache_dir=cache)
    assert table.equals(first) and table.num_rows == FULL["test"] == len(spair.read_layout(full_spair, "test"))
    benchmark.extra_info["load_s"] = benchmark.stats.stats.mean
    print(f"\ncached load of {table.num_rows} pairs: {benchmark.stats.stats.mean * 1000:.0f} ms (target < 200 ms)")
