"""Kept for plugins written before :mod:`rlfw.loggers`: the logger schemas now live in
:mod:`rlfw.loggers.schema`."""

from rlfw.loggers.schema import LoggerConfig, TensorBoardLoggerConfig, WandbLoggerConfig

__all__ = ["LoggerConfig", "TensorBoardLoggerConfig", "WandbLoggerConfig"]
