"""``verify``: every referenced file exists and parses, pair counts match the official ones, and
files with known checksums match them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from . import cub, pfpascal, pfwillow, spair
from ._common import image_size
from .api import SPLITS_OF, check_names, load_uncached
from .checksums import known_checksums  # noqa: F401 - part of this module's interface
from .errors import DatasetError

OFFICIAL_COUNTS = {
    "spair-71k": spair.OFFICIAL_COUNTS["large"],
    "pf-pascal": pfpascal.OFFICIAL_COUNTS,
    "pf-willow": pfwillow.OFFICIAL_COUNTS,
}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_base(dataset: str, root: Path) -> Path:
    if dataset == "pf-willow":
        return pfwillow.base_dir(root)[0]
    if dataset == "cub-200-2011":
        return cub.base_dir(root)[0]
    return root


def verify(dataset: str, root: str | os.PathLike, layout: str | None = None, images: bool = True) -> list[Check]:
    """Run every check on ``root``; returns one :class:`Check` per check (never raises for data)."""
    check_names(dataset, SPLITS_OF.get(dataset, ("test",))[0], layout)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    checks: list[Check] = []
    counts = spair.OFFICIAL_COUNTS[layout or "large"] if dataset == "spair-71k" else OFFICIAL_COUNTS.get(dataset, {})
    for split in SPLITS_OF[dataset]:
        try:
            table = load_uncached(dataset, root, split, layout)
        except DatasetError as exc:
            checks.append(Check(f"{split} parses", False, str(exc)))
            continue
        checks.append(Check(f"{split} parses", True, f"{table.num_rows} pairs"))
        want = counts.get(split)
        if want is None:  # SPair-U, AP-10K, CUB-200-2011: no official pair count is known here
            checks.append(Check(f"{split} pair count", True, f"{table.num_rows} (no official count recorded: UNCONFIRMED)"))
        else:
            checks.append(Check(f"{split} pair count", table.num_rows == want, f"{table.num_rows} (official {want})"))
        if images:
            rels = sorted(set(table.column("src_image").to_pylist()) | set(table.column("trg_image").to_pylist()))
            bad = []
            for rel in rels:
                try:
                    image_size(root / rel)
                except DatasetError as exc:
                    bad.append(str(exc))
            detail = f"{len(rels)} images readable" if not bad else f"{len(bad)} of {len(rels)} bad, first: {bad[0]}"
            checks.append(Check(f"{split} images", not bad, detail))
    sums = known_checksums(dataset)
    if sums:
        base = _checksum_base(dataset, root)
        present = {rel: d for rel, d in sums.items() if (base / rel).is_file()}
        wrong = [rel for rel, d in present.items() if sha256(base / rel) != d]
        detail = f"{len(present) - len(wrong)} of {len(present)} present files match"
        if len(present) < len(sums):
            detail += f" ({len(sums) - len(present)} known files absent)"
        if wrong:
            detail += f"; mismatch: {', '.join(wrong[:3])}"
        checks.append(Check("sha256", not wrong and bool(present), detail))
    return checks
