"""What a run records about where it ran: package versions, the matcher's source, the git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("corrbench", "numpy", "pyarrow", "pandas", "torch", "diffusers", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def matcher_source(cls) -> dict:
    """Where a matcher class comes from: its module and the installed distribution (name, version)
    that provides it (plugins included)."""
    from importlib.metadata import packages_distributions

    top = cls.__module__.split(".")[0]
    dists = sorted(set(packages_distributions().get(top, [])))
    out = {"module": cls.__module__, "class": cls.__name__, "distribution": dists[0] if dists else None, "version": None}
    if dists:
        try:
            out["version"] = version(dists[0])
        except PackageNotFoundError:
            pass
    return out


def git_hash() -> str:
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if res.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return res.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"
