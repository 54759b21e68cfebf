"""Draw matches of a run: source and target side by side, ground truth and predictions.

    python -m benchmarks.visualize RUN_DIR --data-root DIR [--pairs N] [--category C] [--worst]
        [--readout R] [--alpha 0.1] [--out DIR]

Each source keypoint is joined to its predicted target location by a line, green when the
prediction lies within alpha * T of the ground truth (T and frame from the dataset's ``original``
protocol, stated in the title), red otherwise; ground-truth target keypoints are drawn as
white-edged crosses; a legend says so. The readout is the method's own (the first of its default
readouts) unless ``--readout`` names another; ``--worst`` orders pairs by per-pair PCK, ties by pair id.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _per_pair_pck(rows, xy, dataset: str, alpha: float):
    from .pck import PairArrays, hits, per_pair
    from .protocol import DATASET_THRESHOLD, Protocol

    proto = Protocol("original", DATASET_THRESHOLD[dataset], "original", "image", alphas=(alpha,))
    pairs = PairArrays.from_table(rows)
    hit = hits(pairs, xy, proto)[0]
    correct, counts = per_pair(hit[None], pairs.offsets)
    return pairs, hit, correct[0] / counts


def draw_pair(src_img, trg_img, src_kps, gt_kps, pred_kps, ok, title: str, path: Path, alpha: float = 0.1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loaders.atomic import atomic_path

    sh = src_img.height
    th = trg_img.height
    h = max(sh, th)
    canvas = np.full((h, src_img.width + trg_img.width, 3), 255, np.uint8)
    canvas[:sh, : src_img.width] = np.asarray(src_img.convert("RGB"))
    canvas[:th, src_img.width:] = np.asarray(trg_img.convert("RGB"))
    off = src_img.width
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 100, canvas.shape[0] / 100 + 0.4), dpi=100)
    ax.imshow(canvas)
    for s, g, p, good in zip(src_kps, gt_kps, pred_kps, ok):
        color = "lime" if good else "red"
        ax.plot([s[0], p[0] + off], [s[1], p[1]], "-", color=color, linewidth=1)
        ax.plot(s[0], s[1], "o", color=color, markersize=4)
        ax.plot(p[0] + off, p[1], "o", color=color, markersize=4)
        ax.plot(g[0] + off, g[1], "x", color="white", markersize=6, markeredgewidth=2)
        ax.plot(g[0] + off, g[1], "x", color="black", markersize=5, markeredgewidth=1)
    # the title fits the figure: wrapped to its width, plain text (no math parsing)
    import textwrap

    chars = max(30, int(canvas.shape[1] / 5.2))
    lines = [w for part in str(title).split("\n") for w in (textwrap.wrap(part, chars) or [""])]
    fig.set_size_inches(fig.get_size_inches()[0], canvas.shape[0] / 100 + 0.2 + 0.14 * len(lines))
    ax.set_title("\n".join(lines).replace("$", r"\$"), fontsize=8)
    ax.axis("off")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color="lime", marker="o", markersize=4, label=f"correct (d ≤ {alpha:g}·T)"),
                       Line2D([], [], color="red", marker="o", markersize=4, label="wrong"),
                       Line2D([], [], color="black", marker="x", linestyle="", markersize=5, label="ground truth")],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7, frameon=False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def open_scaled(path: Path, max_side: int):
    """An image decoded no larger than ``max_side`` on its longer side -> (RGB image, (sx, sy) from
    original pixels to drawn pixels). JPEGs are decoded at reduced scale directly (draft mode), so
    a 100-megapixel file never sits in memory at full size; headers claiming absurd sizes are refused."""
    from PIL import Image, UnidentifiedImageError

    from loaders._common import MAX_PIXELS, regular_file

    regular_file(path, "image file")
    try:
        with Image.open(path) as im:
            W, H = im.size
            if W * H > MAX_PIXELS:
                raise ValueError(f"{path}: image header claims {W} x {H} pixels; refusing to decode")
            scale = min(1.0, max_side / max(W, H))
            size = (max(1, round(W * scale)), max(1, round(H * scale)))
            if scale < 1:
                im.draft("RGB", size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale
                img = im.convert("RGB").resize(size, Image.BILINEAR, reducing_gap=2.0)
            else:
                img = im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot open image ({type(exc).__name__}: {str(exc)[:120]})") from None
    return img, np.array([img.width / W, img.height / H])


def visualize(run_dir: Path, data_root: Path, n_pairs: int = 10, category: str | None = None, worst: bool = False,
              readout: str | None = None, alpha: float = 0.1, out: Path | None = None, max_side: int = 1200) -> list[Path]:
    import pyarrow as pa
    import pyarrow.compute as pc

    import loaders

    from . import predictions as P

    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise ValueError(f"{meta_path}: missing; is {run_dir} a folder written by benchmarks.run?")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path}: malformed JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("dataset"), str) or not isinstance(meta.get("split"), str):
        raise ValueError(f"{meta_path}: expected a JSON object with 'dataset' and 'split'")
    dataset, split = meta["dataset"], meta["split"]
    table = loaders.load(dataset, data_root, split, layout=meta.get("layout"))
    pred = P.read(run_dir / "predictions.parquet")
    readouts = sorted(set(pred.column("readout").to_pylist()))
    if readout is None:  # the method's own readout: its first default one, then the run's first
        prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
        listed = meta.get("readouts") if isinstance(meta.get("readouts"), list) else []
        readout = next((r for r in [prov.get("default_readout"), *listed] if isinstance(r, str) and r in readouts),
                       readouts[0])
    if readout not in readouts:
        raise ValueError(f"unknown readout {readout!r} in {run_dir}; valid: {', '.join(readouts)}")
    pred = pred.filter(pc.equal(pred.column("readout"), readout))
    rows, xy = P.align(pred, table, source=str(run_dir / "predictions.parquet"))
    if category is not None:
        cats = sorted(set(rows.column("category").to_pylist()))
        if category not in cats:
            raise ValueError(f"unknown category {category!r} for {dataset}; valid: {', '.join(cats)}")
    pairs, hit, frac = _per_pair_pck(rows, xy[readout], dataset, alpha)
    order = np.arange(len(frac))
    if category is not None:
        order = order[pairs.category[order] == category]
    if worst:  # lowest per-pair PCK first; equal PCK in pair-id order (not in table order)
        ids = np.array([str(x) for x in pairs.pair_id], dtype=object)
        order = order[np.lexsort((ids[order], frac[order]))]
    order = order[:n_pairs]
    out = out or run_dir / "vis"
    from .protocol import DATASET_THRESHOLD

    threshold = DATASET_THRESHOLD[dataset]
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    label = str(prov.get("label") or meta.get("matcher", "?"))[:120]
    kept = rows.filter(pa.array(pairs.keep)) if not pairs.keep.all() else rows
    written = []
    for i in order:
        r = kept.slice(int(i), 1).to_pylist()[0]
        s, e = pairs.offsets[i], pairs.offsets[i + 1]
        src, s_scale = open_scaled(data_root / r["src_image"], max_side)
        trg, t_scale = open_scaled(data_root / r["trg_image"], max_side)
        name = f"{len(written):03d}-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in r["pair_id"]) + ".png"
        title = (f"{label}: {r['pair_id']}, readout {readout}, PCK@{alpha:g} = {frac[i] * 100:.0f}%\n"
                 f"protocol original: frame original, threshold {threshold}, correct when d ≤ alpha·T")
        draw_pair(src, trg, np.array(r["src_kps"]) * s_scale, np.array(r["trg_kps"]) * t_scale,
                  xy[readout][s:e] * t_scale, hit[s:e], title, out / name, alpha)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    from loaders import DatasetError

    from .predictions import PredictionError

    p = argparse.ArgumentParser(prog="python -m benchmarks.visualize", description=__doc__.splitlines()[1].strip())
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data-root", type=Path, default=None, help="default: the run's data root, else the data home")
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--category", default=None)
    p.add_argument("--worst", action="store_true", help="lowest per-pair PCK first")
    p.add_argument("--readout", default=None)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=None, help="default RUN_DIR/vis")
    p.add_argument("--max-side", type=int, default=1200, help="longer side of each drawn image, pixels (16..8192)")
    args = p.parse_args(argv)
    try:
        if args.pairs <= 0 or not args.alpha > 0 or not 16 <= args.max_side <= 8192:
            raise ValueError("--pairs and --alpha must be positive and --max-side in 16..8192")
        root = args.data_root
        if root is None:  # the folder the run read, when it is still there; else the data home
            import loaders

            meta = json.loads((args.run_dir / "run.json").read_text()) if (args.run_dir / "run.json").is_file() else {}
            recorded = Path(meta["data_root"]) if isinstance(meta, dict) and meta.get("data_root") else None
            root = recorded if recorded is not None and recorded.is_dir() else loaders.api.ensure_root(meta.get("dataset", ""), None)
        written = visualize(args.run_dir, root, args.pairs, args.category, args.worst, args.readout,
                            args.alpha, args.out, args.max_side)
    except (ValueError, DatasetError, PredictionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {getattr(exc, 'filename', None) or args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    for w in written:
        print(f"wrote {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
