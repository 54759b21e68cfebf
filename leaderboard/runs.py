"""Reading result rows: run folders (``results.csv`` + ``run.json`` written by ``benchmarks.run``)
and published numbers (``leaderboard/data/reported.csv``), validated, with what made each row.

Every row carries its identity: ``method`` (the display label: method, settings changed from its
defaults, random weights, partial coverage), ``run`` (a short run id), ``weights``,
``random_weights``, ``partial`` and ``source`` (the folder, or the publication).
"""

from __future__ import annotations

import io
import json
import re
from importlib import resources
from pathlib import Path

import pandas as pd

KEY = ["kind", "method", "run", "split", "precision", "tta", "protocol", "frame", "threshold", "aggregate", "readout"]
IDENTITY = ["weights", "random_weights", "partial", "source", "own_readout", "pairs_key", "status", "protocol_001"]
#: what a row's numbers rest on: re-scored here, as claimed by their run or bundle, a paper's number,
#: or a run id that two sources give with different numbers
STATUSES = ("verified", "unverified", "reported", "conflict")
NUMBERS = ["n_pairs", "split_pairs", "ci_low", "ci_high", "pck_dagger", "pck_geo", "n_kps_geo", "pck_geo_release", "kap", "pck_001"]
COLUMNS = KEY + IDENTITY + ["dataset", "category", "alpha", "pck", "note"] + NUMBERS
#: the category of whole-split rows (benchmarks.evaluate never writes a dataset category under this name)
WHOLE = "all"


class LeaderboardError(ValueError):
    """A run folder or the reported-numbers file is unusable."""


def clean_text(text) -> str:
    """A name as one line of text: control characters (newlines included) become spaces."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", str(text)).strip()


#: the longest name shown (a label, a method, a note): longer ones are cut with an ellipsis
MAX_NAME = 160


def bounded(text, limit: int = MAX_NAME) -> str:
    """A name as one line of at most ``limit`` characters (cut with an ellipsis)."""
    text = clean_text(str(text)[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def check_unique(df: pd.DataFrame, key: list[str], where: str) -> None:
    """One row per ``key``; a duplicate is a one-line error naming the file and the duplicated key."""
    key = [k for k in key if k in df.columns]
    dup = df.duplicated(key, keep="first")
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        r = df.iloc[i]
        shown = ", ".join(f"{k}={bounded(r[k], 40)!s}" for k in key)
        raise LeaderboardError(f"{where}: row {i + 2} repeats the key ({shown}) of an earlier row; each number must "
                               "appear once")


def safe_name(name: str, where: str) -> str:
    """A dataset name used in output file names: letters, digits, '.', '_' and '-', no leading dot."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", str(name)):
        raise LeaderboardError(f"{where}: {str(name)[:80]!r} is not a dataset name (letters, digits, '.', '_', '-')")
    return str(name)


def _numbers(df: pd.DataFrame, col: str, where: str, low: float, high: float, required: bool) -> None:
    """Column ``col`` as numbers in [low, high] (NaN allowed when not ``required``); one-line error."""
    if col not in df.columns:
        df[col] = float("nan")
        return
    values = pd.to_numeric(df[col], errors="coerce")
    bad = (values.isna() & (df[col].notna() | required)) | (values < low) | (values > high)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise LeaderboardError(f"{where}: column {col!r} must hold numbers in [{low:g}, {high:g}], found "
                               f"{df[col].iloc[i]!r} (row {i + 2})")
    df[col] = values


def _validate(df: pd.DataFrame, where: str) -> None:
    _numbers(df, "pck", where, 0, 1, True)
    _numbers(df, "alpha", where, 0, 1, True)
    if (df["alpha"] <= 0).any():
        raise LeaderboardError(f"{where}: column 'alpha' must be > 0")
    for col in ("ci_low", "ci_high"):
        _numbers(df, col, where, 0, 1, False)
    for col in ("n_pairs", "split_pairs"):
        _numbers(df, col, where, 0, 1e12, False)
    inverted = df["ci_low"] > df["ci_high"]
    if inverted.any():
        i = int(inverted.to_numpy().nonzero()[0][0])
        raise LeaderboardError(f"{where}: row {i + 2}: the interval [ci_low, ci_high] = [{df['ci_low'].iloc[i]}, "
                               f"{df['ci_high'].iloc[i]}] is inverted")
    for col in ("method", "matcher", "dataset", "split", "protocol", "frame", "threshold", "aggregate", "readout",
                "category"):
        if col in df.columns:
            empty = df[col].isna() | (df[col].astype(str).map(clean_text) == "")
            if empty.any():
                raise LeaderboardError(f"{where}: column {col!r} is empty in row {int(empty.to_numpy().nonzero()[0][0]) + 2}")
    for col in ("method", "matcher", "readout", "tta", "precision", "protocol", "frame", "threshold", "aggregate",
                "category", "dataset", "split"):
        if col in df.columns:
            df[col] = df[col].map(lambda v: v if pd.isna(v) else clean_text(v))


