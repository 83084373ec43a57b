"""Checkpoints: atomic writes, per-rank buffer files, loading, and the CSV truncation of resume.

Files in ``<run_dir>/checkpoints/``: ``last.pt`` (rank 0: networks, targets, optimisers,
normalisers, exploration state, counters, random generators, env id, config) and, with
``train.save_buffer``, one buffer file per worker (``buffer.pt`` for rank 0,
``buffer_rank<r>.pt`` for the others), each tagged with its epoch.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

log = logging.getLogger("rlfw")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that a reader never sees a half-written file.

    The data goes to ``path.tmp``, is fsynced, then renamed over ``path`` (atomic on POSIX).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        return self.dir / "last.pt"

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
        atomic_torch_save(state, self.last)

    def load(self, loop: Any, path: str | Path) -> None:
        """Restore ``loop`` from a checkpoint written by :meth:`save`.

        Restores networks, targets, optimisers, normalisers, exploration state, counters and
        random generators; with ``save_buffer`` also this worker's replay buffer. Rows of
        metrics.csv and episodes.csv from epochs after the checkpoint (an epoch cut short) are
        dropped, so the resumed run appends without duplicates or gaps. The envs start new
        episodes: the episode that was running when the run stopped is lost.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
        """
        state = torch.load(path, map_location=loop.device, weights_only=False)
        loop.agent.load_state_dict(state["agent"])
        loop.exploration.load_state_dict(state["noise"])
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
                saved = torch.load(self.buffer_file, weights_only=False)
                if int(saved["epoch"]) == loop.epoch:
                    loop.buffer.load_state_dict(saved["buffer"])
                else:
                    log.warning("%s is from epoch %s, not %d: starting with an empty buffer",
                                self.buffer_file, saved["epoch"], loop.epoch)  # fmt: skip
            else:
                log.warning("%s is missing: worker %d starts with an empty buffer", self.buffer_file, self.rank)
        if self.rank == 0:
            truncate_logs(loop.run_dir, loop.epoch)
