"""``download``: fetch a dataset archive from its official address and unpack it safely under ROOT.

Nothing is downloaded unless asked for. Every archive is treated as hostile until checked:

- its sha256 is computed while it downloads and must equal the checksum recorded for it here, or
  the one the user passes (``--sha256``); where neither exists but the package records the sha256
  of every data file (PF-Willow), each unpacked file must match its own; with none of these,
  nothing is unpacked unless the user says ``--allow-unverified``, and the computed checksum is
  printed so that it can be pinned;
- members are unpacked one by one, only regular files and folders, each path relative, without
  ``..``, NUL or drive letters, and inside the target after resolving; links, devices and FIFOs
  are refused;
- the bytes actually written are counted against a cap per dataset (zip bombs, lying headers);
- everything happens in a ``.download-*`` folder beside ROOT's contents that is removed on any
  failure (and stale ones from killed runs are removed first); the unpacked top-level items move
  into ROOT only when all of them unpacked, and none replaces an existing one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DatasetError

GiB = 1 << 30


@dataclass(frozen=True)
class Archive:
    url: str
    #: the archive's sha256 as published or pinned from a trusted copy; None: not recorded
    sha256: str | None
    #: cap on the bytes unpacked from it
    max_bytes: int


# No checksums are published with these archives, and none could be pinned from a trusted copy
# while writing this; a user who has verified a copy passes --sha256 (the download prints it).
ARCHIVES = {
    "spair-71k": [Archive("http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz", None, 8 * GiB)],
    "pf-pascal": [Archive("https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset-PASCAL.zip", None, 2 * GiB)],
    "pf-willow": [Archive("https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset.zip", None, GiB // 4)],
    "cub-200-2011": [Archive("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", None, 2 * GiB)],
}
URLS = {k: [a.url for a in v] for k, v in ARCHIVES.items()}

#: what the archives do not contain
#: datasets that need steps no download can do
MANUAL = {
    "ap-10k": "fetch the AP-10K release (ap-10k.zip, Google Drive id 1-FNNGcdtAQRehYYkGY1y4wzFNg4iWNad) and "
              "GeoAware-SC's data/ap-10k_is_crowd.txt, then run python -m loaders build-ap10k",
    "spair-u": "unzip https://groups.inf.ed.ac.uk/hbilen-data/data/JamaisVuData/SPair-U.zip and move its SPair-U/ "
               "folder into the SPair-71k root (see the README)",
}

NOTES = {
    "pf-pascal": "the train/val/test pair lists are distributed separately (the NC-Net lists, "
                 "image_pairs/{train,val,test}_pairs.csv); put them in ROOT/image_pairs/",
}


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    if not name or "\x00" in name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"{archive}: unsafe member path {name[:80]!r} (absolute or malformed)")
    pure = PurePosixPath(name.replace("\\", "/"))
    if ".." in pure.parts:
        raise DatasetError(f"{archive}: unsafe member path {name[:80]!r} (leaves the target)")
    return pure


class _Budget:
    def __init__(self, archive: Path, cap: int):
        self.archive, self.cap, self.used = archive, cap, 0

    def copy(self, src, dst: Path) -> None:
        with open(dst, "xb") as out:
            while True:
                block = src.read(1 << 20)
                if not block:
                    return
                self.used += len(block)
                if self.used > self.cap:
                    raise DatasetError(f"{self.archive}: unpacks to more than {self.cap / GiB:.2f} GiB; refusing "
                                       "(a damaged or hostile archive?)")
                out.write(block)


def _target(dest: Path, pure: PurePosixPath, archive: Path) -> Path:
    path = dest.joinpath(*pure.parts)
    real_dest = dest.resolve()
    resolved = path.resolve()
    if resolved != real_dest and real_dest not in resolved.parents:
        raise DatasetError(f"{archive}: member {pure.as_posix()[:80]!r} resolves outside the target")
    return path


def _member(dest: Path, name: str, is_dir: bool, open_data, archive: Path, budget: _Budget) -> None:
    """Unpack one checked member: a folder, or a regular file whose bytes count against ``budget``."""
    path = _target(dest, _safe_member(name, archive), archive)
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    src = open_data()
    if src is None:  # pragma: no cover - a regular member always has data
        raise DatasetError(f"{archive}: member {name[:80]!r} has no data")
    with src:
        budget.copy(src, path)


def extract(archive: Path, dest: Path, max_bytes: int) -> None:
    """Unpack ``archive`` (zip or tar, any compression) into ``dest``, member by member, safely."""
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(archive, max_bytes)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _safe_member(info.filename, archive)
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded (a plain file)
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise DatasetError(f"{archive}: member {info.filename[:80]!r} is a link or special file")
                _member(dest, info.filename, info.is_dir(), lambda info=info: zf.open(info), archive, budget)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf:
                _safe_member(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise DatasetError(f"{archive}: member {member.name[:80]!r} is a link, device or FIFO; refusing")
                _member(dest, member.name, member.isdir(), lambda member=member: tf.extractfile(member), archive, budget)
    else:
        raise DatasetError(f"{archive}: downloaded file is neither a zip nor a tar archive")


def known_file_checksums(dataset: str) -> dict[str, str]:
    """sha256 of each data file of ``dataset`` recorded in the package (relative to the folder that holds
    its subsets), or {} where none are recorded."""
    from .checksums import known_checksums

    try:
        return known_checksums(dataset)
    except Exception:  # no file for this dataset
        return {}


def check_files(unpacked: Path, files: dict[str, str], url: str) -> None:
    """Every recorded data file must be in the unpacked archive with its recorded sha256."""
    first = next(iter(sorted(files)))
    folders = [unpacked, *(d for d in unpacked.rglob("*") if d.is_dir())]
    base = next((d for d in folders if (d / first).is_file()), None)  # the folder that holds the subsets
    bad = []
    for rel, want in sorted(files.items()):
        path = base / rel if base is not None else None
        if path is None or not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != want:
            bad.append(rel)
    if bad:
        raise DatasetError(f"{url}: {len(bad)} of {len(files)} data files are missing or differ from their recorded "
                           f"sha256 (first: {bad[0]}); nothing was unpacked")


def _fetch(url: str, archive: Path, timeout: float, root: Path) -> str:
    """Download ``url`` to ``archive``; returns its sha256."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) if hasattr(resp, "headers") else 0
            bar = None
            if total > 1 << 20:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=archive.name)
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                out.write(block)
                if bar:
                    bar.update(len(block))
            if bar:
                bar.close()
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DatasetError(f"cannot download {url} ({reason}); fetch it by hand, unpack it under {root} "
                           "and give that folder as the dataset root (--root / --data-root)") from None
    return h.hexdigest()


