"""PF-Pascal reader.

Root layout (the official zip plus the widespread NC-Net pair lists)::

    ROOT/PF-dataset-PASCAL/JPEGImages/<name>.jpg
    ROOT/PF-dataset-PASCAL/Annotations/<class>/<name>.mat   (kps: N x 2, NaN rows missing; bbox)
    ROOT/image_pairs/{train,val,test}_pairs.csv             (or ROOT/{trn,val,test}_pairs.csv)

Image paths in the lists are relative to ROOT. ``class`` is 1-based in alphabetical VOC order.
Test keypoints come from the CSV (``XA;..``, ``YA``, ``XB``, ``YB``); ``kps_ids`` are then the
positions in those lists. Train/val keypoints and boxes come from the .mat files; a keypoint
missing (NaN) in either image is dropped from both, and ``kps_ids`` are the .mat row indices.
The boxes are read from the .mat files for every split when they exist (null otherwise).
Coordinates are kept exactly as the files give them. ``flip`` is the list's flag (test: false);
the keypoints are *not* flipped in the table, the flag is for training-time augmentation.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from . import schema
from ._common import (
    check_box,
    finite,
    image_size,
    inside_root,
    load_mat,
    parse_float_list,
    read_text,
)
from .errors import DatasetError

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
OFFICIAL_COUNTS = {"trn": 2940, "val": 308, "test": 299}
_LIST_NAMES = {"trn": "train", "val": "val", "test": "test"}
_TEST_COLUMNS = ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"]
_TRAIN_COLUMNS = ["source_image", "target_image", "class", "flip"]


def pair_list(root: Path, split: str) -> Path:
    """The pair-list CSV of ``split``: ``image_pairs/<train|val|test>_pairs.csv`` or ``<split>_pairs.csv``."""
    root = Path(root)
    candidates = [
        root / "image_pairs" / f"{_LIST_NAMES[split]}_pairs.csv",
        root / f"{split}_pairs.csv",
        root / f"{_LIST_NAMES[split]}_pairs.csv",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(
        f"{candidates[0]}: PF-Pascal pair list is missing (also looked for {candidates[1].name} in {root})"
    )


def annotation_path(root: Path, class_name: str, image: str) -> Path:
    return Path(root) / "PF-dataset-PASCAL" / "Annotations" / class_name / (Path(image).stem + ".mat")


def _read_rows(path: Path, split: str) -> list[dict]:
    expected = _TEST_COLUMNS if split == "test" else _TRAIN_COLUMNS
    text = read_text(path, "PF-Pascal pair list")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        missing = [c for c in expected if c not in header]
        if missing:
            raise DatasetError(f"{path}: header lacks column(s) {missing} (has {header})"[:300])
        rows = list(reader)
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV ({exc})") from None
    for i, row in enumerate(rows, 2):
        short = [c for c in expected if row.get(c) is None]
        if short:
            raise DatasetError(f"{path}: row {i} is short: no value for column(s) {short}")
    return rows


def _class_name(value: str, where: str) -> str:
    try:
        idx = int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: column 'class' must be an integer 1..20, got {value!r}") from None
    if not 1 <= idx <= len(CLASSES):
        raise DatasetError(f"{where}: column 'class' must be in 1..20, got {idx}")
    return CLASSES[idx - 1]


def _read_mat(path: Path) -> tuple[list[list[float]], list[float] | None]:
    """(kps, bbox) of one PF-Pascal annotation file."""
    mat = load_mat(path, ("kps",))
    kps = mat["kps"]
    if kps.ndim != 2 or kps.shape[1] != 2 or kps.shape[0] > 1000:
        raise DatasetError(f"{path}: variable 'kps' must be N x 2 (N <= 1000), got shape {kps.shape}")
    values = kps.astype(float).tolist()
    if any(math.isinf(v) or abs(v) > 1e6 for p in values for v in p if not math.isnan(v)):
        raise DatasetError(f"{path}: variable 'kps' holds infinite or absurd coordinates (NaN marks a missing point)")
    bbox = None
    if "bbox" in mat:
        b = mat["bbox"]
        if getattr(b, "dtype", None) is None or b.dtype.kind not in "iuf" or b.size != 4:
            raise DatasetError(f"{path}: variable 'bbox' must hold 4 numbers")
        bbox = [float(v) for v in b.reshape(-1)]
    return values, bbox


def load(root: str | os.PathLike, split: str) -> schema.pa.Table:
    """Read one split of PF-Pascal into a table in :data:`loaders.schema.SCHEMA`."""
    root = Path(root)
    path = pair_list(root, split)
    rows = _read_rows(path, split)
    cols = schema.empty_columns()
    sizes: dict[str, tuple[int, int]] = {}
    mats: dict[Path, tuple] = {}

    def size_of(rel: str) -> tuple[int, int]:
        if rel not in sizes:
            sizes[rel] = image_size(root / rel)
        return sizes[rel]

    def mat_of(p: Path, required: bool):
        if p not in mats:
            if not required and not p.is_file():
                mats[p] = None
            else:
                mats[p] = _read_mat(p)
        return mats[p]

    for i, row in enumerate(rows, 1):
        where = f"{path}: row {i + 1}"
        cls = _class_name(row["class"], where)
        src = inside_root(root, row["source_image"], where, "source_image")
        trg = inside_root(root, row["target_image"], where, "target_image")
        sw, sh = size_of(src)
        tw, th = size_of(trg)
        src_mat = mat_of(annotation_path(root, cls, src), required=split != "test")
        trg_mat = mat_of(annotation_path(root, cls, trg), required=split != "test")
        if split == "test":
            xa = parse_float_list(row["XA"], f"{where}, column XA")
            ya = parse_float_list(row["YA"], f"{where}, column YA")
            xb = parse_float_list(row["XB"], f"{where}, column XB")
            yb = parse_float_list(row["YB"], f"{where}, column YB")
            if not (len(xa) == len(ya) == len(xb) == len(yb)):
                raise DatasetError(
                    f"{where}: keypoint lists differ in length: XA {len(xa)}, YA {len(ya)}, "
                    f"XB {len(xb)}, YB {len(yb)}"
                )
            if any(math.isinf(v) or abs(v) > 1e6 for v in (*xa, *ya, *xb, *yb) if not math.isnan(v)):
                raise DatasetError(f"{where}: keypoint coordinates must be finite pixel positions (NaN marks a missing point)")
            src_all = list(zip(xa, ya))
            trg_all = list(zip(xb, yb))
            flip = False
        else:
            src_all = src_mat[0]
            trg_all = trg_mat[0]
            if len(src_all) != len(trg_all):
                raise DatasetError(
                    f"{annotation_path(root, cls, trg)}: has {len(trg_all)} keypoints but "
                    f"{annotation_path(root, cls, src).name} has {len(src_all)} (same class)"
                )
            f = row["flip"].strip()
            if f not in ("0", "1"):
                raise DatasetError(f"{where}: column 'flip' must be 0 or 1, got {f!r}")
            flip = f == "1"
        ids, sk, tk = [], [], []
        for k, (s, t) in enumerate(zip(src_all, trg_all)):
            if all(finite(v) for v in (*s, *t)):
                ids.append(k)
                sk.append([float(s[0]), float(s[1])])
                tk.append([float(t[0]), float(t[1])])
        cols["pair_id"].append(f"{i:05d}-{Path(src).stem}-{Path(trg).stem}")
        cols["category"].append(cls)
        cols["subset"].append(None)
        cols["src_image"].append(src)
        cols["trg_image"].append(trg)
        cols["src_width"].append(sw)
        cols["src_height"].append(sh)
        cols["trg_width"].append(tw)
        cols["trg_height"].append(th)
        cols["src_kps"].append(sk)
        cols["trg_kps"].append(tk)
        cols["kps_ids"].append(ids)
        src_box = check_box(src_mat[1], sw, sh, str(annotation_path(root, cls, src)), "bbox") if src_mat and src_mat[1] else None
        trg_box = check_box(trg_mat[1], tw, th, str(annotation_path(root, cls, trg)), "bbox") if trg_mat and trg_mat[1] else None
        cols["src_bbox"].append(src_box)
        cols["trg_bbox"].append(trg_box)
        cols["flip"].append(flip)
    n = len(cols["pair_id"])
    cols["dataset"] = ["pf-pascal"] * n
    cols["split"] = [split] * n
    return schema.to_table(cols)


def source_files(root: str | os.PathLike, split: str) -> list[Path]:
    """Every file the split's table is derived from (for cache keys)."""
    root = Path(root)
    path = pair_list(root, split)
    files = {path}
    for i, row in enumerate(_read_rows(path, split), 1):
        cls = _class_name(row["class"], f"{path}: row {i + 1}")
        for key in ("source_image", "target_image"):
            rel = inside_root(root, row[key], f"{path}: row {i + 1}", key)
            files.add(root / rel)
            files.add(annotation_path(root, cls, rel))
    return sorted(files)
