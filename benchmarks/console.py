"""What a run prints: messages that do not break the progress bar, library bars silenced with
``--quiet``, and the compact summary after a run (the dataset's main protocol, one row per readout,
``PCK ± half-width`` at that protocol's alphas only, banners for partial runs and random weights)."""

from __future__ import annotations

import os
import sys

import pandas as pd

from .protocol import is_strict


def say(message: str) -> None:
    """One line on stderr, written above an active progress bar instead of through it."""
    try:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(message, file=sys.stderr, flush=True)


def emit(text: str) -> int:
    """Print ``text`` to standard output and flush it: 0, or, when the output cannot take it (a closed
    pipe such as ``| head -1``: 0, quietly; a full disk or ``/dev/full``: 2 with one line on standard
    error), never a traceback, at exit included."""
    import os
    import sys

    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return 0
    except OSError as exc:
        try:  # nothing more goes to the broken stream, at exit neither
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        if isinstance(exc, BrokenPipeError):
            return 0
        print(f"error: cannot write to standard output ({exc.strerror or exc})", file=sys.stderr)
        return 2


def quiet_libraries() -> None:
    """No progress bars from Hugging Face libraries (weights loading, downloads)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)
        if module is not None:
            try:
                __import__(f"{name}.utils.logging", fromlist=["disable_progress_bar"]).disable_progress_bar()
            except (ImportError, AttributeError):  # pragma: no cover - older releases
                pass
    if "huggingface_hub" in sys.modules:
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        except ImportError:  # pragma: no cover
            pass


def _main_protocol(results: pd.DataFrame, dataset: str) -> tuple[str, str, str, str] | None:
    """(preset, frame, threshold, aggregate) of the dataset's main protocol among the results."""
    have = set(zip(results["protocol"], results["frame"], results["threshold"], results["aggregate"]))
    try:
        from .protocol import protocols_for

        for p in protocols_for(dataset):
            if (p.name, p.frame, p.threshold, p.aggregate) in have:
                return p.name, p.frame, p.threshold, p.aggregate
    except ValueError:
        pass
    return sorted(have)[0] if have else None


def _beside(every: pd.DataFrame, key, own: str | None, alphas: list[float]) -> str:
    """One line: PCK-dagger and the geometry-aware subsets under the main protocol, own readout."""
    if "metric" not in every.columns or not alphas:
        return ""
    name, frame, threshold, aggregate = key
    r = every[(every["protocol"] == name) & (every["frame"] == frame) & (every["threshold"] == threshold)
              & (every["aggregate"] == aggregate) & (every["category"] == "all")]
    readout = own if own in set(r["readout"]) else (sorted(set(r["readout"]))[0] if len(r) else None)
    a = 0.1 if any(abs(x - 0.1) < 1e-9 for x in alphas) else max(alphas)
    r = r[(r["readout"] == readout) & ((r["alpha"] - a).abs() < 1e-9)]
    plain = r[(r["metric"] == "pck") & (r["keypoints"] == "all")]
    parts = []
    for (metric, kps), g in r.groupby(["metric", "keypoints"], sort=False):
        if (metric, kps) == ("pck", "all"):
            continue
        v = 100 * float(g["pck"].iloc[0])
        if kps == "all":
            parts.append(f"{metric} {v:.1f}")
        else:
            total = int(plain["n_kps"].iloc[0]) if len(plain) else 0
            parts.append(f"{kps} {v:.1f} on {int(g['n_kps'].iloc[0]):,} of {total:,} keypoints")
    line = f"beside it at PCK@{a:g} ({readout}): " + "; ".join(parts) if parts else ""
    kap = every[(every["metric"] == "kap") & (every["category"] == "all") & ((every["alpha"] - a).abs() < 1e-9)
                & (every["aggregate"] == aggregate)]
    if len(kap):  # KAP is measured in the matcher's own frame: shown under the first protocol that keeps distances
        k = kap.sort_values("protocol", key=lambda c: c.map(lambda v: (v != "geoaware", v))).iloc[0]
        line += ("\n" if line else "") + (f"KAP@{a:g} (similarity maps, protocol {k['protocol']}, per {aggregate}): "
                                          f"{100 * float(k['pck']):.1f}")
    if not any(abs(x - 0.01) < 1e-9 for x in alphas):  # PCK@0.01 from a protocol that computes it
        fine = every[(every["category"] == "all") & ((every["alpha"] - 0.01).abs() < 1e-9) & (every["readout"] == readout)
                     & (every["aggregate"] == aggregate) & (every["metric"] == "pck") & (every["keypoints"] == "all")]
        if len(fine):
            f = fine.iloc[0]
            line += ("\n" if line else "") + (f"PCK@0.01 ({readout}, protocol {f['protocol']}, frame {f['frame']}): "
                                              f"{100 * float(f['pck']):.1f}")
    return line


def run_summary(results: pd.DataFrame, dataset: str, provenance: dict | None = None, subset: str = "all",
                split_pairs: int | None = None) -> str:
    """The text printed after a run."""
    lines = []
    prov = provenance or {}
    if subset != "all":
        lines.append(f"PARTIAL RUN: {subset} of {split_pairs if split_pairs is not None else '?'} pairs; "
                     "not comparable with numbers on the whole split")
    if prov.get("random_weights"):
        lines.append(f"RANDOM WEIGHTS ({', '.join(prov['random_weights'])}): these numbers test the pipeline, "
                     "not the method")
    every = results
    for col, value in (("metric", "pck"), ("keypoints", "all")):
        if col in results.columns:
            results = results[results[col] == value]
    key = _main_protocol(results, dataset)
    if key is None:
        return "\n".join(lines + ["(no results)"])
    name, frame, threshold, aggregate = key
    r = results[(results["protocol"] == name) & (results["frame"] == frame) & (results["threshold"] == threshold)
                & (results["aggregate"] == aggregate) & (results["category"] == "all")]
    strict = is_strict(name, dataset)
    lines.append(f"{prov.get('label', '')}{' ' if prov.get('label') else ''}[run {prov.get('run_id', '?')}] on {dataset}: "
                 f"PCK (%), protocol {name} (frame {frame}, threshold {threshold}, aggregate {aggregate}, "
                 f"{'d < alpha·T' if strict else 'd <= alpha·T'}), ± = 95% bootstrap half-width over pairs")
    alphas = sorted(set(r["alpha"]))
    rows = []
    for readout, g in r.groupby("readout", sort=True):
        own = prov.get("default_readout") == readout and r["readout"].nunique() > 1
        row = {"readout": readout + (" (own)" if own else "")}
        for a in alphas:
            x = g[(g["alpha"] - a).abs() < 1e-9]
            if len(x):
                v, lo, hi = (float(x[c].iloc[0]) for c in ("pck", "ci_low", "ci_high"))
                row[f"PCK@{a:g}"] = f"{100 * v:.1f}" + ("" if pd.isna(lo) or pd.isna(hi) else f" ± {50 * (hi - lo):.1f}")
            else:
                row[f"PCK@{a:g}"] = "–"
        rows.append(row)
    lines.append(pd.DataFrame(rows).to_string(index=False))
    if prov.get("default_readout") in set(r["readout"]) and r["readout"].nunique() > 1:
        lines.append("(own): the method's own readout, the one tables and comparisons use; the others are computed, "
                     "not chosen on the test split")
    beside = _beside(every, key, prov.get("default_readout"), alphas)
    if beside:
        lines.append(beside)
    others = sorted(set(results["protocol"]) - {name})
    if others:
        lines.append(f"other protocols ({', '.join(others)}) and categories: results.csv")
    return "\n".join(lines)