def download(dataset: str, root: str | Path, timeout: float = 30.0, *, sha256: str | None = None,
             allow_unverified: bool = False, archives: list[Archive] | None = None) -> list[Path]:
    """Download, verify and unpack every archive of ``dataset`` into ``root``; returns the archives' names.

    ``sha256``: the expected checksum (single-archive datasets) when none is recorded here, or to
    check against a copy the user trusts; ``allow_unverified``: unpack without any checksum.
    ``archives``: replaces the built-in list (tests, mirrors).
    """
    if dataset in MANUAL and archives is None:
        raise DatasetError(f"{dataset} cannot be downloaded by this toolkit: {MANUAL[dataset]}")
    if dataset not in ARCHIVES and archives is None:
        raise DatasetError(f"unknown dataset {dataset!r}; valid: {', '.join(ARCHIVES)}")
    items = archives if archives is not None else ARCHIVES[dataset]
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(items) != 1 or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise DatasetError("--sha256 takes one 64-digit hexadecimal checksum, for a dataset with one archive")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: --root is a file, not a folder")
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".download-*"):  # left by a killed download
        shutil.rmtree(stale, ignore_errors=True)
    done = []
    for item in items:
        name = item.url.rsplit("/", 1)[-1]
        expected = sha256 or item.sha256
        with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
            tmp = Path(tmp)
            archive = tmp / name
            got = _fetch(item.url, archive, timeout, root)
            files = known_file_checksums(dataset) if archives is None else {}
            if expected is None and not allow_unverified and not files:
                raise DatasetError(f"{item.url}: no checksum is recorded for this archive, so it is not unpacked "
                                   f"(downloaded sha256 {got}); check it against a source you trust and pass "
                                   "--sha256 HEX, or pass --allow-unverified")
            if expected is not None and got != expected:
                raise DatasetError(f"{item.url}: sha256 {got} does not match the expected {expected}; "
                                   "the download is damaged or tampered with, nothing was unpacked")
            unpacked = tmp / "unpacked"
            extract(archive, unpacked, item.max_bytes)
            if expected is None and not allow_unverified:  # no archive checksum: every data file must match its own
                check_files(unpacked, files, item.url)
            tops = sorted(unpacked.iterdir())
            clash = [root / t.name for t in tops if (root / t.name).exists()]
            if clash:
                raise DatasetError(f"{clash[0]}: already exists; remove it or choose another --root")
            moved = []
            try:
                for t in tops:
                    os.replace(t, root / t.name)  # same file system: one rename each
                    moved.append(root / t.name)
            except OSError:
                for m in moved:  # all or nothing
                    shutil.rmtree(m, ignore_errors=True) if m.is_dir() else m.unlink(missing_ok=True)
                raise
        done.append(Path(name))
    return done
