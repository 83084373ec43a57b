"""The ``wandb`` logger backend (``logger=wandb``, or ``wandb`` in ``logger.backends``): the
run's config, every metrics.csv column per epoch, the losses per cycle and eval videos to
Weights & Biases, offline by default (``<run_dir>/wandb/``, uploaded later with ``wandb sync``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlfw.core import Callback, LoopView
from rlfw.loggers.schema import WandbLoggerConfig
from rlfw.registry import register

log = logging.getLogger("rlfw")

Loop = LoopView


def run_names(cfg: DictConfig) -> tuple[str, str]:
    """(group, name) of a run, from the Hydra choices and the sweep.

    Group: the sweep directory for a ``-m`` sweep (so a sweep is one comparable group), else
    ``algo-buffer-noise-env`` (seeds of one setup together). Name: ``algo-buffer-noise-env-seedN``,
    with the job number in sweeps.
    """
    base = f"{cfg.algo.name}-{cfg.buffer.name}-{cfg.noise.name}-{cfg.env.id}"
    group, name = base, f"{base}-seed{cfg.seed}"
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        ch = hc.runtime.choices
        base = "-".join(str(ch.get(k, "")) for k in ("algo", "buffer", "noise", "env"))
        group, name = base, f"{base}-seed{cfg.seed}"
        if hc.mode == RunMode.MULTIRUN:
            group = f"sweep-{Path(hc.sweep.dir).name}"
            name = f"{hc.job.num}-{hc.job.override_dirname or base}"
    except Exception:  # not inside a Hydra app (resume, tests)
        pass
    return group, name


CYCLE_LOG_EVERY = 1000  # env steps between wandb's per-cycle loss points


class WandbCallback(Callback):
    """Logs config, every metrics.csv column per epoch, losses per cycle, videos, to wandb.

    Offline mode writes ``<run_dir>/wandb/offline-run-*``; nothing is sent until
    ``wandb sync``. System metrics (CPU, memory) are wandb's own.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, resume_id: str | None = None, mode: str | None = None) -> None:
        import wandb

        lc = cfg.logger
        group, name = run_names(cfg)
        self.wandb = wandb
        self.log_cycles = bool(lc.log_cycles)
        self._last_cycle_log = -CYCLE_LOG_EVERY
        self.run = wandb.init(
            project=lc.project,
            entity=lc.entity,
            group=lc.group or group,
            name=lc.run_name or name,
            tags=list(lc.tags),
            dir=str(run_dir),
            mode=mode or lc.mode,  # type: ignore[arg-type]
            config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="finish_previous",
        )
        (run_dir / "wandb_run_id.txt").write_text(str(self.run.id) + "\n")

    def on_cycle(self, loop: Loop) -> None:
        """The last cycle's losses, at most once per :data:`CYCLE_LOG_EVERY` env steps: the
        Hopper preset's cycles are one env step long, and a log call per step would cost more
        than it shows."""
        if not (self.log_cycles and loop.last_cycle):
            return
        if loop.env_steps - self._last_cycle_log < CYCLE_LOG_EVERY:
            return
        self._last_cycle_log = loop.env_steps
        self.run.log({f"cycle/{k}": v for k, v in loop.last_cycle.items()}, step=loop.env_steps)

    def on_epoch(self, loop: Loop, row: dict[str, Any]) -> None:
        clean = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        self._step = loop.env_steps
        self.run.log(clean, step=self._step)

    def log_video(self, path: Path, step: int) -> None:
        """The MP4 at ``path`` as ``eval/video``, at the step of this epoch's row (wandb's steps
        are this process's env steps; ``step``, metrics.csv's ``env_steps``, is not used)."""
        self.run.log({"eval/video": self.wandb.Video(str(path), format="mp4")}, step=getattr(self, "_step", step))

    def on_end(self, loop: Loop) -> None:
        self.run.finish()


def wandb_logger(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """``logger=wandb``: a :class:`WandbCallback` (none with ``logger.mode=disabled``); a run
    resumed in the same directory continues its wandb run (``wandb_run_id.txt``).

    ``logger.mode=online`` without an API key, or whose ``wandb.init`` fails (no network),
    falls back to offline with one warning line: the run goes on and ``wandb sync`` uploads it.
    """
    if cfg.logger.mode == "disabled":
        return []
    rid_file = run_dir / "wandb_run_id.txt"
    rid = rid_file.read_text().strip() if rid_file.exists() else None
    if cfg.logger.mode == "online":
        if not _wandb_credentials():
            log.warning("logger.mode=online but no wandb API key is set (WANDB_API_KEY or wandb login): "
                        "logging offline to %s/wandb instead; upload later with wandb sync", run_dir)  # fmt: skip
            return [WandbCallback(cfg, run_dir, rid, mode="offline")]
        try:
            return [WandbCallback(cfg, run_dir, rid)]
        except Exception as err:  # no network, server down: the run must not die of its logger
            log.warning("wandb online failed (%s): logging offline to %s/wandb instead; upload later "
                        "with wandb sync", str(err).splitlines()[0] if str(err) else type(err).__name__, run_dir)  # fmt: skip
            return [WandbCallback(cfg, run_dir, rid, mode="offline")]
    return [WandbCallback(cfg, run_dir, rid)]


def _wandb_credentials() -> bool:
    """Whether a wandb API key is configured (``WANDB_API_KEY`` or a ``wandb login`` netrc entry)."""
    import netrc
    import os

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


register("logger", "wandb", WandbLoggerConfig, wandb_logger)
