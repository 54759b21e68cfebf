"""The matcher interface.

A matcher turns a batch of pairs into predicted target keypoints (original target pixels), one
array per readout. Its settings are a frozen dataclass (``Config``) whose defaults are the
method's published values; presets are named overrides; unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class ConfigError(ValueError):
    """A matcher setting is unknown or has a bad value."""


class MatcherError(RuntimeError):
    """A matcher cannot run (model unreachable, device missing, image unreadable ...): one line."""


@dataclass(frozen=True)
class MatcherConfig:
    """Settings every matcher has."""

    seed: int = 0
    batch_size: int = 1

    def __post_init__(self):
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in 0..2^63-1, got {self.seed!r}")


def config_from(cls: type, overrides: dict[str, Any], owner: str) -> Any:
    """Instantiate dataclass ``cls`` with ``overrides``; unknown keys and bad types are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise ConfigError(f"{owner} has no setting {unknown[0]!r}; valid: {', '.join(sorted(fields))}")
    values = {}
    for k, v in overrides.items():
        default = fields[k].default
        if default is dataclasses.MISSING and fields[k].default_factory is not dataclasses.MISSING:
            default = fields[k].default_factory()
        if default is not None and default is not dataclasses.MISSING and not isinstance(default, str):
            v = _coerce(v, default, k, owner)
        values[k] = tuple(v) if isinstance(v, list) else v
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}: {exc}") from None


def _coerce(v: Any, default: Any, key: str, owner: str) -> Any:
    """``v`` (a command-line string or a value) as the type of ``default``, strictly: no bool for a
    number, no fraction for an integer, no NaN or infinity."""
    import math

    raw = v
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            raise ConfigError(f"{owner}: setting {key!r} expects {type(default).__name__}, got {raw!r}") from None
    kind = type(default)
    if isinstance(default, bool):
        ok = isinstance(v, bool)
    elif isinstance(default, int):
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif isinstance(default, float):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        v = float(v) if ok else v
    elif isinstance(default, (tuple, list)):
        ok = isinstance(v, (list, tuple))
        v = tuple(v) if ok else v
    else:
        ok = isinstance(v, kind)
    if not ok:
        raise ConfigError(f"{owner}: setting {key!r} expects a finite {kind.__name__}, got {raw!r}")
    return v


def parse_settings(flags: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Settings from command-line flags (``None`` = not given) plus ``--set KEY=VALUE`` items."""
    out = {k: v for k, v in flags.items() if v is not None}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def config_hash(name: str, config: Any) -> str:
    """Short stable hash of a matcher name and its resolved config (a dataclass or a dict)."""
    cfg = config if isinstance(config, dict) else dataclasses.asdict(config)
    blob = json.dumps({"matcher": name, "config": cfg}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Pair:
    """One pair handed to a matcher: the dataset row plus lazy image access.

    ``row`` holds the schema columns (:mod:`loaders.schema`); keypoints are ``(n, 2)`` float64
    arrays in original pixels.
    """

    row: dict
    root: Path

    @property
    def pair_id(self) -> str:
        return self.row["pair_id"]

    @property
    def src_kps(self) -> np.ndarray:
        return np.asarray(self.row["src_kps"], dtype=np.float64).reshape(-1, 2)

    @property
    def trg_size(self) -> tuple[int, int]:
        return self.row["trg_width"], self.row["trg_height"]

    @property
    def src_size(self) -> tuple[int, int]:
        return self.row["src_width"], self.row["src_height"]

    def image_path(self, side: str) -> Path:
        return self.root / self.row[f"{side}_image"]


class Matcher:
    """Base class. Subclasses set ``name``, ``description``, ``Config``, ``readouts`` and ``predict``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = MatcherConfig
    #: named overrides of ``Config``
    presets: ClassVar[dict[str, dict]] = {}
    needs_images: ClassVar[bool] = False

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def from_settings(cls, preset: str | None = None, **overrides) -> Matcher:
        base: dict = {}
        if preset is not None:
            if preset not in cls.presets:
                valid = ", ".join(sorted(cls.presets)) or "none"
                raise ConfigError(f"matcher {cls.name!r} has no preset {preset!r}; valid: {valid}")
            base = dict(cls.presets[preset])
        base.update(overrides)
        return cls(config_from(cls.Config, base, f"matcher {cls.name!r}"))

    @property
    def readouts(self) -> tuple[str, ...]:
        return ("default",)

    def predict(self, pairs: Sequence[Pair]) -> dict[str, list[np.ndarray]]:
        """Readout name -> one ``(n_i, 2)`` array of target (x, y) pixels per pair."""
        raise NotImplementedError

    def prefetch(self, pairs: Sequence[Pair]):
        """Read what ``pairs`` need from disk (called from a background thread); default nothing."""
        return None

    def predict_prefetched(self, pairs: Sequence[Pair], data) -> dict[str, list[np.ndarray]]:
        """:meth:`predict` with the result of :meth:`prefetch` for the same pairs."""
        return self.predict(pairs)

    def submit(self, pairs: Sequence[Pair], data=None):
        """Start predicting ``pairs`` and return ``finish()``, which returns what :meth:`predict`
        returns (a dense matcher may add per-pair KAP records under
        :data:`benchmarks.predictions.KAP_KEY`, which the run writes into its predictions file). Runners submit the next batch before finishing this one, so a matcher that queues
        work on an accelerator (the dense base does) keeps it busy; the default predicts at once."""
        preds = self.predict_prefetched(pairs, data)
        return lambda: preds

    @classmethod
    def settings_from_checkpoint(cls, path: str) -> dict[str, str]:
        """Settings a checkpoint file brings with it (e.g. the model id it was trained with); ``--checkpoint``
        applies them unless the command line sets them. Default: none."""
        return {}

    def preflight(self, dataset: str, categories: list[str]) -> None:
        """Refuse, before any model loads, what the settings already rule out for this dataset and
        these categories (a one-line MatcherError). Default: nothing to check."""
        return None

    def describe(self) -> dict:
        """Extra facts for run.json (device, dtype, model id ...)."""
        return {}

    def close(self) -> None:
        """Release resources (models, caches)."""
