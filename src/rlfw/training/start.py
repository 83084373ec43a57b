"""Start a run in this process: the one place that turns a composed, validated config into a
:class:`rlfw.training.loop.TrainLoop`, restores a checkpoint and trains.

Every way of training goes through :func:`start_run`: a single process (``python -m rlfw``,
:func:`rlfw.train`), ``resume=``, a SLURM restart, each of the ``train.workers`` processes
:func:`rlfw.distributed.launch` spawns, and each rank of torchrun/srun
(:func:`rlfw.launched.run_launched`). Which of those runs is decided once, by the entry point
(:func:`rlfw.lifecycle.start`); :func:`start_run` only needs to know this process's place in the
run (:class:`Worker`, None for a single process).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from rlfw.build import pick_device, total_steps

log = logging.getLogger("rlfw")

__all__ = ["RunResult", "Worker", "build_loop", "parameter_digest", "run_device", "start_run", "total_steps"]


@dataclass(frozen=True)
class Worker:
    """This process's place in a run of several processes.

    Attributes:
        rank: 0..world-1 (rank 0 writes the run's files and runs the callbacks).
        world: the number of processes.
        local_rank: the rank on this machine (picks the CUDA device).
    """

    rank: int
    world: int
    local_rank: int = 0


@dataclass(frozen=True)
class RunResult:
    """What one process's training ended with.

    Attributes:
        row: the last metrics row (the metrics.csv columns).
        env_steps: this process's env steps.
        digest: :func:`parameter_digest` of the networks and normalisers (several processes
            only; None for a single process).
    """

    row: dict[str, Any]
    env_steps: int
    digest: str | None = None


def run_device(cfg: Any, local_rank: int = 0) -> torch.device:
    """``train.device`` for this process (:func:`rlfw.build.pick_device`): ``auto`` is CUDA when
    available; on CUDA, process ``local_rank`` of a machine takes device ``local_rank % count``."""
    return pick_device(str(cfg.train.device), local_rank)


def parameter_digest(modules: list[torch.nn.Module]) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal digests mean bitwise equal nets."""
    import hashlib

    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_loop(cfg: DictConfig, run_dir: str | Path, *, multirun: bool = False, callbacks: Sequence[Any] = (),
               worker: Worker | None = None) -> Any:  # fmt: skip
    """The :class:`rlfw.training.loop.TrainLoop` of one process of a run, with its callbacks:
    the built-in ones :func:`rlfw.callbacks.make_callbacks` makes from ``cfg.logger`` and
    ``cfg.eval`` (loggers, plots, early stop), then the user's ``callbacks``; none where this
    process is not rank 0. :func:`start_run` and a federated client
    (:mod:`rlfw.federated.client`) build their loop here, so every run gets the same callbacks.

    Raises:
        ConfigError: the env does not fit the config (HER without goals).
    """
    from rlfw.callbacks import make_callbacks
    from rlfw.training.context import DistContext
    from rlfw.training.loop import TrainLoop

    main = worker is None or worker.rank == 0
    made = [*make_callbacks(cfg, Path(run_dir), total_steps(cfg), multirun), *callbacks] if main else []
    ctx = None if worker is None else DistContext(worker.rank, worker.world, run_device(cfg, worker.local_rank))
    return TrainLoop(cfg, run_dir, made, ctx=ctx)


def start_run(
    cfg: DictConfig,
    run_dir: str | Path,
    *,
    multirun: bool = False,
    callbacks: Sequence[Any] = (),
    checkpoint: str | Path | None = None,
    worker: Worker | None = None,
    announce_resume: bool = False,
) -> RunResult:
    """Train ``cfg`` into ``run_dir`` as this process: build the loop, continue from
    ``checkpoint`` if given, run to ``train.epochs``.

    ``cfg`` is composed and validated by the caller (at the edge, once per process);
    :class:`rlfw.training.loop.TrainLoop` builds the components (the env may still refuse the
    config, e.g. HER without goals).

    Args:
        cfg: the composed, validated root config.
        run_dir: the run directory (this process holds it, or rank 0 does).
        multirun: a job of a ``-m`` sweep (no progress bar by default).
        callbacks: the user's :class:`rlfw.core.Callback` s, called after the built-in ones
            (:func:`rlfw.callbacks.make_callbacks`); only where this process is rank 0.
        checkpoint: ``last.pt`` to continue from (resume, a SLURM restart), or None.
        worker: this process's rank in a run of several processes (None: a single process).
        announce_resume: log ``resuming <dir> from epoch N (M env steps)`` after loading.

    Returns:
        The :class:`RunResult` (its ``digest`` only with ``worker``).

    Raises:
        ConfigError: the env does not fit the config, or the checkpoint is refused or does not
            fit (:meth:`rlfw.training.checkpoint.Checkpointer.load`).
        TrainingDiverged: the divergence guard stopped the run.
        TrainingInterrupted: a stop signal ended the run after its cycle.
    """
    loop = build_loop(cfg, run_dir, multirun=multirun, callbacks=callbacks, worker=worker)
    if checkpoint is not None:
        loop.load_checkpoint(checkpoint)
        if announce_resume:
            log.info("resuming %s from epoch %d (%d env steps)", loop.run_dir, loop.epoch, loop.env_steps)
    row = loop.run()
    digest = parameter_digest(list(loop.agent.modules().values())) if worker is not None else None
    return RunResult(row, loop.env_steps, digest)
