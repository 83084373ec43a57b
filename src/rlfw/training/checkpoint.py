"""Checkpoints: atomic writes, per-rank buffer files, loading, and the CSV truncation of resume.

Files in ``<run_dir>/checkpoints/``: ``last.pt`` (rank 0: networks, targets, optimisers,
normalisers, exploration state, counters, random generators, env id, config) and, with
``train.save_buffer``, one buffer file per worker (``buffer.pt`` for rank 0,
``buffer_rank<r>.pt`` for the others), each tagged with its epoch. The checkpoint written
before ``last.pt`` is kept as ``previous.pt``: when ``last.pt`` is truncated or corrupt (a full
disk, a copy cut short), resume, ``rlfw.evaluate`` and :func:`rlfw.load` fall back to it with
one warning line (:func:`load_latest`).

Every file holds tensors and plain data only (NumPy arrays are stored as tensors) and is read
with ``torch.load(weights_only=True)`` (:func:`safe_load`): a checkpoint from someone else can
never run code when it is loaded; one that needs any other type is refused with one line.
"""

from __future__ import annotations

import csv
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from rlfw.errors import ConfigError, TrainingDiverged

log = logging.getLogger("rlfw")


def to_safe(obj: Any) -> Any:
    """``obj`` with every NumPy array turned into a tensor and every NumPy scalar into a Python
    number (dicts, lists and tuples recursed), so that ``torch.load(weights_only=True)`` reads it."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def to_numpy(obj: Any) -> Any:
    """The inverse of :func:`to_safe` for state that lives in NumPy (buffers, noise): every
    tensor becomes a NumPy array."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: one line: the file needs other types (refused, nothing of it was run), or
            it is truncated or corrupt.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err) and "GLOBAL" in str(err).upper():
            raise ConfigError(
                f"{path}: refused: it holds objects other than tensors and plain data, and rlfw "
                "never unpickles those (loading them could run code)"
            ) from None
        raise ConfigError(f"{path}: cannot be read (truncated or corrupt): {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot be read (truncated or corrupt): {str(err).splitlines()[0]}") from None


LAST, PREVIOUS = "last.pt", "previous.pt"


