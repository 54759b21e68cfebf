"""Profile a matcher: counted FLOPs, measured throughput, fraction of the device's peak.

    python -m benchmarks.profile --matcher M [--preset P] [--device D] [--dtype T] [--pairs N]
        [--batch-size B] [--set KEY=VALUE ...] [--sync-debug]

Runs on synthetic pairs (flat images of SPair-like sizes written to a temporary folder), so no
dataset is needed. Prints FLOPs per image (per pair for per-pair matchers such as CPM) counted
with ``torch.utils.flop_counter``, measured images/s and pairs/s, achieved TFLOP/s, the fraction of
the device's dense peak for the dtype, and the projected time for the full SPair-71k test split
(12,234 pairs on 481 distinct images): images x feature time + pairs x readout time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

SPAIR_TEST_PAIRS = 12234
SPAIR_TEST_IMAGES = 481
#: dense tensor-core peaks (FLOP/s) by device-name fragment and dtype, from the vendors' data sheets
PEAKS = {
    ("H200", "bfloat16"): 989e12, ("H200", "float16"): 989e12, ("H200", "float32"): 494e12,
    ("H100", "bfloat16"): 989e12, ("H100", "float16"): 989e12, ("H100", "float32"): 494e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float16"): 312e12, ("A100", "float32"): 156e12,
}


def device_peak(device, dtype_name: str) -> tuple[float | None, str]:
    """(peak FLOP/s, how it was obtained). CPUs: a measured large matmul in the same dtype."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for (frag, dt), peak in PEAKS.items():
            if frag in name and dt == dtype_name:
                return peak, f"{name} data-sheet dense {dtype_name} peak"
        return None, f"{name}: peak unknown"
    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype_name, torch.float32)
    a = torch.randn(1024, 1024, dtype=dt)
    a @ a
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    rate = 5 * 2 * 1024**3 / (time.perf_counter() - t0)
    return rate, f"CPU: measured 1024^3 {dtype_name} matmul ({rate / 1e9:.0f} GFLOP/s)"


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _host_waits(enabled: bool):
    """Yield a dict filled with ``file:line -> count`` of the CUDA synchronisations inside the block."""
    syncs: dict[str, int] = {}
    if not enabled:
        yield syncs
        return
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield syncs
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            where = f"{Path(w.filename).name}:{w.lineno}"
            syncs[where] = syncs.get(where, 0) + 1


