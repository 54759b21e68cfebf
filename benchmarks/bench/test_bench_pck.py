"""PCK over the full protocol matrix for a synthetic SPair-sized prediction set (12,234 pairs).

Target on a 2-core machine: every protocol x alpha x category, plus breakdowns, in under 1 s.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.evaluate import evaluate
from benchmarks.protocol import protocols_for
from loaders import schema
from loaders.spair import CATEGORIES


@pytest.fixture(scope="module")
def spair_sized():
    rng = np.random.default_rng(0)
    n = 12234
    cols = schema.empty_columns()
    counts = rng.integers(1, 21, n)
    for i in range(n):
        k = int(counts[i])
        w, h = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        kps = np.stack([rng.uniform(0, w, k), rng.uniform(0, h, k)], 1).round().tolist()
        cols["pair_id"].append(f"{i:06d}")
        cols["category"].append(CATEGORIES[i % 18])
        cols["src_image"].append("s.jpg")
        cols["trg_image"].append("t.jpg")
        for side in ("src", "trg"):
            cols[f"{side}_width"].append(w)
            cols[f"{side}_height"].append(h)
            cols[f"{side}_kps"].append(kps)
            cols[f"{side}_bbox"].append([0, 0, w - 1, h - 1])
        cols["kps_ids"].append(sorted(rng.choice(30, k, replace=False).tolist()))
        for c in ("viewpoint_variation", "scale_variation", "truncation", "occlusion"):
            cols[c].append(int(rng.integers(0, 3)))
    cols["dataset"] = ["spair-71k"] * n
    cols["split"] = ["test"] * n
    table = schema.to_table(cols)
    gt = np.concatenate([np.asarray(k, float) for k in cols["trg_kps"]])
    preds = {r: gt + rng.normal(0, s, gt.shape) for r, s in (("nn", 20.0), ("kernel-soft-argmax", 10.0))}
    return table, preds


def test_full_protocol_matrix(benchmark, spair_sized):
    table, preds = spair_sized
    protos = protocols_for("spair-71k")
    meta = {"matcher": "bench", "dataset": "spair-71k", "split": "test"}
    res, br = benchmark(evaluate, table, preds, protos, meta)
    assert (res[res.category == "all"].n_pairs == 12234).all()
    mean = benchmark.stats.stats.mean
    print(f"\n{len(res)} result rows + {len(br)} breakdown rows for 12,234 pairs x {len(preds)} readouts "
          f"x {len(protos)} protocols in {mean * 1000:.0f} ms = {12234 / mean:,.0f} pairs/s (target < 1 s)")
