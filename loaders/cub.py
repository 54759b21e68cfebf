"""CUB-200-2011 keypoint pairs (15 bird parts), from the official release's lists.

Root: the folder holding ``images.txt`` (or its parent, holding ``CUB_200_2011/``, as the official
tarball unpacks). Files (space-separated, 1-based ids): ``images.txt`` ``<id> <class>/<file>.jpg``;
``classes.txt``; ``image_class_labels.txt``; ``train_test_split.txt`` (1 = train);
``bounding_boxes.txt`` ``<id> <x> <y> <w> <h>``; ``parts/parts.txt``; ``parts/part_locs.txt``
``<image id> <part id> <x> <y> <visible>``, 15 lines per image (invisible parts: 0 0 0). Images
under ``images/``; their sizes are read from the headers (pixels are not decoded).

Pairs (the protocol is the split's name, so it is recorded with every number):

- ``test``: every unordered pair of test images of the same class (``images.txt`` order, source
  first), 81,878 in the official split; pairs with no part visible in both images are left out.
- ``test-distilldift``: DistillDIFT's 1,000 pairs: ``torch.manual_seed(42)``, ``torch.randperm`` over
  those 81,878 pairs, the first 1,000 (its code, as ``../shared/docs`` reads it; needs torch, imported
  only for this split); the few with no part visible in both are then left out.

Keypoints: the parts visible in both images, coordinates as written (whether they are 0- or
1-based is UNCONFIRMED), ``kps_ids`` = part id - 1. Boxes: ``(x, y, x + w, y + h)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from . import schema
from ._common import check_box, image_size, inside_root, read_text
from .errors import DatasetError

SPLITS = ("test", "test-distilldift")
N_PARTS = 15
LISTS = ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
         "parts/parts.txt", "parts/part_locs.txt")
DISTILLDIFT_PAIRS = 1000
DISTILLDIFT_SEED = 42


def base_dir(root: Path) -> tuple[Path, str]:
    """(the folder holding the lists, its prefix relative to root)."""
    root = Path(root)
    if (root / "CUB_200_2011" / "images.txt").is_file():
        return root / "CUB_200_2011", "CUB_200_2011/"
    return root, ""


def _rows(path: Path, fields: int, what: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a space-separated list; every line must have ``fields`` fields."""
    if not path.is_file():
        raise DatasetError(f"{path}: CUB-200-2011 {what} is missing")
    out = []
    for lineno, line in enumerate(read_text(path, f"CUB-200-2011 {what}").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != fields:
            raise DatasetError(f"{path}:{lineno}: expected {fields} space-separated fields, got {len(parts)}")
        out.append((lineno, parts))
    return out


def _int(value: str, path: Path, lineno: int, what: str, low: int = 1, high: int = 10**7) -> int:
    try:
        v = int(value)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: {what} must be an integer, got {value[:40]!r}") from None
    if not low <= v <= high:
        raise DatasetError(f"{path}:{lineno}: {what} must be in {low}..{high}, got {v}")
    return v


def _float(value: str, path: Path, lineno: int, what: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: {what} must be a number, got {value[:40]!r}") from None
    if not math.isfinite(v) or abs(v) > 1e6:
        raise DatasetError(f"{path}:{lineno}: {what} must be a finite pixel coordinate, got {value[:40]!r}")
    return v


def read_lists(root: Path) -> dict:
    """Parse every list -> ``{"images": {id: rel path}, "cls": {id: class id}, "classes": {class id: name},
    "train": {id: bool}, "box": {id: (x, y, w, h)}, "parts": {id: [(x, y, visible)] * 15}}``."""
    base, _ = base_dir(root)
    out: dict = {}
    images, seen_paths = {}, set()
    for lineno, (i, rel) in _rows(base / "images.txt", 2, "image list"):
        k = _int(i, base / "images.txt", lineno, "image id")
        if k in images or rel in seen_paths:
            raise DatasetError(f"{base / 'images.txt'}:{lineno}: image {k} / {rel[:80]!r} listed twice")
        images[k] = inside_root(base, f"images/{rel}", f"{base / 'images.txt'}:{lineno}", "image path")
        seen_paths.add(rel)
    out["images"] = images
    out["classes"] = {_int(i, base / "classes.txt", n, "class id"): name
                      for n, (i, name) in _rows(base / "classes.txt", 2, "class list")}

    def per_image(name: str, what: str, fields: int) -> dict[int, tuple[int, list[str]]]:
        got = {}
        for lineno, parts in _rows(base / name, fields, what):
            k = _int(parts[0], base / name, lineno, "image id")
            if k not in images:
                raise DatasetError(f"{base / name}:{lineno}: image id {k} is not in images.txt")
            if k in got:
                raise DatasetError(f"{base / name}:{lineno}: image id {k} listed twice")
            got[k] = (lineno, parts[1:])
        missing = sorted(set(images) - set(got))
        if missing:
            raise DatasetError(f"{base / name}: {len(missing)} image(s) of images.txt missing (first: {missing[0]})")
        return got

    cls = per_image("image_class_labels.txt", "class labels", 2)
    out["cls"] = {}
    for k, (n, (c,)) in cls.items():
        c = _int(c, base / "image_class_labels.txt", n, "class id")
        if c not in out["classes"]:
            raise DatasetError(f"{base / 'image_class_labels.txt'}:{n}: class {c} is not in classes.txt")
        out["cls"][k] = c
    out["train"] = {k: bool(_int(v, base / "train_test_split.txt", n, "is_training flag", 0, 1))
                    for k, (n, (v,)) in per_image("train_test_split.txt", "train/test split", 2).items()}
    out["box"] = {k: tuple(_float(v, base / "bounding_boxes.txt", n, "box value") for v in vals)
                  for k, (n, vals) in per_image("bounding_boxes.txt", "bounding boxes", 5).items()}
    parts: dict[int, list] = {}
    locs = base / "parts" / "part_locs.txt"
    for lineno, (i, p, x, y, v) in _rows(locs, 5, "part locations"):
        k = _int(i, locs, lineno, "image id")
        if k not in images:
            raise DatasetError(f"{locs}:{lineno}: image id {k} is not in images.txt")
        pid = _int(p, locs, lineno, "part id", 1, N_PARTS)
        row = parts.setdefault(k, [None] * N_PARTS)
        if row[pid - 1] is not None:
            raise DatasetError(f"{locs}:{lineno}: part {pid} of image {k} given twice")
        row[pid - 1] = (_float(x, locs, lineno, "x"), _float(y, locs, lineno, "y"), _int(v, locs, lineno, "visible", 0, 1))
    for k in images:
        row = parts.get(k)
        if row is None or None in row:
            have = 0 if row is None else sum(r is not None for r in row)
            raise DatasetError(f"{locs}: image {k} has {have} of its {N_PARTS} part lines")
    out["parts"] = parts
    return out


def pool(lists: dict) -> list[tuple[int, int]]:
    """Every unordered pair of test images of one class, in ``images.txt`` order (source first)."""
    by_class: dict[int, list[int]] = {}
    for k in lists["images"]:  # images.txt order
        if not lists["train"][k]:
            by_class.setdefault(lists["cls"][k], []).append(k)
    out = []
    for c in sorted(by_class):
        ids = by_class[c]
        out += [(a, b) for n, a in enumerate(ids) for b in ids[n + 1:]]
    return out


def distilldift_order(n: int) -> list[int]:
    """``torch.randperm(n)`` after ``torch.manual_seed(42)``, as DistillDIFT draws its pairs."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the toolkit
        raise DatasetError("the test-distilldift split needs torch (its pairs are drawn by torch.randperm)") from None
    g = torch.Generator().manual_seed(DISTILLDIFT_SEED)
    return torch.randperm(n, generator=g).tolist()


def load(root: str | os.PathLike, split: str) -> schema.pa.Table:
    root = Path(root)
    base, prefix = base_dir(root)
    lists = read_lists(root)
    pairs = pool(lists)
    if split == "test-distilldift":
        order = distilldift_order(len(pairs))
        pairs = [pairs[i] for i in order[:DISTILLDIFT_PAIRS]]
    sizes: dict[int, tuple[int, int]] = {}
    boxes: dict[int, list[float]] = {}

    def size_of(k: int) -> tuple[int, int]:
        if k not in sizes:
            sizes[k] = image_size(base / lists["images"][k])
            x, y, w, h = lists["box"][k]
            boxes[k] = check_box([x, y, x + w, y + h], *sizes[k], f"{base / 'bounding_boxes.txt'} (image {k})", "box")
        return sizes[k]

    cols = schema.empty_columns()
    for a, b in pairs:
        pa_, pb = lists["parts"][a], lists["parts"][b]
        common = [j for j in range(N_PARTS) if pa_[j][2] and pb[j][2]]
        if not common:
            continue
        (sw, sh), (tw, th) = size_of(a), size_of(b)
        for k, (w, h) in ((a, (sw, sh)), (b, (tw, th))):
            for j in common:
                x, y, _ = lists["parts"][k][j]
                if not (-1 <= x <= w and -1 <= y <= h):
                    raise DatasetError(f"{base / 'parts/part_locs.txt'}: part {j + 1} of image {k} at ({x}, {y}) is "
                                       f"outside its {w} x {h} image")
        cols["pair_id"].append(f"{a}-{b}")
        cols["category"].append(lists["classes"][lists["cls"][a]])
        cols["src_image"].append(prefix + lists["images"][a])
        cols["trg_image"].append(prefix + lists["images"][b])
        cols["src_width"].append(sw)
        cols["src_height"].append(sh)
        cols["trg_width"].append(tw)
        cols["trg_height"].append(th)
        cols["src_kps"].append([[pa_[j][0], pa_[j][1]] for j in common])
        cols["trg_kps"].append([[pb[j][0], pb[j][1]] for j in common])
        cols["kps_ids"].append(common)
        cols["src_bbox"].append(boxes[a])
        cols["trg_bbox"].append(boxes[b])
    n = len(cols["pair_id"])
    cols["dataset"] = ["cub-200-2011"] * n
    cols["split"] = [split] * n
    return schema.to_table(cols)


def source_files(root: str | os.PathLike, split: str) -> list[Path]:
    base, _ = base_dir(Path(root))
    return [base / name for name in LISTS]