def atomic_torch_save(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
    """Write ``obj`` (NumPy arrays stored as tensors: :func:`to_safe`) to ``path`` so that a
    reader never sees a half-written file and :func:`safe_load` can read it.

    The data goes to ``path.tmp``, is fsynced, then renamed over ``path`` (atomic on POSIX).
    With ``keep_previous`` the file at ``path`` is first renamed to that path, so the last
    complete checkpoint survives whatever happens to the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        torch.save(to_safe(obj), f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous is not None and path.exists():
        os.replace(path, keep_previous)
    os.replace(tmp, path)


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds ``last.pt`` or ``previous.pt``."""
    return (Path(directory) / LAST).exists() or (Path(directory) / PREVIOUS).exists()


def load_latest(directory: Path, name: str = LAST, map_location: Any = "cpu") -> tuple[Any, Path]:
    """Read ``directory/name`` with :func:`safe_load`; for ``last.pt`` fall back to
    ``previous.pt`` (one warning line) when ``last.pt`` is missing, truncated or corrupt.

    Returns:
        (the state, the path actually read).

    Raises:
        FileNotFoundError: no checkpoint to read.
        ConfigError: one line: the file is refused (it needs types beyond tensors and plain
            data; no fallback then), or it and ``previous.pt`` are both unreadable.
    """
    path = Path(directory) / name
    prev = Path(directory) / PREVIOUS
    try:
        return safe_load(path, map_location), path
    except (FileNotFoundError, ConfigError) as err:
        if name != LAST or not prev.exists() or "refused" in str(err):
            raise
        reason = "missing" if isinstance(err, FileNotFoundError) else "unreadable"
        log.warning("%s is %s; falling back to the previous checkpoint %s", path, reason, prev)
        try:
            return safe_load(prev, map_location), prev
        except ConfigError as err2:
            raise ConfigError(f"{path} is {reason} and the previous checkpoint too: {err2}") from None


def truncate_csv(path: Path, key: str, max_value: int) -> None:
    """Keep only the rows whose integer ``key`` is <= ``max_value`` (atomic rewrite)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    col = rows[0].index(key)
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[col])) <= max_value]
    if len(keep) == len(rows):
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows(keep)
    os.replace(tmp, path)


def truncate_logs(run_dir: Path, epoch: int) -> None:
    """Drop the metrics.csv and episodes.csv rows of epochs after ``epoch`` (resume)."""
    for name in ("metrics.csv", "episodes.csv"):
        truncate_csv(Path(run_dir) / name, "epoch", epoch)


class Checkpointer:
    """Saves and restores a :class:`rlfw.training.loop.TrainLoop`.

    Args:
        run_dir: the run directory.
        rank: this worker's rank (0 writes ``last.pt``; every rank writes its own buffer).
        save_buffer: also save the replay buffer (``train.save_buffer``).
    """

    def __init__(self, run_dir: Path, rank: int = 0, save_buffer: bool = False) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.rank, self.save_buffer = rank, bool(save_buffer)

    @property
    def last(self) -> Path:
        """``checkpoints/last.pt``."""
        return self.dir / LAST

    @property
    def buffer_file(self) -> Path:
        """This worker's buffer file."""
        return self.dir / ("buffer.pt" if self.rank == 0 else f"buffer_rank{self.rank}.pt")

    def save(self, loop: Any) -> None:
        """Every worker writes its buffer (with ``save_buffer``) before rank 0 writes ``last.pt``;
        a buffer is loaded only if it belongs to the same epoch as ``last.pt`` (a kill between
        the two writes leaves a newer buffer, which is then ignored)."""
        if self.save_buffer:
            atomic_torch_save({"epoch": loop.epoch, "buffer": loop.buffer.state_dict()}, self.buffer_file)
        if self.rank != 0:
            return
        bad = [k for k, m in loop.agent.modules().items()
               if not all(bool(torch.isfinite(t).all()) for t in m.state_dict().values() if t.is_floating_point())]  # fmt: skip
        if bad:
            raise TrainingDiverged(
                f"non-finite values in {', '.join(bad)} at epoch {loop.epoch}: checkpoint not written; "
                f"resume from the last good one with: python -m rlfw resume={loop.run_dir}"
            )
        state = {
            "agent": loop.agent.state_dict(),
            "noise": loop.exploration.state_dict(),
            "counters": {"epoch": loop.epoch, "env_steps": loop.env_steps, "episodes": loop.episodes,
                         "wall_time": loop.wall_time},
            "rng": loop.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "env_id": loop.env_id,
            "config": OmegaConf.to_container(loop.cfg, resolve=True),
        }
        atomic_torch_save(state, self.last, keep_previous=self.dir / PREVIOUS)

    def load(self, loop: Any, path: str | Path) -> None:
        """Restore ``loop`` from a checkpoint written by :meth:`save`.

        Restores networks, targets, optimisers, normalisers, exploration state, counters and
        random generators; with ``save_buffer`` also this worker's replay buffer. Rows of
        metrics.csv and episodes.csv from epochs after the checkpoint (an epoch cut short) are
        dropped, so the resumed run appends without duplicates or gaps. The envs start new
        episodes: the episode that was running when the run stopped is lost.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ConfigError: the file is refused or unreadable (:func:`safe_load`).
        """
        state, _ = load_latest(Path(path).parent, Path(path).name, map_location=loop.device)
        loop.agent.load_state_dict(state["agent"])
        loop.exploration.load_state_dict(to_numpy(state["noise"]))
        c = state["counters"]
        loop.epoch = int(c["epoch"])
        loop.collector.env_steps, loop.collector.episodes = int(c["env_steps"]), int(c["episodes"])
        loop.wall_time = float(c["wall_time"])
        loop.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if self.rank > 0:  # rank 0's saved generators, made distinct again per worker
            loop.rng = loop.collector.rng = np.random.default_rng([loop.seed, loop.epoch])
            loop.exploration.rng = loop.rng
            torch.manual_seed(loop.seed * 100_003 + loop.epoch)
        if self.save_buffer:
            if self.buffer_file.exists():
                saved = safe_load(self.buffer_file)
                if int(saved["epoch"]) == loop.epoch:
                    loop.buffer.load_state_dict(to_numpy(saved["buffer"]))
                else:
                    log.warning("%s is from epoch %s, not %d: starting with an empty buffer",
                                self.buffer_file, saved["epoch"], loop.epoch)  # fmt: skip
            else:
                log.warning("%s is missing: worker %d starts with an empty buffer", self.buffer_file, self.rank)
        if self.rank == 0:
            truncate_logs(loop.run_dir, loop.epoch)
