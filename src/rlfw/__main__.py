"""``python -m rlfw [overrides]``: train. Hydra main with config groups algo, buffer, noise, env,
logger (and experiment).

Before Hydra runs any job, :func:`rlfw.config.preflight.preflight` composes and validates every
job of the command line (every job of a ``-m`` sweep), so a bad key or value stops with one
line and exit status 2 before any simulator starts.

``python -m rlfw --help`` prints rlfw's own help (:func:`help_text`: the config groups and their
options, the root keys); ``--hydra-help`` shows Hydra's.

``python -m rlfw resume=<run_dir> [train.epochs=N]`` continues a stopped or killed run from
its last checkpoint, in the same directory (see :func:`resume`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hydra import version as hydra_version
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rlfw.config.paths import config_dir
from rlfw.config.preflight import check_hydra, preflight  # noqa: F401 (check_hydra: public here too)
from rlfw.config.schema import register_schemas
from rlfw.errors import ConfigError, TrainingDiverged, TrainingInterrupted, exit_status, fail
from rlfw.lifecycle import claim_run_dir, job_result, release_run_dir, run_job, start  # noqa: F401 (public here too)
from rlfw.resume import resume
from rlfw.usage import help_text

log = logging.getLogger("rlfw")

register_schemas()  # also the ${rlfw_run_id:} resolver (rlfw.config.paths.register_resolvers)
hydra_version.setbase("1.3")  # as @hydra.main(version_base="1.3") did when this module was imported


class StopSignal(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP, ...) that ends the whole command: raised by
    :func:`_raise_stop` outside the training loop, and by :func:`train` in a ``-m`` sweep after
    the current job stopped (a ``KeyboardInterrupt``, so Hydra's launchers do not record it as a
    failed job and start the next one, and the training loop marks its run ``interrupted``). :func:`main` prints ``message`` and exits with
    ``128 + signum``."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message or f"stopped by {signal.Signals(signum).name}"


# Signals that end the command like SIGTERM: Ctrl-C and a closed terminal. SIGUSR1/SIGUSR2 are
# left to the training loop and to submitit (rlfw.training.requeue).
COMMAND_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

# Failed jobs of this process's -m sweep (Hydra's basic launcher runs them here): one line each.
_FAILED_JOBS: list[str] = []


def _raise_stop(signum: int, frame: Any) -> None:
    raise StopSignal(signum)


def install_stop_handlers() -> None:
    """Make :data:`COMMAND_STOP_SIGNALS` raise :class:`StopSignal` (main thread only) while no
    training loop runs; the loop and :func:`rlfw.distributed.launch` install their own while
    they run and put these back after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for name in COMMAND_STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, _raise_stop)


def _job_failed(hc: Any, run_dir: Path, line: str) -> float:
    """Record a failed job of a sweep (one line, logged now and listed by :func:`main` at the
    end); the sweep goes on. Returns NaN, the job's result (Optuna records the trial as failed)."""
    overrides = " ".join(hc.overrides.task) if hc.overrides.task else "(no overrides)"
    log.error("%s", line)
    _FAILED_JOBS.append(f"job {hc.job.num} ({overrides}, {run_dir}) failed: {line.removeprefix('error: ')}")
    return float("nan")


def _log_traceback_to_files() -> None:
    """Write the current exception's traceback to the log files only (the job's rlfw.log)."""
    import traceback

    text = traceback.format_exc()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("rlfw", logging.ERROR, __file__, 0, "%s", (text,), None))


def train(args: list[str]) -> None:
    """Run the Hydra app (:func:`train_job` for each job) on the command line ``args`` through
    ``hydra.main`` (:func:`rlfw.config.cli.run_hydra_app`), as ``python -m rlfw <args>`` does.
    :func:`main` has parsed and checked ``args`` (``--experimental-rerun`` refused there)."""
    from rlfw.config.cli import run_hydra_app

    run_hydra_app(train_job, args, config_path=str(config_dir()), config_name="config")


