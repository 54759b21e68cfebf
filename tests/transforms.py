"""Known transforms of real PF-Willow images, for the geometry checks of the dense and padded-frame
matchers: crops, translations and scalings whose ground truth follows from the transform."""

from __future__ import annotations

from pathlib import Path

import scipy.io
from PIL import Image

from benchmarks.matchers.base import Pair

from .conftest import shared


def known_transform_pairs(tmp_path: Path, scales: list[tuple[float, float]], every: int = 5):
    """(pairs, ground-truth target keypoints): source = the top-left 80 % of an image, target = an
    equal crop shifted by a few percent and resized by ``scales[n % len(scales)]`` (x, y)."""
    base = shared("PF-WILLOW", "PF-dataset")
    pairs, gts = [], []
    for n, path in enumerate(sorted(base.glob("*/*.png"))[::every]):
        im = Image.open(path).convert("RGB")
        W, H = im.size
        pts = scipy.io.loadmat(str(path.with_suffix(".mat")))["pts_coord"].T
        a = (0, 0, int(0.8 * W), int(0.8 * H))
        dx, dy = (int(0.12 * W), int(0.07 * H)) if n % 2 else (int(0.05 * W), int(0.15 * H))
        b = (dx, dy, dx + a[2], dy + a[3])
        k = scales[n % len(scales)]
        src, trg = im.crop(a), im.crop(b)
        tw, th = int(trg.width * k[0]), int(trg.height * k[1])
        trg = trg.resize((tw, th), Image.BICUBIC)
        src.save(tmp_path / f"{n}s.png")
        trg.save(tmp_path / f"{n}t.png")
        ok = (pts[:, 0] >= b[0] + 10) & (pts[:, 0] < a[2] - 10) & (pts[:, 1] >= b[1] + 10) & (pts[:, 1] < a[3] - 10)
        sp = pts[ok]
        if len(sp) == 0:
            continue
        tp = (sp - [b[0], b[1]]) * [tw / (b[2] - b[0]), th / (b[3] - b[1])]
        row = {"pair_id": str(n), "dataset": "pf-willow", "category": "car", "src_image": f"{n}s.png",
               "trg_image": f"{n}t.png", "src_kps": sp.tolist(), "trg_kps": tp.tolist(), "kps_ids": list(range(len(sp))),
               "src_width": src.width, "src_height": src.height, "trg_width": tw, "trg_height": th}
        pairs.append(Pair(row, tmp_path))
        gts.append(tp)
    return pairs, gts
