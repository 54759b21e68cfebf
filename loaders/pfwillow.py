"""PF-Willow reader (test only).

Root layout: ``ROOT/PF-dataset/<subset>/<name>.png`` + ``<name>.mat`` (``pts_coord``: 2 x 10,
row 0 x, row 1 y), or the subsets directly under ROOT. Pairs come from the circulating pair-list
CSV when one is present (``test_pairs_pf.csv`` or ``test_pairs.csv`` at ROOT: ``imageA,imageB``
then 10 x and 10 y values of A, then of B); otherwise the 900 pairs are generated: every ordered
pair of distinct images within each subset, subsets in sorted name order, then source image in
sorted name order, then target image in sorted name order.

Keypoints are taken from the .mat files (or the CSV) exactly as written; a keypoint that is not
finite in either image is dropped from both. There is no object box (``src_bbox``/``trg_bbox``
are null): PCK uses the extent of the target's valid keypoints.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from . import schema
from ._common import finite, image_size, inside_root, load_mat, read_text
from .errors import DatasetError

SUBSETS = (
    "car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)", "motorbike(M)", "motorbike(S)",
    "winebottle(M)", "winebottle(wC)", "winebottle(woC)",
)
OFFICIAL_COUNTS = {"test": 900}
PAIR_LISTS = ("test_pairs_pf.csv", "test_pairs.csv")
N_KPS = 10


def base_dir(root: Path) -> tuple[Path, str]:
    """(directory holding the subsets, its path prefix relative to root)."""
    root = Path(root)
    if (root / "PF-dataset").is_dir():
        return root / "PF-dataset", "PF-dataset/"
    return root, ""


def category_of(subset: str) -> str:
    return subset.split("(")[0]


def find_pair_list(root: Path) -> Path | None:
    for name in PAIR_LISTS:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def _images(root: Path) -> list[tuple[str, str]]:
    """(subset, image path relative to root) of every image, sorted."""
    base, prefix = base_dir(root)
    subsets = sorted(d.name for d in base.iterdir() if d.is_dir() and d.name in SUBSETS) if base.is_dir() else []
    if not subsets:
        raise DatasetError(f"{base}: no PF-Willow subset folders found (expected e.g. {SUBSETS[0]!r})")
    out = []
    for sub in subsets:
        names = sorted(p.name for p in (base / sub).iterdir() if p.suffix.lower() == ".png")
        out.extend((sub, f"{prefix}{sub}/{n}") for n in names)
    return out


def _read_kps(path: Path) -> list[tuple[float, float]]:
    mat = load_mat(path, ("pts_coord",))
    pts = mat["pts_coord"]
    if pts.ndim != 2 or pts.shape[0] != 2 or pts.shape[1] > 1000:
        raise DatasetError(f"{path}: variable 'pts_coord' must be 2 x N (N <= 1000), got shape {pts.shape}")
    out = [(float(x), float(y)) for x, y in zip(pts[0], pts[1])]
    if any(math.isinf(v) or abs(v) > 1e6 for p in out for v in p if not math.isnan(v)):
        raise DatasetError(f"{path}: variable 'pts_coord' holds infinite or absurd coordinates (NaN marks a missing point)")
    return out


def _generated_pairs(root: Path):
    images = _images(root)
    by_subset: dict[str, list[str]] = {}
    for sub, rel in images:
        by_subset.setdefault(sub, []).append(rel)
    for sub in sorted(by_subset):
        rels = by_subset[sub]
        for s in rels:
            for t in rels:
                if s != t:
                    yield sub, s, t, None, None


def _csv_pairs(root: Path, path: Path):
    text = read_text(path, "PF-Willow pair list")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: empty pair list")
    for i, row in enumerate(rows[1:], 2):
        where = f"{path}: row {i}"
        if len(row) != 2 + 4 * N_KPS:
            raise DatasetError(f"{where}: expected {2 + 4 * N_KPS} columns (imageA, imageB, 4 x {N_KPS} coordinates), got {len(row)}")
        try:
            v = [float(x) for x in row[2:]]
        except ValueError:
            raise DatasetError(f"{where}: coordinates must be numbers") from None
        if any(math.isinf(x) for x in v):
            raise DatasetError(f"{where}: coordinates must be finite (NaN marks a missing point), got inf")
        a = list(zip(v[0:N_KPS], v[N_KPS:2 * N_KPS]))
        b = list(zip(v[2 * N_KPS:3 * N_KPS], v[3 * N_KPS:]))
        rel_a = inside_root(root, row[0], where, "imageA")
        rel_b = inside_root(root, row[1], where, "imageB")
        sub = Path(rel_a).parent.name
        if sub not in SUBSETS or Path(rel_b).parent.name != sub:
            raise DatasetError(f"{where}: images {rel_a!r}, {rel_b!r} are not inside one PF-Willow subset folder")
        yield sub, rel_a, rel_b, a, b


def load(root: str | os.PathLike, split: str = "test") -> schema.pa.Table:
    """Read PF-Willow (only the ``test`` split exists) into a table in :data:`loaders.schema.SCHEMA`."""
    root = Path(root)
    if split != "test":
        raise DatasetError(f"pf-willow has only the split 'test', not {split!r}")
    pair_csv = find_pair_list(root)
    pairs = _csv_pairs(root, pair_csv) if pair_csv else _generated_pairs(root)
    cols = schema.empty_columns()
    sizes: dict[str, tuple[int, int]] = {}
    kps_cache: dict[str, list] = {}
    seen = set()
    for sub, s, t, s_kps, t_kps in pairs:
        for rel in (s, t):
            if rel not in sizes:
                sizes[rel] = image_size(root / rel)
        if s_kps is None:
            for rel in (s, t):
                if rel not in kps_cache:
                    kps_cache[rel] = _read_kps((root / rel).with_suffix(".mat"))
            s_kps, t_kps = kps_cache[s], kps_cache[t]
            if len(s_kps) != len(t_kps):
                raise DatasetError(
                    f"{(root / t).with_suffix('.mat')}: has {len(t_kps)} keypoints, "
                    f"{Path(s).with_suffix('.mat').name} has {len(s_kps)}"
                )
        ids, sk, tk = [], [], []
        for k, (a, b) in enumerate(zip(s_kps, t_kps)):
            if all(finite(v) for v in (*a, *b)):
                ids.append(k)
                sk.append(list(a))
                tk.append(list(b))
        pair_id = f"{sub}/{Path(s).stem}-{Path(t).stem}"
        if pair_id in seen:
            raise DatasetError(f"{pair_csv or root}: pair {pair_id!r} appears twice")
        seen.add(pair_id)
        cols["pair_id"].append(pair_id)
        cols["category"].append(category_of(sub))
        cols["subset"].append(sub)
        cols["src_image"].append(s)
        cols["trg_image"].append(t)
        cols["src_width"].append(sizes[s][0])
        cols["src_height"].append(sizes[s][1])
        cols["trg_width"].append(sizes[t][0])
        cols["trg_height"].append(sizes[t][1])
        cols["src_kps"].append(sk)
        cols["trg_kps"].append(tk)
        cols["kps_ids"].append(ids)
    n = len(cols["pair_id"])
    cols["dataset"] = ["pf-willow"] * n
    cols["split"] = ["test"] * n
    return schema.to_table(cols)


def source_files(root: str | os.PathLike, split: str = "test") -> list[Path]:
    root = Path(root)
    files = []
    pair_csv = find_pair_list(root)
    if pair_csv:
        files.append(pair_csv)
    for _, rel in _images(root):
        files += [root / rel, (root / rel).with_suffix(".mat")]
    return files
