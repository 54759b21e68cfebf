"""The shard store of a run: pairs predicted in shards named by their content, written atomically
with a checksum, resumed when intact; images read ahead and batches pipelined."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .matchers.base import Pair


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start // size, start, min(n, start + size)


def prefetched(matcher, batches):
    """Yield ``(batch, matcher.prefetch(batch))`` with the next batch read by a background thread,
    so the accelerator does not wait on image decoding."""
    from concurrent.futures import ThreadPoolExecutor

    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(matcher.prefetch, batches[0])
        for k, batch in enumerate(batches):
            data = future.result()
            if k + 1 < len(batches):
                future = pool.submit(matcher.prefetch, batches[k + 1])
            yield batch, data


def pipelined(matcher, batches):
    """Yield ``((item, pairs), predictions)`` for ``(item, pairs)`` in ``batches``, in order: images read one
    batch ahead in the background (:func:`prefetched`), and each batch submitted to the matcher
    before the previous one's results are collected, so the device never waits on the host."""
    pending = None
    for (item, _pairs), (pairs, data) in zip(batches, prefetched(matcher, [b for _, b in batches])):
        finish = matcher.submit(pairs, data)
        if pending is not None:
            yield pending[0], pending[1]()
        pending = ((item, pairs), finish)
    if pending is not None:
        yield pending[0], pending[1]()


def table_hash(table: pa.Table) -> str:
    """Content hash of a slice of the pair table (every column, every value)."""
    import hashlib

    blob = json.dumps(table.to_pylist(), sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_ok(path: Path, pair_ids: list[str]) -> bool:
    """A finished shard: present, its bytes match the checksum written beside it, and it holds
    exactly ``pair_ids``. A damaged shard is removed (with a warning) so that it is recomputed."""
    import warnings

    if not path.is_file():
        return False
    problem = None
    try:
        if not _checksum_path(path).is_file():
            problem = "has no checksum (the run stopped while writing it)"
        elif _checksum_path(path).read_text().strip() != file_sha256(path):
            problem = "fails its checksum"
        else:
            ids = pq.read_table(path, columns=["pair_id"]).column("pair_id").to_pylist()
            if sorted(set(ids)) != sorted(set(pair_ids)):
                problem = "holds other pairs"
    except (OSError, pa.ArrowException, ValueError, UnicodeDecodeError) as exc:
        problem = f"is unreadable ({type(exc).__name__})"
    if problem is None:
        return True
    warnings.warn(f"{path}: resume shard {problem}; recomputing it", stacklevel=2)
    for p in (path, _checksum_path(path)):
        try:
            p.unlink()
        except OSError:
            pass
    return False


def write_shard(table: pa.Table, path: Path) -> None:
    """Write a shard and then its checksum (a shard without a matching checksum is recomputed)."""
    from loaders.atomic import write_parquet, write_text

    write_parquet(table, path)
    write_text(_checksum_path(path), file_sha256(path) + "\n")


def predict_shards(matcher, table, todo, batch: int, root: Path, shard_path, progress: bool, desc: str,
                   shard_lines: bool = False) -> None:
    """Predict the pairs of each (index, start, end) shard in ``todo`` and write each shard atomically.

    The next batch's images are read by a background thread while the current batch runs
    (``Matcher.prefetch``), and each batch is submitted before the previous one's results are
    collected (:func:`pipelined`), so the accelerator waits neither on image decoding nor on us.
    ``progress``: a progress bar; ``shard_lines`` (``--quiet``): one line on standard error per shard
    written instead.
    """
    import sys
    import time

    from . import predictions as P

    matcher.record_kap = True  # matchers that can (the padded-frame ones) write KAP's records with the predictions
    bar = None
    if todo and progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(e - s for _, s, e in todo), desc=desc, unit="pair")
    batches = []
    for idx, start, end in todo:
        rows = table.slice(start, end - start).to_pylist()
        for b in range(0, len(rows), batch):
            batches.append((idx, [Pair(r, root) for r in rows[b:b + batch]]))
    parts: dict[int, list] = {}
    remaining = {idx: sum(1 for i, _ in batches if i == idx) for idx, _, _ in todo}
    total, done, t0 = sum(e - s for _, s, e in todo), 0, time.perf_counter()
    for (idx, pairs), preds in pipelined(matcher, batches):
        parts.setdefault(idx, []).append((pairs, preds))
        remaining[idx] -= 1
        if bar:
            bar.update(len(pairs))
        if remaining[idx] == 0:
            tables = []
            has_kap = all(P.KAP_KEY in pr for _, pr in parts[idx])
            for k, readout in enumerate(matcher.readouts):
                ids = [p.pair_id for ps, _ in parts[idx] for p in ps]
                arrs = [a for _, pr in parts[idx] for a in pr[readout]]
                kap = [x for _, pr in parts[idx] for x in pr[P.KAP_KEY]] if has_kap else None
                tables.append(P.make_table(ids, readout, arrs, kap=(kap if k == 0 else [None] * len(ids))
                                           if has_kap else None))
            write_shard(pa.concat_tables(tables), shard_path(idx))
            if shard_lines:
                done += len(ids)
                print(f"{desc}: shard {idx} written, {done}/{total} pairs ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
            del parts[idx]
    if bar:
        bar.close()
