"""``python -m sd4match.train``: the training command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from ..prompts import VARIANTS
from .config import POINTER, PRESETS, TrainConfig, TrainError
from .head_config import HEAD_PRESETS, HEAD_VARIANTS, HeadTrainConfig


def dry_run(variant: str, dataset: str) -> str:
    """Trainable parameter count at the real sizes (text width 1024, DINOv2-base 256 x 768; the heads'
    real widths), no weights."""
    import torch

    if variant in HEAD_VARIANTS:
        from ..methods.geoaware_head import AggregationHead

        dims = [640, 1280, 1280, 768] if variant == "geoaware-head" else [768]
        with torch.device("meta"):
            head = AggregationHead(dims, 768)
        n = sum(p.numel() for p in head.parameters())
        return f"{variant}: {n:,} trainable parameters (aggregation head {dims} -> 768, bottleneck 192)"

    from loaders import pfpascal, pfwillow, spair

    from ..prompts import build_prompt, count_parameters

    cats = {"spair-71k": spair.CATEGORIES, "pf-pascal": pfpascal.CLASSES,
            "pf-willow": sorted({s.split("(")[0] for s in pfwillow.SUBSETS})}[dataset]
    with torch.device("meta"):
        module = build_prompt(variant, 1024, cats, dino_dim=768, n_patches=256)
    n = count_parameters(module)
    if variant == "class":
        return (f"class: {n:,} trainable parameters = {n // len(cats):,} per category x {len(cats)} "
                f"{dataset} categories (75 x 1024 each)")
    detail = {"single": "one 75 x 1024 prompt", "cpm": "25 x 1024 global + Linear(1536->1024) + Linear(256->256) + "
              "50 x 1024 position + 50 x 1024 alpha; DINOv2-base 256 x 768 tokens"}[variant]
    return f"{variant}: {n:,} trainable parameters ({detail})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sd4match.train",
                                description="Train SD4Match prompts, or an aggregation head on frozen features.")
    p.add_argument("--variant", required=True, choices=(*VARIANTS, *HEAD_VARIANTS))
    p.add_argument("--dataset", default="spair-71k")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--split", default="trn", help="training split (default trn; any split is accepted)")
    p.add_argument("--out", type=Path)
    p.add_argument("--preset", default=None, help=f"prompts: {', '.join(PRESETS)}; heads: {', '.join(HEAD_PRESETS)}")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--model-id", default=None)
    p.add_argument("--dino-id", default=None)
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the trainable parameter count at real sizes and exit")
    p.add_argument("--quiet", action="store_true")
    return p


def config_from_args(args) -> TrainConfig | HeadTrainConfig:
    from benchmarks.matchers.base import config_from, parse_settings

    head = args.variant in HEAD_VARIANTS
    presets = HEAD_PRESETS if head else PRESETS
    base = {}
    if args.preset:
        if args.preset not in presets:
            raise TrainError(f"unknown preset {args.preset!r} for {args.variant}; valid: {', '.join(presets)}")
        base.update(presets[args.preset])
    flags = ("device", "dtype", "batch_size", "max_steps", "epochs", "seed", "model_id", "dino_id", "val_limit")
    base.update(parse_settings({f: getattr(args, f) for f in flags}, args.set))
    base.update(variant=args.variant, dataset=args.dataset, data_root=str(args.data_root), split=args.split)
    cfg = config_from(HeadTrainConfig if head else TrainConfig, base, f"sd4match.train --variant {args.variant}")
    if head and args.preset == "geoaware-spair" and not cfg.init:
        raise TrainError("--preset geoaware-spair starts from the AP-10K head: pass --set init=OUT_OF_STAGE_1 "
                         "(trained with --preset geoaware-ap10k --dataset ap-10k), as GeoAware-SC's recipe does")
    if cfg.batch_size < 1 or cfg.max_steps < 0 or cfg.epochs < 0:
        raise TrainError("--batch-size must be >= 1, --max-steps and --epochs >= 0")
    return cfg


def main(argv: list[str] | None = None) -> int:
    from benchmarks.matchers.base import ConfigError, MatcherError
    from loaders import DatasetError

    args = build_parser().parse_args(argv)
    if args.dry_run:
        try:
            print(dry_run(args.variant, args.dataset))
        except KeyError:
            print(f"error: unknown dataset {args.dataset!r}", file=sys.stderr)
            return 2
        return 0
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        if args.out is None:
            raise TrainError("--out is required (or --dry-run)")
        import loaders

        loaders.api.check_names(args.dataset, args.split)
        # like benchmarks.run: without --data-root, the dataset's folder in the data home ($CORRBENCH_DATA)
        args.data_root = loaders.api.ensure_root(args.dataset, args.data_root)
        cfg = config_from_args(args)
        out = args.out
        from ..checkpoint import LAST

        if out.exists() and not out.is_dir():
            raise TrainError(f"{out}: --out is a file, not a folder")
        if not args.resume and ((out / LAST).exists() or (out / POINTER).exists()):
            raise TrainError(f"{out}: already holds a training run; pass --resume or choose another --out")
        if world > 1:
            import torch
            import torch.distributed as dist

            dist.init_process_group("nccl" if cfg.device.startswith("cuda") and torch.cuda.is_available() else "gloo")
        t0 = time.perf_counter()
        if isinstance(cfg, HeadTrainConfig):
            from .head_trainer import HeadTrainer as Trainer
        else:
            from .trainer import Trainer
        trainer = Trainer(cfg, out, rank, world)
        if args.resume:
            trainer.resume()
            if rank == 0:  # the resumed run's own max_steps / epochs are what config.json says from now on
                from loaders.atomic import write_text

                record = {**dataclasses.asdict(cfg), "resumed_from_step": trainer.step}
                write_text(out / "config.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        elif rank == 0:
            from loaders.atomic import write_text

            write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True) + "\n")
        trainer.run(progress=not args.quiet)
        if rank == 0:
            result = (f"best validation PCK@0.1 {trainer.best:.4f} (best.safetensors)" if trainer.best >= 0 else
                      "no validation ran (no validation split): the result is last.safetensors, nothing is called best")
            what = "head" if isinstance(cfg, HeadTrainConfig) else "prompts"
            print(f"trained {cfg.variant} {what} for {trainer.step} steps in {time.perf_counter() - t0:.1f} s; "
                  f"{result}; wrote {out}")
    except (TrainError, DatasetError, ConfigError, MatcherError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out under a file, read-only, full
        print(f"error: {getattr(exc, 'filename', None) or args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print(f"interrupted; {args.out} holds the last complete checkpoint step: continue with --resume", file=sys.stderr)
        return 130
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

