"""``download``: fetch a dataset archive from its official address and unpack it under ROOT.

Nothing is downloaded unless asked for. Offline, the error says where to get the files by hand.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .errors import DatasetError

URLS = {
    "spair-71k": ["http://cvlab.postech.ac.kr/research/SPair/data/SPair-71k.tar.gz"],
    "pf-pascal": ["https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset-PASCAL.zip"],
    "pf-willow": ["https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset.zip"],
}


def _extract(archive: Path, dest: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise DatasetError(f"{archive}: unsafe path in archive: {member}")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        raise DatasetError(f"{archive}: downloaded file is neither a zip nor a tar archive")


#: what the archives do not contain
NOTES = {
    "pf-pascal": "the train/val/test pair lists are distributed separately (the NC-Net lists, "
                 "image_pairs/{train,val,test}_pairs.csv); put them in ROOT/image_pairs/",
}


def download(dataset: str, root: str | Path, timeout: float = 30.0) -> list[Path]:
    """Download and unpack every archive of ``dataset`` into ``root``; returns the archives' names.

    Each archive is fetched into a temporary file and unpacked into a temporary folder beside
    ``root`` before its contents are moved in, so an interrupted download leaves nothing behind.
    """
    if dataset not in URLS:
        raise DatasetError(f"unknown dataset {dataset!r}; valid: {', '.join(URLS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    done = []
    for url in URLS[dataset]:
        name = url.rsplit("/", 1)[-1]
        with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
            tmp = Path(tmp)
            archive = tmp / name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as out:
                    shutil.copyfileobj(resp, out, 1 << 20)
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DatasetError(
                    f"cannot download {url} ({reason}); fetch it by hand, unpack it under {root} "
                    "and pass that folder as --root"
                ) from None
            unpacked = tmp / "unpacked"
            _extract(archive, unpacked)
            for item in unpacked.iterdir():
                target = root / item.name
                if target.exists():
                    raise DatasetError(f"{target}: already exists; remove it or choose another --root")
                shutil.move(str(item), target)
        done.append(Path(name))
    return done
