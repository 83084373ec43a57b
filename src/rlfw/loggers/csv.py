"""The ``csv`` logger backend (``logger=csv``, the default): the console line per epoch and the
files every run writes whatever its backends (metrics.csv, episodes.csv, written by the training
loop's outputs), so it adds no callback of its own."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlfw.core import Callback
from rlfw.loggers.schema import LoggerConfig
from rlfw.registry import register


def csv_logger(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """No callback: metrics.csv and episodes.csv are always written."""
    return []


register("logger", "csv", LoggerConfig, csv_logger)
