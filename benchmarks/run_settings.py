"""A run's settings from the command line: flags and ``--set`` to matcher settings, ``--tta``,
``--checkpoint`` bringing its model ids, ``--list-matchers`` and ``--show-config``."""

from __future__ import annotations

import dataclasses

from .matchers.base import parse_settings

#: CLI flags that map onto matcher settings of the same name (when the matcher has them)
SETTING_FLAGS = ("model_id", "device", "dtype", "batch_size", "seed", "cache_dir", "readout", "checkpoint")


class RunError(Exception):
    """A run cannot proceed; printed as one line."""


def list_matchers() -> str:
    """Each matcher with its description and its presets (with what each sets)."""
    from . import registry

    table = registry.entries()
    width = max(len(n) for n in table)
    lines = []
    for n in table:
        lines.append(f"{n:<{width}}  {registry.describe(n)}")
        try:
            presets = getattr(registry.load_class(n), "presets", {}) or {}
        except Exception:  # a broken plugin must not break the listing
            presets = {}
        for name, values in sorted(presets.items()):
            sets = ", ".join(f"{k}={v}" for k, v in values.items())
            lines.append(f"{'':<{width}}    --preset {name}: {sets}")
    return "\n".join(lines)


def show_config(args) -> str:
    """The resolved settings of ``--matcher`` (after ``--preset``, flags and ``--set``) and what differs
    from its defaults; nothing is loaded."""
    from . import registry
    from .provenance import provenance

    if not args.matcher:
        raise RunError("--show-config needs --matcher")
    cls = registry.load_class(args.matcher)
    overrides = _with_checkpoint_model(args, _overrides(args), cls)
    matcher = cls.from_settings(args.preset, **overrides)
    cfg = dataclasses.asdict(matcher.config)
    prov = provenance(args.matcher, cls, args.preset, matcher.config, "0" * 12)
    width = max(len(k) for k in cfg) if cfg else 0
    lines = [f"{args.matcher}: {prov['label']}"] + [f"  {k:<{width}}  {v}" + ("   (changed)" if k in prov["changed"] else "")
                                                    for k, v in sorted(cfg.items())]
    return "\n".join(lines)


def _with_checkpoint_model(args, overrides: dict, cls) -> dict:
    """``--checkpoint`` (a training folder or prompt file) carries the settings its prompt was trained
    with that decide the features (model and DINO ids, position rule, image size, layer, and the tiny
    preset), each said in one line. A user setting that contradicts one is refused before any model
    loads; other model ids (a local copy or a mirror of the same weights) are allowed, said, and
    recorded as changes."""
    setting = getattr(cls, "checkpoint_setting", "checkpoint")
    ckpt = overrides.get(setting)
    fields = getattr(cls.Config, "__dataclass_fields__", {})
    if not ckpt or setting not in fields:
        return overrides
    from .console import say

    flag = "--checkpoint" if setting == "checkpoint" else f"{setting}="

    trained = cls.settings_from_checkpoint(ckpt)  # the matcher knows its checkpoint format
    preset = trained.get("preset")
    if preset and args.preset is not None and args.preset != preset:
        raise RunError(f"--preset {args.preset} contradicts {flag} {ckpt}, trained with preset {preset}; "
                       f"drop --preset or pass --preset {preset}")
    carried = {k: v for k, v in trained.items() if k != "preset" and k in fields}
    out = dict(overrides)
    for key, value in carried.items():  # every refusal before any line is said
        if key in out and str(out[key]) != str(value) and key not in ("model_id", "dino_id"):
            raise RunError(f"{key}={out[key]} contradicts {flag} {ckpt}, trained with {key}={value}; "
                           f"drop the setting (the checkpoint brings it)")
    if preset and args.preset is None:
        args.preset = preset
        say(f"{flag} {ckpt}: using preset {preset}, the one it was trained with")
    for key, value in carried.items():
        if key not in out:
            out[key] = value
            say(f"{flag} {ckpt}: using {key} {value!r}, the one it was trained with")
        elif str(out[key]) != str(value):
            say(f"{flag} {ckpt}: trained with {key} {value!r}; evaluating with {out[key]!r} as you asked "
                "(recorded)")
    return out


#: ``--tta`` words -> the matcher settings they stand for
TTA = {"flip": ("flip", "adaptive-mnn"), "mnn": ("mnn", "true")}


def _overrides(args) -> dict:
    out = parse_settings({flag: getattr(args, flag) for flag in SETTING_FLAGS}, args.set)
    if args.tta is not None:
        words = [w.strip() for w in str(args.tta).split(",") if w.strip()]
        bad = [w for w in words if w not in (*TTA, "none")]
        if bad or not words or ("none" in words and len(words) > 1):
            raise RunError(f"--tta must be 'none' or a comma-separated subset of {', '.join(TTA)}, got {args.tta!r}")
        for w in words:
            if w in TTA:
                key, value = TTA[w]
                out[key] = value
    return out
