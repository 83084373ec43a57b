"""Checkpoints: atomic writes, per-rank buffer files, loading, and the CSV truncation of resume.

Files in ``<run_dir>/checkpoints/``: ``last.pt`` (rank 0: networks, targets, optimisers,
normalisers, exploration state, counters, random generators, env id, config) and, with
``train.save_buffer``, one buffer file per worker (``buffer.pt`` for rank 0,
``buffer_rank<r>.pt`` for the others), each tagged with its epoch. The checkpoint written
before ``last.pt`` is kept as ``previous.pt``: when ``last.pt`` is truncated or corrupt (a full
disk, a copy cut short), resume, ``rlfw.evaluate`` and :func:`rlfw.load` fall back to it with
one warning line (:func:`load_latest`). ``best.pt`` (rank 0) holds the same state as ``last.pt``
at the evaluation whose ``eval.metric`` was the best so far (:meth:`Checkpointer.save_best`).
With ``train.keep_checkpoints=N`` the last N epochs' checkpoints are also kept as
``epoch_<k>.pt`` (Stable-Baselines3's CheckpointCallback; a hard link to that epoch's
``last.pt``, so no extra copy), loaded with ``checkpoint=epoch_<k>.pt``.

Every file holds tensors and plain data only (NumPy arrays are stored as tensors) and is read
with ``torch.load(weights_only=True)`` (:func:`safe_load`): a checkpoint from someone else can
never run code when it is loaded; one that needs any other type is refused with one line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from rlfw.core import decision_metric_name
from rlfw.core.runfiles import MAX_CHECKPOINT_BYTES, check_regular, create_fresh
from rlfw.errors import ConfigError, TrainingDiverged, first_line
from rlfw.training.csvfiles import truncate_logs

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
        raise ConfigError(f"{path}: cannot be read (truncated or corrupt): {first_line(err)}") from None
    except Exception as err:  # any other failure of the weights-only reader: damaged bytes, never code
        raise ConfigError(f"{path}: cannot be read (truncated or corrupt): {first_line(err)}") from None



LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"


def atomic_torch_save(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
    """Write ``obj`` (NumPy arrays stored as tensors: :func:`to_safe`) to ``path`` so that a
    reader never sees a half-written file and :func:`safe_load` can read it.

    The data goes to ``path.tmp``, is fsynced, then renamed over ``path`` (atomic on POSIX).
    With ``keep_previous`` the file at ``path`` is first renamed to that path, so the last
    complete checkpoint survives whatever happens to the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with os.fdopen(create_fresh(tmp), "wb") as f:  # never through a planted link
            torch.save(to_safe(obj), f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:  # torch's writer reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink()  # no half-written temp file stays on a full disk
        code = getattr(err, "errno", None) or (errno.ENOSPC if "space" in str(err).lower() else errno.EIO)
        raise OSError(code, f"cannot write {path} ({first_line(err)})") from None
    if keep_previous is not None and path.exists():
        os.replace(path, keep_previous)
    os.replace(tmp, path)


CHECKPOINT_NAMES = {"last": LAST, "best": BEST}  # checkpoint=best|last of evaluate, load, export


def checkpoint_file(run_dir: str | Path, checkpoint: str = "last") -> Path:
    """``<run_dir>/checkpoints/<file>`` for ``checkpoint``: ``last`` (``last.pt``), ``best``
    (``best.pt``), or a file name in ``checkpoints/`` (``last.pt``, ``previous.pt``).

    Raises:
        ConfigError: one line: ``checkpoint`` is neither of those (a path, an empty name).
    """
    name = CHECKPOINT_NAMES.get(str(checkpoint), str(checkpoint))
    if not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(
            f"checkpoint={checkpoint!r}: choose one of: best, last (or a file name in <run_dir>/checkpoints/)"
        )
    return Path(run_dir).expanduser() / "checkpoints" / name


POLICY_KEYS = ("agent", "config", "counters")


def check_policy_state(state: Any, path: str | Path) -> dict[str, Any]:
    """``state`` if it is a policy checkpoint (``last.pt``/``best.pt``: ``agent``, ``config``,
    ``counters``), for evaluate, load and export.

    Raises:
        ConfigError: one line naming the file: it is not a policy checkpoint (a buffer file,
            another program's weights).
    """
    missing = [k for k in POLICY_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        what = "a replay buffer file" if isinstance(state, dict) and "buffer" in state else "not an rlfw policy checkpoint"
        raise ConfigError(
            f"{path}: {what} (it lacks {', '.join(missing)}); use checkpoint=best or checkpoint=last"
        )
    assert isinstance(state, dict)
    counters = state["counters"]
    if not isinstance(state["agent"], dict):
        raise ConfigError(f"{path}: its agent entry is a {type(state['agent']).__name__}, not the networks' states (damaged)")
    if not isinstance(counters, dict) or not all(
        isinstance(counters.get(k), int) and counters[k] >= 0 for k in ("epoch", "env_steps")
    ):
        raise ConfigError(f"{path}: its counters are not an epoch and env steps (damaged)")
    from rlfw.core.runfiles import plain_config

    # the config with its interpolations resolved: what the trust check reads is what is built
    resolved = OmegaConf.to_container(plain_config(state["config"], f"{path}"))
    return {**state, "config": resolved}


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds ``last.pt`` or ``previous.pt``."""
    return (Path(directory) / LAST).exists() or (Path(directory) / PREVIOUS).exists()


def load_latest(directory: Path, name: str = LAST, map_location: Any = "cpu",
                check: Any = None) -> tuple[Any, Path]:  # fmt: skip
    """Read ``directory/name`` with :func:`safe_load`; for ``last.pt`` fall back to
    ``previous.pt`` (one warning line) when ``last.pt`` is missing, truncated or corrupt, or
    (given ``check(state, path)``, which returns the state or raises ConfigError) readable but
    not what ``check`` accepts.

    Returns:
        (the state, the path actually read).

    Raises:
        FileNotFoundError: no checkpoint to read.
        ConfigError: one line: the file is refused (it needs types beyond tensors and plain
            data; no fallback then), or it and ``previous.pt`` are both unreadable.
    """
    path = Path(directory) / name
    prev = Path(directory) / PREVIOUS
    for p in (path, prev):  # a link or a special file is refused, not followed (a run dir is data)
        with contextlib.suppress(FileNotFoundError):
            check_regular(p, MAX_CHECKPOINT_BYTES)
    def read(p: Path) -> Any:
        state = safe_load(p, map_location)
        return check(state, p) if check is not None else state

    try:
        return read(path), path
    except (FileNotFoundError, ConfigError) as err:
        if name != LAST or not prev.exists() or "refused" in str(err):
            raise
        reason = "missing" if isinstance(err, FileNotFoundError) else f"unusable ({first_line(err)})"
        log.warning("%s is %s; falling back to the previous checkpoint %s", path, reason, prev)
        try:
            return read(prev), prev
        except ConfigError as err2:
            raise ConfigError(f"{path} is {reason} and the previous checkpoint too: {err2}") from None


def divergence_advice(run_dir: Path, cfg: Any, good_epoch: int, has_checkpoint: bool) -> str:
    """What to do after a divergence, as a command that can work: resume from the last good
    checkpoint with halved learning rates and another seed (resume takes ``algo.actor_lr``,
    ``algo.critic_lr`` and ``seed``), or, with no checkpoint yet, a fresh run with them."""
    actor = float(OmegaConf.select(cfg, "algo.actor_lr", default=1e-3))
    critic = float(OmegaConf.select(cfg, "algo.critic_lr", default=1e-3))
    seed = int(OmegaConf.select(cfg, "seed", default=0))
    changes = f"algo.actor_lr={actor / 2:g} algo.critic_lr={critic / 2:g} seed={seed + 1}"
    if has_checkpoint:
        return (f"resume from the last good checkpoint (epoch {good_epoch}) with lower learning rates or another "
                f"seed, e.g.: python -m rlfw resume={run_dir} {changes}")  # fmt: skip
    overrides: list[str] = []
    saved = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        import yaml

        loaded = yaml.safe_load(saved.read_text()) if saved.exists() else []
        overrides = [str(o) for o in loaded or [] if not str(o).startswith(("algo.actor_lr=", "algo.critic_lr=", "seed="))]
    except (OSError, ValueError, yaml.YAMLError):
        overrides = []
    return ("no checkpoint was written yet, so there is nothing to resume; start a new run with lower learning "
            f"rates or another seed, e.g.: python -m rlfw {' '.join([*overrides, changes])}")  # fmt: skip


@dataclass
class TrainingState:
    """What the loop and its checkpointer exchange: the loop's counters (the checkpoint's
    ``counters``). The parts' own state (networks, optimisers, exploration, buffer, the run's
    random generator) the checkpointer saves and restores in place.

    Attributes:
        epoch: epochs finished.
        env_steps: this worker's env steps.
        episodes: this worker's finished training episodes.
        wall_time: seconds spent training (``wall_time_s``).
        scripted_steps: simulator steps of scripted starts over all workers (``scripted_steps``;
            :class:`rlfw.envs.grasp.ScriptedStart`).
    """

    epoch: int = 0
    env_steps: int = 0
    episodes: int = 0
    wall_time: float = 0.0
    scripted_steps: int = 0


class Checkpointer:
    """Saves and restores a run's parts and its :class:`TrainingState`.

    Args:
        run_dir: the run directory.
        rank: this worker's rank (0 writes ``last.pt``; every rank writes its own buffer).
        save_buffer: also save the replay buffer (``train.save_buffer``).
        cfg: the run's config (saved in the checkpoint; its learning rates apply on resume).
        parts: the built components (:class:`rlfw.build.Components`: agent, exploration,
            buffer, the random generator ``rng`` and ``seed``, env id and info).
    """

    def __init__(self, run_dir: Path, rank: int = 0, save_buffer: bool = False, *, cfg: Any, parts: Any) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.rank, self.save_buffer = rank, bool(save_buffer)
        self.cfg, self.parts = cfg, parts
        # the best evaluation so far ({"metric", "value", "epoch"}; None before the first)
        self.best: dict[str, Any] | None = None

    @property
    def last(self) -> Path:
        """``checkpoints/last.pt``."""
        return self.dir / LAST

    @property
    def buffer_file(self) -> Path:
        """This worker's buffer file."""
        return self.dir / ("buffer.pt" if self.rank == 0 else f"buffer_rank{self.rank}.pt")

    def save(self, state: TrainingState) -> None:
        """Rank 0 writes ``last.pt``, then every worker its buffer (with ``save_buffer``): the
        small file that a resume needs first, so that a full disk while writing the large buffer
        still leaves the epoch's ``last.pt``. A buffer is loaded only if it belongs to the same
        epoch as ``last.pt`` (a kill or a full disk between the two writes leaves an older
        buffer, which is then ignored with a warning)."""
        if self.rank == 0:
            atomic_torch_save(self._state(state), self.last, keep_previous=self.dir / PREVIOUS)
            if int(self.cfg.train.get("keep_checkpoints", 0) or 0) > 0:
                self._keep_snapshot(state.epoch, int(self.cfg.train.keep_checkpoints))
        if self.save_buffer:
            atomic_torch_save({"epoch": state.epoch, "buffer": self.parts.buffer.state_dict()}, self.buffer_file)

    def _keep_snapshot(self, epoch: int, keep: int) -> None:
        """``epoch_<epoch>.pt``: the ``last.pt`` just written, hard-linked (copied where links
        fail), then only the ``keep`` newest snapshots up to ``epoch`` stay (those of later
        epochs belong to a timeline a resume abandoned and go too).

        Raises:
            OSError: the snapshot cannot be written.
        """
        import shutil

        snap = self.dir / f"epoch_{epoch}.pt"
        tmp = self.dir / f".epoch_{epoch}.pt.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(self.last, tmp)  # last.pt is replaced by a rename: the link keeps this epoch's file
        except OSError:
            shutil.copyfile(self.last, tmp, follow_symlinks=False)
        os.replace(tmp, snap)
        snaps = sorted((int(p.stem.split("_", 1)[1]), p) for p in self.dir.glob("epoch_*.pt")
                       if p.stem.split("_", 1)[1].isdigit())  # fmt: skip
        kept = [k for k, _ in snaps if k <= epoch][-keep:]
        for k, path in snaps:
            if k not in kept:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _state(self, state: TrainingState) -> dict[str, Any]:
        """What ``last.pt`` and ``best.pt`` hold (the best evaluation so far included).

        Raises:
            TrainingDiverged: a network or normaliser holds a non-finite value.
        """
        p = self.parts
        bad = [k for k, m in p.agent.modules().items()
               if not all(bool(torch.isfinite(t).all()) for t in m.state_dict().values() if t.is_floating_point())]  # fmt: skip
        if bad:
            good = state.epoch - 1 - (state.epoch - 1) % self.cfg.train.checkpoint_every
            raise TrainingDiverged(
                f"non-finite values in {', '.join(bad)} at epoch {state.epoch}: checkpoint not written; "
                + divergence_advice(self.run_dir, self.cfg, good, has_checkpoint(self.dir))
            )
        return {
            "agent": p.agent.state_dict(),
            "noise": p.exploration.state_dict(),
            "counters": {"epoch": state.epoch, "env_steps": state.env_steps, "episodes": state.episodes,
                         "wall_time": state.wall_time, "scripted_steps": state.scripted_steps},
            "rng": p.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "env_id": p.env.env_id,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "best": self.best,
        }

    def save_best(self, state: TrainingState, row: dict[str, Any]) -> bool:
        """Write ``best.pt`` (rank 0) if this epoch's evaluation beats the best so far.

        The ranking column is :func:`rlfw.core.decision_metric_name`: the confirmation
        evaluation's (``confirm_success_rate`` for goal envs, ``confirm_return`` otherwise) when
        ``eval.confirm_episodes`` > 0, else the cheap evaluation's; an epoch without an evaluation or with a NaN value never counts,
        and a tie keeps the earlier epoch. The file holds the same state as ``last.pt``, written
        atomically (:func:`atomic_torch_save`); the best so far (``{"metric", "value",
        "epoch"}``) is kept in :attr:`best` and in ``last.pt``, so a resumed run compares with it.

        Args:
            state: the loop's state after its epoch (``state.epoch`` is the epoch just trained).
            row: the epoch's metrics row (the metrics.csv columns).

        Returns:
            Whether ``best.pt`` was written.

        Raises:
            TrainingDiverged: the networks hold non-finite values (nothing is written).
        """
        if self.rank != 0:
            return False
        confirm = int(OmegaConf.select(self.cfg, "eval.confirm_episodes", default=0) or 0)
        metric = decision_metric_name(str(self.cfg.eval.metric), bool(self.parts.info.goal), confirm)
        value = row.get(metric)
        if value is None or not math.isfinite(float(value)):
            return False
        if self.best is not None and self.best.get("metric") == metric and not float(value) > float(self.best["value"]):
            return False
        previous, self.best = self.best, {"metric": metric, "value": float(value), "epoch": int(state.epoch)}
        try:
            atomic_torch_save(self._state(state), self.dir / BEST)
        except BaseException:
            self.best = previous
            raise
        log.info("epoch %d: best %s so far (%.4g): saved %s", state.epoch, metric, float(value), self.dir / BEST)
        return True

    def _restore_best(self, state: dict[str, Any]) -> None:
        """The best evaluation so far after a resume: ``last.pt``'s record, or ``best.pt``'s own
        when that is better (a run stopped between writing ``best.pt`` and ``last.pt``)."""
        candidates = [state.get("best")]
        if (self.dir / BEST).exists():
            try:
                candidates.append(safe_load(self.dir / BEST).get("best"))
            except (ConfigError, OSError, AttributeError) as err:
                log.warning("%s is unreadable (%s): the next best evaluation replaces it", self.dir / BEST, err)
        found = [b for b in candidates if isinstance(b, dict) and math.isfinite(float(b.get("value", math.nan)))]
        self.best = max(found, key=lambda b: float(b["value"])) if found else None

    def load(self, path: str | Path) -> TrainingState:
        """Restore the parts from a checkpoint written by :meth:`save`; returns the loop's state.

        Restores networks, targets, optimisers, normalisers, exploration state, counters and
        random generators; with ``save_buffer`` also this worker's replay buffer. Rows of
        metrics.csv and episodes.csv from epochs after the checkpoint (an epoch cut short) are
        dropped, so the resumed run appends without duplicates or gaps. The envs start new
        episodes: the episode that was running when the run stopped is lost.

        The run's random generator (``parts.rng``, which the collector and the exploration
        share) gets the saved state in place; a worker > 0, or a seed changed on resume, reseeds
        it in place from ``(seed, epoch)`` (rank 0's saved state made distinct per worker).

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ConfigError: the file is refused or unreadable (:func:`safe_load`).
        """
        p = self.parts
        state, used = load_latest(Path(path).parent, Path(path).name, map_location="cpu")
        try:
            p.agent.load_state_dict(state["agent"])
            p.exploration.load_state_dict(to_numpy(state["noise"]))
            c = state["counters"]
            epoch, env_steps, episodes = int(c["epoch"]), int(c["env_steps"]), int(c["episodes"])
            wall_time = float(c["wall_time"])
            scripted = int(c.get("scripted_steps", 0))  # absent in checkpoints of older runs
            p.rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"].cpu())  # CPU byte tensor whatever the map location
            saved_cfg = state.get("config") or {}
            if not isinstance(saved_cfg, dict):
                raise TypeError(f"config is a {type(saved_cfg).__name__}, not a mapping")
        except (KeyError, IndexError, RuntimeError, ValueError, TypeError, AttributeError) as err:
            raise ConfigError(
                f"{used} does not fit this run's config ({first_line(err)}); "
                "resume with the config it was written with, or start a new run"
            ) from None
        self._apply_changed_settings(saved_cfg)
        if self.rank > 0 or saved_cfg.get("seed", self.cfg.seed) != self.cfg.seed:
            # rank 0's saved generators made distinct per worker; or a seed changed on resume
            p.rng.bit_generator.state = np.random.default_rng([p.seed, epoch]).bit_generator.state
            torch.manual_seed(p.seed * 100_003 + epoch)
        if self.save_buffer:
            self._load_buffer(epoch)
        if self.rank == 0:
            from rlfw.training.csvfiles import metric_columns

            truncate_logs(self.run_dir, epoch,
                          metric_columns(p.agent.metric_names, getattr(p.exploration, "metric_names", ())))  # fmt: skip
            self._restore_best(state)
        return TrainingState(epoch, env_steps, episodes, wall_time, scripted)

    def _apply_changed_settings(self, saved_cfg: dict[str, Any]) -> None:
        """Learning rates changed on resume (``algo.actor_lr``, ``algo.critic_lr``) replace the
        ones restored with the optimisers' state (the advice after a divergence); with an
        ``algo.lr_schedule`` they replace the schedule's initial rates (``initial_lr``), which
        the next cycle anneals."""
        saved_algo = saved_cfg.get("algo") or {}
        optimizers = getattr(self.parts.agent, "optimizers", None)
        if optimizers is None:
            return
        opts = optimizers()
        for key, name in (("actor_lr", "actor_opt"), ("critic_lr", "critic_opt")):
            new = OmegaConf.select(self.cfg, f"algo.{key}")
            if new is None or name not in opts or saved_algo.get(key) == new:
                continue
            for group in opts[name].param_groups:
                group["lr"] = float(new)
                if "initial_lr" in group:  # algo.lr_schedule: the schedule goes on from the new rate
                    group["initial_lr"] = float(new)
            log.info("algo.%s changed on resume: %s -> %s", key, saved_algo.get(key), new)

    def _load_buffer(self, epoch: int) -> None:
        """This worker's saved replay buffer, or an empty buffer with a warning when the file is
        missing, from another epoch, unreadable or does not fit the buffer."""
        if not self.buffer_file.exists():
            log.warning("%s is missing: worker %d starts with an empty buffer", self.buffer_file, self.rank)
            return
        try:
            saved = safe_load(self.buffer_file)
            saved_epoch = int(saved["epoch"])
        except (ConfigError, KeyError, TypeError, ValueError) as err:
            log.warning("%s cannot be used (%s): starting with an empty buffer", self.buffer_file, err)
            return
        if saved_epoch != epoch:
            log.warning("%s is from epoch %s, not %d: starting with an empty buffer",
                        self.buffer_file, saved_epoch, epoch)  # fmt: skip
            return
        buffer = self.parts.buffer
        before = buffer.state_dict()
        try:
            buffer.load_state_dict(to_numpy(saved["buffer"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            buffer.load_state_dict(before)
            log.warning("%s does not fit this run's buffer (%s): starting with an empty buffer", self.buffer_file, err)
