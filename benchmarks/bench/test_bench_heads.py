"""The trained aggregation head: what a training step costs once the backbone features are cached.

For GeoAware-SC's real head (groups [640, 1280, 1280, 768] -> 768, 60 x 60 cells) and the tiny
preset's ([8, 16, 16, 32] -> 128): pairs per second of one training step from cached features (the
head on both images, GeoAware's loss with the dense term on 10 keypoints, backward, AdamW), the
cache size per image in float32 and float16 (the flipped image doubles it when the pair augmentation
is on), and the head's FLOPs per image beside the backbones' (``python -m benchmarks.profile``
gives those). Printed as figures measured in one run; no target is asserted but that they are
finite, since the machines are noisy.

    pytest -q -s -n 0 benchmarks/bench/test_bench_heads.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch

from sd4match.methods.geoaware_head import AggregationHead, descriptors
from sd4match.training.head_loss import head_loss

SHAPES = {"geoaware-real": ([640, 1280, 1280, 768], 768, 60), "tiny": ([8, 16, 16, 32], 128, 60)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_head_training_step_from_cached_features(benchmark, shape):
    from benchmarks.flops import flop_counter

    dims, proj, n = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    head = AggregationHead(dims, proj)
    opt = torch.optim.AdamW(head.parameters(), lr=1.25e-3, weight_decay=1e-3)
    x1, x2 = (torch.randn(1, sum(dims), n, n, generator=g) for _ in range(2))
    k1 = torch.cat([torch.rand(10, 2, generator=g) * 839, torch.ones(10, 1)], dim=1)
    k2 = torch.cat([torch.rand(10, 2, generator=g) * 839, torch.ones(10, 1)], dim=1)

    def step():
        opt.zero_grad()
        d1 = descriptors(head(x1)[0]).reshape(proj, -1).T
        d2 = descriptors(head(x2)[0]).reshape(proj, -1).T
        loss = head_loss(d1, d2, k1, k2, head.logit_scale, n)
        loss.backward()
        opt.step()
        return float(loss.detach())

    loss = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    with torch.no_grad(), flop_counter() as fc:
        head(x1)
    per_image = fc.get_total_flops()
    cache32 = sum(dims) * n * n * 4
    print(f"\n{shape}: {1 / benchmark.stats.stats.min:.2f} training pairs/s from cached features (CPU, "
          f"{torch.get_num_threads()} threads); head {per_image / 1e9:.1f} GFLOP per image; cache per image "
          f"{cache32 / 2**20:.1f} MiB float32, {cache32 / 2**21:.1f} MiB float16 (x2 with the flipped image)")
    assert torch.isfinite(torch.tensor(loss)) and per_image > 0


def test_head_trainer_steps_from_the_disk_cache(benchmark, tmp_path):
    """The trainer's own path (cache files read from disk, dropout, mirrored pairs, loss, AdamW) on the
    tiny preset, once every feature map is cached: training pairs per second with no backbone."""
    import time
    from pathlib import Path

    from sd4match.training.head_config import HEAD_PRESETS, HeadTrainConfig
    from sd4match.training.head_trainer import HeadTrainer
    from tests.test_head_training import _root

    root = _root(tmp_path)
    cfg = HeadTrainConfig(variant="geoaware-head", dataset="spair-71k", data_root=str(root),
                          **{**HEAD_PRESETS["tiny"], "val_per_category": 0, "cache_dir": str(tmp_path / "cache")})
    HeadTrainer(cfg, Path(tmp_path / "fill"))  # fills the cache
    trainer = HeadTrainer(cfg, Path(tmp_path / "run"))
    assert trainer.cache.computed == 0

    def steps():
        t0 = time.perf_counter()
        for _ in range(4):
            trainer.train_step()
        return 4 * cfg.batch_size / (time.perf_counter() - t0)

    rate = benchmark.pedantic(steps, rounds=3, iterations=1, warmup_rounds=1)
    C, g, _ = trainer.cache.shape
    print(f"\ntiny preset through HeadTrainer: {rate:.1f} training pairs/s from the disk cache ({C} x {g} x {g} "
          f"maps, each pair with its mirrored images)")
    assert rate > 0
