"""The head training's feature cache: a frozen backbone's features (the head's inputs) computed once
per image, and once per mirrored image, then read from disk by every epoch and every head trained on
the same features.

Files live under ``DIR/<settings hash>-<float32|float16>/<entry>.safetensors``; the settings hash covers the matcher,
its feature settings and the weights' content fingerprints, and an entry's name is the sha256 of the
image's decoded pixels, its category (the SD prompt may name it) and the mirroring. So a renamed
image keeps its entry, an edited one gets another, and two settings never share a folder. A file
that cannot be read (cut short, tampered) counts as missing and is computed again; one that holds a
tensor of another shape than its siblings is refused. Values are stored in float32 or float16
(``cache_dtype``) and always handed out as float32.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

#: matcher settings that do not change the head's inputs (readouts, the head itself, batching)
NOT_FEATURES = ("head", "readout", "geoaware_window", "geoaware_beta", "centre", "flip", "mnn", "batch_size",
                "cache_dir", "temperature", "kernel_sigma", "window_radius")
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def settings_key(matcher) -> str:
    """The hash of everything the head's inputs depend on: the matcher, its feature settings, the
    weights' fingerprints, the device type and precision."""
    import dataclasses

    cfg = {k: v for k, v in dataclasses.asdict(matcher.config).items() if k not in NOT_FEATURES}
    blob = json.dumps({"matcher": matcher.name, "config": cfg, "weights": matcher.fingerprints(),
                       "device": str(matcher.device).split(":")[0], "dtype": str(matcher.dtype)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_name(key: str, category: str, flip: bool) -> str:
    return hashlib.sha256(f"{key}|{category}|{'flip' if flip else 'plain'}".encode()).hexdigest()[:40]


class FeatureCache:
    """``get(infos, flip, compute)`` as the matchers' ``head_inputs`` call it, plus ``load(key, ...)``
    for the training steps. ``computed`` counts backbone computations (images), ``widths`` holds the
    input groups' widths."""

    def __init__(self, root: str | Path, settings: str, dtype: str = "float32", owner=None):
        if dtype not in DTYPES:
            raise ValueError(f"cache_dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dir = Path(root) / f"{settings}-{dtype}"
        self.dtype = dtype
        self.widths: list[int] | None = None
        self.shape: tuple[int, ...] | None = None
        self.computed = 0
        #: the matcher whose backbone computes the maps (it records the groups' widths as ``_widths``)
        self.owner = owner

    def path(self, key: str, category: str, flip: bool) -> Path:
        return self.dir / f"{entry_name(key, category, flip)}.safetensors"

    def has(self, key: str, category: str, flip: bool) -> bool:
        """Whether a readable entry is there, from its header alone (no tensor is read)."""
        from safetensors import safe_open

        path = self.path(key, category, flip)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as fh:
                shape = tuple(fh.get_slice("x").get_shape())
                widths = json.loads((fh.metadata() or {}).get("widths", "null"))
        except Exception:  # cut short or not a safetensors file: computed again
            return False
        if not isinstance(widths, list) or len(shape) != 3 or sum(int(w) for w in widths) != shape[0]:
            return False
        if self.shape is not None and shape != self.shape:
            return False
        self.shape, self.widths = shape, [int(w) for w in widths]
        return True

    def _read(self, path: Path) -> torch.Tensor | None:
        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                x = fh.get_tensor("x")
                meta = fh.metadata() or {}
            widths = json.loads(meta.get("widths", "null"))
        except Exception:  # cut short or not a safetensors file: computed again
            return None
        if not isinstance(widths, list) or sum(int(w) for w in widths) != x.shape[0] or x.dim() != 3:
            return None
        if not torch.isfinite(x).all():
            return None
        if self.shape is not None and tuple(x.shape) != self.shape:
            raise ValueError(f"{path}: a cached feature map of shape {tuple(x.shape)} among maps of {self.shape} "
                             "(delete the folder to rebuild it)")
        self.shape, self.widths = tuple(x.shape), [int(w) for w in widths]
        return x.float()

    def write(self, key: str, category: str, flip: bool, x: torch.Tensor, widths: list[int]) -> None:
        from safetensors.torch import save_file

        from loaders.atomic import atomic_path

        path = self.path(key, category, flip)
        path.parent.mkdir(parents=True, exist_ok=True)
        value = x.detach().to("cpu", DTYPES[self.dtype]).contiguous()
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({"x": value}, str(tmp), metadata={"widths": json.dumps(list(widths))})
        self.shape, self.widths = tuple(value.shape), list(widths)

    def load(self, key: str, category: str, flip: bool) -> torch.Tensor:
        x = self._read(self.path(key, category, flip))
        if x is None:
            raise KeyError(f"{self.path(key, category, flip)}: missing or damaged cached features (changed while "
                           "training, or non-finite values); delete the file and run again to recompute it")
        return x

    def get(self, infos, flip: bool, compute) -> list[torch.Tensor]:
        """Cached values for ``infos`` (each ``ImageInfo``), computing the missing ones with
        ``compute(positions)`` (a matcher's backbone); each computed value is written at once."""
        out: dict[int, torch.Tensor] = {}
        missing = []
        for i, info in enumerate(infos):
            x = self._read(self.path(info.key, info.category, flip))
            if x is None:
                missing.append(i)
            else:
                out[i] = x
        for i in missing:  # one image at a time: an entry never depends on which images came with it
            x = compute([i])[0]
            self.computed += 1
            widths = list(getattr(self.owner, "_widths", None) or self.widths or [int(x.shape[0])])
            self.write(infos[i].key, infos[i].category, flip, x, widths)
            out[i] = x.detach().to("cpu", DTYPES[self.dtype]).float()
        return [out[i] for i in range(len(infos))]

    def size_bytes(self, n_entries: int) -> int:
        """The disk size of ``n_entries`` maps of the shape seen so far."""
        if self.shape is None:
            return 0
        n = 1
        for d in self.shape:
            n *= int(d)
        return n * torch.finfo(DTYPES[self.dtype]).bits // 8 * n_entries


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
