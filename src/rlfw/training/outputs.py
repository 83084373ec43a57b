"""The run's status files as callbacks of the loop: ``status.json`` (:class:`StatusFile`),
``versions.json`` (:class:`VersionsFile`) and the console line per epoch (:class:`ConsoleLine`),
with the atomic writes they use (:func:`write_json`, :func:`write_status`). Only rank 0 gets
them. metrics.csv and episodes.csv: :mod:`rlfw.training.csvfiles`; the run directory's one
writer: :mod:`rlfw.training.rundir`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from rlfw.core import Callback
from rlfw.core.runfiles import create_fresh, write_all
from rlfw.training.csvfiles import fmt

log = logging.getLogger("rlfw")


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path.tmp``, fsync it and rename it over ``path`` (atomic)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = create_fresh(tmp)  # never through a stale temp file or a link planted in its place
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically, never through a link planted
    there (:func:`replace_file`: a link at ``path`` is replaced, its target untouched)."""
    replace_file(path, (json.dumps(data, indent=2) + "\n").encode())


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
        replace_file(path, text + b" " * padding)
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
        replace_file(loop.run_dir / "versions.json", (json.dumps(data, indent=1) + "\n").encode())
