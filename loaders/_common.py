"""Small helpers shared by the dataset readers (numpy/pyarrow/scipy/PIL only)."""

from __future__ import annotations

import math
from pathlib import Path

from .errors import DatasetError


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the image header; the pixels are not decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read image header ({exc})") from None


def load_mat(path: Path, variables: tuple[str, ...]) -> dict:
    """Read a MATLAB .mat file that must hold ``variables``; one-line errors name the file."""
    import scipy.io

    if not path.is_file():
        raise DatasetError(f"{path}: annotation file is missing")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DatasetError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from None
    for var in variables:
        if var not in mat:
            present = sorted(k for k in mat if not k.startswith("__"))
            raise DatasetError(f"{path}: variable {var!r} not found (has {present})")
    return mat


def parse_float_list(text: str, where: str) -> list[float]:
    """Parse a ';'-separated list of floats (the PF-Pascal CSV convention)."""
    text = text.strip()
    if not text:
        return []
    try:
        return [float(v) for v in text.split(";")]
    except ValueError:
        raise DatasetError(f"{where}: not a ';'-separated list of numbers: {text[:40]!r}") from None


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
