"""SPair-U reader: new keypoints annotated on SPair-71k test pairs (Mariotti et al., "Jamais Vu",
NeurIPS 2025). UNCONFIRMED: written from the documented format (``../shared/docs/
datasets-and-protocols.md``); its files were not available here, so it has run only on fixtures.

SPair-U ships pair (and image) annotations only; images and ``Layout/`` are SPair-71k's. The
root is therefore the SPair-71k folder with the SPair-U annotations placed inside it, in one of
two layouts (``layout``):

- ``marco`` (default): ``ROOT/SPair-U/PairAnnotation/test/<SPair pair name>.json``, the layout the
  official zip unpacks to (``datasets/SPair-U/...``), moved into the SPair-71k root;
- ``jamaisvu``: ``ROOT/ExtraPairAnnotation/test/<pair name>.json``, where JamaisVu's own loader reads it.

Pairs: the lines of SPair-71k's ``Layout/large/test.txt`` that have an SPair-U annotation, in that
order (SPair-U may cover a subset of the 12,234 pairs). Each pair file has SPair-71k's schema;
``kps_ids`` is taken when present, else the keypoints are numbered 0.. in file order (how SPair-U
numbers its new keypoints is UNCONFIRMED). Split: test only.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import spair

LAYOUTS = {"marco": "SPair-U/PairAnnotation", "jamaisvu": "ExtraPairAnnotation"}


def _folder(layout: str) -> str:
    from .errors import DatasetError

    if layout not in LAYOUTS:
        raise DatasetError(f"unknown SPair-U layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


def load(root: str | os.PathLike, split: str, layout: str = "marco"):
    return spair.load(root, split, "large", folder=_folder(layout), dataset="spair-u", subset_of_layout=True,
                      ids_optional=True, image_annotations=False)


def source_files(root: str | os.PathLike, split: str, layout: str = "marco") -> list[Path]:
    root = Path(root)
    names = spair.read_layout(root, split, "large")
    paths = spair.annotation_files(root, split, names, _folder(layout))
    return [spair.layout_file(root, split, "large"), *[p for p in paths if os.path.isfile(p)]]
