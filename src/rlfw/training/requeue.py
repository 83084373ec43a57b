"""Scheduler requeue: a stopped SLURM job asks to be requeued, and a requeued job resumes.

The flow with ``hydra/launcher=slurm`` (hydra-submitit-launcher):

1. SLURM sends a stop signal: the launcher's warning signal before the time limit (submitit
   asks for ``SIGUSR2`` ``signal_delay_s`` seconds early), ``SIGTERM`` on pre-emption, or an
   operator's ``scancel --signal=TERM``.
2. The training loop ends the current cycle, writes ``status.json`` = ``interrupted``
   (:class:`rlfw.training.loop.TrainLoop`), and :func:`hand_over` gives the signal to
   submitit's handler: it pickles the job again (the launcher's ``checkpoint``: the same
   overrides, so the same run directory) and calls ``scontrol requeue``.
3. SLURM starts the job again with ``SLURM_RESTART_COUNT`` >= 1. :func:`requeued_checkpoint`
   finds the run directory's checkpoint and the job continues from it: the epoch in progress
   at the signal was dropped, so every epoch appears once in metrics.csv.

Without submitit (a plain ``sbatch`` script) nothing is requeued: the run exits with
128 + the signal number and the resume command in ``status.json``.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

log = logging.getLogger("rlfw")

# submitit's environment variable for its pre-emption signal (default USR2)
_SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def restart_count() -> int:
    """How many times SLURM has restarted (requeued) this job: ``SLURM_RESTART_COUNT``, 0
    outside SLURM or on a first start."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def requeued_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a requeued job continues from: ``run_dir/checkpoints/last.pt`` when this
    is a SLURM restart (:func:`restart_count` > 0) and the directory holds an rlfw checkpoint
    (``last.pt`` or, when that is lost, ``previous.pt``); else None."""
    from rlfw.training.checkpoint import has_checkpoint

    ckpt = Path(run_dir) / "checkpoints" / "last.pt"
    if restart_count() > 0 and has_checkpoint(ckpt.parent):
        return ckpt
    return None


def _submitit_handler() -> tuple[int, Any] | None:
    """(submitit's pre-emption signal, its handler) when submitit installed one, else None."""
    name = os.environ.get(_SUBMITIT_SIGNAL_ENV, "USR2")
    sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if sig is None:
        return None
    handler = signal.getsignal(sig)
    owner = getattr(handler, "__self__", None)
    if owner is not None and type(owner).__module__.startswith("submitit"):
        return int(sig), handler
    return None


def hand_over(signum: int) -> None:
    """After a clean stop by ``signum``: when submitit runs this job, call its pre-emption
    handler (it requeues the job and exits the process with ``SystemExit``); otherwise return.

    Raises:
        SystemExit: from submitit, once the job is requeued.
    """
    found = _submitit_handler()
    if found is None:
        return
    log.warning("stopped by %s under submitit: requeueing the job", signal.Signals(signum).name)
    sig, handler = found
    handler(sig, None)
