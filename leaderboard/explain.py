"""``python -m leaderboard explain RUN_A RUN_B``: why two runs' headline numbers differ.

First every recorded difference that can move a number (matcher and its settings, weights and their
content hashes, precision, the headline readout, test-time augmentation, the headline protocol and
its alphas, coverage and the pair set, the dataset and its files' checksums), in one short table.
Then A is re-scored under B's headline protocol and readout from A's own predictions (``results.csv``
when A computed that protocol, else ``predictions.parquet`` against the dataset), and the line says
how much of the gap that closes; what remains comes from the other differences (weights, settings,
seeds, coverage). Plain PCK on all keypoints; no model runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from .runs import (
    LeaderboardError,
    clean_text,
    own_readout,
    pair_set,
    plain_pck,
    read_record,
    read_results_csv,
)

#: settings that change no number (where results go, how fast they come)
QUIET = {"batch_size", "cache_dir", "device", "compile", "batch_invariant"}


def _results(run: Path) -> pd.DataFrame:
    path = Path(run) / "results.csv"
    df = read_results_csv(Path(run))
    need = {"protocol", "frame", "threshold", "aggregate", "readout", "category", "alpha", "pck", "dataset"}
    if need - set(df.columns):
        raise LeaderboardError(f"{path}: missing column(s) {sorted(need - set(df.columns))}")
    return plain_pck(df)


def _headline(res: pd.DataFrame, record: dict) -> tuple[tuple, str]:
    from benchmarks.console import _main_protocol

    key = _main_protocol(res, str(res["dataset"].iloc[0]) if len(res) else "")
    if key is None:
        raise LeaderboardError("a run without results")
    rows = res[_match(res, key)]
    return key, own_readout(record, sorted(set(rows["readout"].astype(str))))


def _match(res: pd.DataFrame, key: tuple) -> pd.Series:
    name, frame, threshold, aggregate = key
    return ((res["protocol"] == name) & (res["frame"] == frame) & (res["threshold"] == threshold)
            & (res["aggregate"] == aggregate))


def _value(res: pd.DataFrame, key: tuple, readout: str, alpha: float) -> float | None:
    r = res[_match(res, key) & (res["readout"] == readout) & (res["category"] == "all")
            & ((res["alpha"].astype(float) - alpha).abs() < 1e-9)]
    return float(r["pck"].iloc[0]) if len(r) else None


def _dataset_digest(record: dict, root_override: Path | None) -> str:
    """sha256 over the dataset files the run's table comes from (relative paths and contents), or a
    reason it cannot be computed here."""
    import loaders

    root = root_override or (Path(record["data_root"]) if isinstance(record.get("data_root"), str) else None)
    if root is None or not root.is_dir():
        return "not readable here"
    try:
        files = loaders.api.source_files(record["dataset"], root, record["split"], record.get("layout"))
    except Exception as exc:  # a damaged copy is a difference worth saying, not a crash
        return f"unreadable ({type(exc).__name__})"
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(Path(f).resolve().relative_to(root.resolve())).encode() + b"\0")
        h.update(hashlib.sha256(Path(f).read_bytes()).digest() if Path(f).is_file() else b"missing")
    return h.hexdigest()[:12]


def _describe(key: tuple, res: pd.DataFrame) -> str:
    name, frame, threshold, aggregate = key
    strict = ""
    if "protocol" in res.columns:
        from benchmarks.protocol import is_strict

        strict = ", d < aT" if is_strict(name, str(res["dataset"].iloc[0])) else ", d <= aT"
    return f"{name} ({frame}, {threshold}, per {aggregate}{strict})"


def differences(a: Path, b: Path, ra: dict, rb: dict, res_a, res_b, head_a, head_b, data_root) -> list[tuple]:
    """(what, A, B) for every recorded difference that can move a number."""
    out = []

    def add(what, x, y):
        if x != y:
            out.append((what, clean_text(x), clean_text(y)))

    add("matcher", ra.get("matcher"), rb.get("matcher"))
    ca, cb = ra.get("config") or {}, rb.get("config") or {}
    for k in sorted(set(ca) | set(cb)):
        if k not in QUIET:
            add(f"setting {k}", ca.get(k, "n/a"), cb.get(k, "n/a"))
    wa = (ra.get("provenance") or {}).get("weights") or {}
    wb = (rb.get("provenance") or {}).get("weights") or {}
    for k in sorted(set(wa) | set(wb)):
        add(f"weights {k}", wa.get(k, "-"), wb.get(k, "-"))
    add("precision", ra.get("precision"), rb.get("precision"))
    add("readout (headline)", head_a[1], head_b[1])
    add("tta", ra.get("tta", "none"), rb.get("tta", "none"))
    add("protocol (headline)", _describe(head_a[0], res_a), _describe(head_b[0], res_b))
    alphas = lambda res, key: ", ".join(f"{x:g}" for x in sorted(set(res[_match(res, key)]["alpha"])))  # noqa: E731
    add("alphas", alphas(res_a, head_a[0]), alphas(res_b, head_b[0]))
    for k in ("dataset", "split", "layout"):
        add(k, ra.get(k), rb.get(k))
    add("coverage", f"{ra.get('subset', '?')} ({ra.get('n_pairs', '?')} of {ra.get('split_pairs', '?')} pairs)",
        f"{rb.get('subset', '?')} ({rb.get('n_pairs', '?')} of {rb.get('split_pairs', '?')} pairs)")
    pa_, pb_ = pair_set(a), pair_set(b)
    if pa_ and pb_ and pa_ != pb_:
        from .runs import PAIR_SETS

        shared = len(PAIR_SETS[pa_] & PAIR_SETS[pb_])
        out.append(("pairs", f"{len(PAIR_SETS[pa_])} pairs", f"{len(PAIR_SETS[pb_])} pairs ({shared} shared)"))
    add("dataset files (sha256)", _dataset_digest(ra, data_root), _dataset_digest(rb, data_root))
    return out


def rescore(a: Path, ra: dict, res_a: pd.DataFrame, key: tuple, readout: str, alpha: float,
            data_root: Path | None) -> tuple[float | None, str]:
    """A's PCK under ``key`` and ``readout`` from A's own predictions, and how it was obtained."""
    v = _value(res_a, key, readout, alpha)
    if v is not None:
        return v, "from A's results.csv"
    import loaders
    from benchmarks import predictions as P
    from benchmarks.evaluate import evaluate
    from benchmarks.protocol import protocols_for

    root = data_root or (Path(ra["data_root"]) if isinstance(ra.get("data_root"), str) else None)
    if root is None or not root.is_dir():
        return None, f"A computed no {key[0]} rows and its dataset ({root}) is not readable here: pass --data-root"
    try:
        table = loaders.load(ra["dataset"], root, ra["split"], layout=ra.get("layout"))
        pred = P.read(Path(a) / "predictions.parquet")
        rows, xy = P.align(pred, table, source=str(Path(a) / "predictions.parquet"))
        protos = [p for p in protocols_for(ra["dataset"], [key[0]], (alpha,))
                  if (p.frame, p.threshold, p.aggregate) == key[1:]]
    except (loaders.DatasetError, P.PredictionError, ValueError) as exc:
        return None, f"A cannot be re-scored ({str(exc).splitlines()[0][:160]})"
    if not protos or readout not in xy:
        return None, f"A's predictions hold no readout {readout!r}" if protos else f"no protocol {key[0]} here"
    res, _ = evaluate(rows, {readout: xy[readout]}, protos, {"matcher": "", "dataset": ra["dataset"],
                                                             "split": ra["split"]})
    return _value(plain_pck(res), key, readout, alpha), "from A's predictions.parquet"


def explain(run_a: Path, run_b: Path, alpha: float = 0.1, data_root: Path | None = None) -> str:
    a, b = Path(run_a), Path(run_b)
    ra, rb = read_record(a), read_record(b)
    if not ra or not rb:
        raise LeaderboardError(f"{a if not ra else b}: no run.json; explain needs what each run recorded")
    res_a, res_b = _results(a), _results(b)
    head_a, head_b = _headline(res_a, ra), _headline(res_b, rb)
    va, vb = _value(res_a, *head_a, alpha), _value(res_b, *head_b, alpha)
    if va is None or vb is None:
        raise LeaderboardError(f"{a if va is None else b}: no PCK@{alpha:g} under its headline protocol")
    diffs = differences(a, b, ra, rb, res_a, res_b, head_a, head_b, data_root)
    lines = [f"A = {clean_text(a)}, B = {clean_text(b)}"]
    if diffs:
        table = pd.DataFrame(diffs, columns=["what differs", "A", "B"])
        lines.append(table.to_string(index=False, max_colwidth=70))
    else:
        lines.append("no recorded difference")
    gap = 100 * (vb - va)
    lines.append(f"PCK@{alpha:g}: A {100 * va:.1f} ({head_a[0][0]}, {head_a[1]}), B {100 * vb:.1f} "
                 f"({head_b[0][0]}, {head_b[1]}): B - A = {gap:+.1f} points")
    same_protocol = head_a == head_b
    if same_protocol:
        lines.append("same headline protocol and readout: protocol and readout explain none of the gap")
        return "\n".join(lines)
    v, how = rescore(a, ra, res_a, head_b[0], head_b[1], alpha, data_root)
    if v is None:
        lines.append(f"protocol and readout: not measurable ({how})")
        return "\n".join(lines)
    closed = 100 * (v - va)
    what = " and ".join(x for x, d in (("protocol", head_a[0] != head_b[0]), ("readout", head_a[1] != head_b[1])) if d)
    lines.append(f"A re-scored under B's protocol and readout ({how}): {100 * v:.1f}")
    lines.append(f"{what}: {closed:+.1f} of the {gap:+.1f} points; the other differences: {gap - closed:+.1f}")
    return "\n".join(lines)
