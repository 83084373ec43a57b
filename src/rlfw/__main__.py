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
    try:
        row = run_job(cfg, Path(hc.runtime.output_dir), multirun)
    except ConfigError as err:
        if multirun:  # Hydra records the failed job and goes on with the others
            raise
        log.error("error: %s", err)
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        if multirun:
            raise
        log.error("error: %s", err)
        raise SystemExit(1) from None
    except TrainingInterrupted as err:  # SIGTERM/SIGUSR1/SIGUSR2: status.json says interrupted
        from rlfw.training.requeue import hand_over

        hand_over(err.signum)  # under submitit: requeue this job (exits); else go on
        if multirun:
            raise
        log.warning("%s", err)
        raise SystemExit(128 + err.signum) from None
    except OSError as err:  # a full disk, an unwritable file: one line, the run marked failed
        if multirun:
            raise
        log.error("error: cannot write the run's files: %s", err)
        raise SystemExit(1) from None
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: help, resume, or preflight then Hydra."""
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    resume_args = [a for a in args if a.startswith("resume=")]
    try:
        if resume_args:
            resume(resume_args[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")])
            return
        preflight(args)
        from rlfw.distributed import join_launched_group, launcher_env

        if launcher_env() is not None:  # torchrun/srun: one run over every rank
            args = [*args, *join_launched_group(args)]
    except ConfigError as err:
        print(f"rlfw: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        print(f"rlfw: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except TrainingInterrupted as err:
        print(f"rlfw: {err}", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None
    except OSError as err:
        print(f"rlfw: error: cannot write the run's files: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    sys.argv = [sys.argv[0], *args]
    train()


if __name__ == "__main__":
    main()
