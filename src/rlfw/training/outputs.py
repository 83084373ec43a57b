"""The run's own files as callbacks of the loop: metrics.csv and episodes.csv (:class:`CsvFiles`),
``status.json`` (:class:`StatusFile`), ``versions.json`` (:class:`VersionsFile`) and the console
line per epoch (:class:`ConsoleLine`). Only rank 0 gets them."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rlfw.core import Callback

log = logging.getLogger("rlfw")

BASE_COLUMNS = [
    "epoch", "env_steps", "updates", "episodes", "wall_time_s", "steps_per_s",
    "train_return", "train_success_rate", "eval_return", "eval_return_std", "eval_success_rate",
]  # fmt: skip
EXPLORATION_COLUMNS = ["noise_sigma"]
EPISODE_COLUMNS = ["episode", "epoch", "env_steps", "env_index", "return", "length", "success"]


def metric_columns(agent_metrics: Sequence[str]) -> list[str]:
    """metrics.csv's header: the loop's columns, the agent's ``metric_names``, ``noise_sigma``."""
    return [*BASE_COLUMNS, *agent_metrics, *EXPLORATION_COLUMNS]


def fmt(x: Any) -> str:
    """A CSV/console cell: empty for None and NaN, 6 significant digits for floats."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


class CsvLog:
    """Append-only CSV with a fixed header; each row is flushed and fsynced."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        new = not path.exists() or path.stat().st_size == 0
        self._f = path.open("a", newline="")
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(columns)
            self._f.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` and fsync them. A failed write (a full disk) is cut back to the rows
        written before it, so the file never ends in a partial row; the error is re-raised.

        Raises:
            OSError: the write failed (``ENOSPC``, an I/O error).
        """
        self._f.flush()
        start = self._f.tell()
        try:
            for row in rows:
                self._w.writerow([fmt(row.get(c)) for c in self.columns])
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError:
            try:
                self._f.truncate(start)
            finally:
                raise

    def close(self) -> None:
        self._f.close()


class CsvFiles(Callback):
    """Appends the epoch's row to metrics.csv and its finished episodes to episodes.csv."""

    def __init__(self) -> None:
        self.metrics: CsvLog | None = None
        self.episodes: CsvLog | None = None

    def on_start(self, loop: Any) -> None:
        self.metrics = CsvLog(loop.run_dir / "metrics.csv", metric_columns(loop.agent.metric_names))
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


class StatusFile(Callback):
    """``status.json``: ``running`` while training; ``finished``, ``failed`` or ``interrupted``
    (with the error and the resume command) at the end."""

    def write(self, loop: Any, status: str, **extra: Any) -> None:
        data = {"status": status, "epoch": loop.epoch, "env_steps": loop.env_steps, **extra}
        tmp = loop.run_dir / "status.json.tmp"
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, loop.run_dir / "status.json")

    def on_start(self, loop: Any) -> None:
        self.write(loop, "running")

    def on_epoch(self, loop: Any, row: dict[str, Any]) -> None:
        self.write(loop, "running")

    def on_end(self, loop: Any) -> None:
        if loop.error is not None:
            self.write(loop, loop.status, error=loop.error, resume=f"python -m rlfw resume={loop.run_dir}")
        elif loop.status == "finished":
            reason = getattr(loop, "stop_reason", None)  # TrainLoop.request_stop
            self.write(loop, "finished", **({"stop_reason": reason} if reason else {}))


class ConsoleLine(Callback):
    """One log line per epoch (``logger.console``)."""

    def on_epoch(self, loop: Any, row: dict[str, Any]) -> None:
        log.info(
            "epoch %d/%d | env_steps %d | %.1f s | %.0f steps/s | train_success %s | "
            "eval_success %s | eval_return %s | critic_loss %s | q_mean %s",
            loop.epoch, loop.cfg.train.epochs, row["env_steps"], loop.wall_time, row["steps_per_s"],
            fmt(row["train_success_rate"]) or "-", fmt(row["eval_success_rate"]) or "-",
            fmt(row["eval_return"]) or "-", fmt(row.get("critic_loss")) or "-", fmt(row.get("q_mean")) or "-",
        )  # fmt: skip


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
    import rlfw

    pkg = Path(path or Path(rlfw.__file__).parent)
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
        tmp = loop.run_dir / "versions.json.tmp"
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, loop.run_dir / "versions.json")
