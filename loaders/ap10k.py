"""AP-10K semantic-correspondence pairs in the format GeoAware-SC builds (17 animal keypoints).

Root layout (what GeoAware-SC's preparation writes, and :mod:`loaders.ap10k_build` rebuilds from
the AP-10K release): ``ImageAnnotation/<family>/<species>/<12-digit id>.json`` (the COCO annotation's
fields, then the image's, then ``name`` = species and ``supercategory`` = family),
``JPEGImages/<family>/<species>/<id>.jpg``, and one JSON per pair
``PairAnnotation/<folder>/<src id>-<trg id>:<category>.json`` = ``{"src_json_path": ...,
"trg_json_path": ...}`` (paths as GeoAware writes them, e.g. ``data/ap-10k/ImageAnnotation/...``;
the part from ``ImageAnnotation/`` on is read inside the root).

Splits (the subset is the split's name): ``test`` (intra-species: category = species),
``test-cross-species`` (families with more than one species: category = family),
``test-cross-family`` (category ``all``), the same three for ``val``, and ``trn``. Pairs are read in
sorted file-name order. Keypoints: those with visibility v > 0 in both images, coordinates as
written (GeoAware's reader multiplies coordinates by v / 2, which would halve a v = 1 point; this
reader does not: whether AP-10K has v = 1 points is UNCONFIRMED). Boxes ``[x, y, w, h]`` ->
``(x, y, x + w, y + h)``; image sizes from the JSON's ``width`` / ``height``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import schema
from ._common import check_box, check_points, check_size, inside_root, read_json_object
from .errors import DatasetError

SPLITS = ("test", "test-cross-species", "test-cross-family", "val", "val-cross-species", "val-cross-family", "trn")
FOLDERS = {"test": "test", "test-cross-species": "test_cross_species", "test-cross-family": "test_cross_family",
           "val": "val", "val-cross-species": "val_cross_species", "val-cross-family": "val_cross_family", "trn": "trn"}
N_KPS = 17
KEYPOINTS = ("left eye", "right eye", "nose", "neck", "root of tail", "left shoulder", "left elbow", "left front paw",
             "right shoulder", "right elbow", "right front paw", "left hip", "left knee", "left back paw", "right hip",
             "right knee", "right back paw")
_PAIR = re.compile(r"^(\d{1,12})-(\d{1,12}):([A-Za-z][A-Za-z0-9 _.-]{0,63})\.json$")


def pair_folder(root: Path, split: str) -> Path:
    return Path(root) / "PairAnnotation" / FOLDERS[split]


def pair_files(root: Path, split: str) -> list[Path]:
    folder = pair_folder(root, split)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: AP-10K pair folder is missing (split {split!r})")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".json"))
    if not files:
        raise DatasetError(f"{folder}: no pair files")
    for p in files:  # a pair file that is a link out of the dataset root is not read
        inside_root(root, p.relative_to(root).as_posix(), str(p), "pair file")
    return files


def _image_json_rel(value, where: str, field: str) -> str:
    """The ``ImageAnnotation/...json`` part of a path GeoAware wrote relative to its repository."""
    if not isinstance(value, str) or "ImageAnnotation/" not in value.replace("\\", "/") or not value.endswith(".json"):
        raise DatasetError(f"{where}: field {field!r} must be a path to an ImageAnnotation/...json file, got {value!r}"[:300])
    rel = value.replace("\\", "/")
    return rel[rel.index("ImageAnnotation/"):]


#: a species or family name: it becomes a folder name and the category in pair file names
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9 _.-]{0,63}$")


def check_name(value, where: str, field: str) -> str:
    """A species or family name that is one safe path component (letters first; letters, digits,
    space, '_', '.', '-'; at most 64 characters; not ending in a dot or space)."""
    if not isinstance(value, str) or not NAME.match(value) or value.endswith((".", " ")):
        raise DatasetError(f"{where}: field {field!r} must be a name of letters, digits, space, '_', '.', '-' "
                           f"(a letter first, at most 64 characters), got {str(value)[:80]!r}")
    return value


def validate_image(ann: dict, where: str) -> dict:
    """The fields of one image annotation, validated (the reader's rules, shared with the builder):
    size, keypoints (17 x (x, y, v), v in 0/1/2, visible ones inside the image), box, species, family."""
    path = where
    w, h = check_size(ann.get("width"), ann.get("height"), str(path), "width/height")
    kp = ann.get("keypoints")
    if not isinstance(kp, list) or len(kp) != 3 * N_KPS:
        raise DatasetError(f"{path}: field 'keypoints' must be a flat list of {N_KPS} x (x, y, v), got "
                           f"{len(kp) if isinstance(kp, list) else type(kp).__name__} values")
    xy = check_points([[kp[3 * i], kp[3 * i + 1]] for i in range(N_KPS)], str(path), "keypoints")
    vis = kp[2::3]
    if any(v not in (0, 1, 2) or isinstance(v, bool) for v in vis):
        raise DatasetError(f"{path}: keypoint visibility must be 0, 1 or 2, got {vis!r}"[:300])
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4) or any(isinstance(v, bool) for v in box):
        raise DatasetError(f"{path}: field 'bbox' must be [x, y, w, h] numbers, got {box!r}"[:300])
    try:
        x, y, bw, bh = (float(v) for v in box)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: field 'bbox' must hold numbers, got {box!r}"[:300]) from None
    bbox = check_box([x, y, x + bw, y + bh], w, h, str(path), "bbox")
    for key in ("name", "supercategory"):
        check_name(ann.get(key), str(path), key)
    for i, (p, v) in enumerate(zip(xy, vis)):
        if v and not (-1 <= p[0] <= w + 1 and -1 <= p[1] <= h + 1):
            raise DatasetError(f"{path}: keypoint {i} ({KEYPOINTS[i]}) at {p} lies outside the {w} x {h} image")
    return {"xy": xy, "vis": vis, "bbox": bbox, "size": (w, h), "species": ann["name"], "family": ann["supercategory"]}


def read_image(root: Path, rel: str, cache: dict) -> dict:
    """One image annotation file, validated (:func:`validate_image`), with its image's path."""
    if rel in cache:
        return cache[rel]
    path = Path(root) / rel
    ann = read_json_object(path, "AP-10K image annotation")
    out = validate_image(ann, str(path))
    image = rel.replace("ImageAnnotation/", "JPEGImages/", 1)[: -len(".json")] + ".jpg"
    out["image"] = inside_root(root, image, str(path), "image path")
    cache[rel] = out
    return out


def load(root: str | os.PathLike, split: str) -> schema.pa.Table:
    root = Path(root)
    cols = schema.empty_columns()
    cache: dict = {}
    for path in pair_files(root, split):
        m = _PAIR.match(path.name)
        if not m:
            raise DatasetError(f"{path}: pair file name must be '<src id>-<trg id>:<category>.json'")
        ann = read_json_object(path, "AP-10K pair annotation")
        rels = {}
        for key in ("src_json_path", "trg_json_path"):
            rels[key] = inside_root(root, _image_json_rel(ann.get(key), str(path), key), str(path), key)
        src, trg = (read_image(root, rels[k], cache) for k in ("src_json_path", "trg_json_path"))
        category = m.group(3)
        want = {"test": "species", "val": "species", "trn": "species"}.get(split)
        if "cross-species" in split:
            want = "family"
        if want and not (src[want] == trg[want] == category):
            raise DatasetError(f"{path}: category {category!r} is not the {want} of both images "
                               f"({src[want]!r}, {trg[want]!r})")
        common = [i for i in range(N_KPS) if src["vis"][i] and trg["vis"][i]]
        cols["pair_id"].append(path.name[: -len(".json")])
        cols["category"].append(category)
        cols["src_image"].append(src["image"])
        cols["trg_image"].append(trg["image"])
        cols["src_width"].append(src["size"][0])
        cols["src_height"].append(src["size"][1])
        cols["trg_width"].append(trg["size"][0])
        cols["trg_height"].append(trg["size"][1])
        cols["src_kps"].append([src["xy"][i] for i in common])
        cols["trg_kps"].append([trg["xy"][i] for i in common])
        cols["kps_ids"].append(common)
        cols["src_bbox"].append(src["bbox"])
        cols["trg_bbox"].append(trg["bbox"])
        cols["src_visible_ids"].append([i for i in range(N_KPS) if src["vis"][i]])
        cols["trg_visible_ids"].append([i for i in range(N_KPS) if trg["vis"][i]])
    n = len(cols["pair_id"])
    cols["dataset"] = ["ap-10k"] * n
    cols["split"] = [split] * n
    return schema.to_table(cols)


def source_files(root: str | os.PathLike, split: str) -> list[Path]:
    """The pair files and the image annotations they name (for cache keys)."""
    root = Path(root)
    files = pair_files(root, split)
    out = list(files)
    for path in files:
        try:
            ann = json.loads(path.read_text())
            out += [root / _image_json_rel(ann.get(k), str(path), k) for k in ("src_json_path", "trg_json_path")]
        except (OSError, ValueError, DatasetError):
            pass  # reported when the split is read
    return sorted(set(out))
