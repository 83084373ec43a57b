"""The run directory's ownership: :func:`acquire_run_lock` (one writer per run directory,
``.rlfw.lock`` held with ``fcntl.flock``), :func:`holds_run` (whether a directory already holds
a run) and :func:`run_id` (the per-process part of the default run directory's name).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from rlfw.config.paths import run_id  # noqa: F401 - re-exported (it lives in the config layer, for ${rlfw_run_id:})

LOCK_NAME = ".rlfw.lock"
RUN_FILES = ("metrics.csv", "status.json", "checkpoints")
_held: dict[Path, list[int]] = {}  # run dir -> [lock fd, holds] of this process


class RunDirLocked(OSError):
    """Another process holds the run directory's lock. ``pid`` is the holder's (or None)."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        holder = f"rlfw process {pid}" if pid else "another rlfw process"
        super().__init__(f"{run_dir} is in use by {holder}: one writer per run directory; wait for it to "
                         "end (or stop it) first")  # fmt: skip
        self.run_dir, self.pid = run_dir, pid


def acquire_run_lock(run_dir: str | Path) -> None:
    """Take ``<run_dir>/.rlfw.lock`` (``fcntl.flock``, exclusive, non-blocking) for this process
    and write its pid into it; the directory is created if needed.

    The OS releases the lock when the process ends in any way (``kill -9`` included), so a stale
    lock file never blocks. Re-entrant within one process (counted; see :func:`release_run_lock`).
    With several workers or launcher ranks only the launcher or rank 0 takes it.

    Raises:
        RunDirLocked: another process holds it (the message names its pid).
    """
    import fcntl

    path = Path(run_dir).expanduser().resolve()
    if path in _held:
        _held[path][1] += 1
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        try:
            raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise RunDirLocked(path, int(raw) if raw.isdigit() else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = [fd, 1]


def release_run_lock(run_dir: str | Path) -> None:
    """Undo one :func:`acquire_run_lock` of this process; the last one unlocks."""
    path = Path(run_dir).expanduser().resolve()
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[path]
        os.close(entry[0])  # closing the only descriptor releases the flock


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """:func:`acquire_run_lock` for the duration of a ``with`` block."""
    acquire_run_lock(run_dir)
    try:
        yield
    finally:
        release_run_lock(run_dir)


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a run: a ``metrics.csv``, ``status.json`` or a
    non-empty ``checkpoints/`` (``.hydra/`` and ``rlfw.log`` alone do not count: Hydra writes
    them before any training)."""
    d = Path(run_dir)
    ckpt = d / "checkpoints"
    return (d / "metrics.csv").exists() or (d / "status.json").exists() or (ckpt.is_dir() and any(ckpt.iterdir()))
