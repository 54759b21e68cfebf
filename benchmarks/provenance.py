"""What made a result: the weights, the settings that differ from the method's defaults, a short
run id, and a display label built from them (no heavy imports: the leaderboard uses it too).

``benchmarks.run`` writes :func:`provenance` into ``run.json``; the leaderboard shows it in every
output (console, CSV, Markdown, LaTeX, HTML, plot legends) and falls back to :func:`from_config`
for runs written before it existed.
"""

from __future__ import annotations

import dataclasses

#: settings naming weights (a hub id, a folder, a file, or a random-weight preset)
WEIGHT_FIELDS = ("model_id", "dino_id", "checkpoint", "captioner_ckpt", "clip_id", "head")
#: weight names that mean seeded random weights, not trained ones
RANDOM_WEIGHTS = ("tiny", "random", "random-sd21", "random-sd15", "random-base", "random-small", "random-large", "random-giant")
#: settings that do not change the numbers, or are shown in their own columns (readout, precision, tta)
NOT_SETTINGS = {"device", "batch_size", "cache_dir", "readout", "dtype", "flip", "mnn", "sync", "compile",
                "channels_last", "attention"}


def _short(value) -> str:
    text = str(value)
    if "/" in text and not text.startswith(("http", "hf:")) and len(text) > 40:
        text = ".../" + "/".join(text.rstrip("/").split("/")[-2:])
    return text


def weight_name(value) -> str:
    """How a weight is named in every output: a random preset by its name; a local file or folder by
    its name and the first 7 hex digits of its content's sha256 (``sd15-stack@1a2b3c4``: two folders
    with the same name but other weights read differently); a hub id as it is."""
    from pathlib import Path

    text = str(value)
    if text in RANDOM_WEIGHTS or not text:
        return text
    try:
        path = Path(text).expanduser()
        if path.is_file():
            from .fingerprint import _load_memo, file_digest

            return f"{path.name}@{file_digest(path, _load_memo())[:7]}"
        if path.is_dir():
            from .fingerprint import folder_fingerprint

            return f"{path.resolve().name}@{folder_fingerprint(path)[:7]}"
    except OSError:
        pass  # unreadable: named as given (loading it fails with its own message)
    return _short(text)


def is_local(value) -> bool:
    return "@" in str(value) and str(value).rsplit("@", 1)[1].isalnum() and len(str(value).rsplit("@", 1)[1]) == 7


def weights_of(config: dict) -> dict[str, str]:
    """The weight settings a run used (empty and unused ones left out)."""
    out = {}
    for k in WEIGHT_FIELDS:
        v = config.get(k)
        if v in (None, "") or (k in ("clip_id", "captioner_ckpt") and config.get("captioner", "none") != "odise"):
            continue
        out[k] = str(v)
    return out


def random_weights(config: dict) -> list[str]:
    """The random-weight presets among a run's weights (``[]``: trained weights only)."""
    w = weights_of(config)
    names = sorted({v for v in w.values() if v in RANDOM_WEIGHTS})
    if "checkpoint" in config and not config.get("checkpoint") and names:
        names.append("untrained prompt")
    return names


def changed_settings(config: dict, defaults: dict, preset: dict | None = None) -> dict[str, object]:
    """Settings whose value differs from the method's default, after the named preset's values (weight
    ids included: a model, DINO, checkpoint or head other than the method's default is a change)."""
    base = {**defaults, **(preset or {})}
    out = {}
    for k, v in config.items():
        if k in NOT_SETTINGS or k not in base:
            continue
        if k in WEIGHT_FIELDS and v in (None, "") and base.get(k) in (None, ""):
            continue
        d = base[k]
        same = str(v) == str(d) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and isinstance(d, (int, float)) and float(v) == float(d))
        if not same:
            out[k] = v
    return out


def label(method: str, preset: str | None, changed: dict, randoms: list[str], run_id: str = "") -> str:
    """``dift (t=101; model_id=sd21@1a2b3c4; random weights: tiny)`` (the run id is shown apart)."""
    parts = [f"{k}={_short(v)}" for k, v in sorted(changed.items()) if k not in WEIGHT_FIELDS]
    parts += [f"{k}={_short(v)}" for k, v in sorted(changed.items()) if k in WEIGHT_FIELDS and v not in RANDOM_WEIGHTS]
    if preset:
        parts.insert(0, f"preset {preset}")
    if randoms:
        parts.append("random weights: " + ", ".join(randoms))
    return method + (f" ({'; '.join(parts)})" if parts else "")


def marks(weights: dict[str, str], randoms: list[str]) -> list[str]:
    """What a display name can never lose (``--label`` included): random weights, local weights with
    their content hash, the prompt or head checkpoint."""
    out = [f"{k}={v}" for k, v in sorted(weights.items())
           if v not in RANDOM_WEIGHTS and (is_local(v) or k in ("checkpoint", "head", "captioner_ckpt"))]
    if randoms:
        out.append("random weights: " + ", ".join(randoms))
    return out


def provenance(name: str, cls, preset: str | None, config, config_hash: str) -> dict:
    """The provenance block of ``run.json`` for a matcher class ``cls`` and its resolved ``config``."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    try:
        defaults = dataclasses.asdict(cls.Config())
    except Exception:  # a plugin Config with required fields: no defaults to compare with
        defaults = {}
    presets = getattr(cls, "presets", {}) or {}
    changed = changed_settings(cfg, defaults, presets.get(preset) if preset else None)
    randoms = random_weights(cfg)
    weights = {k: weight_name(v) for k, v in weights_of(cfg).items()}
    changed = {k: (weights.get(k, weight_name(v)) if k in WEIGHT_FIELDS else v) for k, v in changed.items()}
    return {"method": name, "preset": preset, "weights": weights,
            "random_weights": randoms, "changed": {k: (v if isinstance(v, (int, float, bool)) else str(v))
                                                   for k, v in changed.items()},
            "marks": marks(weights, randoms),
            "run_id": config_hash[:7], "label": label(name, preset, changed, randoms),
            "default_readout": str(defaults.get("readout", "")).split(",")[0].strip() or None}


def from_config(record: dict) -> dict:
    """A provenance block for a ``run.json`` written before provenance was recorded: the weights from
    its config; the changed settings are unknown."""
    cfg = record.get("config") or {}
    name = str(record.get("matcher", "?"))
    randoms = random_weights(cfg) if isinstance(cfg, dict) else []
    preset = record.get("preset")
    return {"method": name, "preset": preset, "weights": weights_of(cfg) if isinstance(cfg, dict) else {},
            "random_weights": randoms, "changed": None, "run_id": str(record.get("config_hash", ""))[:7],
            "label": label(name, preset, {}, randoms) + " (settings not recorded)"}
