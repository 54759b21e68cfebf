"""How a dense matcher gets its inputs and keeps its work: images decoded once (pixel-content
keys), the network's input size, an on-disk feature cache keyed by image content and settings, and
features computed once per image (per pair for pair-dependent matchers), batch-invariantly by
default. Mixed into :class:`benchmarks.dense.DenseMatcher`."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .matchers.base import MatcherError, Pair

RESIZE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "lanczos": "LANCZOS", "nearest": "NEAREST"}


@dataclass
class ImageInfo:
    """One image handed to :meth:`DenseMatcher.extract`."""

    path: Path
    key: str  # sha256 of the decoded pixels (:func:`pixel_key`)
    category: str
    width: int
    height: int


def pixel_key(rgb) -> str:
    """An image's identity for noise seeds and caches: sha256 of its decoded RGB pixels and size, so
    the same picture saved again (other compression, metadata, format) keeps its key."""
    h = hashlib.sha256(f"RGB {rgb.size[0]}x{rgb.size[1]}|".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


class ImageIO:
    """Image loading and the per-image feature caches of :class:`~benchmarks.dense.DenseMatcher`."""

    def load_image(self, path: Path) -> tuple[torch.Tensor, str, tuple[int, int]]:
        """Read, hash and resize one image -> ((3, S, S) in [0, 1], sha256, (W0, H0)).

        Decoded images are kept (uint8) in a small LRU keyed by path, size and mtime: a dataset's
        pairs reuse each image many times (SPair-71k: 12,234 pairs on 481 images).
        """
        try:
            st = path.stat()
        except FileNotFoundError:
            raise MatcherError(f"{path}: image file is missing") from None
        memo_key = (str(path), st.st_size, st.st_mtime_ns)
        with self._decoded_lock:
            hit = self._decoded.pop(memo_key, None)
            if hit is not None:
                self._decoded[memo_key] = hit  # most recently used
        if hit is None:
            hit = self._decode(path)
            with self._decoded_lock:
                self._decoded[memo_key] = hit
                while len(self._decoded) > self.decoded_cache_size:
                    self._decoded.pop(next(iter(self._decoded)))
        arr, key, size = hit
        return arr.float() / 255.0, key, size

    def _decode(self, path: Path) -> tuple[torch.Tensor, str, tuple[int, int]]:
        from PIL import Image, UnidentifiedImageError

        from loaders import DatasetError
        from loaders._common import MAX_PIXELS, regular_file

        try:
            regular_file(path, "image file")  # a FIFO or device would block or never end
            data = path.read_bytes()
        except DatasetError as exc:
            raise MatcherError(str(exc)) from None
        except OSError as exc:
            raise MatcherError(f"{path}: cannot read image ({exc.strerror or exc})") from None
        try:
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                if size[0] * size[1] > MAX_PIXELS:
                    raise MatcherError(f"{path}: image header claims {size[0]} x {size[1]} pixels; refusing to decode")
                full = im.convert("RGB")
                key = pixel_key(full)
                rgb = self._network_input(full)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise MatcherError(f"{path}: cannot decode image ({type(exc).__name__}: {str(exc)[:120]})") from None
        arr = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return arr, key, size

    def _network_input(self, image):
        """The decoded RGB image -> what is kept per image: the S x S resize (matchers that build
        their own inputs from the original, such as the padded-frame ones, keep the original)."""
        from PIL import Image

        return image.resize((self.config.image_size,) * 2, getattr(Image.Resampling, RESIZE[self.config.resize]))

    def _cache_path(self, info: ImageInfo, tag: str) -> Path | None:
        if self._cache_dir is None:
            return None
        suffix = "-" + hashlib.sha256(tag.encode()).hexdigest()[:12] if tag else ""
        return self._cache_dir / f"{info.key[:32]}{suffix}.pt"

    def _cache_get(self, info: ImageInfo, tag: str) -> torch.Tensor | None:
        path = self._cache_path(info, tag)
        if path is None:
            return None
        from . import cachefile

        return cachefile.load(path, self.device)  # a damaged file (checksum, truncation) is recomputed

    def _cache_put(self, info: ImageInfo, feat: torch.Tensor, tag: str) -> None:
        path = self._cache_path(info, tag)
        if path is None:
            return
        from . import cachefile

        if not cachefile.save(path, feat):
            self._cache_dir = None  # read-only or full: go on without a disk cache

    def prefetch(self, pairs):
        """Decode and resize the images of ``pairs`` (background thread; pinned memory for CUDA)."""
        out = self.load_images(pairs)
        if self.device.type == "cuda":
            out = {k: (img.pin_memory(), info) for k, (img, info) in out.items()}
        return out

    def predict_prefetched(self, pairs, data):
        return self.submit(pairs, data)()

    def load_images(self, pairs: list[Pair]) -> dict[str, tuple[torch.Tensor, ImageInfo]]:
        """Every distinct image of ``pairs``: relative path -> ((3, S, S) in [0, 1], info)."""
        out = {}
        for p in pairs:
            for side in ("src", "trg"):
                rel = p.row[f"{side}_image"]
                if rel in self._prefetched:
                    out[rel] = self._prefetched[rel]
                elif rel not in out:
                    path = p.image_path(side)
                    img, key, (w, h) = self.load_image(path)
                    out[rel] = (img, ImageInfo(path, key, p.row["category"], w, h))
        return out

    def cached_features(self, items: list[tuple[torch.Tensor, ImageInfo, str]], compute) -> list[torch.Tensor]:
        """Features of ``(image, info, tag)`` items: memory cache, then disk cache, then
        ``compute(images, infos, positions)`` in batches of ``batch_size`` for the rest."""
        result: list[torch.Tensor | None] = [None] * len(items)
        todo = []
        for i, (_img, info, tag) in enumerate(items):
            mem_key = (info.key, tag)
            if mem_key in self._recent:
                result[i] = self._recent[mem_key]
                continue
            cached = self._cache_get(info, tag)
            if cached is not None:
                result[i] = cached
                self.stats["cache_hits"] += 1
            else:
                todo.append(i)
        if self.config.batch_invariant:
            # one call per image (per pair when a pair's features depend on both images): an image's
            # features are the same whatever else is computed around it (resumes are byte-identical)
            group = (lambda i: i // 2) if self.per_pair_features else (lambda i: i)
            chunks = [[i for i in todo if group(i) == g] for g in dict.fromkeys(group(i) for i in todo)]
            bs = 2 if self.per_pair_features else 1
        else:
            bs = self.batch_size if todo else 1
            chunks = [todo[b:b + bs] for b in range(0, len(todo), bs)]
        for chunk in chunks:
            if self.host_images:  # the matcher uploads what it needs (see ``host_images``)
                batch = [items[i][0] for i in chunk]
            else:
                batch = torch.stack([items[i][0] for i in chunk])
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                batch = batch.to(self.device, non_blocking=True)
            try:
                out = compute(batch, [items[i][1] for i in chunk], chunk)
            except torch.cuda.OutOfMemoryError:
                raise MatcherError(
                    f"batch size {bs} does not fit on {self.device}; rerun with a smaller --batch-size "
                    "(features computed so far are kept in the cache)"
                ) from None
            for i, f in zip(chunk, out):
                result[i] = f
                self._cache_put(items[i][1], f, items[i][2])
                self.stats["extracted"] += 1
        for (_, info, tag), f in zip(items, result):
            self._recent[(info.key, tag)] = f
        while len(self._recent) > self.memory_cache_size:
            self._recent.pop(next(iter(self._recent)))
        return result
