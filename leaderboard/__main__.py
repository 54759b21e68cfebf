"""``python -m leaderboard build RUN_DIRS... --out DIR``: per-dataset CSV, Markdown and PNG plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m leaderboard")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build leaderboards from run folders")
    b.add_argument("runs", nargs="+", type=Path, help="folders written by python -m benchmarks.run")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--reported", type=Path, default=None, help="CSV of published numbers (default: the bundled one)")
    b.add_argument("--format", default="md,csv", help="comma-separated: md, csv, tex (default md,csv)")
    b.add_argument("--alpha", type=float, default=0.1, help="the alpha of the per-protocol tables (default 0.1)")
    b.add_argument("--plot-readouts", action="store_true", help="plot every readout (default: each method's best)")
    c = sub.add_parser("compare", help="paired comparison of two runs (difference and its bootstrap interval)")
    c.add_argument("run_a", type=Path)
    c.add_argument("run_b", type=Path)
    c.add_argument("--protocol", default="sd4match")
    c.add_argument("--readout", default=None, help="required when a run holds several readouts")
    c.add_argument("--alpha", type=float, default=0.1)
    args = p.parse_args(argv)
    from .core import LeaderboardError, build, read_reported

    if args.command == "compare":
        from .compare import compare

        try:
            table, head = compare(args.run_a, args.run_b, args.protocol, args.readout, args.alpha)
        except LeaderboardError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(head)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        return 0
    try:
        reported = read_reported(args.reported) if args.reported else None
        formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
        written = build(args.runs, args.out, reported, formats, args.alpha, args.plot_readouts)
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
