"""Fingerprints of model weights, for cache keys.

A cache keyed by a model's *name* returns stale features after the weights behind the name change
(a folder re-saved with other weights, a hub repository updated). Feature, VAE-posterior and
DINOv2-token caches are therefore keyed by :func:`model_fingerprint`:

- random-weight presets (``tiny``, ``random-sd21``, ``random-sd15``, ``random-base`` and the other DINOv2 sizes): the name and the seed, which
  fix every weight;
- a local folder: the sha256 of every file's content in the folders the model is loaded from
  (memoised per file by path, size and modification time in ``$CORRBENCH_CACHE/fingerprints.json``,
  so a file is read once);
- a hub id: the same over the local snapshot of the Hugging Face cache, whose files are links to
  blobs named by their sha256 (no file is read); a hub id not yet downloaded is fingerprinted by
  name and revision until it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

RANDOM_PRESETS = ("tiny", "random-sd21", "random-sd15", "random-base", "random-small", "random-large", "random-giant")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _memo_path() -> Path:
    base = os.environ.get("CORRBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "corrbench")
    return Path(base) / "fingerprints.json"


def _load_memo() -> dict:
    try:
        data = json.loads(_memo_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def file_digest(path: Path, memo: dict) -> str:
    """sha256 of a file's content; a Hugging Face blob link gives it by name."""
    target = Path(os.path.realpath(path))
    if _HEX64.match(target.name):
        return target.name
    st = target.stat()
    key = f"{target}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        h = hashlib.sha256()
        with open(target, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        memo[key] = h.hexdigest()
    return memo[key]


def folder_fingerprint(folder: Path, subfolders: tuple[str, ...] = ()) -> str:
    """sha256 over (relative path, content sha256) of every file under ``folder`` (or its ``subfolders``
    and its top-level files)."""
    folder = Path(folder)
    if subfolders:
        files = [p for p in folder.iterdir() if p.is_file()]
        for sub in subfolders:
            if (folder / sub).is_dir():
                files += [p for p in (folder / sub).rglob("*") if p.is_file()]
    else:
        files = [p for p in folder.rglob("*") if p.is_file()]
    memo = _load_memo()
    before = dict(memo)
    h = hashlib.sha256()
    for p in sorted(set(files)):
        rel = p.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        h.update(f"{rel}\0{file_digest(p, memo)}\n".encode())
    if memo != before:
        try:
            from loaders.atomic import write_text

            write_text(_memo_path(), json.dumps(memo))
        except OSError:
            pass  # a read-only cache only costs re-reading next time
    return h.hexdigest()[:24]


def model_fingerprint(model_id: str, seed: int = 0, subfolders: tuple[str, ...] = ()) -> str:
    if model_id in RANDOM_PRESETS:
        return f"{model_id}:seed{seed}"
    path = Path(model_id).expanduser()
    if path.is_dir():
        return "folder:" + folder_fingerprint(path, subfolders)
    try:
        from huggingface_hub import snapshot_download

        snap = snapshot_download(model_id, local_files_only=True)
        return "hub:" + folder_fingerprint(Path(snap), subfolders)
    except Exception:  # not in the local cache (yet): the name is all there is
        return f"hub-name:{model_id}"
