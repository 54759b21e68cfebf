"""``python -m leaderboard build RUN_DIRS... --out DIR`` and ``python -m leaderboard compare RUN_A RUN_B``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m leaderboard")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build leaderboards from run folders")
    b.add_argument("runs", nargs="+", type=Path, help="folders written by python -m benchmarks.run, or result bundles "
                                                       "(NAME.corrbench.zip, written by pack)")
    b.add_argument("--verify", action="store_true",
                   help="re-score every run and bundle against --data-root first; rows then read 'verified'")
    b.add_argument("--data-root", dest="data_root", type=Path, default=None, help="the dataset copy --verify uses")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--reported", type=Path, default=None, help="CSV of published numbers (default: the bundled one)")
    b.add_argument("--format", default="md,csv", help="comma-separated: md, csv, tex, html (default md,csv)")
    b.add_argument("--alpha", type=_alpha, default=0.1, help="the alpha of the per-protocol tables (default 0.1)")
    b.add_argument("--label", action="append", default=[], metavar="RUN=NAME",
                   help="show run folder RUN as NAME (a paper's name; repeatable); random weights stay said")
    b.add_argument("--figures", default="png,pdf,svg", help="figure formats, comma-separated: png, pdf, svg")
    b.add_argument("--plot-readouts", action="store_true", help="plot every readout (default: the --readout choice)")
    b.add_argument("--readout", default="own",
                   help="readout of the compact tables, figures and HTML view: own (each method's declared default; "
                        "default), best (chosen on the test split: marked) or a readout name")
    b.add_argument("--mixed-pairs", dest="mixed_pairs", action="store_true",
                   help="show runs that cover different pair sets side by side (unranked) instead of refusing")
    c = sub.add_parser("compare", help="paired comparison of two runs (difference and its bootstrap interval)")
    c.add_argument("run_a", type=Path)
    c.add_argument("run_b", type=Path)
    c.add_argument("--protocol", default=None, help="protocol preset (default: the main protocol of the runs' dataset)")
    c.add_argument("--readout", default=None,
                   help="readout of both runs (default: each run's own, the first its matcher computes)")
    c.add_argument("--alpha", type=_alpha, default=0.1)
    c.add_argument("--shared-pairs", dest="shared_pairs", action="store_true",
                   help="compare runs that evaluated different pairs on the pairs they share")
    e = sub.add_parser("explain", help="every difference between two runs that can move their numbers, and how much "
                       "of the gap their protocol and readout explain")
    e.add_argument("run_a", type=Path)
    e.add_argument("run_b", type=Path)
    e.add_argument("--alpha", type=_alpha, default=0.1)
    e.add_argument("--data-root", dest="data_root", type=Path, default=None,
                   help="the dataset copy to re-score A with (default: the one A's run.json records)")
    k = sub.add_parser("pack", help="write a run's result bundle (one portable, verifiable file)")
    k.add_argument("run", type=Path)
    k.add_argument("--out", required=True, type=Path, help="NAME.corrbench.zip")
    k.add_argument("--data-root", dest="data_root", type=Path, default=None,
                   help="the dataset root the run read (default: the one run.json records)")
    v = sub.add_parser("verify", help="re-score bundles or run folders against your copy of the dataset")
    v.add_argument("sources", nargs="+", type=Path, help="NAME.corrbench.zip files or run folders")
    v.add_argument("--data-root", dest="data_root", type=Path, required=True)
    return p


def _verify_root(args):
    from .core import LeaderboardError

    if args.verify and args.data_root is None:
        raise LeaderboardError("--verify needs --data-root (the dataset copy to re-score against)")
    if args.data_root is not None and not args.verify:
        raise LeaderboardError("--data-root is for --verify; add --verify to re-score the runs")
    return args.data_root if args.verify else None


def _pack(args) -> int:
    from .bundle import pack

    out = pack(args.run, args.out, args.data_root)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def _verify(args) -> int:
    from .bundle import verify

    for path in args.sources:
        src, diff = verify(path, args.data_root)
        if diff:
            print(f"DIFFERS: {path} (run {src.run_id}): {diff}")
            return 1
        print(f"verified: {path} (run {src.run_id}): every number of results.csv and per_pair.parquet follows from its "
              f"predictions and {args.data_root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .core import LeaderboardError, build, parse_labels, read_reported

    if args.command in ("pack", "verify"):
        try:
            return _pack(args) if args.command == "pack" else _verify(args)
        except LeaderboardError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: {getattr(exc, 'filename', None) or 'output'}: cannot write ({exc.strerror or exc})",
                  file=sys.stderr)
            return 2
    if args.command == "explain":
        from .explain import explain

        try:
            print(explain(args.run_a, args.run_b, args.alpha, args.data_root))
        except LeaderboardError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "compare":
        from .compare import compare

        try:
            table, head = compare(args.run_a, args.run_b, args.protocol, args.readout, args.alpha,
                                  shared_pairs=args.shared_pairs)
        except LeaderboardError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(head)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        return 0
    try:
        reported = read_reported(args.reported) if args.reported else None
        formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
        figs = tuple(f.strip() for f in args.figures.split(",") if f.strip())
        if not figs or any(f not in ("png", "pdf", "svg") for f in figs):
            raise LeaderboardError(f"--figures takes a comma-separated subset of png, pdf, svg, got {args.figures!r}")
        written = build(args.runs, args.out, reported, formats, args.alpha, args.plot_readouts,
                        parse_labels(args.label), figs, readout=args.readout, mixed_pairs=args.mixed_pairs,
                        verify_root=_verify_root(args))
    except (LeaderboardError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {getattr(exc, 'filename', None) or args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    for w in written:
        print(f"wrote {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
