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
    args = p.parse_args(argv)
    from .core import LeaderboardError, build, read_reported

    try:
        reported = read_reported(args.reported) if args.reported else None
        written = build(args.runs, args.out, reported)
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
