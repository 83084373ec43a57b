"""``python -m rlfw [overrides]``: train. Hydra main with config groups algo, buffer, noise, env,
logger (and experiment).

Before Hydra runs any job, :func:`rlfw.config.preflight.preflight` composes and validates every
job of the command line (every job of a ``-m`` sweep), so a bad key or value stops with one
line and exit status 2 before any simulator starts.

``python -m rlfw resume=<run_dir> [train.epochs=N]`` continues a stopped or killed run from
its last checkpoint, in the same directory (see :func:`resume`).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rlfw.config.paths import config_dir
from rlfw.config.preflight import preflight
from rlfw.config.schema import register_schemas
from rlfw.errors import ConfigError

log = logging.getLogger("rlfw")

register_schemas()


def _result(row: dict) -> float:
    value = row.get("eval_success_rate")
    if value is None or value != value:
        value = row.get("eval_return", float("nan"))
    return float(value)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def train(cfg: DictConfig) -> float:
    """Train one job into Hydra's output dir; returns the final eval success rate (or return).

    The return value is what Hydra's sweepers (Optuna) maximise.
    """
    from rlfw.callbacks import make_callbacks
    from rlfw.training.loop import TrainLoop

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        tr = cfg.train
        if tr.workers > 1:
            from rlfw.config.validate import validate
            from rlfw.distributed import launch

            validate(cfg)
            row = launch(cfg, run_dir, multirun)[0]["row"]
            return _result(row)
        total = tr.epochs * tr.cycles_per_epoch * tr.steps_per_cycle
        runner = TrainLoop(cfg, run_dir, make_callbacks(cfg, run_dir, total, multirun))
        row = runner.run()
    except ConfigError as err:
        if multirun:  # Hydra records the failed job and goes on with the others
            raise
        log.error("error: %s", err)
        raise SystemExit(2) from None
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
    ckpt = path / "checkpoints" / "last.pt"
    if not ckpt.exists():  # killed before its first checkpoint: start over in the same dir
        from rlfw.training.checkpoint import truncate_logs

        truncate_logs(path, 0)
    if tr.workers > 1:
        from rlfw.distributed import launch

        log.info("resuming %s with %d workers", path, tr.workers)
        return _result(launch(cfg, path, checkpoint=ckpt if ckpt.exists() else None)[0]["row"])
    total = tr.epochs * tr.cycles_per_epoch * tr.steps_per_cycle
    runner = TrainLoop(cfg, path, make_callbacks(cfg, path, total))
    if ckpt.exists():
        runner.load_checkpoint(ckpt)
        log.info("resuming %s from epoch %d (%d env steps)", path, runner.epoch, runner.env_steps)
    else:
        log.info("resuming %s: no checkpoint yet, starting from epoch 0", path)
    return _result(runner.run())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: resume, or preflight then Hydra."""
    args = sys.argv[1:] if argv is None else argv
    resume_args = [a for a in args if a.startswith("resume=")]
    try:
        if resume_args:
            resume(resume_args[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")])
            return
        preflight(args)
    except ConfigError as err:
        print(f"rlfw: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv = [sys.argv[0], *args]
    train()


if __name__ == "__main__":
    main()
