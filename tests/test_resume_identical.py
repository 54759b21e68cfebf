"""A run stopped with SIGTERM after a shard boundary and started again gives predictions
byte-identical to an uninterrupted run (default batch settings): every image's network passes are
calls of their own, so which shards were already done cannot change any number."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from .conftest import shared

ROOT = Path(__file__).resolve().parents[1]


def _cmd(root: Path, out: Path, extra=()) -> list[str]:
    return [sys.executable, "-m", "benchmarks.run", "--matcher", "dift", "--preset", "tiny", "--dataset", "pf-willow",
            "--data-root", str(root), "--limit", "256", "--shard-size", "64", "--out", str(out), "--quiet", *extra]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "CORRBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}


def _interrupted_then_resumed(root: Path, out: Path, tmp_path: Path, extra=()) -> int:
    proc = subprocess.Popen(_cmd(root, out, extra), cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = list(out.glob(".partial-*/shard-*.parquet.sha256"))
            if len(done) >= 2:  # two shards written (a shard counts once its checksum is there)
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    stopped = len(list(out.glob(".partial-*/shard-*.parquet.sha256")))
    assert proc.returncode != 0 and 2 <= stopped < 4, f"the run was not stopped after a shard boundary ({stopped} shards)"
    subprocess.run(_cmd(root, out, extra), cwd=ROOT, env=_env(tmp_path), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return stopped


@pytest.mark.slow
def test_sigterm_after_a_shard_then_resume_is_byte_identical(tmp_path):
    root = shared("PF-WILLOW")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    subprocess.run(_cmd(root, full), cwd=ROOT, env=_env(tmp_path), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    _interrupted_then_resumed(root, resumed, tmp_path)
    a, b = pq.read_table(full / "predictions.parquet"), pq.read_table(resumed / "predictions.parquet")
    assert a.num_rows == b.num_rows == 256 * 5
    assert a.equals(b)  # every predicted coordinate, bit for bit
    assert (full / "predictions.parquet").read_bytes() == (resumed / "predictions.parquet").read_bytes()
    assert (full / "results.csv").read_bytes() == (resumed / "results.csv").read_bytes()
