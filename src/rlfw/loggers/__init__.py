"""Logger backends: where a run's metrics go besides metrics.csv and episodes.csv (which every
run writes). Like the other component families, each backend is a module that registers a
``logger`` option through the ``rlfw.components`` entry points: a schema (its keys, extending
:class:`rlfw.loggers.schema.LoggerConfig`) and a factory ``(cfg, run_dir) -> list[Callback]``.

- :mod:`rlfw.loggers.csv`: ``csv``, the default (the console line per epoch; no callback).
- :mod:`rlfw.loggers.tensorboard`: ``tensorboard`` (event files in ``<run_dir>/tensorboard/``).
- :mod:`rlfw.loggers.wandb`: ``wandb`` (offline by default).

``logger=<option>`` chooses the keys; ``logger.backends`` the list the run writes to (null: the
chosen option alone), so backends combine without a flag per pair:
``logger=wandb logger.backends=[csv,wandb,tensorboard]``. A backend callback that shows eval
videos has a method ``log_video(path, env_steps)`` (:func:`video_sinks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rlfw.core import Callback
from rlfw.loggers.schema import backends_of
from rlfw.registry import registry

__all__ = ["backend_callbacks", "backends_of", "video_sinks"]


def backend_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """The callbacks of every backend in :func:`rlfw.loggers.schema.backends_of`, in order.

    Raises:
        ConfigError: an unknown backend name (``unknown logger '<name>'; choose one of: ...``).
    """
    out: list[Callback] = []
    for name in backends_of(cfg.logger):
        out += registry("logger").get(name).target(cfg, Path(run_dir))
    return out


def video_sinks(callbacks: list[Any]) -> list[Any]:
    """The callbacks that show eval videos: those with a ``log_video(path, env_steps)`` method."""
    return [cb for cb in callbacks if callable(getattr(cb, "log_video", None))]
