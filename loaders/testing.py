"""Writers of small datasets in the official on-disk formats, for tests and benchmarks.

Everything here writes synthetic data: random keypoints, flat-colour images. Real data is never
copied.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from . import pfpascal, spair


def write_image(path: Path, width: int, height: int, color=(128, 64, 32)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)


def spair_annotation(pair_id: int, category: str, src: str, trg: str, rng: random.Random, n_kps: int = 6) -> dict:
    sw, sh = rng.randint(200, 500), rng.randint(200, 500)
    tw, th = rng.randint(200, 500), rng.randint(200, 500)
    ids = sorted(rng.sample(range(30), n_kps))
    return {
        "pair_id": pair_id,
        "filename": f"{pair_id:06d}-{src}-{trg}:{category}",
        "src_imname": f"{src}.jpg",
        "trg_imname": f"{trg}.jpg",
        "src_imsize": [sw, sh, 3],
        "trg_imsize": [tw, th, 3],
        "src_bndbox": [rng.randint(0, 50), rng.randint(0, 50), rng.randint(150, sw - 1), rng.randint(150, sh - 1)],
        "trg_bndbox": [rng.randint(0, 50), rng.randint(0, 50), rng.randint(150, tw - 1), rng.randint(150, th - 1)],
        "category": category,
        "src_pose": rng.choice(["Left", "Right", "Frontal", "Rear"]),
        "trg_pose": rng.choice(["Left", "Right", "Frontal", "Rear"]),
        "src_kps": [[rng.randint(0, sw - 1), rng.randint(0, sh - 1)] for _ in ids],
        "trg_kps": [[rng.randint(0, tw - 1), rng.randint(0, th - 1)] for _ in ids],
        "kps_ids": [str(i) for i in ids],
        "mirror": rng.randint(0, 1),
        "viewpoint_variation": rng.randint(0, 2),
        "scale_variation": rng.randint(0, 2),
        "truncation": rng.randint(0, 3),
        "occlusion": rng.randint(0, 3),
    }


def write_spair_root(root: Path, counts: dict[str, int], seed: int = 0, layout: str = "large",
                     images: bool = False) -> dict[str, list[dict]]:
    """A SPair-71k root with ``counts[split]`` pairs per split; returns the annotations written."""
    rng = random.Random(seed)
    root = Path(root)
    written: dict[str, list[dict]] = {}
    pair_id = 0
    for split, n in counts.items():
        (root / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
        (root / "Layout" / layout).mkdir(parents=True, exist_ok=True)
        lines, anns = [], []
        for i in range(n):
            pair_id += 1
            cat = spair.CATEGORIES[i % len(spair.CATEGORIES)]
            src = f"2008_{rng.randint(0, 999999):06d}"
            trg = f"2009_{rng.randint(0, 999999):06d}"
            ann = spair_annotation(pair_id, cat, src, trg, rng, n_kps=rng.randint(1, 12))
            (root / "PairAnnotation" / split / f"{ann['filename']}.json").write_text(json.dumps(ann))
            lines.append(ann["filename"])
            anns.append(ann)
            if images:
                write_image(root / "JPEGImages" / cat / ann["src_imname"], *ann["src_imsize"][:2])
                write_image(root / "JPEGImages" / cat / ann["trg_imname"], *ann["trg_imsize"][:2])
        (root / "Layout" / layout / f"{split}.txt").write_text("\n".join(lines) + "\n")
        written[split] = anns
    return written


def write_mat(path: Path, **variables) -> None:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), variables)


def write_pfpascal_root(root: Path, n_pairs: int = 4, seed: int = 0) -> dict:
    """A PF-Pascal root (images, .mat annotations, the three NC-Net style pair lists).

    Returns {"images": {rel: (w, h)}, "kps": {rel: array}, "bbox": {rel: list}, "lists": {split: rows}}.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    info = {"images": {}, "kps": {}, "bbox": {}, "lists": {}}
    classes = [1, 8, 15]  # aeroplane, cat, person
    (root / "image_pairs").mkdir(parents=True, exist_ok=True)
    per_class = {}
    for c in classes:
        name = pfpascal.CLASSES[c - 1]
        n_kp = 5 + c % 4
        imgs = []
        for j in range(3):
            rel = f"PF-dataset-PASCAL/JPEGImages/20{c:02d}_{j:06d}.jpg"
            w, h = int(rng.integers(150, 400)), int(rng.integers(150, 400))
            write_image(root / rel, w, h)
            kps = np.stack([rng.uniform(0, w, n_kp), rng.uniform(0, h, n_kp)], 1)
            kps[j % n_kp] = np.nan  # one missing keypoint per image
            bbox = [float(rng.uniform(0, 20)), float(rng.uniform(0, 20)), float(w - 5), float(h - 5)]
            write_mat(root / "PF-dataset-PASCAL" / "Annotations" / name / (Path(rel).stem + ".mat"),
                      kps=kps, bbox=np.array([bbox]))
            info["images"][rel] = (w, h)
            info["kps"][rel] = kps
            info["bbox"][rel] = bbox
            imgs.append(rel)
        per_class[c] = imgs
    pairs = [(c, per_class[c][a], per_class[c][b]) for c in classes for a, b in ((0, 1), (1, 2), (2, 0))][:n_pairs]
    train_rows = [(s, t, c, i % 2) for i, (c, s, t) in enumerate(pairs)]
    for split, fname in (("trn", "train_pairs.csv"), ("val", "val_pairs.csv")):
        text = "source_image,target_image,class,flip\n" + "".join(f"{s},{t},{c},{f}\n" for s, t, c, f in train_rows)
        (root / "image_pairs" / fname).write_text(text)
        info["lists"][split] = train_rows
    test_rows = []
    for c, s, t in pairs:
        n = int(rng.integers(3, 8))
        xa, ya = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
        xb, yb = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
        test_rows.append((s, t, c, xa, ya, xb, yb))

    def j(a):
        return ";".join(repr(float(v)) for v in a)

    text = "source_image,target_image,class,XA,YA,XB,YB\n" + "".join(
        f"{s},{t},{c},{j(xa)},{j(ya)},{j(xb)},{j(yb)}\n" for s, t, c, xa, ya, xb, yb in test_rows
    )
    (root / "image_pairs" / "test_pairs.csv").write_text(text)
    info["lists"]["test"] = test_rows
    return info


def write_pfwillow_root(root: Path, subsets=("car(G)", "duck(S)"), n_images: int = 3, seed: int = 0) -> dict:
    """A PF-Willow root: ``PF-dataset/<subset>/<name>.png`` + ``.mat`` (pts_coord 2 x 10)."""
    rng = np.random.default_rng(seed)
    info = {}
    for sub in subsets:
        for k in range(n_images):
            rel = f"PF-dataset/{sub}/img_{k:03d}.png"
            w, h = int(rng.integers(100, 300)), int(rng.integers(100, 300))
            write_image(Path(root) / rel, w, h)
            pts = np.stack([rng.uniform(0, w, 10), rng.uniform(0, h, 10)])
            write_mat((Path(root) / rel).with_suffix(".mat"), pts_coord=pts)
            info[rel] = ((w, h), pts)
    return info
