"""DIFT's ``upsampled-nn`` readout: batched across pairs against the per-pair path, in one process.

Two shapes: DIFT's real features (SD-2.1 ``up_blocks[1]``: 1280 channels on a 48 x 48 grid for a
768 input) with SPair-71k-sized targets, and the tiny preset's (16 channels, 16 x 16, PF-Willow-sized
targets). Each pair has 10 keypoints; target norm maps are computed inside the timing (as for a
target seen for the first time). Target: the batched readout at least 3x faster on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.dense import upsampled_nn, upsampled_nn_batch

SHAPES = {"dift-real": (1280, 48, [(500, 375), (500, 333), (375, 500), (500, 281)], 16),
          "tiny": (16, 16, [(300, 225), (300, 200), (300, 300), (252, 300)], 64)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_upsampled_nn_batched_vs_per_pair(benchmark, shape):
    import time

    C, h, sizes, n = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    fs = [torch.randn(C, h, h, generator=g) for _ in range(n)]
    ft = [torch.randn(C, h, h, generator=g) for _ in range(n)]
    ts = [sizes[b % len(sizes)] for b in range(n)]
    ss = [sizes[(b + 1) % len(sizes)] for b in range(n)]
    xy = [torch.rand(10, 2, generator=g) * torch.tensor(s, dtype=torch.float32) for s in ss]

    def per_pair():
        return [upsampled_nn(fs[b], ft[b], xy[b], ss[b], ts[b]) for b in range(n)]

    t0 = time.perf_counter()
    want = per_pair()
    single = time.perf_counter() - t0
    got = benchmark.pedantic(lambda: upsampled_nn_batch(fs, ft, xy, ss, ts)[0], rounds=3, iterations=1)
    same = sum(int((a == b).all(1).sum()) for a, b in zip(got, want))
    ratio = single / benchmark.stats.stats.min
    benchmark.extra_info.update(per_pair_s=single, speedup=ratio, equal_keypoints=same)
    print(f"\nupsampled-nn, {shape} ({C} channels, {h}x{h}, {n} pairs x 10 keypoints): per pair {single:.3f} s, "
          f"batched {benchmark.stats.stats.min:.3f} s: {ratio:.1f}x; {same}/{10 * n} keypoints equal")
