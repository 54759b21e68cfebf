"""The toolkit from Python, in a few calls (the README's "Python API" section runs as a test).

    from benchmarks import api
    table = api.load_dataset("pf-willow", "../shared/data/PF-WILLOW")
    matcher = api.matcher("dift", preset="tiny")
    preds = api.predict(matcher, table, "../shared/data/PF-WILLOW")
    df = api.evaluate(preds, table, "sd4match")      # pandas DataFrame, one number a row

Predictions are ``{readout: [ (n_i, 2) array per pair, in table order ]}`` in original target
pixels, the same as a matcher's ``predict`` returns; :func:`evaluate` also takes a run's
``predictions.parquet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa


def load_dataset(name: str, root: str | Path, split: str = "test", **kw) -> pa.Table:
    """A dataset split as a pair table (:data:`loaders.schema.SCHEMA`), cached as Parquet."""
    import loaders

    return loaders.load(name, root, split, **kw)


def matcher(name: str, preset: str | None = None, **settings):
    """A matcher from the registry (built-ins and plugins) with a preset and settings."""
    from . import registry

    return registry.load_class(name).from_settings(preset, **settings)


def predict(m, table: pa.Table, root: str | Path, batch_size: int | None = None) -> dict[str, list[np.ndarray]]:
    """Predictions of matcher ``m`` for every pair of ``table`` (images read from ``root``), in table order."""
    from .matchers.base import Pair
    from .run import pipelined

    pairs = [Pair(r, Path(root)) for r in table.to_pylist()]
    bs = int(batch_size or getattr(m, "batch_size", 0) or 8)
    out: dict[str, list[np.ndarray]] = {r: [] for r in m.readouts}
    batches = [(None, pairs[i:i + bs]) for i in range(0, len(pairs), bs)]
    for _, preds in pipelined(m, batches):
        for r in out:
            out[r] += [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in preds[r]]
    return out


def evaluate(predictions, dataset: pa.Table, protocol="sd4match", alphas: Sequence[float] | None = None,
             matcher_name: str = "python") -> pd.DataFrame:
    """PCK rows (as ``results.csv``) of ``predictions`` on ``dataset`` under ``protocol``.

    ``predictions``: ``{readout: [array per pair]}`` aligned with ``dataset``'s rows, or a path to a
    ``predictions.parquet``; ``protocol``: a preset name, a :class:`~benchmarks.protocol.Protocol`,
    or a list of either.
    """
    from . import predictions as P
    from .evaluate import evaluate as _evaluate
    from .protocol import Protocol, protocols_for

    dataset_name = dataset.column("dataset")[0].as_py() if dataset.num_rows else "unknown"
    protos = []
    for p in protocol if isinstance(protocol, (list, tuple)) else [protocol]:
        protos += [p] if isinstance(p, Protocol) else protocols_for(dataset_name, [p], tuple(alphas) if alphas else None)
    if isinstance(predictions, (str, Path)):
        pred = P.read(predictions)
    else:
        ids = dataset.column("pair_id").to_pylist()
        tables = []
        for readout, arrays in predictions.items():
            if len(arrays) != len(ids):
                raise ValueError(f"readout {readout!r}: {len(arrays)} predictions for {len(ids)} pairs")
            tables.append(P.make_table(ids, readout, [np.asarray(a, dtype=np.float64) for a in arrays]))
        pred = pa.concat_tables(tables)
    rows, xy = P.align(pred, dataset, source="predictions")
    split = dataset.column("split")[0].as_py() if dataset.num_rows else "test"
    results, _ = _evaluate(rows, xy, protos, {"matcher": matcher_name, "dataset": dataset_name, "split": split,
                                              "split_pairs": dataset.num_rows,
                                              "subset": "all" if rows.num_rows == dataset.num_rows else f"{rows.num_rows} predicted"})
    return results
