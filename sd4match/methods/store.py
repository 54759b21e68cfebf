"""Per-image tensors computed once (VAE posteriors, DINOv2 tokens, SD layers): kept in memory and,
with a cache folder, on disk, keyed by the settings that change them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from benchmarks.dense import ImageInfo


class ImageStore:
    """Per-image tensors computed once: kept in memory and, with a cache folder, on disk under
    ``cache_dir/<kind>/<hash of the settings that change them>/<image key>.pt``."""

    def __init__(self, cache_dir: str, kind: str, settings: list, device, limit: int | None = None,
                 one_at_a_time: bool = False):
        blob = json.dumps(settings)
        self.dir = Path(cache_dir) / kind / hashlib.sha256(blob.encode()).hexdigest()[:12] if cache_dir else None
        self.device = device
        self.limit = limit
        #: compute missing values one image per call (batch-invariant results; see DenseConfig)
        self.one_at_a_time = one_at_a_time
        self.mem: dict[str, object] = {}

    def get(self, infos: list[ImageInfo], compute) -> list:
        """Values for ``infos``; ``compute(positions)`` returns the values of the positions missing."""
        from benchmarks import cachefile

        missing, seen = [], set()
        for i, info in enumerate(infos):
            if info.key in self.mem or info.key in seen:
                continue
            if self.dir is not None:
                value = cachefile.load(self.dir / f"{info.key[:32]}.pt", self.device)  # damaged: recomputed
                if value is not None:
                    self.mem[info.key] = value
                    continue
            seen.add(info.key)
            missing.append(i)
        if missing:
            values = [v for i in missing for v in compute([i])] if self.one_at_a_time else compute(missing)
            for i, value in zip(missing, values):
                self.mem[infos[i].key] = value
                if self.dir is not None and not cachefile.save(self.dir / f"{infos[i].key[:32]}.pt", value):
                    self.dir = None  # read-only or full: memory only from here on
        values = [self.mem[i.key] for i in infos]
        if self.limit is not None and len(self.mem) > 2 * self.limit:
            for k in list(self.mem)[: len(self.mem) - self.limit]:
                del self.mem[k]
        return values

    def clear(self) -> None:
        self.mem.clear()
