"""Result bundles: one portable file per run that anyone can verify against their own copy of the
dataset, without the model.

``python -m leaderboard pack RUN --out NAME.corrbench.zip`` writes a zip holding

- ``bundle.json``: ``schema_version``, the run's id, label, dataset, split and layout, the sha256
  and size of every other member, and the sha256 of every dataset file the run read (annotation
  and pair-list files, by their path inside the dataset root; no images);
- ``run.json`` (provenance, settings, weights' names and hashes; absolute paths of the machine
  that made it are replaced by ``<local>/NAME``), ``predictions.parquet``, ``per_pair.parquet``,
  ``results.csv``.

The schema is ``leaderboard/data/bundle.schema.json`` (JSON Schema, draft 2020-12).

``python -m leaderboard verify BUNDLE_OR_RUN... --data-root DIR`` checks the dataset files first (a
different dataset version is a one-line refusal naming the file), then re-scores the predictions
under every protocol the run recorded and compares every number of ``results.csv`` and
``per_pair.parquet``: exit 0 when all agree, 1 naming the first differing cell. What it proves: the
numbers follow from the predictions and the dataset. What it cannot prove: that the predictions
came from the stated model.

Archives are hostile until read: only the six member names are accepted, no folders, links or
duplicate names, each member at most :data:`MAX_MEMBER` bytes and at most :data:`MAX_RATIO` times
its compressed size, read into memory (never extracted) with the declared size enforced.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from loaders.verify import sha256 as sha256_file

from .runs import LeaderboardError, clean_text, read_record

SCHEMA_VERSION = 1
FORMAT = "corrbench-result-bundle"
SUFFIX = ".corrbench.zip"
RUN_FILES = ("run.json", "predictions.parquet", "per_pair.parquet", "results.csv")
MEMBERS = ("bundle.json", *RUN_FILES)
#: the largest member accepted (bytes, uncompressed) and the largest compression ratio
MAX_MEMBER = 1 << 30
MAX_RATIO = 200
#: the fixed time stamp of every member (the same run packs to the same bytes)
STAMP = (2020, 1, 1, 0, 0, 0)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
RESULT_KEY = ["protocol", "frame", "threshold", "aggregate", "readout", "direction", "category", "alpha", "metric",
              "keypoints"]
RESULT_NUMBERS = ["pck", "ci_low", "ci_high", "n_pairs", "n_kps"]


class BundleError(LeaderboardError):
    """A bundle (or run folder) cannot be packed, read or checked."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_ABS = re.compile(r"(?<![\w.~<>:/-])/(?:[^\s'\"/]+/)*[^\s'\"/]+")


def scrub(value):
    """``value`` with every absolute path of this machine replaced by ``<local>/NAME``."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return _ABS.sub(lambda m: "<local>/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], value)
    return value


# ------------------------------------------------------------------------------------------------ pack
def pack(run_dir: str | Path, out: str | Path, data_root: str | Path | None = None) -> Path:
    """Write the bundle of ``run_dir`` to ``out`` (atomically); returns the path."""
    import loaders
    from loaders.atomic import atomic_path

    run_dir, out = Path(run_dir), Path(out)
    if not out.name.endswith(SUFFIX):
        raise BundleError(f"--out {out}: a bundle's name ends with {SUFFIX}")
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise BundleError(f"{run_dir}: not a finished run folder (missing {', '.join(missing)})")
    record = read_record(run_dir)
    for field in ("dataset", "split", "protocols"):
        if not record.get(field):
            raise BundleError(f"{run_dir / 'run.json'}: no {field!r}; a bundle needs the run's dataset, split and protocols")
    dataset, split, layout = str(record["dataset"]), str(record["split"]), record.get("layout")
    root = Path(data_root) if data_root else Path(str(record.get("data_root") or ""))
    if not str(root) or not root.is_dir():
        raise BundleError(f"{run_dir}: the dataset root {str(root) or '(none recorded)'} is not here; pass --data-root "
                          "(the dataset files' checksums go into the bundle)")
    try:
        files = loaders.api.source_files(dataset, root, split, layout)
    except loaders.DatasetError as exc:
        raise BundleError(str(exc)) from None
    base = root.resolve()
    checksums = {}
    for f in files:
        if Path(f).suffix.lower() in IMAGE_SUFFIXES:  # annotation and pair-list files only
            continue
        rel = Path(os.path.realpath(f)).relative_to(base).as_posix() if Path(os.path.realpath(f)).is_relative_to(base) else None
        if rel is None:
            raise BundleError(f"{f}: a dataset file outside the root {root}")
        checksums[rel] = sha256_file(Path(f))
    data = {name: (run_dir / name).read_bytes() for name in RUN_FILES}
    data["run.json"] = (json.dumps(scrub(record), indent=2, sort_keys=True, default=str) + "\n").encode()
    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    meta = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION,
        "run_id": str(prov.get("run_id") or str(record.get("config_hash", ""))[:7]),
        "label": clean_text(prov.get("label") or record.get("matcher", "?"))[:400],
        "dataset": dataset, "split": split, "layout": layout,
        "files": {n: {"sha256": sha256_bytes(b), "bytes": len(b)} for n, b in sorted(data.items())},
        "dataset_files": dict(sorted(checksums.items())),
        "created_by": {"corrbench": _version()},
    }
    data["bundle.json"] = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in MEMBERS:
                info = zipfile.ZipInfo(name, date_time=STAMP)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, data[name])
    return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("corrbench")
    except Exception:  # not installed as a distribution (a source checkout)
        return "unknown"


# ------------------------------------------------------------------------------------------------ read
def read_bundle(path: str | Path) -> dict[str, bytes]:
    """The members of a bundle, read into memory after every check (see the module docstring)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a readable zip archive ({type(exc).__name__})") from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        for info in infos:
            name = info.filename
            mode = info.external_attr >> 16
            if name not in MEMBERS:
                raise BundleError(f"{path}: unexpected member {name[:120]!r} (a bundle holds {', '.join(MEMBERS)})")
            if names.count(name) > 1:
                raise BundleError(f"{path}: member {name!r} appears twice")
            kind = stat.S_IFMT(mode)  # 0: no type recorded (many zip writers): a plain file
            if info.is_dir() or (kind and kind != stat.S_IFREG):
                raise BundleError(f"{path}: member {name!r} is not a regular file (a link or a folder)")
            if info.file_size > MAX_MEMBER:
                raise BundleError(f"{path}: member {name!r} declares {info.file_size} bytes (at most {MAX_MEMBER})")
            if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise BundleError(f"{path}: member {name!r} expands {info.file_size / max(info.compress_size, 1):.0f}-fold "
                                  f"(at most {MAX_RATIO}); refused as a zip bomb")
        missing = [m for m in MEMBERS if m not in names]
        if missing:
            raise BundleError(f"{path}: missing member(s) {', '.join(missing)}")
        out = {}
        for info in infos:
            with zf.open(info) as fh:
                data = fh.read(info.file_size + 1)
            if len(data) != info.file_size:
                raise BundleError(f"{path}: member {info.filename!r} is not the size its header declares")
            out[info.filename] = data
    return out


def bundle_meta(path: Path, members: dict[str, bytes]) -> dict:
    """``bundle.json`` validated (types, values, member checksums)."""
    where = f"{path}: bundle.json"
    try:
        meta = json.loads(members["bundle.json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where}: malformed JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{where}: not a corrbench result bundle (format {str(meta.get('format') if isinstance(meta, dict) else None)[:40]!r})")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {meta.get('schema_version')!r}; this corrbench reads {SCHEMA_VERSION}")
    for field in ("run_id", "label", "dataset", "split"):
        if not isinstance(meta.get(field), str) or not meta[field] or len(meta[field]) > 400:
            raise BundleError(f"{where}: {field!r} must be a non-empty text")
    files, dfiles = meta.get("files"), meta.get("dataset_files")
    if not isinstance(files, dict) or set(files) != set(RUN_FILES):
        raise BundleError(f"{where}: 'files' must list {', '.join(RUN_FILES)}")
    for name in RUN_FILES:
        entry = files.get(name)
        if not isinstance(entry, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
            raise BundleError(f"{where}: files[{name!r}] must carry a sha256")
        if sha256_bytes(members[name]) != entry["sha256"]:
            raise BundleError(f"{path}: member {name!r} does not match its sha256 in bundle.json (altered after packing)")
    if not isinstance(dfiles, dict) or not dfiles or not all(
            isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for k, v in dfiles.items()):
        raise BundleError(f"{where}: 'dataset_files' must map dataset paths to sha256 digests")
    return meta


# ---------------------------------------------------------------------------------------------- verify
class Source:
    """A bundle or a run folder, as the verifier reads it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            missing = [f for f in RUN_FILES if not (self.path / f).is_file()]
            if missing:
                raise BundleError(f"{self.path}: not a finished run folder (missing {', '.join(missing)})")
            self.members = {f: (self.path / f).read_bytes() for f in RUN_FILES}
            self.meta = None
        else:
            self.members = read_bundle(self.path)
            self.meta = bundle_meta(self.path, self.members)
        try:
            self.record = json.loads(self.members["run.json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{self.path}: run.json: malformed JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(self.record, dict):
            raise BundleError(f"{self.path}: run.json: expected a JSON object")
        prov = self.record.get("provenance") if isinstance(self.record.get("provenance"), dict) else {}
        self.run_id = str((self.meta or {}).get("run_id") or prov.get("run_id") or self.path.name)

    def table(self, name: str) -> pd.DataFrame:
        data = self.members[name]
        try:
            if name.endswith(".csv"):
                return pd.read_csv(io.BytesIO(data), dtype={"category": str, "readout": str, "tta": str})
            return pd.read_parquet(io.BytesIO(data))
        except Exception as exc:  # pandas and pyarrow raise several types for damaged files
            raise BundleError(f"{self.path}: {name}: unreadable ({type(exc).__name__})") from None


def check_dataset(src: Source, root: Path) -> None:
    """The dataset files a bundle names, against the user's copy: a missing or different file is a
    one-line refusal naming it. A run folder is checked against the files the dataset reader uses."""
    files = src.meta["dataset_files"] if src.meta else None
    if files is None:
        return
    base = root.resolve()
    for rel, digest in sorted(files.items()):
        if rel.startswith("/") or ".." in Path(rel).parts or "\\" in rel:
            raise BundleError(f"{src.path}: dataset file {rel[:120]!r} is not a path inside the dataset root")
        path = base / rel
        if not path.is_file():
            raise BundleError(f"{path}: missing; {src.path} was made from a dataset copy holding it (another version?)")
        if sha256_file(path) != digest:
            raise BundleError(f"{path}: differs from the file {src.path} was made from (another dataset version)")


def _protocols(src: Source):
    from benchmarks.protocol import Protocol

    raw = src.record.get("protocols")
    if not isinstance(raw, list) or not raw:
        raise BundleError(f"{src.path}: run.json: no 'protocols' to re-score under")
    out = []
    for d in raw:
        try:
            p = Protocol(**{k: (tuple(v) if k == "alphas" else v) for k, v in d.items()})
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{src.path}: run.json: a protocol that does not parse ({str(exc)[:120]})") from None
        out.append(p)
    return out


def rescore(src: Source, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, per-pair table) recomputed from the source's predictions and the user's dataset."""
    import loaders
    from benchmarks import predictions as P
    from benchmarks.evaluate import evaluate, per_pair_table

    rec = src.record
    dataset, split, layout = str(rec.get("dataset", "")), str(rec.get("split", "")), rec.get("layout")
    try:
        table = loaders.load(dataset, root, split, layout=layout)
        pred = P.read(io.BytesIO(src.members["predictions.parquet"]))
        rows, xy = P.align(pred, table, source=f"{src.path}: predictions.parquet")
    except (loaders.DatasetError, P.PredictionError, ValueError) as exc:
        raise BundleError(str(exc)) from None
    protos = _protocols(src)
    claimed = src.table("results.csv")
    first = claimed.iloc[0] if len(claimed) else {}
    meta = {"matcher": str(first.get("matcher", rec.get("matcher", "?"))), "dataset": dataset, "split": split,
            "precision": str(first.get("precision", "unknown")), "tta": str(first.get("tta", "none")),
            "split_pairs": table.num_rows, "subset": str(first.get("subset", rec.get("subset", "all")))}
    results, _ = evaluate(rows, xy, protos, meta, kap=P.kap_records(pred, rows, f"{src.path}: predictions.parquet"))
    per_pair = per_pair_table(rows, xy, protos, dataset).to_pandas()
    return results, per_pair


def _same(a, b) -> bool:
    if (a is None or (isinstance(a, float) and math.isnan(a))) and (b is None or (isinstance(b, float) and math.isnan(b))):
        return True
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 5e-6 * max(abs(a), abs(b)) + 1e-9  # results.csv keeps 6 significant digits


def compare(src: Source, results: pd.DataFrame, per_pair: pd.DataFrame) -> str | None:
    """The first cell where the source's numbers and the recomputed ones differ, or None."""
    claimed = src.table("results.csv")
    key = [k for k in RESULT_KEY if k in claimed.columns and k in results.columns]
    missing = [c for c in ["protocol", "category", "alpha", "readout", "pck"] if c not in claimed.columns]
    if missing:
        return f"results.csv lacks column(s) {missing}"
    norm = lambda d: d.assign(alpha=d["alpha"].astype(float).round(9), category=d["category"].astype(str))  # noqa: E731
    mine = norm(results).set_index(key)
    theirs = norm(claimed)
    if theirs.duplicated(key).any():
        r = theirs[theirs.duplicated(key)].iloc[0]
        return f"results.csv: row of protocol {r['protocol']}, category {r['category']}, alpha {r['alpha']:g} appears twice"
    theirs = theirs.set_index(key)
    for idx in theirs.index:
        if idx not in mine.index:
            k = dict(zip(key, idx))
            return f"protocol {k['protocol']}, category {k['category']}, alpha {k['alpha']:g}: claimed, but nothing recomputed there"
        for col in RESULT_NUMBERS:
            if col in theirs.columns and col in mine.columns and not _same(theirs.at[idx, col], mine.at[idx, col]):
                k = dict(zip(key, idx))
                return (f"protocol {k['protocol']}, readout {k['readout']}, category {k['category']}, alpha {k['alpha']:g}, "
                        f"{col}: claimed {theirs.at[idx, col]!r}, recomputed {mine.at[idx, col]!r}")
    extra = [i for i in mine.index if i not in theirs.index]
    if extra:
        k = dict(zip(key, extra[0]))
        return f"protocol {k['protocol']}, category {k['category']}, alpha {k['alpha']:g}: recomputed, but missing from results.csv"
    pp = src.table("per_pair.parquet")
    pkey = ["pair_id", "readout", "protocol", "alpha"] + [c for c in ("metric", "keypoints") if c in pp.columns]
    if "metric" not in pp.columns:  # a bundle written before the extra metrics: compare its plain PCK
        per_pair = per_pair[(per_pair["metric"] == "pck") & (per_pair["keypoints"] == "all")]
    if any(c not in pp.columns for c in pkey + ["fraction_correct"]):
        return "per_pair.parquet lacks its columns"
    a = pp.assign(alpha=pp["alpha"].astype(float).round(9)).set_index(pkey)["fraction_correct"]
    b = per_pair.assign(alpha=per_pair["alpha"].astype(float).round(9)).set_index(pkey)["fraction_correct"]
    if a.index.duplicated().any():
        return "per_pair.parquet: a pair appears twice for one readout, protocol and alpha"
    if len(a) != len(b) or not a.index.isin(b.index).all():
        gone = next((i for i in b.index if i not in a.index), None) or next(i for i in a.index if i not in b.index)
        return f"per_pair.parquet: pair {gone[0]!r} (readout {gone[1]}, protocol {gone[2]}, alpha {gone[3]:g}) differs in presence"
    diff = ~np.isclose(a.to_numpy(float), b.reindex(a.index).to_numpy(float), rtol=0, atol=1e-9)
    if diff.any():
        i = a.index[int(np.nonzero(diff)[0][0])]
        return (f"per_pair.parquet: pair {i[0]!r}, readout {i[1]}, protocol {i[2]}, alpha {i[3]:g}: claimed "
                f"{a.iloc[int(np.nonzero(diff)[0][0])]!r}, recomputed {b[i]!r}")
    return None


def verify(path: str | Path, data_root: str | Path) -> tuple[Source, str | None]:
    """(the source, the first difference or None); one-line :class:`BundleError` when it cannot be checked."""
    src = Source(path)
    root = Path(data_root)
    if not root.is_dir():
        raise BundleError(f"--data-root {root}: no such folder")
    check_dataset(src, root)
    results, per_pair = rescore(src, root)
    return src, compare(src, results, per_pair)
