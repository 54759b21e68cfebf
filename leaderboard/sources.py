"""Where measured rows come from: run folders and result bundles (:mod:`leaderboard.bundle`), read,
optionally re-scored (``--verify``), checked for conflicting numbers under one run id, and gathered
with the published rows into one tidy frame (:data:`leaderboard.runs.COLUMNS`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .bundle import SUFFIX, bundle_meta, read_bundle, scrub
from .runs import (
    COLUMNS,
    IDENTITY,
    NUMBERS,
    LeaderboardError,
    _label_for,
    clean_text,
    read_record,
    read_reported,
    read_run,
)

#: what made each measured source (its run.json's provenance and settings), by the ``source`` of its rows
PROVENANCE: dict[str, dict] = {}


def _what_made(record: dict) -> dict:
    """The part of a run.json a reader checks: provenance, settings, weights, versions, coverage
    (absolute paths of the machine that made it replaced, as in a bundle)."""
    keep = ("matcher", "preset", "provenance", "config", "config_hash", "dataset", "split", "subset", "split_pairs",
            "n_pairs", "precision", "tta", "versions", "git", "sample_seed", "protocols")
    return scrub({k: record[k] for k in keep if k in record})


def _is_run(d) -> bool:
    """True for a run folder or a result bundle; anything else (a failed run's leftovers, a stray
    file) is skipped with one line on standard error."""
    import sys

    d = Path(d)
    if (d / "results.csv").is_file() or (d.name.endswith(SUFFIX) and d.is_file()):
        return True
    print(f"skipped {clean_text(d)}: not a run folder (no results.csv)", file=sys.stderr)
    return False


def _read_source(d: Path, label: str | None, tmp: Path) -> pd.DataFrame:
    """A run folder's rows, or a bundle's: its members read in memory after every check, then the
    three the leaderboard reads written into a private folder under ``tmp`` (fixed names only)."""
    if not d.name.endswith(SUFFIX) or d.is_dir():
        df = read_run(d, label)
        PROVENANCE[clean_text(d)] = _what_made(read_record(d))
        return df
    members = read_bundle(d)
    bundle_meta(d, members)
    where = tmp / f"bundle-{len(list(tmp.iterdir()))}"
    where.mkdir()
    for name in ("run.json", "results.csv", "per_pair.parquet"):
        (where / name).write_bytes(members[name])
    df = read_run(where, label)
    PROVENANCE[clean_text(d)] = _what_made(read_record(where))
    df["source"] = clean_text(d)
    return df


def _conflicts(frames: list[pd.DataFrame], sources: list[Path]) -> None:
    """Sources that carry one run id over the same pairs with different numbers are marked
    ``conflict`` (both kept, never merged)."""
    import sys

    by_id: dict[tuple, list[int]] = {}
    for k, f in enumerate(frames):
        if len(f):
            by_id.setdefault((str(f["run"].iloc[0]), str(f["pairs_key"].iloc[0]), str(f["split"].iloc[0])), []).append(k)
    key = ["protocol", "frame", "threshold", "aggregate", "readout", "category", "alpha"]
    for (rid, _, _), ks in by_id.items():
        if len(ks) < 2:
            continue
        ref = frames[ks[0]].set_index(key)["pck"].sort_index()
        for k in ks[1:]:
            other = frames[k].set_index(key)["pck"].sort_index()
            if len(other) != len(ref) or not other.index.equals(ref.index) or not np_allclose(other.to_numpy(), ref.to_numpy()):
                for j in (ks[0], k):
                    frames[j]["status"] = "conflict"
                    frames[j]["note"] = f"run id {rid} is given with different numbers by {clean_text(sources[ks[0]])} " \
                                        f"and {clean_text(sources[k])}"
                print(f"conflict: {clean_text(sources[ks[0]])} and {clean_text(sources[k])} carry run id {rid} with "
                      "different numbers; both are shown, marked 'conflict'", file=sys.stderr)


def np_allclose(a, b) -> bool:
    import numpy as np

    return bool(np.allclose(a.astype(float), b.astype(float), rtol=0, atol=1e-9, equal_nan=True))


def collect(run_dirs: list[str | Path], reported: pd.DataFrame | None = None,
            labels: dict[str, str] | None = None, verify_root: str | Path | None = None) -> pd.DataFrame:
    """Measured rows of every run folder and result bundle and the published rows, as one tidy frame
    (:data:`COLUMNS`). ``verify_root``: re-score every source against that dataset copy first
    (:mod:`leaderboard.bundle`); each then reads ``verified``, and one that does not verify is refused."""
    import tempfile

    seen: dict[Path, str] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise LeaderboardError(f"{d}: run folder given twice (also as {seen[key]})")
        seen[key] = str(d)
    runs = [Path(d) for d in run_dirs if _is_run(d)]
    if not runs:
        raise LeaderboardError(f"none of {', '.join(map(str, run_dirs[:5]))} is a folder written by benchmarks.run "
                               "(results.csv and run.json) or a result bundle (.corrbench.zip)")
    labels = dict(labels or {})
    with tempfile.TemporaryDirectory(prefix="corrbench-bundles-") as tmp:
        frames: list[pd.DataFrame] = [_read_source(d, _label_for(d, labels), Path(tmp)) for d in runs]
    for f in frames:
        f["status"] = "unverified"
    if verify_root is not None:
        from .bundle import verify

        for f, d in zip(frames, runs):
            _, diff = verify(d, verify_root)
            if diff:
                raise LeaderboardError(f"{d}: does not verify against {verify_root}: {diff}")
            f["status"] = "verified"
    _conflicts(frames, runs)
    # the same settings run into several folders: each of them is told apart by its folder name (then
    # by its place among equal names, in path order), whatever the order the runs were given in
    ids = [str(f["run"].iloc[0]) if len(f) else clean_text(d.name) for f, d in zip(frames, runs)]
    for rid in {i for i in ids if ids.count(i) > 1}:
        group = sorted((str(d.resolve()), k) for k, (i, d) in enumerate(zip(ids, runs)) if i == rid)
        names = [f"{rid} {clean_text(runs[k].name)}" for _, k in group]
        for n, (_, k) in enumerate(group):
            frames[k]["run"] = names[n] if names.count(names[n]) == 1 else f"{names[n]} #{names[:n + 1].count(names[n])}"
    if labels:
        raise LeaderboardError(f"--label {next(iter(labels))}=...: no such run folder among the runs given")
    frames.append(read_reported() if reported is None else reported)
    for f in frames:
        for c in NUMBERS + IDENTITY:
            if c not in f.columns:
                f[c] = float("nan") if c in NUMBERS else ""
    return pd.concat([f[COLUMNS] for f in frames], ignore_index=True)
