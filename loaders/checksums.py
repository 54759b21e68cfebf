"""The sha256 of dataset files this package records (``loaders/checksums/<dataset>.sha256``)."""

from __future__ import annotations

from importlib import resources


def known_checksums(dataset: str) -> dict[str, str]:
    """Relative path -> sha256 for the files of ``dataset`` whose checksum is known."""
    try:
        text = resources.files("loaders").joinpath(f"checksums/{dataset}.sha256").read_text()
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.strip():
            digest, rel = line.split(None, 1)
            out[rel.strip()] = digest
    return out