def plain_pck(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of plain PCK on all keypoints (``metric`` pck, ``keypoints`` all; runs written before
    those columns existed hold only these). PCK-dagger and the keypoint subsets stand beside them in
    ``results.csv``."""
    keep = pd.Series(True, index=df.index)
    for col, value in (("metric", "pck"), ("keypoints", "all")):
        if col in df.columns:
            keep &= df[col].fillna(value).astype(str) == value
    return df[keep].reset_index(drop=True)


#: the columns that identify a number, to which PCK-dagger and the geometry-aware subsets attach
EXTRA_KEY = ["dataset", "split", "protocol", "frame", "threshold", "aggregate", "readout", "direction", "tta",
             "precision", "category", "alpha"]
KAP_KEY = ["dataset", "split", "threshold", "aggregate", "direction", "tta", "precision", "category", "alpha"]
FINE_KEY = ["dataset", "split", "threshold", "aggregate", "readout", "direction", "tta", "precision", "category"]
#: (metric, keypoints) -> the column it becomes beside plain PCK
EXTRA_COLUMNS = {("pck-dagger", "all"): "pck_dagger", ("pck", "geo-aware"): "pck_geo",
                 ("pck", "geo-aware-release"): "pck_geo_release"}


def _extras(df: pd.DataFrame) -> list[tuple[pd.DataFrame, list[str]]]:
    """PCK-dagger, the geometry-aware rows, KAP and PCK@0.01 as columns beside plain PCK (``pck_dagger``,
    ``pck_geo`` with ``n_kps_geo``, ``pck_geo_release``, ``kap``, ``pck_001`` with ``protocol_001``),
    each as (frame, the columns it joins on); none for runs written before those rows existed."""
    if "metric" not in df.columns or "keypoints" not in df.columns:
        return []
    parts = []
    key = [c for c in EXTRA_KEY if c in df.columns]
    for (metric, kps), col in EXTRA_COLUMNS.items():
        part = df[(df["metric"].astype(str) == metric) & (df["keypoints"].astype(str) == kps)]
        if part.empty:
            continue
        keep = part[key + ["pck"] + (["n_kps"] if col == "pck_geo" and "n_kps" in part.columns else [])].rename(
            columns={"pck": col, "n_kps": "n_kps_geo"}).drop_duplicates(key)
        keep[col] = pd.to_numeric(keep[col], errors="coerce")
        parts.append((keep, key))
    # PCK@0.01 from a protocol that computes it (SPair-71k's headline protocol does not): geoaware first
    alpha = pd.to_numeric(df["alpha"], errors="coerce")
    fine = df[(df["metric"].astype(str) == "pck") & (df["keypoints"].astype(str) == "all") & ((alpha - 0.01).abs() < 1e-9)]
    if len(fine):
        fkey = [c for c in FINE_KEY if c in df.columns]
        fine = fine.assign(_pref=(fine["protocol"].astype(str) != "geoaware")).sort_values("_pref", kind="mergesort")
        ff = fine[fkey + ["pck", "protocol"]].drop_duplicates(fkey).rename(columns={"pck": "pck_001",
                                                                                    "protocol": "protocol_001"})
        ff["pck_001"] = pd.to_numeric(ff["pck_001"], errors="coerce")
        parts.append((ff, fkey))
    # KAP depends on the threshold, aggregate and alpha, not on the readout or the PCK frame
    k = df[df["metric"].astype(str) == "kap"]
    if len(k):
        kkey = [c for c in KAP_KEY if c in df.columns]
        kk = k[kkey + ["pck"]].rename(columns={"pck": "kap"}).drop_duplicates(kkey)
        kk["kap"] = pd.to_numeric(kk["kap"], errors="coerce")
        parts.append((kk, kkey))
    return parts


def read_reported(path: str | Path | None = None) -> pd.DataFrame:
    """Published numbers as tidy rows (``kind = reported``), validated like measured ones."""
    where = str(path or "leaderboard/data/reported.csv")
    try:
        if path is None:
            text = resources.files("leaderboard").joinpath("data/reported.csv").read_text()
        else:
            text = Path(path).read_text(encoding="utf-8")
        df = pd.read_csv(io.StringIO(text), dtype=str)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LeaderboardError(f"{where}: not a readable CSV of published numbers ({type(exc).__name__})") from None
    need = {"method", "dataset", "split", "protocol", "threshold", "frame", "aggregate", "readout", "category", "alpha",
            "pck", "source"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise LeaderboardError(f"{where}: missing column(s) {missing}")
    df = df.rename(columns={"source": "run"})
    df["kind"] = "reported"
    df["note"] = df["note"].fillna("").map(clean_text) if "note" in df.columns else ""
    df["precision"] = df["precision"].fillna("unknown").astype(str) if "precision" in df.columns else "unknown"
    df["tta"] = df["tta"].fillna("none").astype(str) if "tta" in df.columns else "none"
    _validate(df, where)
    df["run"] = df["run"].map(bounded)
    df["method"] = df["method"].map(bounded)
    df["note"] = df["note"].map(lambda v: bounded(v, 400))
    check_unique(df, ["method", "run", "dataset", "split", "protocol", "frame", "threshold", "aggregate", "readout",
                      "tta", "precision", "category", "alpha"], where)
    df["weights"] = "published"
    df["random_weights"] = False
    df["partial"] = False
    df["source"] = df["run"]
    df["status"] = "reported"
    for name in set(df["dataset"].astype(str)):
        safe_name(name, f"{where}: column 'dataset'")
    return df


def _provenance(record: dict, meta: Path) -> dict:
    """The run's provenance block (validated), or one rebuilt from its config for runs written
    before provenance was recorded."""
    from benchmarks.provenance import from_config

    prov = record.get("provenance")
    if prov is None:
        return from_config(record)
    if not isinstance(prov, dict):
        raise LeaderboardError(f"{meta}: provenance must be a JSON object")
    lab, rid, rnd, w = prov.get("label"), prov.get("run_id", ""), prov.get("random_weights", []), prov.get("weights", {})
    if not isinstance(lab, str) or not lab.strip() or len(lab) > 400:
        raise LeaderboardError(f"{meta}: provenance.label must be a non-empty text of at most 400 characters")
    if not isinstance(rid, str) or not re.fullmatch(r"[0-9a-f]{0,16}", rid):
        raise LeaderboardError(f"{meta}: provenance.run_id must be a short hexadecimal id, got {str(rid)[:40]!r}")
    if not isinstance(rnd, list) or not all(isinstance(x, str) for x in rnd):
        raise LeaderboardError(f"{meta}: provenance.random_weights must be a list of names")
    if not isinstance(w, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in w.items()):
        raise LeaderboardError(f"{meta}: provenance.weights must map setting names to weight names")
    return {**prov, "label": lab, "run_id": rid, "random_weights": rnd, "weights": w}


def read_record(run_dir: Path) -> dict:
    """``run.json`` of a run folder as a dict ({} when absent); a one-line error when malformed."""
    meta = Path(run_dir) / "run.json"
    if not meta.is_file():
        return {}
    try:
        record = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LeaderboardError(f"{meta}: malformed JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(record, dict):
        raise LeaderboardError(f"{meta}: expected a JSON object, got {type(record).__name__}")
    return record


def read_results_csv(run_dir: Path) -> pd.DataFrame:
    """A run folder's ``results.csv`` as text-typed identity columns; one-line errors."""
    res = Path(run_dir) / "results.csv"
    if not res.is_file():
        raise LeaderboardError(f"{res}: missing; is {run_dir} a folder written by benchmarks.run?")
    try:
        return pd.read_csv(res, dtype={"category": str, "readout": str, "tta": str, "precision": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise LeaderboardError(f"{res}: not a results CSV ({type(exc).__name__}: {str(exc)[:80]})") from None


def read_run(run_dir: str | Path, label: str | None = None) -> pd.DataFrame:
    """Measured rows of one run folder (``kind = measured``); ``label`` replaces the display name
    (random weights stay said)."""
    run_dir = Path(run_dir)
    res = run_dir / "results.csv"
    df = read_results_csv(run_dir)
    need = {"matcher", "dataset", "split", "protocol", "threshold", "frame", "aggregate", "readout", "category", "alpha", "pck"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise LeaderboardError(f"{res}: missing column(s) {missing}")
    extras = _extras(df)
    df = plain_pck(df)
    _validate(df, str(res))
    for frame, key in extras:
        df = df.merge(frame, how="left", on=key)
    for name in set(df["dataset"].astype(str)):
        safe_name(name, f"{res}: column 'dataset'")
    check_unique(df, ["dataset", "split", "protocol", "frame", "threshold", "aggregate", "readout", "direction", "tta", "precision",
                      "category", "alpha"], str(res))
    record = read_record(run_dir) or {"matcher": str(df["matcher"].iloc[0]) if len(df) else "?"}
    prov = _provenance(record, run_dir / "run.json")
    randoms = list(prov["random_weights"])
    keep = prov.get("marks") if isinstance(prov.get("marks"), list) else (
        [f"random weights: {', '.join(randoms)}"] if randoms else [])
    keep = [clean_text(m) for m in keep if isinstance(m, str)]
    name = (bounded(label) + (f" ({'; '.join(keep)})" if keep else "")) if label else clean_text(prov["label"])
    df = df.rename(columns={"matcher": "method"})
    df["method"] = name
    df["weights"] = "; ".join(f"{k}={v}" for k, v in sorted(prov["weights"].items())) or "none"
    df["random_weights"] = bool(randoms)
    if "subset" not in df.columns:  # results written before coverage was recorded
        df["subset"] = "unknown"
    partial = df["subset"].astype(str) != "all"
    df["partial"] = partial
    # a partial run can never pass for a full one: its name carries what it covers
    if partial.any():
        total = ["?" if pd.isna(v) else str(int(v)) for v in df.loc[partial, "split_pairs"]]
        df.loc[partial, "method"] = [f"{m} [coverage not recorded]" if sub == "unknown" else f"{m} [partial: {sub} of {t} pairs]"
                                     for m, sub, t in zip(df.loc[partial, "method"].astype(str),
                                                          df.loc[partial, "subset"].map(clean_text), total)]
    df["precision"] = df["precision"].fillna("unknown").astype(str) if "precision" in df.columns else "unknown"
    df["tta"] = df["tta"].fillna("none").astype(str) if "tta" in df.columns else "none"
    df["kind"] = "measured"
    df["run"] = prov["run_id"] or str(record.get("config_hash", ""))[:7] or clean_text(run_dir.name)
    df["source"] = clean_text(run_dir)
    df["note"] = ""
    df["own_readout"] = own_readout(record, sorted(set(df["readout"].astype(str))))
    df["pairs_key"] = pair_set(run_dir)
    return df


def own_readout(record: dict, present: list[str]) -> str:
    """The run's own readout: its matcher's declared default (``provenance.default_readout``), else the
    first readout the run computed that is present, else the only one present ('' when undecidable)."""
    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    listed = record.get("readouts") if isinstance(record.get("readouts"), list) else []
    for name in [prov.get("default_readout"), *listed]:
        if isinstance(name, str) and clean_text(name) in present:
            return clean_text(name)
    return present[0] if len(present) == 1 else ""


#: pair sets of the runs read (pairs key -> frozenset of pair ids), for the shared-pairs counts
PAIR_SETS: dict[str, frozenset] = {}


def pair_set(run_dir: Path) -> str:
    """A short key of the set of pairs the run evaluated (from ``per_pair.parquet``); '' when the run
    has no per-pair table (older runs): its pair set is unknown."""
    import hashlib

    path = Path(run_dir) / "per_pair.parquet"
    if not path.is_file():
        return ""
    try:
        import pyarrow.parquet as pq

        ids = pq.read_table(path, columns=["pair_id"]).column("pair_id").to_pylist()
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise LeaderboardError(f"{path}: unreadable ({type(exc).__name__})") from None
    if not all(isinstance(i, str) for i in ids):
        raise LeaderboardError(f"{path}: column 'pair_id' must hold text")
    pairs = frozenset(ids)
    key = hashlib.sha256("\n".join(sorted(pairs)).encode()).hexdigest()[:12]
    PAIR_SETS[key] = pairs
    return key


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``--label RUN=NAME`` values -> {RUN: NAME}; RUN is a run folder (as given, or its name)."""
    out = {}
    for item in items or []:
        run, sep, name = str(item).partition("=")
        if not sep or not run.strip() or not clean_text(name):
            raise LeaderboardError(f"--label takes RUN=NAME (a run folder, then the name to show), got {item!r}")
        out[run.strip().rstrip("/")] = bounded(name)
    return out


def _label_for(d: Path, labels: dict[str, str]) -> str | None:
    for key in (str(d).rstrip("/"), d.name, str(d.resolve())):
        if key in labels:
            return labels.pop(key)
    return None
