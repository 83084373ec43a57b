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

import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rlfw.config.paths import config_dir
from rlfw.config.preflight import preflight
from rlfw.config.schema import register_schemas
from rlfw.errors import ConfigError, TrainingDiverged, TrainingInterrupted

log = logging.getLogger("rlfw")

register_schemas()


def _result(row: dict) -> float:
    value = row.get("eval_success_rate")
    if value is None or value != value:
        value = row.get("eval_return", float("nan"))
    return float(value)


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


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool = False, callbacks: Sequence[Any] = ()) -> dict:
    """Train one composed job into ``run_dir``; returns its last metrics row.

    The body of the Hydra app :func:`train`, also run by :func:`rlfw.api.train`, which passes
    the user's ``callbacks`` (:class:`rlfw.core.Callback`), called after the built-in ones.

    Raises:
        ConfigError: a rule of :func:`rlfw.config.validate.validate` is broken, or the env does
            not fit the config (HER without goals); user callbacks with ``train.workers`` > 1 or
            under a torchrun/srun launcher (the workers are other processes).
    """
    from rlfw.callbacks import make_callbacks
    from rlfw.training.loop import TrainLoop

    tr = cfg.train
    from rlfw.distributed import launched_group_joined

    if callbacks and (tr.workers > 1 or launched_group_joined()):
        raise ConfigError(
            f"rlfw.train(callbacks=...) runs the callbacks in this process; train.workers={tr.workers} "
            "and torchrun/srun train in other processes: use train.workers=1"
        )
    if launched_group_joined():  # one rank of torchrun/srun (main() joined its group)
        from rlfw.distributed import run_launched

        return run_launched(cfg, run_dir, multirun)
    from rlfw.training.requeue import requeued_checkpoint, restart_count

    ckpt = requeued_checkpoint(run_dir)  # a requeued SLURM job continues where it stopped
    if restart_count() > 0:
        if ckpt is None:  # stopped before its first checkpoint: start over, no stale rows
            from rlfw.training.checkpoint import truncate_logs

            truncate_logs(run_dir, 0)
        log.info("SLURM restart %d of this job: %s", restart_count(),
                 f"resuming from {ckpt}" if ckpt else "no checkpoint yet, starting from epoch 0")  # fmt: skip
    if tr.workers > 1:
        from rlfw.config.validate import validate
        from rlfw.distributed import launch

        validate(cfg)
        return launch(cfg, run_dir, multirun, checkpoint=ckpt)[0]["row"]  # type: ignore[no-any-return]
    total = tr.epochs * tr.cycles_per_epoch * tr.steps_per_cycle
    runner = TrainLoop(cfg, run_dir, [*make_callbacks(cfg, run_dir, total, multirun), *callbacks])
    if ckpt is not None:
        runner.load_checkpoint(ckpt)
    return runner.run()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def train(cfg: DictConfig) -> float:
    """Train one job into Hydra's output dir; returns the final eval success rate (or return).

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
    except ConfigError as err:
        if multirun:  # the sweep goes on; main() lists the failed jobs at the end
            return _job_failed(hc, run_dir, f"error: {err}")
        log.error("error: %s", err)
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        if multirun:
            return _job_failed(hc, run_dir, f"error: {err}")
        log.error("error: %s", err)
        raise SystemExit(1) from None
    except TrainingInterrupted as err:  # a stop signal: status.json says interrupted
        from rlfw.training.requeue import hand_over

        hand_over(err.signum)  # under submitit: requeue this job (exits); else go on
        log.warning("%s", err)
        if multirun:  # no further job starts: out through Hydra's launcher (not an Exception)
            raise StopSignal(err.signum, str(err)) from None
        raise SystemExit(128 + err.signum) from None
    except OSError as err:  # a full disk, an unwritable file: one line, the run marked failed
        if multirun:
            return _job_failed(hc, run_dir, f"error: cannot write the run's files: {err}")
        log.error("error: cannot write the run's files: %s", err)
        raise SystemExit(1) from None
    except Exception as err:  # a bug: the traceback goes to the job's log file, one line here
        if not multirun:
            raise
        _log_traceback_to_files()
        return _job_failed(hc, run_dir, f"error: {type(err).__name__}: {err}")
    return _result(row)


def resume(run_dir: str, overrides: list[str]) -> float:
    """Continue ``run_dir`` from ``checkpoints/last.pt`` with its saved config.

    Only ``train.*``, ``eval.*`` and ``logger.*`` keys may be overridden (to extend the run,
    say ``train.epochs=20``). A run without a checkpoint restarts from epoch 0 in the same
    directory.

    Raises:
        ConfigError: the directory is not an rlfw run, or an override is not allowed.
    """
    from rlfw.callbacks import make_callbacks
    from rlfw.training.loop import TrainLoop

    path = Path(run_dir).expanduser().resolve()
    saved = path / ".hydra" / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"resume={run_dir}: no rlfw run there ({saved} is missing)")
    bad = [o for o in overrides if not o.split("=", 1)[0].startswith(("train.", "eval.", "logger."))]
    if bad:
        raise ConfigError(f"resume takes only train.*, eval.* and logger.* overrides; got: {' '.join(bad)}")
    from omegaconf.errors import OmegaConfBaseException

    from rlfw.config.preflight import translate
    from rlfw.config.schema import Config
    from rlfw.config.validate import validate

    try:  # typed and in struct mode, so a misspelt or mistyped override fails in one line
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved))
        assert isinstance(cfg, DictConfig)
        OmegaConf.set_struct(cfg, True)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        assert isinstance(cfg, DictConfig)
        validate(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(translate(err)) from None
    status_file = path / "status.json"
    if status_file.exists():
        status = json.loads(status_file.read_text())
        if status.get("status") == "finished" and status.get("epoch", 0) >= cfg.train.epochs:
            print(f"rlfw: {path} already finished {status['epoch']} epochs; nothing to do")
            return float("nan")
    handler = logging.FileHandler(path / "rlfw.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger().addHandler(handler)
    tr = cfg.train
    from rlfw.training.checkpoint import has_checkpoint

    ckpt = path / "checkpoints" / "last.pt"  # previous.pt if last.pt is lost (load_latest)
    found = has_checkpoint(ckpt.parent)
    if not found:  # killed before its first checkpoint: start over in the same dir
        from rlfw.training.checkpoint import truncate_logs

        truncate_logs(path, 0)
    if tr.workers > 1:
        from rlfw.distributed import launch

        log.info("resuming %s with %d workers", path, tr.workers)
        return _result(launch(cfg, path, checkpoint=ckpt if found else None)[0]["row"])
    total = tr.epochs * tr.cycles_per_epoch * tr.steps_per_cycle
    runner = TrainLoop(cfg, path, make_callbacks(cfg, path, total))
    if found:
        runner.load_checkpoint(ckpt)
        log.info("resuming %s from epoch %d (%d env steps)", path, runner.epoch, runner.env_steps)
    else:
        log.info("resuming %s: no checkpoint yet, starting from epoch 0", path)
    return _result(runner.run())


GROUPS = ("algo", "buffer", "noise", "env", "logger", "experiment")


def _keys(prefix: str, schema: type) -> str:
    import dataclasses

    return ", ".join(f"{prefix}{f.name}" for f in dataclasses.fields(schema))


def help_text() -> str:
    """rlfw's ``--help``: usage, each config group with its options (the YAML files in
    ``conf/<group>/``), the root keys, sweeps, resume and where Hydra's own help is."""
    import textwrap

    from rlfw.config.paths import group_options
    from rlfw.config.schema import EvalConfig, TrainConfig

    def wrap(text: str, indent: str, hang: int = 2) -> str:
        return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent + " " * hang,
                             break_on_hyphens=False)  # fmt: skip

    width = max(len(g) for g in GROUPS)
    groups = []
    for group in GROUPS:
        options = [o for o in group_options(group) if not o.endswith("_schema")]
        groups.append(wrap(f"{group:<{width}}  {', '.join(options)}", "  ", width + 2))
    keys = [
        wrap("seed", "  "),
        wrap(_keys("train.", TrainConfig), "  "),
        wrap(_keys("eval.", EvalConfig), "  "),
    ]
    return "\n".join(
        [
            "usage: python -m rlfw [group=option ...] [key=value ...]",
            "       python -m rlfw -m [key=a,b,c ...]          (a sweep: one job per combination)",
            "       python -m rlfw resume=<run_dir> [train.epochs=N ...]",
            "",
            "Train an off-policy agent; the run directory is outputs/<date>/<time>_<algo>_<buffer>_<noise>_<env>",
            "(hydra.run.dir=<dir> picks another). Default: algo=td3 buffer=her noise=gaussian logger=csv",
            "env=FetchReach-v4.",
            "",
            "Config groups (group=option):",
            *groups,
            "",
            "Each chosen option has its keys (algo.gamma=0.95, buffer.n_step=3, env.id=..., logger.plots=false);",
            "python -m rlfw --cfg job [overrides] prints the composed config with all of them. Root keys:",
            *keys,
            "",
            "Examples:",
            "  python -m rlfw algo=ddpg buffer=her buffer.sampler=prioritized env=FetchPush-v4",
            "  python -m rlfw env=Hopper-v4 buffer=per buffer.n_step=3 noise=noisynet",
            "  python -m rlfw env=gym env.id=Pendulum-v1 train.epochs=5",
            "  python -m rlfw -m algo=ddpg,td3 seed=0,1,2          (6 jobs into multirun/<date>/<time>/)",
            "  python -m rlfw resume=outputs/<run> train.epochs=20   (continue or extend a run)",
            "",
            "Evaluate a run: python -m rlfw.evaluate run_dir=<run_dir> episodes=N [video=true].",
            "Hydra's own help (launchers, sweepers, its flags): python -m rlfw --hydra-help",
        ]
    )