def profile(matcher_name: str, preset: str | None, overrides: dict, n_pairs: int, sync_debug: bool = False) -> str:
    """The profile report. ``sync_debug`` (CUDA): list the places that made the host wait for the
    GPU during the timed run with per-image work cached (each such wait can leave the GPU idle)."""
    import torch

    import loaders
    from loaders.testing import write_spair_root

    from . import registry
    from .flops import flop_counter
    from .matchers.base import Pair

    cls = registry.load_class(matcher_name)
    matcher = cls.from_settings(preset, **overrides)
    from .provenance import provenance

    label = provenance(matcher_name, cls, preset, matcher.config, "0" * 12)["label"]
    sets = ", ".join(f"{k}={v}" for k, v in (getattr(cls, "presets", {}) or {}).get(preset, {}).items()) if preset else ""
    lines = [f"matcher {label}" + (f"; preset {preset} sets {sets}" if sets else ""),
             f"  the method at its defaults: {matcher.description}"]
    with tempfile.TemporaryDirectory() as d:
        write_spair_root(Path(d), {"test": n_pairs + 1}, seed=7, images=matcher.needs_images)
        table = loaders.load("spair-71k", d, "test", use_cache=False)
        pairs = [Pair(r, Path(d)) for r in table.to_pylist()]
        warm, pairs = pairs[:1], pairs[1:]
        if hasattr(matcher, "keep_in_memory"):  # the readouts-only pass must find every timed feature map
            matcher.keep_in_memory(2 * len(pairs) + 2)
        device = getattr(matcher, "device", torch.device("cpu"))
        per_pair = bool(getattr(matcher, "per_pair_features", False))
        bs = int(getattr(matcher, "batch_size", 0) or 1)
        t_warm = time.perf_counter()
        matcher.predict(warm)  # loads models, compiles kernels
        t_warm = time.perf_counter() - t_warm
        reset = getattr(matcher, "reset_caches", lambda: None)
        reset()
        eager = getattr(matcher, "eager", contextlib.nullcontext)
        with eager(), flop_counter() as fc:  # counted eagerly, without batch padding
            matcher.predict(warm)
        flops_pair = fc.get_total_flops()
        reset()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        from .run import pipelined

        batches = [pairs[b:b + bs] for b in range(0, len(pairs), bs)]

        def timed() -> float:  # as benchmarks.run does it: images read ahead, batches queued ahead
            t0 = time.perf_counter()
            for _ in pipelined(matcher, [(None, b) for b in batches]):
                pass
            _sync(device)
            return time.perf_counter() - t0

        cold = timed()  # everything: image reading, VAE / DINOv2, UNet, readouts
        from .dense import DenseMatcher

        if isinstance(matcher, DenseMatcher):
            DenseMatcher.reset_caches(matcher)  # forget features only: VAE posteriors / DINOv2 tokens stay
        sd = getattr(matcher, "_sd", None)  # Stable Diffusion matchers: time the UNet calls on the GPU
        if sd is not None and device.type == "cuda":
            sd.events = []
        watch = sync_debug and device.type == "cuda"
        with _host_waits(watch) as syncs:
            shared = timed()  # UNet + readouts, per-image work (VAE, DINOv2) cached as in a real run
        busy = None
        if sd is not None and sd.events is not None:
            busy, sd.events = sd.busy_seconds(), None
        warm_t = timed()  # features in memory: readouts only
        n_img = len({p.row["src_image"] for p in pairs} | {p.row["trg_image"] for p in pairs})
        feat_t = max(cold - warm_t, 1e-9)
        info = matcher.describe()
        dtype_name = info.get("dtype", "float32")
        peak, peak_src = device_peak(device, dtype_name)
        lines.append(f"device: {device} ({peak_src}); dtype {dtype_name}; batch {bs}")
        lines.append(f"warm-up (model loading, compilation): {t_warm:.1f} s, not in the figures below")
        if per_pair:  # per image: VAE + DINOv2 once; per pair: UNet for both images + readouts
            units, unit = len(pairs), "pair"
            projected = SPAIR_TEST_IMAGES * max(cold - shared, 0.0) / n_img + SPAIR_TEST_PAIRS * shared / len(pairs)
        else:  # per image: VAE + UNet; per pair: readouts
            units, unit = n_img, "image"
            projected = SPAIR_TEST_IMAGES * feat_t / n_img + SPAIR_TEST_PAIRS * warm_t / len(pairs)
        flops_unit = flops_pair / (1 if per_pair else 2)
        rate = units / feat_t if feat_t > 0 else float("inf")
        achieved = flops_unit * units / feat_t if feat_t > 0 else 0.0
        if not matcher.needs_images:  # nothing to count: a geometric baseline
            lines.append(f"measured: {len(pairs) / cold:,.0f} pairs/s (no model, no FLOPs)")
            lines.append(f"projected SPair-71k test split ({SPAIR_TEST_PAIRS} pairs): {SPAIR_TEST_PAIRS * cold / len(pairs):.3f} s")
            matcher.close()
            return "\n".join(lines)
        lines.append(f"FLOPs per {unit}: {flops_unit / 1e9:,.3f} GFLOP (counted)")
        lines.append(f"measured: {rate:.2f} {unit}s/s for features, {len(pairs) / cold:.2f} pairs/s end to end "
                     f"({len(pairs) / shared:.2f} with per-image work cached), readouts {len(pairs) / warm_t:.1f} pairs/s")
        frac = f"{achieved / peak:.1%}" if peak else "n/a"
        lines.append(f"achieved: {achieved / 1e12:.3f} TFLOP/s = {frac} of peak")
        if busy is not None:
            lines.append(f"UNet busy {busy:.2f} s of {shared:.2f} s wall with per-image work cached "
                         f"({busy / shared:.0%}); the rest is readouts, prompts and waiting")
        if watch:
            listed = ", ".join(f"{k} x{v}" for k, v in sorted(syncs.items(), key=lambda kv: -kv[1])[:12]) or "none"
            lines.append(f"host waits on the GPU ({len(batches)} batches): {listed}")
        if device.type == "cuda":
            lines.append(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        lines.append(f"projected SPair-71k test split ({SPAIR_TEST_PAIRS} pairs, {SPAIR_TEST_IMAGES} images): "
                     f"{projected:.1f} s ({projected / 60:.1f} min); with the warm-up {projected + t_warm:.1f} s "
                     f"({(projected + t_warm) / 60:.1f} min)")
    matcher.close()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from loaders import DatasetError

    from .matchers.base import ConfigError, MatcherError, parse_settings
    from .registry import UnknownMatcher

    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    p.add_argument("--matcher", required=True)
    p.add_argument("--preset", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--batch-size", dest="batch_size", default=None)
    p.add_argument("--pairs", type=int, default=8, help="synthetic pairs timed (default 8)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sync-debug", action="store_true",
                   help="CUDA: list where the host waited for the GPU during the timed run")
    args = p.parse_args(argv)
    try:
        overrides = parse_settings({k: getattr(args, k) for k in ("device", "dtype", "batch_size")}, args.set)
        if overrides.get("batch_size") == "auto":
            overrides["batch_size"] = "0"
        if not 1 <= args.pairs <= 128:
            raise ConfigError("--pairs must be in 1..128 (features of all timed pairs are kept in memory)")
        print(profile(args.matcher, args.preset, overrides, args.pairs, sync_debug=args.sync_debug))
    except (ConfigError, MatcherError, UnknownMatcher, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
