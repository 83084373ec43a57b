"""Early stops and stop signals of a training run.

A callback ends the run early with :meth:`TrainLoop.request_stop` (``eval.stop_at`` does it
through :class:`rlfw.callbacks.EarlyStopping`): the loop stops after the epoch whose callbacks
asked, with its row logged and its checkpoint written, and ``status.json`` says ``finished`` with
``stop_reason``.

A stop signal (SIGTERM, SIGUSR1, SIGUSR2, SIGINT, SIGHUP: :data:`STOP_SIGNALS`) received while training ends the run after
the current cycle: every worker agrees on the cycle, the epoch in progress is dropped (its
rows never reach the CSVs), ``status.json`` says ``interrupted`` with the resume command, and
:class:`rlfw.errors.TrainingInterrupted` is raised; ``resume=`` continues from the last
checkpoint (the last finished epoch with the default ``train.checkpoint_every=1``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from rlfw.errors import TrainingInterrupted

log = logging.getLogger("rlfw")

# what schedulers send before they kill: timeout and SLURM's time limit (SIGTERM), SLURM's
# configurable warning (sbatch --signal=USR1@90; submitit asks for USR2, see
# rlfw.training.requeue); Ctrl-C (SIGINT) and a closed terminal (SIGHUP) end a run the same way
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")


class StopControl:
    """How :class:`rlfw.training.loop.TrainLoop` ends early (a mixin: it reads the loop's
    config, worker context, epoch and run directory, annotated below)."""

    cfg: DictConfig
    run_dir: Path
    ctx: Any  # rlfw.training.context.LocalContext
    epoch: int
    stop_reason: str | None
    #: the first stop signal that came while training (SIGTERM, SIGINT...), None before one
    _stop_signal: int | None = None

    def request_stop(self, reason: str) -> None:
        """Ask the loop to end the run after the current epoch, as finished (the way a callback
        stops training: SB3's ``_on_step`` returning False, Keras' ``stop_training``).

        Called from a callback's ``on_epoch`` (or ``on_cycle``), the epoch is completed: its row
        is logged, its checkpoint written (also between ``train.checkpoint_every`` epochs), every
        callback is told, then the loop returns. ``status.json`` says ``finished`` with
        ``stop_reason``, and the reason is logged. With several workers the request of rank 0's
        callbacks stops every worker at the same epoch. The first request's reason is kept.

        Args:
            reason: one line saying why, e.g. ``eval_success_rate 1.0 >= eval.stop_at=1.0 at epoch 3``.
        """
        if self.stop_reason is None:
            self.stop_reason = str(reason)

    def _stop_agreed(self) -> bool:
        """Whether any worker's callbacks asked to stop (one all-reduce with several workers:
        only rank 0 runs the callbacks, and every worker must leave the loop at the same epoch)."""
        if self.ctx.world > 1:
            flag = torch.tensor([1.0 if self.stop_reason is not None else 0.0])
            self.ctx.all_reduce_sum(flag)
            if float(flag) > 0 and self.stop_reason is None:
                self.stop_reason = "stop requested by rank 0's callbacks"
        return self.stop_reason is not None

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """While training, :data:`STOP_SIGNALS` set :attr:`_stop_signal` instead of killing the
        process (only in the main thread, where Python delivers signals); a second one raises
        :class:`TrainingInterrupted` at once, wherever the main thread is (an env's ``step``
        that blocks); handlers restored after."""
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is None:
                log.warning("%s received: stopping after this cycle (a second signal stops at once)",
                            signal.Signals(signum).name)  # fmt: skip
                self._stop_signal = signum
                return
            # a second stop signal: the cycle does not end (an env's step that blocks): stop now
            raise self._interrupted(signum, "at once (a second signal) ")

        previous = {}
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _check_stop(self) -> None:
        """After each cycle: raise :class:`TrainingInterrupted` if a stop signal came (to any
        worker: they agree through one all-reduce, so all stop at the same cycle).

        Raises:
            TrainingInterrupted: naming the signal, the epoch, the last checkpoint and the
                resume command.
        """
        signum = self._stop_signal
        if self.ctx.world > 1:
            flag = torch.tensor([float(signum or 0)])
            self.ctx.all_reduce_sum(flag)
            signum = signum or (int(signal.SIGTERM) if float(flag) > 0 else None)
        if signum is None:
            return
        raise self._interrupted(signum)

    def _interrupted(self, signum: int, how: str = "") -> TrainingInterrupted:
        """The one-line :class:`TrainingInterrupted` for a stop signal during this epoch."""
        good = self.epoch - self.epoch % self.cfg.train.checkpoint_every
        return TrainingInterrupted(
            f"stopped {how}by {signal.Signals(signum).name} during epoch {self.epoch + 1}; its steps are dropped; "
            f"the last checkpoint is epoch {good}; resume with: python -m rlfw resume={self.run_dir}",
            int(signum),
        )
