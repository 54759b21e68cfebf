"""Real multi-process runs with torch.distributed (gloo, 2 processes on CPU) through torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from .conftest import shared

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path):
    # torchrun starts each rank with one thread; the single-process run uses the same, so the
    # floating-point reductions (and therefore the predictions) are the same
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CORRBENCH_CACHE": str(tmp_path / "cache")}


def _torchrun(args, env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_evaluation_equals_single_process(tmp_path):
    root = shared("PF-WILLOW")
    env = _env(tmp_path)
    common = ["--matcher", "dift", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
              "--limit", "12", "--batch-size", "1", "--quiet"]
    res = _torchrun(["benchmarks.run", *common, "--shard-size", "3", "--out", str(tmp_path / "two")], env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "benchmarks.run", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a = pq.read_table(tmp_path / "one" / "predictions.parquet")
    b = pq.read_table(tmp_path / "two" / "predictions.parquet")
    assert a.num_rows == b.num_rows == 12 * 5
    assert a.equals(b)
    assert (tmp_path / "one" / "results.csv").read_text() == (tmp_path / "two" / "results.csv").read_text()
    import json

    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2


def test_two_process_training_matches_single_process(tmp_path):
    root = shared("PF-WILLOW")
    env = _env(tmp_path)
    common = ["--variant", "single", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
              "--split", "test", "--max-steps", "2", "--batch-size", "2", "--quiet"]
    res = _torchrun(["sd4match.train", *common, "--out", str(tmp_path / "two")], env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "sd4match.train", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]

    def losses(d):
        with open(d / "train_log.csv") as fh:
            return [float(r["loss"]) for r in csv.DictReader(fh)]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 2
    for x, y in zip(one, two):  # the global-batch loss: mean over ranks of per-rank means of one pair each
        assert abs(x - y) <= 1e-4 * abs(x)
    a = load_file(str(tmp_path / "one" / "last.safetensors"))["tokens"]
    b = load_file(str(tmp_path / "two" / "last.safetensors"))["tokens"]
    same = (a - b).abs() < 1e-5
    # Adam's first steps move every element by about lr * sign(grad): only elements whose averaged
    # gradient is within rounding of zero may land differently
    assert same.float().mean() > 0.99 and (a - b).abs().max() <= 2 * 2 * 0.01 + 1e-6
    assert not torch.equal(a, torch.zeros_like(a))


def test_two_process_head_training_equals_single_process(tmp_path):
    """Each rank takes one pair of the global batch of 2 and the gradients of loss/2 are summed: the
    two-process step is the single-process step (the feature cache is filled by both ranks)."""
    from .test_head_training import _root

    root = _root(tmp_path)
    env = _env(tmp_path)
    common = ["--variant", "geoaware-head", "--preset", "tiny", "--dataset", "spair-71k", "--data-root", str(root),
              "--batch-size", "2", "--quiet", "--set", f"cache_dir={tmp_path / 'features'}"]
    res = _torchrun(["sd4match.train", *common, "--out", str(tmp_path / "two")], env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "22 maps computed" not in res.stderr  # the ranks shared the filling
    res = subprocess.run([sys.executable, "-m", "sd4match.train", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "0 maps computed, 22 found in the cache" in res.stderr

    def log(d):
        with open(d / "train_log.csv") as fh:
            return list(csv.DictReader(fh))

    one, two = log(tmp_path / "one"), log(tmp_path / "two")
    assert len(one) == len(two) == 4
    for x, y in zip(one, two):
        assert abs(float(x["loss"]) - float(y["loss"])) <= 1e-5 * abs(float(x["loss"]))
        assert x["val_pck"] == y["val_pck"]
    a = load_file(str(tmp_path / "one" / "last.safetensors"))
    b = load_file(str(tmp_path / "two" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
