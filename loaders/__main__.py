"""Command line: ``python -m loaders {convert,stats,verify,download}``.

Errors in the data print one line naming the file and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DatasetError


def _stats(path: Path) -> str:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .schema import check_table

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from None
    try:
        check_table(table)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    n_kps = pc.list_value_length(table.column("kps_ids"))
    t = table.select(["category"]).append_column("n_kps", n_kps)
    g = t.group_by("category").aggregate([("n_kps", "count"), ("n_kps", "sum")]).sort_by("category")
    datasets = sorted(set(table.column("dataset").to_pylist()))
    splits = sorted(set(table.column("split").to_pylist()))
    lines = [f"{path}: {', '.join(datasets)} / {', '.join(splits)}", f"{'category':<16}{'pairs':>8}{'keypoints':>11}"]
    for cat, pairs, kps in zip(g["category"].to_pylist(), g["n_kps_count"].to_pylist(), g["n_kps_sum"].to_pylist()):
        lines.append(f"{cat:<16}{pairs:>8}{kps:>11}")
    lines.append(f"{'all':<16}{table.num_rows:>8}{pc.sum(n_kps).as_py() or 0:>11}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from .api import READERS

    p = argparse.ArgumentParser(prog="python -m loaders", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="read one split from the official files and write Parquet")
    c.add_argument("dataset", help=f"one of {', '.join(READERS)}")
    c.add_argument("--root", required=True, type=Path, help="dataset root folder")
    c.add_argument("--split", default="test", help="trn, val or test (default test); AP-10K also test-cross-species, "
                                                    "test-cross-family; CUB-200-2011 test or test-distilldift")
    c.add_argument("--layout", default=None, help="SPair-71k: large (default) or small; SPair-U: marco (default) or jamaisvu")
    c.add_argument("--out", required=True, type=Path, help="output .parquet file (written atomically)")
    s = sub.add_parser("stats", help="pairs and keypoints per category of a Parquet file")
    s.add_argument("file", type=Path)
    v = sub.add_parser("verify", help="check files exist and parse, counts and checksums")
    v.add_argument("dataset")
    v.add_argument("--root", required=True, type=Path)
    v.add_argument("--layout", default=None)
    v.add_argument("--no-images", action="store_true", help="skip reading image headers")
    b = sub.add_parser("build-ap10k", help="build the AP-10K correspondence benchmark from the AP-10K release")
    b.add_argument("--raw", required=True, type=Path, help="the AP-10K release folder (annotations/, data/)")
    b.add_argument("--annotations", nargs="+", type=Path, default=None,
                   help="COCO files to merge (default: the split-1 train, test and val files under annotations/)")
    b.add_argument("--crowd", required=True, type=Path, help="GeoAware-SC's ap-10k_is_crowd.txt (image ids to drop)")
    b.add_argument("--out", required=True, type=Path, help="new folder to write (the ap-10k dataset root)")
    d = sub.add_parser("download", help="download a dataset from its official address")
    d.add_argument("dataset")
    d.add_argument("--root", required=True, type=Path)
    d.add_argument("--sha256", default=None, help="expected sha256 of the archive (printed by a first download)")
    d.add_argument("--allow-unverified", action="store_true", help="unpack an archive that has no checksum to check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "convert":
            from .api import load_uncached
            from .atomic import write_parquet

            table = load_uncached(args.dataset, args.root, args.split, args.layout)
            write_parquet(table, args.out)
            print(f"wrote {args.out}: {table.num_rows} pairs ({args.dataset} {args.split})")
        elif args.command == "stats":
            print(_stats(args.file))
        elif args.command == "verify":
            from .verify import verify

            checks = verify(args.dataset, args.root, args.layout, images=not args.no_images)
            for c in checks:
                print(c.line())
            failed = sum(not c.ok for c in checks)
            print(f"{args.dataset} at {args.root}: {len(checks) - failed} checks passed, {failed} failed")
            return 1 if failed else 0
        elif args.command == "build-ap10k":
            from .ap10k_build import SPLIT_FILES, build

            files = args.annotations or [args.raw / "annotations" / f for f in SPLIT_FILES]
            counts = build(files, args.raw / "data", args.crowd, args.out)
            print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        elif args.command == "download":
            from .download import NOTES, download

            for name in download(args.dataset, args.root, sha256=args.sha256, allow_unverified=args.allow_unverified):
                print(f"unpacked {name} into {args.root}")
            if args.dataset in NOTES:
                print(f"note: {NOTES[args.dataset]}")
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {getattr(exc, 'filename', None) or 'output'}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
