"""Typed schemas of the ``logger`` options (stored in Hydra's ConfigStore by
:func:`rlfw.registry.register` in :mod:`rlfw.callbacks`)."""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time.
from dataclasses import dataclass, field
from typing import Any

from rlfw.core import in_range, one_of
from rlfw.errors import ConfigError


@dataclass
class LoggerConfig:
    """``logger=csv``: console and files only. metrics.csv and episodes.csv are always written."""

    name: str = "csv"
    console: bool = True  # one line per epoch on the console (and in the run's log file)
    progress: str = "auto"  # auto (a bar on a terminal, lines otherwise), bar, lines
    plots: bool = True  # write the run's PNG plots when it ends
    video_every: int = 0  # record one eval episode as MP4 every N epochs (0: never)
    # also write TensorBoard event files to <run_dir>/tensorboard/ (any logger: logger=wandb
    # logger.tensorboard=true logs to both; logger=tensorboard sets it)
    tensorboard: bool = False
    # losses and Q values per cycle (at most every 1000 env steps), not only per epoch, for
    # wandb and TensorBoard
    log_cycles: bool = True

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges and names of these keys."""
        one_of(node.progress, ("auto", "bar", "lines"), "logger.progress")
        in_range(node, "video_every", 0, prefix="logger.")
        if node.tensorboard:
            try:
                import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
            except ImportError:
                raise ConfigError(
                    "logger.tensorboard=true needs the tensorboard package: "
                    "pip install -c constraints.txt -e '.[tensorboard]'"
                ) from None


@dataclass
class TensorBoardLoggerConfig(LoggerConfig):
    """``logger=tensorboard``: the csv logger plus TensorBoard event files in
    ``<run_dir>/tensorboard/`` (``tensorboard --logdir <run_dir>``)."""

    name: str = "tensorboard"
    tensorboard: bool = True


@dataclass
class WandbLoggerConfig(LoggerConfig):
    """``logger=wandb``: also log to Weights & Biases (offline by default: no network needed).

    Offline runs land in ``<run_dir>/wandb/`` and upload later with ``wandb sync <dir>``.
    """

    name: str = "wandb"
    project: str = "rlfw"
    entity: str | None = None
    mode: str = "offline"  # offline, online, disabled
    group: str | None = None  # None: the sweep (multirun) or algo-buffer-noise-env
    run_name: str | None = None  # None: algo-buffer-noise-env-seedN (+ the job number)
    tags: list[str] = field(default_factory=list)

    @staticmethod
    def validate(node: Any) -> None:
        LoggerConfig.validate(node)
        one_of(node.mode, ("offline", "online", "disabled"), "logger.mode")
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(
                "logger=wandb needs the wandb package: python -m pip install -c constraints.txt -e '.[wandb]'"
            ) from None