def check_hydra(argv: list[str]) -> None:
    """Check what Hydra itself would stop on, so it stops as one line before any job starts:
    an override Hydra's grammar cannot parse (non-ASCII outside quotes), the rlfw config under
    ``--cfg``/``--resolve`` (Hydra prints it without :func:`preflight`), an unknown
    ``hydra/launcher`` or ``hydra/sweeper`` option or one whose plugin is not installed, and a
    run (or sweep) directory that does not resolve (unknown interpolation, missing environment
    variable) or cannot be created (``/proc/nope``: probed with a temporary directory in its
    nearest existing ancestor, removed at once).

    Raises:
        ConfigError: one line naming the override or key.
    """
    import importlib.util
    import tempfile

    from hydra import compose
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from rlfw.config.preflight import expand_jobs, hydra_context, translate

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    parser = OverridesParser.create()
    for o in args.overrides:
        try:
            parser.parse_overrides([o])
        except OverrideParseException as err:
            hint = ""
            if not o.isascii():
                key, _, value = o.partition("=")
                hint = f"; Hydra takes non-ASCII characters only in quotes: '{key}=\"{value}\"'"
            raise ConfigError(f"cannot parse the override {o}: {str(err).splitlines()[0]}{hint}") from None
    multirun = bool(args.multirun)
    try:
        job = expand_jobs(list(args.overrides), multirun)[0]
    except Exception:  # a sweep only the sweeper understands: compose the fixed overrides
        job = [o for o in args.overrides if "," not in o and "(" not in o]
    with hydra_context():
        try:
            full = compose(config_name=args.config_name or "config", overrides=job, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            import re

            missing = re.search(r"In 'hydra/(launcher|sweeper)/(\w+)': Could not load '(hydra/[\w/]+)'", str(err))
            if missing:  # the option's file is rlfw's, its defaults come with the plugin
                group, choice, base = missing.groups()
                raise ConfigError(
                    f"hydra/{group}={choice} needs a Hydra plugin that is not installed (it provides {base}); "
                    f"install the plugin (see README, Sweeps and clusters) or choose another hydra/{group}"
                ) from None
            raise ConfigError(translate(err)) from None
        if args.cfg:  # printing the config: nothing is run or written
            return
        if multirun:
            for group in ("launcher", "sweeper"):
                target = str(OmegaConf.select(full, f"hydra.{group}._target_", default="") or "")
                module = target.rsplit(".", 1)[0]
                try:
                    found = bool(module) and importlib.util.find_spec(module) is not None
                except (ImportError, ValueError):
                    found = False
                if module and not found:
                    choice = OmegaConf.select(full, f"hydra.runtime.choices.hydra/{group}", default="?")
                    raise ConfigError(
                        f"hydra/{group}={choice} needs a Hydra plugin that is not installed (no module {module}); "
                        f"install the plugin (see README, Sweeps and clusters) or choose another hydra/{group}"
                    )
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        HydraConfig.instance().set_config(full)  # for ${hydra:...} in the directory pattern
        try:
            directory = str(OmegaConf.select(full, key, throw_on_resolution_failure=True))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key} does not resolve: {str(err).splitlines()[0]}") from None
    probe = Path(directory).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:  # the nearest existing ancestor must take a new directory (os.access says yes to root)
        Path(tempfile.mkdtemp(prefix=".rlfw-probe-", dir=probe)).rmdir()
    except OSError as err:
        raise ConfigError(f"{key}={directory}: cannot create a directory in {probe}: {err.strerror}") from None


def _stopped(signum: int, message: str) -> SystemExit:
    print(f"rlfw: {message}", file=sys.stderr)
    return SystemExit(128 + signum)


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
        preflight(args)
        check_hydra(args)
        from rlfw.distributed import join_launched_group, launcher_env

        if launcher_env() is not None:  # torchrun/srun: one run over every rank
            args = [*args, *join_launched_group(args)]
        sys.argv = [sys.argv[0], *args]
        train()
    except ConfigError as err:
        print(f"rlfw: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        print(f"rlfw: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except TrainingInterrupted as err:
        raise _stopped(err.signum, str(err)) from None
    except StopSignal as err:
        raise _stopped(err.signum, err.message) from None
    except KeyboardInterrupt:  # SIGINT where no handler of ours was installed
        raise _stopped(int(signal.SIGINT), "stopped by SIGINT") from None
    except OSError as err:
        print(f"rlfw: error: cannot write the run's files: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if _FAILED_JOBS:
        for line in _FAILED_JOBS:
            print(f"rlfw: error: {line}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
