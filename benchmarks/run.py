"""Run a matcher on a dataset split, then evaluate every protocol.

    python -m benchmarks.run --matcher NAME --dataset D --data-root DIR [--split test] [--limit N] [--out DIR]

Writes ``OUT/predictions.parquet``, ``OUT/results.csv``, ``OUT/breakdowns.csv`` and ``OUT/run.json``
(atomically). Predictions are saved in shards as the run goes; a run that is stopped and started
again with the same settings resumes from the shards already written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from .matchers.base import ConfigError, MatcherError, config_hash
from .provenance import provenance
from .run_settings import (  # noqa: F401
    SETTING_FLAGS,
    TTA,
    RunError,
    _overrides,
    _with_checkpoint_model,
    list_matchers,
    show_config,
)
from .runinfo import git_hash, matcher_source, package_versions  # noqa: F401
from .sampling import stratified_sample  # noqa: F401
from .shards import (  # noqa: F401 - part of this module's interface
    _chunks,
    file_sha256,
    pipelined,
    predict_shards,
    prefetched,
    shard_ok,
    table_hash,
    write_shard,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description="Run a matcher and evaluate PCK.")
    p.add_argument("--list-matchers", action="store_true", help="print every registered matcher and its presets, then exit")
    p.add_argument("--show-config", action="store_true",
                   help="print the matcher's resolved settings (after --preset, flags and --set) and exit")
    p.add_argument("--matcher", help="registered matcher name (see --list-matchers)")
    p.add_argument("--preset", default=None, help="named settings of the matcher (e.g. tiny)")
    p.add_argument("--dataset", help="spair-71k, pf-pascal, pf-willow, spair-u, ap-10k or cub-200-2011")
    p.add_argument("--data-root", type=Path,
                   help="dataset root folder (default: $CORRBENCH_DATA/<folder>, else ~/.cache/corrbench/data/<folder>)")
    p.add_argument("--download", action="store_true",
                   help="fetch the official archive when the dataset is missing (verified before unpacking)")
    p.add_argument("--split", default="test")
    p.add_argument("--layout", default=None, help="SPair-71k: large (default) or small")
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs of the split (a partial result)")
    p.add_argument("--sample", type=int, default=None,
                   help="N pairs drawn per category in proportion to the split (a partial result); the same pairs "
                        "for every matcher: the draw depends only on dataset, split, N and --sample-seed")
    p.add_argument("--sample-seed", dest="sample_seed", type=int, default=SAMPLE_SEED,
                   help=f"seed of the --sample draw (default {SAMPLE_SEED}; recorded)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<matcher>-<dataset>-<split>-<hash>)")
    p.add_argument("--protocol", action="append", default=None,
                   help="protocol preset, repeatable (sd4match, dift, original, geoaware, distilldift; default: the dataset's papers' presets and original)")
    p.add_argument("--alphas", default=None, help="PCK thresholds, e.g. 0.01,0.05,0.1,0.15 (default 0.05,0.1,0.15)")
    p.add_argument("--model-id", dest="model_id", default=None, help="hub id or local folder of the model")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="auto (default: float32 on CPU, the authors' precision on GPU), float32, float16, bfloat16, float16-autocast or bfloat16-autocast")
    p.add_argument("--batch-size", dest="batch_size", default=None,
                   help="images (pairs for CPM) per forward pass, or 'auto' for the largest that fits")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cache-dir", dest="cache_dir", default=None, help="feature cache folder")
    p.add_argument("--readout", default=None, help="comma-separated readouts to compute")
    p.add_argument("--checkpoint", default=None, help="learned prompt checkpoint (SD4Match matchers)")
    p.add_argument("--tta", default=None,
                   help="test-time options, comma-separated: flip (adaptive pose alignment, mutual-NN criterion), mnn "
                        "(mutual-nearest-neighbour search), none (default); padded-frame matchers only; recorded")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other matcher setting")
    p.add_argument("--shard-size", dest="shard_size", type=int, default=None,
                   help="pairs per saved shard (the resume and multi-process unit; default max(256, batch))")
    p.add_argument("--quiet", action="store_true", help="no progress bars (this run's and the model libraries')")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run already in --out (without it such a folder is refused)")
    return p


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _lock(out: Path) -> None:
    from .outlock import LockedError, lock

    try:
        lock(out)
    except LockedError as exc:
        raise RunError(str(exc)) from None


def _unlock() -> None:
    from .outlock import unlock

    unlock()


#: the default seed of ``--sample`` (independent of every matcher's own seed)
SAMPLE_SEED = 0

#: the files of a finished run (any of them marks the folder as holding one)
FINISHED = ("run.json", "results.csv", "predictions.parquet")


def _refuse_finished(out: Path, overwrite: bool) -> None:
    """A finished run is never replaced without ``--overwrite`` (same settings or not)."""
    if overwrite or not out.is_dir():
        return
    have = [f for f in FINISHED if (out / f).exists()]
    if have:
        raise RunError(f"{out} already holds a finished run ({', '.join(have)}); pass --overwrite to replace it "
                       "or choose another --out")


def _drop_empty(out: Path, partial: Path) -> None:
    """Remove what this process created and left empty: the partial folder, the lock, the folder."""
    import shutil

    if not any(partial.glob("shard-*.parquet")):
        shutil.rmtree(partial, ignore_errors=True)
    _unlock()
    (out / ".corrbench.lock").unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:
        pass


def run(args) -> Path:
    import loaders

    from . import predictions as P
    from . import registry
    from .evaluate import BOOTSTRAP, evaluate, per_pair_table, to_csv_text
    from .protocol import parse_alphas, protocols_for

    if not args.matcher or not args.dataset:
        raise RunError("--matcher and --dataset are required (or --list-matchers)")
    loaders.api.check_names(args.dataset, args.split, args.layout)
    args.data_root = loaders.api.ensure_root(args.dataset, args.data_root, args.download)
    cls = registry.load_class(args.matcher)
    alphas = parse_alphas(args.alphas) if args.alphas is not None else None
    protocols = protocols_for(args.dataset, args.protocol, alphas) if args.dataset in loaders.READERS else None
    loaders.api.check_names(args.dataset, args.split, args.layout)
    if args.limit is not None and args.limit <= 0:
        raise RunError(f"--limit must be a positive number of pairs, got {args.limit}")
    rank, world, local_rank = dist_env()
    if args.quiet:
        from .console import quiet_libraries

        quiet_libraries()
    overrides = _with_checkpoint_model(args, _overrides(args), cls)
    if world > 1 and str(overrides.get("device", "")).strip() == "cuda":
        overrides["device"] = f"cuda:{local_rank}"  # one GPU per rank
    if args.tta not in (None, "none") and "flip" not in getattr(cls.Config, "__dataclass_fields__", {}):
        raise RunError(f"--tta: matcher {args.matcher!r} has no test-time options (they belong to the padded-frame "
                       "matchers: dinov2, sd-dino, geoaware-zs)")
    matcher = cls.from_settings(args.preset, **overrides)
    keyed = {k: v for k, v in dataclasses.asdict(matcher.config).items() if k != "device"}
    fingerprints = matcher.fingerprints() if hasattr(matcher, "fingerprints") else {}
    if fingerprints:  # the weights behind the model names
        keyed["weights"] = fingerprints
    chash = config_hash(args.matcher, keyed)
    if args.limit is not None and args.sample is not None:
        raise RunError("--limit and --sample are alternatives; give one")
    if args.sample is not None and args.sample <= 0:
        raise RunError(f"--sample must be a positive number of pairs, got {args.sample}")
    # the sample depends on the dataset, split, N and its own seed only: never on a matcher's model seed,
    # so every matcher sampled with the same N is scored on the same pairs
    sample_seed = int(getattr(args, "sample_seed", SAMPLE_SEED))
    if sample_seed < 0:
        raise RunError(f"--sample-seed must be a non-negative integer, got {sample_seed}")
    subset = ("all" if args.limit is None and args.sample is None else
              f"first {args.limit}" if args.limit is not None else f"sample {args.sample} (seed {sample_seed})")
    tag = "" if subset == "all" else (f"-limit{args.limit}" if args.limit is not None else f"-sample{args.sample}s{sample_seed}")
    out = args.out or Path("runs") / f"{args.matcher}-{args.dataset}-{args.split}-{chash}{tag}"

    _refuse_finished(out, getattr(args, "overwrite", False))

    t0 = time.perf_counter()
    table = loaders.load(args.dataset, args.data_root, args.split, layout=args.layout)
    split_pairs = table.num_rows
    if args.limit is not None:
        table = table.slice(0, min(args.limit, split_pairs))
        if args.limit >= split_pairs:  # a limit beyond the split covers all of it
            subset = "all"
    elif args.sample is not None:
        table = table.take(stratified_sample(table.column("category").to_pylist(), args.sample, sample_seed))
    t_load = time.perf_counter() - t0
    # what can be refused without the model is refused now (a missing class prompt, --tta without a
    # left/right table, a prompt width that does not fit the model's config), before anything is written
    matcher.preflight(args.dataset, sorted(set(table.column("category").to_pylist())))

    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: --out is a file, not a folder")
    created = not out.exists()
    partial = out / f".partial-{chash}"
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    if rank == 0:
        try:
            _lock(out)
            _refuse_finished(out, getattr(args, "overwrite", False))  # again, now that no other writer can start
        except RunError:
            if created:
                _drop_empty(out, partial)
            raise
    batch = int(getattr(matcher, "batch_size", 0) or getattr(matcher.config, "batch_size", 1) or 1)
    if args.shard_size is not None and args.shard_size <= 0:
        raise RunError(f"--shard-size must be positive, got {args.shard_size}")
    chunk = args.shard_size or max(256, batch)
    n = table.num_rows
    # a shard is named by what it was computed from: its pairs' annotations (content hash) under this config
    keys = {i: table_hash(table.slice(s, e - s)) for i, s, e in _chunks(n, chunk)}
    shard_path = lambda i: partial / f"shard-{i:06d}-{n}-{chunk}-{keys[i]}.parquet"  # noqa: E731
    todo = [c for c in _chunks(n, chunk) if c[0] % world == rank
            and not shard_ok(shard_path(c[0]), table.slice(c[1], c[2] - c[1]).column("pair_id").to_pylist())]
    t1 = time.perf_counter()
    try:
        predict_shards(matcher, table, todo, batch, Path(args.data_root), shard_path,
                       progress=not args.quiet and rank == 0, desc=f"{args.matcher} {args.dataset}",
                       shard_lines=bool(args.quiet) and rank == 0)
    except BaseException:
        if world == 1 and not any(partial.glob("shard-*.parquet")):  # nothing to resume: leave no empty folder
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
            if created:  # a refused run leaves nothing behind (the lock file included)
                _drop_empty(out, partial)
        raise
    finally:
        matcher.close()
    t_predict = time.perf_counter() - t1
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            return out

    from loaders.atomic import write_parquet, write_text

    shards = [shard_path(i) for i, _, _ in _chunks(n, chunk)]
    pred = P.concat([pq.read_table(s) for s in shards], str(out)) if shards else P.make_table([], "none", [])
    pred = pred.sort_by([("readout", "ascending")]) if pred.num_rows else pred
    rows, xy = P.align(pred, table, source=str(out / "predictions.parquet"))
    t2 = time.perf_counter()
    precision = matcher.describe().get("precision", "no-model")
    tta = matcher.describe().get("tta", "none")
    meta = {"matcher": args.matcher, "dataset": args.dataset, "split": args.split, "precision": precision,
            "tta": tta, "split_pairs": split_pairs, "subset": subset}
    results, breakdowns = evaluate(rows, xy, protocols, meta, kap=P.kap_records(pred, rows, str(out / "predictions.parquet")))
    t_eval = time.perf_counter() - t2

    write_parquet(pred, out / "predictions.parquet")
    write_parquet(per_pair_table(rows, xy, protocols, args.dataset), out / "per_pair.parquet")
    write_text(out / "results.csv", to_csv_text(results))
    write_text(out / "breakdowns.csv", to_csv_text(breakdowns))
    record = {
        "matcher": args.matcher,
        "preset": args.preset,
        "config": dataclasses.asdict(matcher.config),
        "config_hash": chash,
        "dataset": args.dataset,
        "split": args.split,
        "layout": args.layout,
        "data_root": str(Path(args.data_root).resolve()),
        "limit": args.limit,
        "sample": args.sample,
        "sample_seed": sample_seed if args.sample is not None else None,
        "subset": subset,
        "split_pairs": split_pairs,
        "complete": subset == "all",
        "n_pairs": n,
        "readouts": list(matcher.readouts),
        "protocols": [p.to_dict() for p in protocols],
        "confidence_intervals": {**BOOTSTRAP, "over": "pairs", "method": "percentile"},
        "seed": getattr(matcher.config, "seed", None),
        "device": matcher.describe().get("device", "cpu"),
        "precision": precision,
        "tta": tta,
        "matcher_info": matcher.describe(),
        "provenance": provenance(args.matcher, cls, args.preset, matcher.config, chash),
        "matcher_source": matcher_source(cls),
        "versions": package_versions(),
        "git": git_hash(),
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("run.py") else None,
        "timings_s": {"load": round(t_load, 4), "predict": round(t_predict, 4), "evaluate": round(t_eval, 4),
                      "resumed_shards": len(shards) - len(todo) if world == 1 else None},
        "world_size": world,
    }
    write_text(out / "run.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    import shutil

    shutil.rmtree(partial, ignore_errors=True)  # shards, their checksums and any stale shard
    from .console import run_summary

    print(run_summary(results, args.dataset, record["provenance"], subset, split_pairs))
    print(f"wrote {out}/predictions.parquet, per_pair.parquet, results.csv ({len(results)} rows), breakdowns.csv, run.json")
    return out


def _term_as_interrupt() -> None:
    """SIGTERM (a scheduler's kill) ends a run like Ctrl-C: completed shards kept, a run that has
    written nothing leaves no folder behind."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def _raise(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, _raise)


def main(argv: list[str] | None = None) -> int:
    from loaders import DatasetError

    from .predictions import PredictionError
    from .registry import UnknownMatcher

    args = build_parser().parse_args(argv)
    if args.batch_size == "auto":
        args.batch_size = "0"  # 0: the matcher finds the largest batch that fits
    from .console import emit

    if args.list_matchers:
        return emit(list_matchers())
    try:
        if args.show_config:
            return emit(show_config(args))
        if __name__ == "__main__":
            _term_as_interrupt()
        run(args)
    except (RunError, DatasetError, PredictionError, ConfigError, MatcherError, UnknownMatcher, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed shards are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # read-only or full disk, a file in the way
        where = getattr(exc, "filename", None) or args.out or "output"
        print(f"error: {where}: cannot write ({exc.strerror or exc}); completed shards are kept", file=sys.stderr)
        return 2
    finally:
        _unlock()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
