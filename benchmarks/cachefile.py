"""Cached tensors on disk, each stored with a checksum of its values.

A cache file is ``torch.save({"value": tensor or tuple of tensors, "sha256": digest})``, written
atomically and read with ``weights_only=True``. A file that cannot be read, or whose values do not
match their checksum (a bit flip, a truncated copy), is reported with a warning and treated as
missing, so it is recomputed. A cache folder that cannot be written (read-only, full) turns the
disk cache off for the rest of the run, with one warning.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch


def digest(value) -> str:
    h = hashlib.sha256()
    for t in value if isinstance(value, (tuple, list)) else (value,):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


def save(path: Path, value) -> bool:
    """Write ``value`` with its checksum; False (and a warning) when the folder cannot be written."""
    from loaders.atomic import atomic_path

    on_cpu = tuple(v.detach().to("cpu").clone() for v in value) if isinstance(value, tuple) else value.detach().to("cpu").clone()
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({"value": on_cpu, "sha256": digest(on_cpu)}, tmp)
    except OSError as exc:
        warnings.warn(f"{path.parent}: cannot write to the cache ({exc.strerror or exc}); continuing without a disk cache",
                      stacklevel=2)
        return False
    return True


def load(path: Path, device=None):
    """The value stored at ``path``, or None when it is absent, unreadable or fails its checksum."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        value, want = obj["value"], obj["sha256"]
        ok = digest(value) == want
    except Exception as exc:  # any damage: recompute
        warnings.warn(f"{path}: damaged cache file ({type(exc).__name__}); recomputing", stacklevel=2)
        return None
    if not ok:
        warnings.warn(f"{path}: cache file fails its checksum; recomputing", stacklevel=2)
        return None
    if device is not None:
        value = tuple(v.to(device) for v in value) if isinstance(value, tuple) else value.to(device)
    return value
