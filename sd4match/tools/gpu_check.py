"""GPU check: DIFT and SD4Match-CPM with the real SD-2.1 / DINOv2-base architectures (random
weights) on one CUDA device, in under 5 minutes (about 3 on an H200).

    python -m sd4match.tools.gpu_check [--images 64] [--batch 16] [--dtype auto|bfloat16|...] [--pairs 96]
        [--attention auto,flash,cudnn,efficient] [--no-compile] [--cpm-only]

Prints: FLOPs per image (counted with torch.utils.flop_counter), DIFT feature images/s at
ensemble 8, achieved TFLOP/s, peak GPU memory, the UNet's TFLOP/s per attention backend, then the
profile of the whole DIFT and CPM matchers (every readout) on synthetic pairs: counted FLOPs,
pairs/s, fraction of the device's bf16 peak and the projected SPair-71k test time.
Timing does not depend on weight values, so no weights are needed.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=16, help="images per UNet call (x ensemble)")
    p.add_argument("--ensemble", type=int, default=8)
    p.add_argument("--dtype", default="auto",
                   help="auto (default: each matcher in its authors' precision, DIFT float32 and SD4Match float16, "
                        "with PyTorch's default TF32 settings; the UNet section in float32), or one dtype for all")
    p.add_argument("--pairs", type=int, default=96, help="synthetic pairs for the matcher profiles")
    p.add_argument("--attention", default="auto",
                   help="comma-separated SDPA backends to time in the UNet (auto, flash, efficient, cudnn, math); "
                        "the matchers then run with the fastest")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also profile the CPM matcher with --set compile=true, twice: first compilation, then with "
                        "Inductor's cache warm (about 100 s; --no-compile skips it)")
    p.add_argument("--cpm-only", action="store_true", help="skip the DIFT feature timing and DIFT profile")
    p.add_argument("--compare-compile", action="store_true",
                   help="only time the truncated UNet eager against torch.compile'd blocks, then exit")
    args = p.parse_args()
    from benchmarks.dense import resolve_dtype

    from ..backbones.sd import ATTENTION, SDFeaturizer
    from ..backbones.sd_models import random_sd21

    if not torch.cuda.is_available():
        import sys

        print(f"error: sd4match.tools.gpu_check needs a CUDA GPU, and none is visible here (torch {torch.__version__}); "
              "on a CPU use python -m benchmarks.profile", file=sys.stderr)
        raise SystemExit(2)
    backends = [b.strip() for b in args.attention.split(",") if b.strip()]
    assert backends and all(b in ATTENTION for b in backends), f"--attention: choose from {', '.join(ATTENTION)}"
    dev = torch.device("cuda")
    faithful = args.dtype == "auto"
    dtype = resolve_dtype("float32" if faithful else args.dtype)
    if not faithful:  # a speed comparison: TF32 matmuls where float32 remains
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"precision: {'auto (DIFT float32, SD4Match float16-autocast)' if faithful else args.dtype}; "
          f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, dtype {dtype}")
    t0 = time.perf_counter()
    comps = random_sd21(0)
    sd = SDFeaturizer(comps, up_block=1, device=dev, dtype=dtype)
    print(f"built SD-2.1 architecture in {time.perf_counter() - t0:.1f} s")

    from benchmarks.flops import flop_counter

    if args.compare_compile:
        compare_compile(sd, comps, dev, dtype, args.batch * args.ensemble)
        return

    img = torch.rand(1, 3, 768, 768, device=dev, dtype=dtype) * 2 - 1
    ctx = torch.randn(1, 77, 1024, device=dev, dtype=dtype)
    with flop_counter() as fc:
        sd.posterior(img)
    vae_flops = fc.get_total_flops()
    with flop_counter() as fc:
        with torch.no_grad():
            sd.unet_features(torch.randn(1, 4, 96, 96, device=dev, dtype=dtype), torch.tensor([261], device=dev), ctx)
    unet_flops = fc.get_total_flops()
    per_image = vae_flops + args.ensemble * unet_flops
    print(f"FLOPs per image: VAE encoder {vae_flops / 1e12:.2f} T, UNet to up_blocks[1] {unet_flops / 1e12:.2f} T, "
          f"DIFT (ensemble {args.ensemble}) {per_image / 1e12:.2f} T")

    @torch.no_grad()
    def run(n):
        done = 0
        while done < n:
            b = min(args.batch, n - done)
            x = torch.rand(b, 3, 768, 768, device=dev, dtype=dtype) * 2 - 1
            mean, std = sd.posterior(x)
            f = sd.features(mean, std, ctx.expand(b, -1, -1), keys=[f"i{done + i}" for i in range(b)], t=261,
                            ensemble=args.ensemble, seed=0, posterior="per-member")  # DIFT's sampling
            done += b
        torch.cuda.synchronize()
        return f

    if not args.cpm_only:
        run(args.batch)  # warm-up
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        f = run(args.images)
        dt = time.perf_counter() - t0
        ips = args.images / dt
        tflops = per_image * ips / 1e12
        print(f"DIFT features {tuple(f.shape[1:])}: {ips:.1f} images/s, {tflops:.0f} TFLOP/s achieved, "
              f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, "
              f"projected SPair-71k test (481 images): {481 / ips:.1f} s")

    # UNet alone, batched (ensemble x batch per call), per attention backend
    n = args.batch * args.ensemble
    noisy = torch.randn(n, 4, 96, 96, device=dev, dtype=dtype)
    tt = torch.full((n,), 261, device=dev)
    cc = ctx.expand(n, -1, -1)
    rates = {}
    for backend in backends:
        sd.attention = backend
        try:
            rates[backend] = unet_rate(sd, noisy, tt, cc, unet_flops)
        except RuntimeError as exc:  # a backend without a kernel for these shapes
            print(f"UNet (batch {n}, attention {backend}): unavailable ({str(exc).splitlines()[0][:120]})")
            continue
        print(f"UNet (batch {n}, attention {backend}): {rates[backend]:.0f} TFLOP/s")
    best = max(rates, key=rates.get)
    sd.attention = best
    comps.unet.to(memory_format=torch.channels_last)
    sd.memory_format = torch.channels_last
    u_cl = unet_rate(sd, noisy, tt, cc, unet_flops)
    print(f"UNet (batch {n}, attention {best}, channels_last): {u_cl:.0f} TFLOP/s")
    channels_last = u_cl > rates[best]

    # the whole matchers on the GPU, through the profile command's code path
    sd.close()
    sd = comps = None  # free the GPU memory before the matchers build their own copies
    torch.cuda.empty_cache()
    from benchmarks.profile import profile

    common = {"model_id": "random-sd21", "device": "cuda", "dtype": args.dtype, "batch_size": str(args.batch),
              "channels_last": "true" if channels_last else "false", "attention": best}
    print(f"matchers run with attention={best}, channels_last={channels_last}")
    stages = [] if args.cpm_only else [("DIFT (random-sd21)", "dift", {})]
    stages.append(("SD4Match-CPM (random-sd21, DINOv2-base architecture)", "cpm", {"dino_id": "random-base", "sync": True}))
    if args.compile:  # the second build finds its kernels in Inductor's on-disk cache, as a user's next run does
        stages.append(("SD4Match-CPM, compile=true (first compilation)", "cpm", {"dino_id": "random-base", "compile": "true"}))
        stages.append(("SD4Match-CPM, compile=true (again: Inductor cache warm)", "cpm",
                       {"dino_id": "random-base", "compile": "true"}))
    for title, name, extra in stages:
        print(f"--- {title} ---", flush=True)
        extra = dict(extra)
        sync_debug = bool(extra.pop("sync", False))
        settings = {**common, **extra}
        if "compile" in extra:
            torch._dynamo.reset()  # as a new process: traced again, kernels from the on-disk cache if there
        try:
            print(profile(name, None, settings, args.pairs, sync_debug=sync_debug), flush=True)
        except Exception as exc:  # report and go on to the next stage: device time is scarce
            print(f"failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        torch.cuda.empty_cache()


def unet_rate(sd, noisy, tt, cc, flops_per_latent: float, reps: int = 5) -> float:
    """TFLOP/s of the truncated UNet on one batch (one warm-up call, then ``reps`` timed calls)."""
    with torch.no_grad():
        sd.unet_features(noisy, tt, cc)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            sd.unet_features(noisy, tt, cc)
        torch.cuda.synchronize()
    return reps * noisy.shape[0] * flops_per_latent / (time.perf_counter() - t0) / 1e12


def compare_compile(sd, comps, dev, dtype, n: int) -> None:
    from benchmarks.flops import flop_counter

    noisy = torch.randn(n, 4, 96, 96, device=dev, dtype=dtype)
    tt = torch.full((n,), 261, device=dev)
    cc = torch.randn(n, 77, 1024, device=dev, dtype=dtype)
    with torch.no_grad(), flop_counter() as fc:
        sd.unet_features(noisy[:1], tt[:1], cc[:1])
    per = fc.get_total_flops()

    eager = unet_rate(sd, noisy, tt, cc, per)
    print(f"UNet eager (batch {n}): {eager:.0f} TFLOP/s")
    unet = comps.unet
    t0 = time.perf_counter()
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks[:2]]:
        block.compile()
    with torch.no_grad():
        sd.unet_features(noisy, tt, cc)
    torch.cuda.synchronize()
    print(f"compiled in {time.perf_counter() - t0:.0f} s")
    comp = unet_rate(sd, noisy, tt, cc, per)
    print(f"UNet compiled (batch {n}): {comp:.0f} TFLOP/s ({comp / eager:.2f}x eager)")


if __name__ == "__main__":
    main()
