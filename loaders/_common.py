"""Small helpers shared by the dataset readers (numpy/pyarrow/scipy/PIL only)."""

from __future__ import annotations

import functools
import math
import os
import stat
from pathlib import Path, PurePosixPath

from .errors import DatasetError

#: largest image side accepted from an annotation or an image header (pixels)
MAX_SIDE = 100_000
#: image headers claiming more pixels than this are refused before decoding (about 40 k x 40 k)
MAX_PIXELS = 1_600_000_000


def regular_file(path: Path, what: str = "file") -> Path:
    """``path`` if it is a regular file (after following links); FIFOs, devices and folders are refused."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} is missing") from None
    except (OSError, ValueError) as exc:  # ValueError: NUL byte in the path
        raise DatasetError(f"{path}: cannot access {what} ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"{path}: {what} is not a regular file")
    return path


def inside_root(root: Path, rel, where: str, field: str) -> str:
    """Check a path read from a dataset file: a relative, NUL-free path that stays inside ``root``
    (lexically and after resolving links). Returns it in POSIX form."""
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where}: field {field!r} must be a non-empty path string, got {rel!r}")
    if "\0" in rel or any(ord(c) < 32 for c in rel):
        raise DatasetError(f"{where}: field {field!r} holds control characters: {rel[:60]!r}")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or rel.startswith(("/", "\\")) or ".." in pure.parts or (len(rel) > 1 and rel[1] == ":"):
        raise DatasetError(f"{where}: field {field!r} = {rel[:80]!r} leaves the dataset root")
    posix = pure.as_posix()
    base = _realpath(os.fspath(root))
    head, _, name = posix.rpartition("/")
    folder = _realpath(os.path.join(base, head)) if head else base  # shared by many files: cached
    full = os.path.join(folder, name)
    if _within(folder, base):
        try:
            is_link = stat.S_ISLNK(os.lstat(full).st_mode)
        except OSError:
            is_link = False  # missing: reported when the file is read
        if is_link:
            full = os.path.realpath(full)
    if not _within(full, base):
        raise DatasetError(f"{where}: field {field!r} = {rel[:80]!r} resolves outside the dataset root ({full})")
    return posix


#: resolved folders, cached: a dataset names thousands of files in a few folders
_realpath = functools.lru_cache(maxsize=1 << 14)(os.path.realpath)


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the image header; the pixels are not decoded."""
    from PIL import Image, UnidentifiedImageError

    regular_file(path, "image file")
    try:
        with Image.open(path) as im:
            w, h = int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read image header ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or w * h > MAX_PIXELS:
        raise DatasetError(f"{path}: image header claims {w} x {h} pixels (accepted: sides 1..{MAX_SIDE}, "
                           f"at most {MAX_PIXELS:,} pixels)")
    return w, h


def number(v) -> bool:
    """A real number from a parsed file: int or float, not bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_points(points, where: str, field: str) -> list[list[float]]:
    """A list of [x, y] pairs of finite numbers."""
    if not isinstance(points, list):
        raise DatasetError(f"{where}: field {field!r} is missing or not a list")
    out = []
    for p in points:
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(number(c) for c in p)):
            raise DatasetError(f"{where}: field {field!r} has an entry that is not [x, y] numbers: {p!r}"[:300])
        x, y = float(p[0]), float(p[1])
        if not (finite(x) and finite(y)) or abs(x) > 10 * MAX_SIDE or abs(y) > 10 * MAX_SIDE:
            raise DatasetError(f"{where}: field {field!r} has a keypoint that is not a finite pixel position: {p!r}")
        out.append([x, y])
    return out


def check_size(w, h, where: str, field: str) -> tuple[int, int]:
    """Positive integer image sides (bool refused)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (w, h)):
        raise DatasetError(f"{where}: field {field!r} must hold integer width and height, got {w!r}, {h!r}")
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise DatasetError(f"{where}: field {field!r} = {w} x {h}: sides must be in 1..{MAX_SIDE}")
    return w, h


def check_box(box, w: int, h: int, where: str, field: str) -> list[float]:
    """[x1, y1, x2, y2] finite, x1 < x2, y1 < y2, inside the w x h image (one pixel of slack for
    1-based boxes)."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(number(v) for v in box)):
        raise DatasetError(f"{where}: field {field!r} must be [x1, y1, x2, y2] numbers, got {box!r}"[:300])
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(finite(v) for v in (x1, y1, x2, y2)):
        raise DatasetError(f"{where}: field {field!r} has non-finite values: {box!r}")
    if not (x1 < x2 and y1 < y2):
        raise DatasetError(f"{where}: field {field!r} = {box!r} is empty or inverted (need x1 < x2, y1 < y2)")
    if x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1:
        raise DatasetError(f"{where}: field {field!r} = {box!r} lies outside the {w} x {h} image")
    return [x1, y1, x2, y2]


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a regular file), or a one-line error."""
    regular_file(path, what)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read {what} ({exc})") from None


def load_mat(path: Path, variables: tuple[str, ...]) -> dict:
    """Read a MATLAB .mat file that must hold ``variables``; one-line errors name the file."""
    import scipy.io

    regular_file(path, "annotation file")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DatasetError(f"{path}: not a readable .mat file ({type(exc).__name__}: {str(exc)[:160]})") from None
    for var in variables:
        if var not in mat:
            present = sorted(k for k in mat if not k.startswith("__"))
            raise DatasetError(f"{path}: variable {var!r} not found (has {present})")
        if getattr(mat[var], "dtype", None) is None or mat[var].dtype.kind not in "iuf":
            raise DatasetError(f"{path}: variable {var!r} must be a numeric array, got "
                               f"{getattr(getattr(mat[var], 'dtype', None), 'name', type(mat[var]).__name__)}")
    return mat


def parse_float_list(text: str, where: str) -> list[float]:
    """Parse a ';'-separated list of floats (the PF-Pascal CSV convention)."""
    text = text.strip()
    if not text:
        return []
    try:
        values = [float(v) for v in text.split(";")]
    except ValueError:
        raise DatasetError(f"{where}: not a ';'-separated list of numbers: {text[:40]!r}") from None
    return values


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from a UTF-8 file, or a one-line error (malformed, too deep, not an object)."""
    import json

    text = read_text(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return value
