"""``load``: dataset name + root + split -> pyarrow.Table, cached as Parquet keyed by the source files."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import ap10k, cub, pfpascal, pfwillow, schema, spair, spairu
from .atomic import write_parquet
from .errors import DatasetError

READERS = {
    "spair-71k": spair,
    "pf-pascal": pfpascal,
    "pf-willow": pfwillow,
    "spair-u": spairu,
    "ap-10k": ap10k,
    "cub-200-2011": cub,
}
SPLITS_OF = {"spair-71k": ("trn", "val", "test"), "pf-pascal": ("trn", "val", "test"), "pf-willow": ("test",),
             "spair-u": ("test",), "ap-10k": ap10k.SPLITS, "cub-200-2011": cub.SPLITS}
#: datasets whose reader takes a layout: name -> (valid layouts, default)
LAYOUTS_OF = {"spair-71k": (spair.LAYOUTS, "large"), "spair-u": (tuple(spairu.LAYOUTS), "marco")}


def default_cache_dir() -> Path:
    """``$CORRBENCH_CACHE/tables`` or ``~/.cache/corrbench/tables``."""
    base = os.environ.get("CORRBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "corrbench")
    return Path(base) / "tables"


#: folder of each dataset under the data home (the names the official archives and ../shared/data use)
DATA_FOLDERS = {"spair-71k": "SPair-71k", "pf-pascal": "PF-PASCAL", "pf-willow": "PF-WILLOW",
                "spair-u": "SPair-71k", "ap-10k": "AP-10K", "cub-200-2011": "CUB-200-2011"}


def data_home() -> Path:
    """``$CORRBENCH_DATA`` or ``~/.cache/corrbench/data``: where datasets live when no root is given."""
    base = os.environ.get("CORRBENCH_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "corrbench", "data")
    return Path(base)


def default_root(dataset: str) -> Path:
    """``<data home>/<dataset folder>``, e.g. ``~/.cache/corrbench/data/PF-WILLOW``."""
    check_names(dataset, SPLITS_OF.get(dataset, ("test",))[-1])
    return data_home() / DATA_FOLDERS[dataset]


def ensure_root(dataset: str, root: str | os.PathLike | None, download: bool = False) -> Path:
    """The dataset root to read: ``root``, else :func:`default_root`. A missing dataset is fetched with
    ``download`` (verified as :func:`loaders.download.download` verifies), else a one-line error says how."""
    path = Path(root) if root is not None else default_root(dataset)
    present = path.is_dir() and any(path.iterdir())
    if present:
        return path
    if not download:
        raise DatasetError(f"{path}: {dataset} not found; pass --data-root, set CORRBENCH_DATA to the folder holding "
                           f"{DATA_FOLDERS[dataset]}/, or add --download to fetch the official archive")
    from .download import NOTES
    from .download import download as fetch

    fetch(dataset, path)
    if dataset in NOTES:
        print(f"note: {NOTES[dataset]}")
    return path


def check_names(dataset: str, split: str, layout: str | None = None) -> None:
    """Raise :class:`DatasetError` listing the valid names for an unknown dataset/split/layout."""
    if dataset not in READERS:
        close = difflib.get_close_matches(dataset, READERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DatasetError(f"unknown dataset {dataset!r}{hint}; valid: {', '.join(READERS)}")
    if split not in SPLITS_OF[dataset]:
        raise DatasetError(f"unknown split {split!r} for {dataset}; valid: {', '.join(SPLITS_OF[dataset])}")
    if layout is not None and dataset not in LAYOUTS_OF:
        raise DatasetError(f"--layout applies to {' and '.join(LAYOUTS_OF)} only, not {dataset}")
    if layout is not None and layout not in LAYOUTS_OF[dataset][0]:
        raise DatasetError(f"unknown {dataset} layout {layout!r}; valid: {', '.join(LAYOUTS_OF[dataset][0])}")


#: what a reader may raise on hostile input besides DatasetError; turned into a one-line DatasetError
UNEXPECTED = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
              UnicodeError, OSError, pa.ArrowException)


def _guarded(what: str, fn, *args, **kwargs):
    """Call a reader; any failure on bad input comes out as a one-line :class:`DatasetError`."""
    try:
        return fn(*args, **kwargs)
    except DatasetError:
        raise
    except UNEXPECTED as exc:
        raise DatasetError(f"{what}: unreadable dataset files ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def _reader_kwargs(dataset: str, layout: str | None) -> dict:
    return {"layout": layout or LAYOUTS_OF[dataset][1]} if dataset in LAYOUTS_OF else {}


def source_files(dataset: str, root: str | os.PathLike, split: str, layout: str | None = None) -> list[Path]:
    """Every file the table of (dataset, split) is derived from."""
    check_names(dataset, split, layout)
    return _guarded(f"{root} ({dataset} {split})", READERS[dataset].source_files, root, split,
                    **_reader_kwargs(dataset, layout))


def cache_key(dataset: str, root: str | os.PathLike, split: str, layout: str | None = None) -> str:
    """Hash of the options, the schema version and each source file's path and *content*: an edit
    that keeps a file's size and modification time still invalidates the cache (hashing SPair-71k's
    12,234 test annotation files costs about 0.15 s on this project's CPU, against 0.03 s for
    their size and mtime)."""
    root = Path(root).resolve()
    h = hashlib.sha256()
    h.update(json.dumps([schema.SCHEMA_VERSION, dataset, split, layout or "", str(root)]).encode())
    for p in source_files(dataset, root, split, layout):
        try:
            digest = hashlib.blake2b(digest_size=16)
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023 - fh is this iteration's file
                    digest.update(block)
            h.update(f"\n{p}\0{digest.hexdigest()}".encode())
        except FileNotFoundError:
            h.update(f"\n{p}\0missing".encode())
        except OSError as exc:
            h.update(f"\n{p}\0unreadable {exc.errno}".encode())
    return h.hexdigest()[:24]


def load_uncached(dataset: str, root: str | os.PathLike, split: str, layout: str | None = None) -> pa.Table:
    """Parse the dataset's own files (no cache)."""
    check_names(dataset, split, layout)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    return _guarded(f"{root} ({dataset} {split})", READERS[dataset].load, root, split, **_reader_kwargs(dataset, layout))


