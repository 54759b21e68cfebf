"""SPair-71k reader (official layout: Layout/, PairAnnotation/, JPEGImages/).

Pairs come from ``Layout/{large,small}/{trn,val,test}.txt``; each line names
``PairAnnotation/<split>/<line>.json``. Image sizes are taken from the annotations' ``src_imsize``
/ ``trg_imsize`` ([width, height, channels]), so images are never opened.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from . import schema
from ._common import check_box, check_points, check_size, inside_root, read_json_object, read_text
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


#: a Layout line: ``<id>-<source image>-<target image>:<category>`` (names without path separators)
_LINE = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+:[A-Za-z]+$")


def read_layout(root: Path, split: str, layout: str = "large") -> list[str]:
    """The pair names of one split, in file order."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown SPair-71k layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    path = layout_file(root, split, layout)
    if not path.is_file():
        raise DatasetError(f"{path}: SPair-71k split list is missing")
    names = []
    for lineno, line in enumerate(read_text(path, "SPair-71k split list").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not _LINE.match(line) or ".." in line:
            raise DatasetError(
                f"{path}:{lineno}: malformed pair line {line[:80]!r} "
                "(expected 'ID-SRC-TRG:category', letters, digits, '_' and '.')"
            )
        names.append(line)
    return names


def annotation_files(root: Path, split: str, names: list[str], folder: str = "PairAnnotation") -> list[Path]:
    base = Path(root) / folder / split
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
    return check_points(ann.get(key), str(path), key)


def _size(ann: dict, key: str, path: Path) -> tuple[int, int]:
    value = ann.get(key)
    if not (isinstance(value, list) and len(value) >= 2):
        raise DatasetError(f"{path}: field {key!r} must be [width, height, channels], got {value!r}"[:300])
    return check_size(value[0], value[1], str(path), key)


#: SPair-71k's difficulty annotations and their levels
LEVELS = {"viewpoint_variation": range(3), "scale_variation": range(3), "truncation": range(4), "occlusion": range(4)}


def load(root: str | os.PathLike, split: str, layout: str = "large", *, folder: str = "PairAnnotation",
         dataset: str = "spair-71k", subset_of_layout: bool = False, ids_optional: bool = False,
         image_annotations: bool = True) -> schema.pa.Table:
    """Read one split of SPair-71k into a table in :data:`loaders.schema.SCHEMA`.

    ``folder``, ``dataset``, ``subset_of_layout`` and ``ids_optional`` serve SPair-U (new keypoints
    on SPair-71k test pairs, see :mod:`loaders.spairu`): annotations from another folder, only the
    layout's pairs that have one, and ``kps_ids`` allowed to be absent; ``image_annotations``: read
    each image's visible keypoint ids from ``ImageAnnotation/`` where present (SPair-U's keypoint ids
    are its own, so it does not).
    """
    root = Path(root)
    names = read_layout(root, split, layout)
    paths = annotation_files(root, split, names, folder)
    if subset_of_layout:
        for p in paths:  # an entry that is there but is no regular file (a FIFO, a folder) is never skipped silently
            if os.path.lexists(p) and not os.path.isfile(p):
                raise DatasetError(f"{p}: pair annotation is not a regular file")
        kept = [(n, p) for n, p in zip(names, paths) if os.path.isfile(p)]
        if not kept:
            raise DatasetError(f"{Path(root) / folder / split}: no pair annotation of {layout_file(root, split, layout)} there")
        names, paths = [n for n, _ in kept], [p for _, p in kept]
    check_missing(paths, "pair annotation files")
    cols = schema.empty_columns()
    seen = set()
    for name, path in zip(names, paths):
        # a pair file that is a link out of the dataset root is not read
        inside_root(Path(root), f"{folder}/{split}/{name}.json", str(path), "pair annotation file")
        ann = read_json_object(path, "pair annotation")
        src_kps = _kps(ann, "src_kps", path)
        trg_kps = _kps(ann, "trg_kps", path)
        ids = ann.get("kps_ids")
        if ids is None and ids_optional:
            ids = list(range(len(src_kps)))
        if not isinstance(ids, list):
            raise DatasetError(f"{path}: field 'kps_ids' is missing or not a list")
        if not (len(src_kps) == len(trg_kps) == len(ids)):
            raise DatasetError(
                f"{path}: keypoint counts differ: src_kps {len(src_kps)}, trg_kps {len(trg_kps)}, "
                f"kps_ids {len(ids)}"
            )
        try:
            if any(isinstance(i, (bool, float)) or not isinstance(i, (int, str)) for i in ids):
                raise ValueError
            kps_ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: field 'kps_ids' must hold integers, got {ids!r}"[:300]) from None
        if any(not 0 <= i < 1000 for i in kps_ids) or len(set(kps_ids)) != len(kps_ids):
            raise DatasetError(f"{path}: field 'kps_ids' must hold distinct ids in 0..999, got {kps_ids!r}"[:300])
        category = ann.get("category")
        if category not in CATEGORIES:
            raise DatasetError(f"{path}: field 'category' is {category!r}, not an SPair-71k category")
        images = {}
        for key in ("src_imname", "trg_imname"):
            value = ann.get(key)
            if not isinstance(value, str) or "/" in value or "\\" in value:
                raise DatasetError(f"{path}: field {key!r} must be an image file name, got {value!r}"[:300])
            images[key] = inside_root(root, f"JPEGImages/{category}/{value}", str(path), key)
        sw, sh = _size(ann, "src_imsize", path)
        tw, th = _size(ann, "trg_imsize", path)
        src_box = check_box(ann.get("src_bndbox"), sw, sh, str(path), "src_bndbox")
        trg_box = check_box(ann.get("trg_bndbox"), tw, th, str(path), "trg_bndbox")
        mirror = ann.get("mirror", 0)
        if mirror not in (0, 1) or isinstance(mirror, float):
            raise DatasetError(f"{path}: field 'mirror' must be 0 or 1, got {mirror!r}"[:300])
        if name in seen:
            raise DatasetError(f"{layout_file(root, split, layout)}: pair {name!r} listed twice")
        seen.add(name)
        cols["pair_id"].append(name)
        cols["category"].append(category)
        cols["src_image"].append(images["src_imname"])
        cols["trg_image"].append(images["trg_imname"])
        cols["src_width"].append(sw)
        cols["src_height"].append(sh)
        cols["trg_width"].append(tw)
        cols["trg_height"].append(th)
        cols["src_kps"].append(src_kps)
        cols["trg_kps"].append(trg_kps)
        cols["kps_ids"].append(kps_ids)
        cols["src_bbox"].append(src_box)
        cols["trg_bbox"].append(trg_box)
        for key in _INT_FIELDS:
            v = ann.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v not in LEVELS[key]:
                raise DatasetError(f"{path}: field {key!r} must be an integer in {LEVELS[key].start}.."
                                   f"{LEVELS[key].stop - 1}, got {v!r}"[:300])
            cols[key].append(v)
        for key in ("src_pose", "trg_pose"):
            v = ann.get(key)
            if v is not None and not isinstance(v, str):
                if isinstance(v, bool) or not isinstance(v, int) or not -(2**31) <= v < 2**31:
                    raise DatasetError(f"{path}: field {key!r} must be a pose label, got {v!r}"[:300])
                v = str(v)
            cols[key].append(v)
        cols["mirror"].append(bool(mirror))
        for side, key in (("src", "src_imname"), ("trg", "trg_imname")):
            cols[f"{side}_visible_ids"].append(visible_ids(root, category, ann[key], kps_ids, path)
                                               if image_annotations else None)
    n = len(cols["pair_id"])
    cols["dataset"] = [dataset] * n
    cols["split"] = [split] * n
    return schema.to_table(cols)


def image_annotation(root: Path, category: str, image: str) -> Path:
    return root / "ImageAnnotation" / category / (Path(image).stem + ".json")


def visible_ids(root: Path, category: str, image: str, kps_ids: list[int], pair_path: Path) -> list[int] | None:
    """The keypoint ids visible in an image, from its ``ImageAnnotation`` file (``kps``: id -> [x, y]
    or null); None where the file is absent. The pair's matched ids must be among them."""
    path = image_annotation(root, category, image)
    if not os.path.lexists(path):
        return None
    inside_root(root, f"ImageAnnotation/{category}/{path.name}", str(pair_path), "image annotation")
    ann = read_json_object(path, "image annotation")
    kps = ann.get("kps")
    if not isinstance(kps, dict):
        raise DatasetError(f"{path}: field 'kps' must be an object of id -> [x, y] or null")
    out = []
    for k, v in kps.items():
        if not (isinstance(k, str) and k.isdigit() and int(k) < 1000):
            raise DatasetError(f"{path}: field 'kps' has key {k!r}, not a keypoint id in 0..999"[:200])
        if v is None:
            continue
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                             and math.isfinite(c) for c in v)):
            raise DatasetError(f"{path}: keypoint {k} must be [x, y] finite numbers or null, got {v!r}"[:200])
        out.append(int(k))
    missing = sorted(set(kps_ids) - set(out))
    if missing:
        raise DatasetError(f"{path}: keypoints {missing} of pair {pair_path.name} are not visible in this image annotation")
    return sorted(out)


def source_files(root: str | os.PathLike, split: str, layout: str = "large", folder: str = "PairAnnotation") -> list[Path]:
    """Every file the split's table is derived from (for cache keys): the layout, the pair
    annotations and the image annotations present."""
    root = Path(root)
    names = read_layout(root, split, layout)
    pairs = annotation_files(root, split, names, folder)
    images = set()
    for name in names:  # <id>-<src>-<trg>:<category>
        head, _, category = name.rpartition(":")
        parts = head.split("-")
        if category and len(parts) >= 3:
            for stem in (parts[1], "-".join(parts[2:])):
                p = root / "ImageAnnotation" / category / f"{stem}.json"
                if os.path.isfile(p):
                    images.add(p)
    return [layout_file(root, split, layout), *pairs, *sorted(images)]
