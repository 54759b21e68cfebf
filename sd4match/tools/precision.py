"""How far each precision moves Stable Diffusion features from float32.

    python -m sd4match.tools.precision --model-id ../shared/golden/sd-stack --image-size 256 \\
        [--images A.png B.png ...] [--dtypes float16,bfloat16] [--device cpu|cuda]

Precisions: ``float16`` / ``bfloat16`` cast the weights; ``*-autocast`` keep them in float32 and
run under ``torch.autocast`` (SD4Match's evaluation). For DIFT's settings (t = 261, ensemble 8, one
posterior sample per member) and SD4Match's (t = 50, ensemble 8, one shared sample), the same images, prompt and noise go through the VAE and
the UNet in float32 and in each other precision; printed per precision: the largest absolute
difference of the feature maps relative to their largest magnitude, and the relative Frobenius
norm of the difference. Precision is part of a result's protocol (recorded in ``run.json``,
``results.csv`` and the leaderboard); these figures are what chose the GPU defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SETTINGS = {"dift": {"t": 261, "ensemble": 8, "posterior": "per-member"},
            "sd4match": {"t": 50, "ensemble": 8, "posterior": "per-image"}}


def _images(paths: list[Path], size: int):
    import numpy as np
    import torch
    from PIL import Image

    if paths:
        out = []
        for p in paths:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
            out.append(torch.from_numpy(arr).permute(2, 0, 1))
        return torch.stack(out)
    g = torch.Generator().manual_seed(0)  # smooth random images
    x = torch.rand(2, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def deviation(model_id: str, size: int, dtypes: list[str], device: str, paths: list[Path]) -> list[tuple]:
    """(settings, dtype, max relative deviation, Frobenius relative deviation) rows."""
    import torch

    from benchmarks.dense import resolve_autocast, resolve_dtype

    from ..backbones.sd import SDFeaturizer
    from ..backbones.sd_models import load_components

    images = _images(paths, size) * 2 - 1
    keys = [f"image-{i}" for i in range(len(images))]
    feats: dict[tuple[str, str], torch.Tensor] = {}
    for name in ["float32", *dtypes]:
        comps = load_components(model_id, seed=0)
        sd = SDFeaturizer(comps, 1, device, resolve_dtype(name), autocast=resolve_autocast(name))
        with torch.no_grad():
            ctx = sd.encode_text(["a photo of a car"]).expand(len(images), -1, -1)
            mean, std = sd.posterior(images.to(sd.device, sd.dtype))
            for method, s in SETTINGS.items():
                feats[(method, name)] = sd.features(mean, std, ctx, keys=keys, seed=0, **s).float().cpu()
        sd.close()
    rows = []
    for method in SETTINGS:
        ref = feats[(method, "float32")]
        for name in dtypes:
            d = feats[(method, name)] - ref
            rows.append((method, name, (d.abs().max() / ref.abs().max()).item(), (d.norm() / ref.norm()).item()))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sd4match.tools.precision", description=__doc__.splitlines()[0])
    p.add_argument("--model-id", default="tiny")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--dtypes", default="float16,float16-autocast,bfloat16,bfloat16-autocast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", nargs="*", type=Path, default=[])
    args = p.parse_args(argv)
    from benchmarks.dense import AUTOCAST, DTYPES
    from benchmarks.matchers.base import ConfigError, MatcherError

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES and d not in AUTOCAST]
    if bad or args.image_size < 16 or args.image_size % 8:
        print(f"error: --dtypes must name float16/bfloat16/float16-autocast/bfloat16-autocast (got {bad or dtypes}) and --image-size be a multiple of 8 "
              f">= 16 (got {args.image_size})", file=sys.stderr)
        return 2
    try:
        from benchmarks.dense import resolve_device

        resolve_device(args.device)
        rows = deviation(args.model_id, args.image_size, dtypes, args.device, args.images)
    except (ConfigError, MatcherError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"feature deviation from float32 ({args.model_id}, {args.image_size} x {args.image_size}, {args.device})")
    print(f"{'settings':<10} {'dtype':<18} {'max |d| / max |f|':>18} {'||d|| / ||f||':>14}")
    for method, name, mx, fro in rows:
        print(f"{method:<10} {name:<18} {mx:>18.2e} {fro:>14.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
