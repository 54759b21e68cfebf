"""Dataset loaders: SPair-71k, PF-Pascal and PF-Willow from their official on-disk formats into
one Arrow schema (:mod:`loaders.schema`), with an on-disk Parquet cache.

This package imports only numpy, pyarrow, scipy and PIL (``datasets`` lazily for the export).

>>> import loaders
>>> table = loaders.load("pf-willow", "/data/PF-WILLOW", "test")   # doctest: +SKIP
"""

from __future__ import annotations

from .api import READERS, cache_key, load, load_uncached, source_files, to_hf_dataset
from .errors import DatasetError
from .schema import DATASETS, SCHEMA, SPLITS

__all__ = [
    "DATASETS",
    "READERS",
    "SCHEMA",
    "SPLITS",
    "DatasetError",
    "cache_key",
    "load",
    "load_uncached",
    "source_files",
    "to_hf_dataset",
]
