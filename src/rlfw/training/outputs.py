"""The run's own files as callbacks of the loop: metrics.csv and episodes.csv (:class:`CsvFiles`),
``status.json`` (:class:`StatusFile`), ``versions.json`` (:class:`VersionsFile`) and the console
line per epoch (:class:`ConsoleLine`). Only rank 0 gets them.

Also the run directory's ownership: :func:`acquire_run_lock` (one writer per run directory,
``.rlfw.lock`` held with ``fcntl.flock``), :func:`holds_run` (whether a directory already holds
a run) and :func:`run_id` (the per-process part of the default run directory's name).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlfw.core import Callback
from rlfw.core.runfiles import create_fresh

log = logging.getLogger("rlfw")

BASE_COLUMNS = [
    "epoch", "env_steps", "scripted_steps", "updates", "episodes", "wall_time_s", "steps_per_s",
    "train_return", "train_success_rate", "eval_return", "eval_return_std", "eval_success_rate",
    "confirm_return", "confirm_success_rate",
]  # fmt: skip
EXPLORATION_COLUMNS = ["noise_sigma"]  # always present (empty without noise), so runs compare
EPISODE_COLUMNS = ["episode", "epoch", "env_steps", "env_index", "return", "length", "success"]


def metric_columns(agent_metrics: Sequence[str], exploration_metrics: Sequence[str] = ()) -> list[str]:
    """metrics.csv's header: the loop's columns, the agent's ``metric_names``, ``noise_sigma``
    and every other name the exploration declares in its ``metric_names`` (each once)."""
    return list(dict.fromkeys([*BASE_COLUMNS, *agent_metrics, *EXPLORATION_COLUMNS, *exploration_metrics]))


def fmt(x: Any) -> str:
    """A CSV/console cell: empty for None and NaN, 6 significant digits for floats."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _csv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode()


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class CsvLog:
    """Append-only CSV with a fixed header; each batch of rows is written with one binary
    ``os.write`` sequence and fsynced.

    The file descriptor is unbuffered (no text wrapper): a failed write (a full disk) is cut
    back with ``os.ftruncate`` to the size before the batch, so the file never ends in a
    partial row (a text wrapper's ``truncate`` flushes its buffer first and fails again).
    """

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        # never through a link planted in the run directory (ELOOP: the run fails with one line)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
        if os.fstat(self._fd).st_nlink > 1:  # a hard link: appending would change the other name's file too
            os.close(self._fd)
            self._fd = -1
            raise OSError(errno.EPERM, f"{path} is a hard link shared with another file: rlfw appends only to its own files")
        if os.fstat(self._fd).st_size == 0:
            self._append([columns])

    def _append(self, rows: Iterable[Sequence[str]]) -> None:
        start = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, _csv_bytes(rows))
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            finally:
                raise

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` and fsync them. A failed write (a full disk) is cut back to the rows
        written before it, so the file never ends in a partial row; the error is re-raised.

        Raises:
            OSError: the write failed (``ENOSPC``, an I/O error).
        """
        self._append([[fmt(row.get(c)) for c in self.columns] for row in rows])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class CsvFiles(Callback):
    """Appends the epoch's row to metrics.csv and its finished episodes to episodes.csv."""

    def __init__(self) -> None:
        self.metrics: CsvLog | None = None
        self.episodes: CsvLog | None = None

    def on_start(self, loop: Any) -> None:
        exploration = getattr(loop, "exploration", None)
        self.metrics = CsvLog(loop.run_dir / "metrics.csv",
                              metric_columns(loop.agent.metric_names, getattr(exploration, "metric_names", ())))  # fmt: skip
        self.episodes = CsvLog(loop.run_dir / "episodes.csv", EPISODE_COLUMNS)

    def on_epoch(self, loop: Any, row: dict[str, Any]) -> None:
        assert self.metrics is not None and self.episodes is not None
        self.episodes.write(loop.last_episodes)
        self.metrics.write([row])

    def on_end(self, loop: Any) -> None:
        for f in (self.metrics, self.episodes):
            if f is not None:
                f.close()
        self.metrics = self.episodes = None


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path.tmp``, fsync it and rename it over ``path`` (atomic)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = create_fresh(tmp)  # never through a stale temp file or a link planted in its place
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically, never through a link planted
    there (:func:`_replace_file`: a link at ``path`` is replaced, its target untouched)."""
    _replace_file(path, (json.dumps(data, indent=2) + "\n").encode())


def _overwrite_in_place(path: Path, data: bytes) -> None:
    """Write ``data`` over the start of the existing ``path`` and cut it to ``len(data)``: the
    file's blocks are already allocated, so this works on a full disk where a new file cannot
    be written (the fallback of :func:`write_status`)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view, offset = memoryview(data), 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def write_status(path: Path, data: dict[str, Any], padding: int = 0) -> None:
    """Write ``status.json`` so that it cannot be lost or half-written.

    First atomically (a temp file renamed over it); when that fails (``ENOSPC``: a full disk
    has no block for a new file) the JSON is written in place over the existing file, whose
    blocks are already allocated, and the file is cut to its length. ``padding`` trailing
    spaces reserve room for a longer final status (JSON ignores them).

    Raises:
        OSError: both ways failed (the file does not exist yet, or the device fails).
    """
    text = (json.dumps(data) + "\n").encode()
    try:
        _replace_file(path, text + b" " * padding)
    except OSError as err:
        if not path.exists():
            raise
        log.warning("cannot replace %s (%s): writing it in place", path, err)
        _overwrite_in_place(path, text)


# status.json while running is padded to this size, so a final status written in place on a full
# disk (error message and resume command included) needs no new block
STATUS_RESERVE = 4096


class StatusFile(Callback):
    """``status.json``: ``running`` while training; ``finished``, ``failed`` or ``interrupted``
    (with the error, and the resume command where there is something to resume: an
    interrupted run, or a checkpoint) at the end (:func:`write_status`: atomic, with an
    in-place fallback on a full disk, so the final status is not lost)."""

    def write(self, loop: Any, status: str, **extra: Any) -> None:
        data = {"status": status, "epoch": loop.epoch, "env_steps": loop.env_steps, **extra}
        text = json.dumps(data) + "\n"
        padding = max(0, STATUS_RESERVE - len(text)) if status == "running" else 0
        write_status(loop.run_dir / "status.json", data, padding)

    def on_start(self, loop: Any) -> None:
        self.write(loop, "running")

    def on_epoch(self, loop: Any, row: dict[str, Any]) -> None:
        self.write(loop, "running")

    def on_end(self, loop: Any) -> None:
        if loop.error is not None:
            ckpt = loop.run_dir / "checkpoints"
            resumable = loop.status == "interrupted" or (ckpt / "last.pt").exists() or (ckpt / "previous.pt").exists()
            hint = {"resume": f"python -m rlfw resume={loop.run_dir}"} if resumable else {}
            self.write(loop, loop.status, error=loop.error, **hint)
        elif loop.status == "finished":
            reason = getattr(loop, "stop_reason", None)  # TrainLoop.request_stop
            delivered = getattr(loop, "delivered", None)  # TrainLoop.final_evaluation
            extra: dict[str, Any] = {"stop_reason": reason} if reason else {}
            if delivered:
                extra["delivered"] = {k: delivered[k] for k in ("checkpoint", "checkpoint_epoch", "episodes",
                                                               "success_rate", "success_ci", "return_mean", "return_ci")}
            self.write(loop, "finished", **extra)


class ConsoleLine(Callback):
    """One log line per epoch (``logger.console``)."""

    def on_epoch(self, loop: Any, row: dict[str, Any]) -> None:
        log.info(
            "epoch %d/%d | env_steps %d | %.1f s | %.0f steps/s | train_success %s | "
            "eval_success %s | eval_return %s | critic_loss %s | q_mean %s%s",
            loop.epoch, loop.cfg.train.epochs, row["env_steps"], loop.wall_time, row["steps_per_s"],
            fmt(row["train_success_rate"]) or "-", fmt(row["eval_success_rate"]) or "-",
            fmt(row["eval_return"]) or "-", fmt(row.get("critic_loss")) or "-", fmt(row.get("q_mean")) or "-",
            _confirmed(row),
        )  # fmt: skip


def _confirmed(row: dict[str, Any]) -> str:
    """`` | confirmed success 0.93`` (or return) when the epoch ran a confirmation evaluation."""
    for key, name in (("confirm_success_rate", "success"), ("confirm_return", "return")):
        if fmt(row.get(key)):
            return f" | confirmed {name} {fmt(row[key])}"
    return ""


# the distributions whose versions a run records (the optional ones only when installed)
VERSIONED = ("rlfw", "torch", "numpy", "gymnasium", "gymnasium-robotics", "mujoco")
VERSIONED_OPTIONAL = ("panda-gym", "flwr", "wandb", "tensorboard")
GIT_TIMEOUT_S = 5.0


def _git(args: list[str], cwd: Path) -> str | None:
    """``git <args>`` in ``cwd``: its stdout stripped, or None (no git, not a checkout, a
    timeout, an error)."""
    import subprocess

    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(path: Path | None = None) -> dict[str, Any] | None:
    """The git commit of the checkout that ``path`` (default: the rlfw package) belongs to.

    Only when the package's own files are tracked by that checkout (an editable install from a
    clone), so a virtual environment that happens to sit inside some repository does not
    record that repository's commit.

    Returns:
        ``{"commit": <40 hex>, "dirty": <tracked files changed>}``, or None (no git, not a
        checkout, git timed out after :data:`GIT_TIMEOUT_S` seconds): never an error.
    """
    pkg = Path(path or Path(__file__).resolve().parent.parent)  # the rlfw package
    if _git(["ls-files", "--error-unmatch", "--", "__init__.py"], pkg) is None:
        return None
    commit = _git(["rev-parse", "HEAD"], pkg)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], pkg)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def versions() -> dict[str, Any]:
    """What a run was made with: Python's version and the installed versions of rlfw, torch,
    numpy, gymnasium, gymnasium-robotics and mujoco (``null`` if one is missing), and of
    panda-gym, flwr, wandb and tensorboard when installed (from :mod:`importlib.metadata`),
    plus ``git`` (:func:`git_state`) when rlfw runs from a git checkout.

    Returns:
        ``{"python": "3.12.3", "packages": {"torch": "2.13.0", ...}, "git": {...}}`` (no
        ``git`` key outside a checkout).
    """
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    packages: dict[str, str | None] = {name: version(name) for name in VERSIONED}
    for name in VERSIONED_OPTIONAL:
        v = version(name)
        if v is not None:
            packages[name] = v
    out: dict[str, Any] = {"python": platform.python_version(), "packages": packages}
    git = git_state()
    if git is not None:
        out["git"] = git
    return out


class VersionsFile(Callback):
    """``versions.json``: :func:`versions` at the start of training (a resume rewrites it with
    the versions it runs with). A failure to find a version is never an error of the run."""

    def on_start(self, loop: Any) -> None:
        data = versions()
        _replace_file(loop.run_dir / "versions.json", (json.dumps(data, indent=1) + "\n").encode())


# ------------------------------------------------------------------------ run directory ownership

LOCK_NAME = ".rlfw.lock"
RUN_FILES = ("metrics.csv", "status.json", "checkpoints")
_held: dict[Path, list[int]] = {}  # run dir -> [lock fd, holds] of this process
_RUN_ID: str | None = None


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


def run_id() -> str:
    """The per-process part of the default run directory's name (resolver ``${rlfw_run_id:}``
    in ``hydra.run.dir``): ``<pid>-<4 random hex digits>``, the same for every call in one
    process, so runs started in the same second (parallel launches, on one host or on several
    sharing a file system) get different directories."""
    global _RUN_ID
    if _RUN_ID is None:
        _RUN_ID = f"{os.getpid()}-{secrets.token_hex(2)}"
    return _RUN_ID
