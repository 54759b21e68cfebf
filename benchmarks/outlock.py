"""One writer per output folder: ``benchmarks.run`` and ``benchmarks.evaluate`` hold an exclusive
lock on ``OUT/.corrbench.lock`` while they write, so a second command into the same folder stops
with a clear message instead of interleaving its files (the lock dies with the process)."""

from __future__ import annotations

from pathlib import Path

_LOCKS: list = []


class LockedError(RuntimeError):
    """Another process is writing into the folder."""


def lock(out: Path) -> None:
    """Take the lock on ``out`` (created if missing) for this process's lifetime."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform: no protection
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    fh = open(Path(out) / ".corrbench.lock", "a+")  # noqa: SIM115 - kept open while the command lasts
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise LockedError(f"{out}: another run or evaluation is writing into this folder; wait for it to finish "
                          "or choose another --out") from None
    _LOCKS.append(fh)


def unlock() -> None:
    while _LOCKS:
        _LOCKS.pop().close()