def load(
    dataset: str,
    root: str | os.PathLike,
    split: str = "test",
    *,
    layout: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> pa.Table:
    """Load one split as a :data:`loaders.schema.SCHEMA` table.

    The parsed table is cached as Parquet under ``cache_dir`` (default
    :func:`default_cache_dir`), keyed by :func:`cache_key`: editing, adding or removing any source
    file invalidates it. ``layout`` selects SPair-71k's ``large`` (default) or ``small`` lists.
    """
    check_names(dataset, split, layout)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    if not use_cache:
        return load_uncached(dataset, root, split, layout)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{dataset}-{split}-{cache_key(dataset, root, split, layout)}.parquet"
    if path.is_file():
        try:
            table = pq.read_table(path)
            schema.check_table(table)
            return table
        except (OSError, ValueError, pa.ArrowInvalid):
            pass  # a damaged or outdated cache file is rebuilt below
    table = load_uncached(dataset, root, split, layout)
    try:
        write_parquet(table, path)
    except OSError:
        pass  # a read-only cache directory must not stop loading
    return table


def to_hf_dataset(table: pa.Table, root: str | os.PathLike | None = None, images: bool = False):
    """Wrap a pair table as a Hugging Face ``datasets.Dataset`` (zero-copy over Arrow).

    ``root``: the dataset root the image paths are relative to, recorded in the dataset's
    description (so a saved copy says where its images are). ``images``: make it self-contained:
    ``src_img`` / ``trg_img`` columns of ``datasets.Image()`` holding each image's encoded bytes
    (paths checked to stay inside ``root``; every pair carries its two images, so this is for
    subsets and sharing, not for the 12k pairs of SPair-71k's test split).
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise ImportError("to_hf_dataset needs the 'datasets' package: pip install datasets") from None
    ds = datasets.Dataset(table)
    if root is None:
        if images:
            raise ValueError("to_hf_dataset(images=True) needs the dataset root the image paths are relative to")
        return ds
    from ._common import inside_root, regular_file

    base = Path(root).resolve()
    ds.info.description = f"corrbench pair table; image paths are relative to the dataset root {base}"
    if not images:
        return ds
    cache: dict[str, bytes] = {}

    def read(rel: str, field: str) -> dict:
        if rel not in cache:
            path = base / inside_root(base, rel, "pair table", field)
            cache.clear() if len(cache) > 256 else None
            cache[rel] = regular_file(path, "image file").read_bytes()
        return {"bytes": cache[rel], "path": rel}

    features = ds.features.copy()
    features["src_img"] = datasets.Image()
    features["trg_img"] = datasets.Image()
    ds = ds.map(lambda r: {"src_img": read(r["src_image"], "src_image"), "trg_img": read(r["trg_image"], "trg_image")},
                features=features, desc="embedding images")
    # self-contained and shareable: no absolute path of this machine goes into the dataset
    ds.info.description = f"corrbench pair table with its images embedded (from a dataset folder named {base.name!r})"
    return ds
