"""The run lifecycle shared by the entry points (``python -m rlfw``, ``rlfw.train``, ``resume=``,
a SLURM restart, a torchrun/srun rank, an ``rlfw.tune`` trial, a federated client): the run
directory's one writer (:func:`claim_run_dir`), the built-in callbacks
(:func:`rlfw.training.start.build_loop`), then the run started in the way this process was
started (this process, ``train.workers`` processes, or one rank), which ends with the evaluation
of what it delivers (:meth:`rlfw.training.protocol.EvaluationProtocol.final_evaluation`).

A caller that trains one run in several pieces (a federated client, a few epochs a round) opens
it with :func:`open_run` and closes it with :func:`close_run`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rlfw.core import Callback
from rlfw.errors import ConfigError

log = logging.getLogger("rlfw")


def claim_run_dir(run_dir: Path, fresh: bool, key: str = "hydra.run.dir") -> None:
    """Make this process the one writer of ``run_dir`` (:func:`rlfw.training.rundir.acquire_run_lock`,
    held until the process ends or :func:`release_run_dir`); with ``fresh`` also refuse a
    directory that already holds a run (:func:`rlfw.training.rundir.holds_run`).

    Raises:
        ConfigError: one line: another process writes there (its pid), or a fresh run would
            write into an existing run (with the ``resume=`` command that continues it).
    """
    from rlfw.training.rundir import RunDirLocked, acquire_run_lock, holds_run, release_run_lock

    try:
        acquire_run_lock(run_dir)
    except RunDirLocked as err:
        raise ConfigError(f"{key}={run_dir}: {err}") from None
    if fresh and holds_run(run_dir):
        release_run_lock(run_dir)
        raise ConfigError(
            f"{key}={run_dir} already holds a run (metrics.csv, status.json or checkpoints/); continue it with: "
            f"python -m rlfw resume={run_dir} (or choose another {key})"
        )


def release_run_dir(run_dir: Path) -> None:
    """Undo one :func:`claim_run_dir`."""
    from rlfw.training.rundir import release_run_lock

    release_run_lock(run_dir)


def job_result(row: dict) -> float:
    """The number a job reports (Hydra sweepers maximise it): ``eval_success_rate``, else
    ``eval_return`` (NaN when neither was measured)."""
    value = row.get("eval_success_rate")
    if value is None or value != value:
        value = row.get("eval_return", float("nan"))
    return float(value)


def start(cfg: DictConfig, run_dir: Path, *, multirun: bool = False, callbacks: Sequence[Any] = (),
          checkpoint: str | Path | None = None, announce_resume: bool = False) -> dict:  # fmt: skip
    """Start a validated run in the way this process was started: as this rank of a
    torchrun/srun group (:func:`rlfw.launched.run_launched`), with ``train.workers`` > 1
    processes (:func:`rlfw.distributed.launch`; each worker runs
    :func:`rlfw.training.start.start_run`), else in this process
    (:func:`rlfw.training.start.start_run`). Returns the last metrics row.

    Args:
        checkpoint: ``last.pt`` to continue from (resume, SLURM restart), or None.
        callbacks: the user's callbacks (this process only: :func:`run_job` refuses them with
            workers).
        announce_resume: log the epoch the run resumes from (``resume=``).
    """
    from rlfw.distributed import launch
    from rlfw.launched import launched_group_joined, run_launched
    from rlfw.training.start import start_run

    if launched_group_joined():  # one rank of torchrun/srun (main() joined its group)
        return run_launched(cfg, run_dir, multirun)
    if cfg.train.workers > 1:
        return launch(cfg, run_dir, multirun, checkpoint=checkpoint)[0]["row"]  # type: ignore[no-any-return]
    return start_run(cfg, run_dir, multirun=multirun, callbacks=callbacks, checkpoint=checkpoint,
                     announce_resume=announce_resume).row  # fmt: skip


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool = False, callbacks: Sequence[Any] = ()) -> dict:
    """Train one composed job into ``run_dir``; returns its last metrics row.

    The body of the Hydra task :func:`train_job`, also run by :func:`rlfw.api.train`, which
    passes the user's ``callbacks`` (:class:`rlfw.core.Callback`), called after the built-in
    ones. The config is validated here unless this process's preflight already validated it
    (:func:`rlfw.config.preflight.ensure_valid`: a sweeper's trial is checked here). A requeued
    SLURM job continues from its checkpoint (:func:`rlfw.training.requeue.requeued_checkpoint`).

    Raises:
        ConfigError: a rule of :func:`rlfw.config.validate.validate` is broken, or the env does
            not fit the config (HER without goals); user callbacks with ``train.workers`` > 1 or
            under a torchrun/srun launcher (the workers are other processes).
    """
    from rlfw.config.preflight import ensure_valid
    from rlfw.launched import launched_group_joined
    from rlfw.training.requeue import requeued_checkpoint, restart_count

    tr = cfg.train
    launched = launched_group_joined()
    if callbacks and (tr.workers > 1 or launched):
        raise ConfigError(
            f"rlfw.train(callbacks=...) runs the callbacks in this process; train.workers={tr.workers} "
            "and torchrun/srun train in other processes: use train.workers=1"
        )
    ensure_valid(cfg)
    if launched:
        import torch.distributed as dist

        if dist.get_rank() != 0:  # only rank 0 writes, and holds the run directory's lock
            return start(cfg, run_dir, multirun=multirun)
    claim_run_dir(run_dir, fresh=restart_count() == 0)  # one writer; never into another run
    try:
        ckpt = None if launched else requeued_checkpoint(run_dir)  # a requeued SLURM job continues
        if restart_count() > 0 and not launched:
            if ckpt is None:  # stopped before its first checkpoint: start over, no stale rows
                from rlfw.training.csvfiles import truncate_logs

                truncate_logs(run_dir, 0)
            log.info("SLURM restart %d of this job: %s", restart_count(),
                     f"resuming from {ckpt}" if ckpt else "no checkpoint yet, starting from epoch 0")  # fmt: skip
        return start(cfg, run_dir, multirun=multirun, callbacks=callbacks, checkpoint=ckpt)
    finally:
        release_run_dir(run_dir)


class _Once(Callback):
    """A callback of a run trained in several :meth:`TrainLoop.run` calls (:func:`open_run`):
    ``on_start`` at the first call only, ``on_end`` only when the run has ended (finished,
    stopped early, interrupted or failed), not after each piece."""

    def __init__(self, callback: Any) -> None:
        self.callback, self.started = callback, False

    def on_start(self, loop: Any) -> None:
        if not self.started:
            self.started = True
            self.callback.on_start(loop)

    def on_cycle(self, loop: Any) -> None:
        self.callback.on_cycle(loop)

    def on_epoch(self, loop: Any, row: dict) -> None:
        self.callback.on_epoch(loop, row)

    def on_end(self, loop: Any) -> None:
        if loop.status != "running":
            self.callback.on_end(loop)

    def close(self) -> None:
        close = getattr(self.callback, "close", None)
        if close is not None:
            close()


def open_run(cfg: DictConfig, run_dir: Path, *, multirun: bool = True, callbacks: Sequence[Any] = ()) -> Any:
    """Open a fresh run that the caller trains in pieces (``loop.run(epochs=k, close=False)``,
    as a federated client does each round): this process takes ``run_dir``
    (:func:`claim_run_dir`, fresh) and the loop gets the built-in callbacks and ``callbacks``
    (:func:`rlfw.training.start.build_loop`), each started once and ended once. The loop's
    final evaluation runs inside the piece that reaches ``train.epochs``. Undo with
    :func:`close_run`.

    Returns:
        The :class:`rlfw.training.loop.TrainLoop`.

    Raises:
        ConfigError: the directory is in use or already holds a run; the env does not fit
            the config (the directory is released again).
    """
    from rlfw.training.start import build_loop

    claim_run_dir(run_dir, fresh=True)
    try:
        loop = build_loop(cfg, run_dir, multirun=multirun, callbacks=callbacks)
    except BaseException:
        release_run_dir(run_dir)
        raise
    loop.callbacks = [_Once(cb) for cb in loop.callbacks]
    return loop


def close_run(loop: Any) -> None:
    """Close a loop of :func:`open_run`: its envs, then the run directory's lock."""
    try:
        loop.close()
    finally:
        release_run_dir(Path(loop.run_dir))
