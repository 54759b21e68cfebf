"""SPair-71k reader (official layout: Layout/, PairAnnotation/, JPEGImages/).

Pairs come from ``Layout/{large,small}/{trn,val,test}.txt``; each line names
``PairAnnotation/<split>/<line>.json``. Image sizes are taken from the annotations' ``src_imsize``
/ ``trg_imsize`` ([width, height, channels]), so images are never opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import schema
from .errors import DatasetError

LAYOUTS = ("large", "small")
CATEGORIES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)
OFFICIAL_COUNTS = {
    "large": {"trn": 53340, "val": 5384, "test": 12234},
    "small": {"trn": 10652, "val": 1070, "test": 2438},
}


def layout_file(root: Path, split: str, layout: str = "large") -> Path:
    return Path(root) / "Layout" / layout / f"{split}.txt"


def read_layout(root: Path, split: str, layout: str = "large") -> list[str]:
    """The pair names of one split, in file order."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown SPair-71k layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    path = layout_file(root, split, layout)
    if not path.is_file():
        raise DatasetError(f"{path}: SPair-71k split list is missing")
    names = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            if ":" not in line or line.count("-") < 2:
                raise DatasetError(
                    f"{path}:{lineno}: malformed pair line {line!r} "
                    "(expected 'ID-SRC-TRG:category')"
                )
            names.append(line)
    return names


def annotation_files(root: Path, split: str, names: list[str]) -> list[Path]:
    base = Path(root) / "PairAnnotation" / split
    return [base / f"{n}.json" for n in names]


def check_missing(paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        first = ", ".join(p.name for p in missing[:3])
        raise DatasetError(
            f"{missing[0].parent}: {len(missing)} of {len(paths)} {what} missing (first: {first})"
        )


_INT_FIELDS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")


def _kps(ann: dict, key: str, path: Path) -> list[list[float]]:
    value = ann.get(key)
    if not isinstance(value, list):
        raise DatasetError(f"{path}: field {key!r} is missing or not a list")
    for p in value:
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) for c in p)):
            raise DatasetError(f"{path}: field {key!r} has an entry that is not [x, y]: {p!r}")
    return value


def _box(ann: dict, key: str, path: Path) -> list[float]:
    value = ann.get(key)
    if not (isinstance(value, list) and len(value) == 4):
        raise DatasetError(f"{path}: field {key!r} must be [x1, y1, x2, y2], got {value!r}")
    return value


def _size(ann: dict, key: str, path: Path) -> tuple[int, int]:
    value = ann.get(key)
    if not (isinstance(value, list) and len(value) >= 2 and all(isinstance(v, int) for v in value[:2])):
        raise DatasetError(f"{path}: field {key!r} must be [width, height, channels], got {value!r}")
    return value[0], value[1]


def load(root: str | os.PathLike, split: str, layout: str = "large") -> schema.pa.Table:
    """Read one split of SPair-71k into a table in :data:`loaders.schema.SCHEMA`."""
    root = Path(root)
    names = read_layout(root, split, layout)
    paths = annotation_files(root, split, names)
    check_missing(paths, "pair annotation files")
    cols = schema.empty_columns()
    seen = set()
    for name, path in zip(names, paths):
        try:
            with open(path, "rb") as fh:
                ann = json.loads(fh.read())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 JSON") from None
        if not isinstance(ann, dict):
            raise DatasetError(f"{path}: expected a JSON object")
        src_kps = _kps(ann, "src_kps", path)
        trg_kps = _kps(ann, "trg_kps", path)
        ids = ann.get("kps_ids")
        if not isinstance(ids, list):
            raise DatasetError(f"{path}: field 'kps_ids' is missing or not a list")
        if not (len(src_kps) == len(trg_kps) == len(ids)):
            raise DatasetError(
                f"{path}: keypoint counts differ: src_kps {len(src_kps)}, trg_kps {len(trg_kps)}, "
                f"kps_ids {len(ids)}"
            )
        try:
            kps_ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: field 'kps_ids' must hold integers, got {ids!r}") from None
        category = ann.get("category")
        if category not in CATEGORIES:
            raise DatasetError(f"{path}: field 'category' is {category!r}, not an SPair-71k category")
        for key in ("src_imname", "trg_imname"):
            if not isinstance(ann.get(key), str):
                raise DatasetError(f"{path}: field {key!r} is missing or not a string")
        sw, sh = _size(ann, "src_imsize", path)
        tw, th = _size(ann, "trg_imsize", path)
        if name in seen:
            raise DatasetError(f"{layout_file(root, split, layout)}: pair {name!r} listed twice")
        seen.add(name)
        cols["pair_id"].append(name)
        cols["category"].append(category)
        cols["src_image"].append(f"JPEGImages/{category}/{ann['src_imname']}")
        cols["trg_image"].append(f"JPEGImages/{category}/{ann['trg_imname']}")
        cols["src_width"].append(sw)
        cols["src_height"].append(sh)
        cols["trg_width"].append(tw)
        cols["trg_height"].append(th)
        cols["src_kps"].append(src_kps)
        cols["trg_kps"].append(trg_kps)
        cols["kps_ids"].append(kps_ids)
        cols["src_bbox"].append(_box(ann, "src_bndbox", path))
        cols["trg_bbox"].append(_box(ann, "trg_bndbox", path))
        for key in _INT_FIELDS:
            v = ann.get(key)
            if not isinstance(v, int):
                raise DatasetError(f"{path}: field {key!r} must be an integer, got {v!r}")
            cols[key].append(v)
        cols["src_pose"].append(ann.get("src_pose"))
        cols["trg_pose"].append(ann.get("trg_pose"))
        cols["mirror"].append(bool(ann.get("mirror", 0)))
    n = len(cols["pair_id"])
    cols["dataset"] = ["spair-71k"] * n
    cols["split"] = [split] * n
    return schema.to_table(cols)


def source_files(root: str | os.PathLike, split: str, layout: str = "large") -> list[Path]:
    """Every file the split's table is derived from (for cache keys)."""
    root = Path(root)
    return [layout_file(root, split, layout), *annotation_files(root, split, read_layout(root, split, layout))]
