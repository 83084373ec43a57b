"""Typed schemas of the ``logger`` options (stored in Hydra's ConfigStore by
:func:`rlfw.registry.register` in the backend modules of :mod:`rlfw.loggers`).

The ``logger`` option picks the keys (a backend's own keys, such as wandb's ``logger.project``,
come with its option); ``logger.backends`` picks where the run writes: by default the chosen
option alone, ``logger=wandb logger.backends=[csv,wandb,tensorboard]`` to several.
"""

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
    # The backends the run logs to, any registered logger options (csv, tensorboard, wandb, a
    # plugin's); null: the chosen option alone. metrics.csv and episodes.csv are always written.
    # Several at once: logger=wandb logger.backends=[csv,wandb,tensorboard].
    backends: list[str] | None = None
    # Kept for commands and saved runs from before logger.backends: true adds tensorboard to the
    # backends (logger=wandb logger.tensorboard=true is logger.backends=[wandb,tensorboard]).
    tensorboard: bool = False
    # losses and Q values per cycle (at most every 1000 env steps), not only per epoch, for
    # wandb and TensorBoard
    log_cycles: bool = True

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges and names of these keys, and every backend of :func:`backends_of`: a
        registered logger option whose keys this option has, with its packages installed
        (its schema's ``check_backend``).

        Raises:
            ConfigError: ``unknown logger.backends 'x'; choose one of: csv, tensorboard, wandb``;
                a backend whose keys the chosen option lacks (``logger=csv
                logger.backends=[wandb]``: choose ``logger=wandb``); a missing package.
        """
        from rlfw.registry import registry

        one_of(node.progress, ("auto", "bar", "lines"), "logger.progress")
        in_range(node, "video_every", 0, prefix="logger.")
        names = backends_of(node)
        known = registry("logger")
        for name in names:
            if name not in known.names():
                raise ConfigError(f"unknown logger.backends '{name}'; choose one of: {', '.join(known.names())}")
            schema = known.get(name).schema
            missing = [f for f in getattr(schema, "__dataclass_fields__", {}) if f not in node]
            if missing:
                raise ConfigError(
                    f"logger.backends: '{name}' needs its keys ({', '.join('logger.' + m for m in missing)}), which "
                    f"logger={node.name} lacks: choose logger={name} and list the others, e.g. logger={name} "
                    f"logger.backends=[{','.join(dict.fromkeys(['csv', *names]))}]"
                )
            check = getattr(schema, "check_backend", None)
            if check is not None:
                check(node)

    @staticmethod
    def check_backend(node: Any) -> None:
        """What this backend needs beyond its keys (a package); the csv backend needs nothing."""


@dataclass
class TensorBoardLoggerConfig(LoggerConfig):
    """``logger=tensorboard``: the csv logger plus TensorBoard event files in
    ``<run_dir>/tensorboard/`` (``tensorboard --logdir <run_dir>``)."""

    name: str = "tensorboard"

    @staticmethod
    def check_backend(node: Any) -> None:
        """TensorBoard's event files need the tensorboard package (torch's SummaryWriter)."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "logger.backends: tensorboard needs the tensorboard package: "
                "pip install -c constraints.txt -e '.[tensorboard]'"
            ) from None


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
    def check_backend(node: Any) -> None:
        """``logger.mode`` and the wandb package."""
        one_of(node.mode, ("offline", "online", "disabled"), "logger.mode")
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(
                "logger=wandb needs the wandb package: python -m pip install -c constraints.txt -e '.[wandb]'"
            ) from None


def backends_of(node: Any) -> list[str]:
    """The backends a run logs to: ``logger.backends``, or the chosen option alone when it is
    null, plus ``tensorboard`` where the older ``logger.tensorboard`` is true; in order, without
    repeats. ``csv`` needs no listing: its files are always written."""
    chosen = node.get("backends")
    names = [str(n) for n in chosen] if chosen is not None else [str(node.name)]
    if node.get("tensorboard", False):
        names.append("tensorboard")
    return list(dict.fromkeys(names))