def train_job(cfg: DictConfig) -> float:
    """Hydra's task: train one job into Hydra's output dir; returns the final eval success rate
    (or return).

    The return value is what Hydra's sweepers (Optuna) maximise.
    """
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    n_jobs = OmegaConf.select(hc.launcher, "n_jobs") if multirun else None  # type: ignore[arg-type]
    if isinstance(n_jobs, int) and n_jobs != 1:  # joblib: jobs side by side share the cores
        from rlfw.training.cores import PARALLEL_JOBS_ENV

        os.environ[PARALLEL_JOBS_ENV] = str(n_jobs if n_jobs > 0 else os.cpu_count() or 1)
    run_dir = Path(hc.runtime.output_dir)
    try:
        row = run_job(cfg, run_dir, multirun)
    except (ConfigError, TrainingDiverged) as err:
        if multirun:  # the sweep goes on; main() lists the failed jobs at the end
            return _job_failed(hc, run_dir, f"error: {err}")
        log.error("error: %s", err)
        raise SystemExit(exit_status(err)) from None
    except TrainingInterrupted as err:  # a stop signal: status.json says interrupted
        from rlfw.training.requeue import hand_over

        hand_over(err.signum)  # under submitit: requeue this job (exits); else go on
        log.warning("%s", err)
        if multirun:  # no further job starts: out through Hydra's launcher (not an Exception)
            raise StopSignal(err.signum, str(err)) from None
        raise SystemExit(exit_status(err)) from None
    except OSError as err:  # a full disk, an unwritable file: one line, the run marked failed
        if multirun:
            return _job_failed(hc, run_dir, f"error: cannot write the run's files: {err}")
        log.error("error: cannot write the run's files: %s", err)
        raise SystemExit(exit_status(err)) from None
    except Exception as err:  # a bug: the traceback goes to the job's log file, one line here
        if not multirun:
            raise
        _log_traceback_to_files()
        return _job_failed(hc, run_dir, f"error: {type(err).__name__}: {err}")
    return job_result(row)


def _stopped(err: TrainingInterrupted | KeyboardInterrupt) -> SystemExit:
    """One line (``rlfw: stopped by ...``) and exit status ``128 + signum``
    (:func:`rlfw.errors.exit_status`)."""
    message = err.message if isinstance(err, StopSignal) else str(err) if isinstance(err, TrainingInterrupted) else ""
    print(f"rlfw: {message or 'stopped by SIGINT'}", file=sys.stderr)
    return SystemExit(exit_status(err))


def _claim_given_run_dir(args: argparse.Namespace) -> None:
    """Before Hydra writes ``.hydra/`` into it: claim a ``hydra.run.dir`` given on the command
    line (:func:`claim_run_dir`), so a second writer or a fresh run into an existing run stops
    here with one line. Not for ``-m`` sweeps, informational flags or launcher ranks > 0."""
    from rlfw.launched import launcher_env
    from rlfw.training.requeue import restart_count

    if args.multirun or args.cfg or args.info or args.hydra_help or args.shell_completion:
        return
    launched = launcher_env()
    if launched is not None and launched[0] != 0:
        return
    given = [a.lstrip("+").split("=", 1)[1] for a in args.overrides if a.lstrip("+").startswith("hydra.run.dir=")]
    if given and given[-1] and "${" not in given[-1]:
        claim_run_dir(Path(given[-1]).expanduser().resolve(), fresh=restart_count() == 0)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: help, resume, or preflight then Hydra.

    Ctrl-C (SIGINT), SIGTERM and SIGHUP end the command with one line and exit status
    ``128 + signum``: during training after the current cycle (status.json ``interrupted`` with
    the resume command), before it at once. A ``-m`` sweep stops at the job the signal reached;
    its failed jobs are listed one line each at the end, and the exit status is then 1.
    """
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    install_stop_handlers()
    _FAILED_JOBS.clear()
    resume_args = [a for a in args if a.startswith("resume=")]
    try:
        if resume_args:
            resume(resume_args[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")])
            return
        from rlfw.config.cli import parse_command_line
        from rlfw.config.preflight import free_form_overrides

        args = free_form_overrides(args)
        command_line = parse_command_line(args)  # the one parse of the command line here
        preflight(command_line)  # every job composed and validated, then what Hydra itself would stop on
        _claim_given_run_dir(command_line)
        from rlfw.launched import join_launched_group, launcher_env

        if launcher_env() is not None:  # torchrun/srun: one run over every rank
            args = [*args, *join_launched_group(args)]
        train(args)
    except (ConfigError, TrainingDiverged) as err:
        raise fail("rlfw", err) from None
    except (TrainingInterrupted, KeyboardInterrupt) as err:  # StopSignal; SIGINT where no handler of ours was installed
        raise _stopped(err) from None
    except OSError as err:
        raise fail("rlfw", err, message=f"cannot write the run's files: {err}") from None
    if _FAILED_JOBS:
        for line in _FAILED_JOBS:
            print(f"rlfw: error: {line}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
