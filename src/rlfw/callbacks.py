"""Training-loop callbacks built from the config: progress, plots, eval videos, early stopping,
and the logger backends' (:mod:`rlfw.loggers`: csv, wandb, TensorBoard).

:func:`make_callbacks` turns ``cfg.logger`` (and ``eval.stop_at``) into the list the training
loop is handed.
A callback sees the loop only through its public attributes (``run_dir``, ``cfg``, ``agent``,
``env_steps``, ``epoch``, ``last_cycle``, ``info``) and its ``request_stop(reason)``: it
imports nothing of the training package.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlfw.core import Callback, LoopView, decision_metric_name

log = logging.getLogger("rlfw")

Loop = LoopView  # the training loop as callbacks see it (rlfw.core.LoopView)


class ProgressCallback(Callback):
    """A live rich progress bar: env steps, steps per second, last eval success, ETA.

    While it runs, the per-epoch log lines are printed above the bar.
    """

    def __init__(self, total_steps: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps | {task.fields[sps]}/s | eval {task.fields[success]} | eta"),
            TimeRemainingColumn(),
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self.total = total_steps
        self.task: Any = None
        self._streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def _start(self, loop: Loop) -> None:
        self.progress.start()
        self.task = self.progress.add_task("training", total=self.total, completed=loop.env_steps,
                                           sps="-", success="-")  # fmt: skip
        # route the log lines through rich's stdout proxy (installed by start()) so that they
        # print above the bar instead of on it
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.__stdout__, sys.__stderr__):
                self._streams.append((h, h.stream))
                h.setStream(sys.stdout)

    def on_cycle(self, loop: Loop) -> None:
        if self.task is None:
            self._start(loop)
        self.progress.update(self.task, completed=loop.env_steps)

    def on_epoch(self, loop: Loop, row: dict[str, Any]) -> None:
        success = row.get("eval_success_rate", math.nan)
        if success is None or (isinstance(success, float) and math.isnan(success)):
            success = row.get("eval_return", math.nan)
        self.progress.update(self.task, completed=loop.env_steps, sps=f"{row['steps_per_s']:.0f}",
                             success=f"{success:.3g}")  # fmt: skip

    def on_end(self, loop: Loop) -> None:
        self.close()

    def close(self) -> None:
        for h, stream in self._streams:
            h.setStream(stream)
        self._streams.clear()
        self.progress.stop()


class PlotCallback(Callback):
    """Writes the run's PNGs (rlfw.plots.plot_run) when the run ends."""

    def on_end(self, loop: Loop) -> None:
        from rlfw.plots import plot_run

        try:
            paths = plot_run(loop.run_dir)
            log.info("plots: %s", ", ".join(p.name for p in paths))
        except Exception as err:  # a plot must never lose a finished run
            log.warning("could not write plots: %s", err)


class VideoCallback(Callback):
    """Records one deterministic eval episode as ``videos/epoch_<k>.mp4`` every N epochs and
    hands each file to ``sinks`` (the logger callbacks that show videos: those with a
    ``log_video(path, env_steps)`` method, :func:`rlfw.loggers.video_sinks`)."""

    def __init__(self, every: int, sinks: Sequence[Any] = ()) -> None:
        self.every = every
        self.sinks = list(sinks)
        self.paths: list[Path] = []

    def on_epoch(self, loop: Loop, row: dict[str, Any]) -> None:
        if loop.epoch % self.every:
            return
        from rlfw.envs.recording import record_episodes

        path = loop.run_dir / "videos" / f"epoch_{loop.epoch:04d}.mp4"
        try:
            record_episodes(loop.cfg, loop.agent, path, episodes=1, seed=int(loop.cfg.seed) + loop.epoch)
            self.paths.append(path)
            for cb in self.sinks:
                cb.log_video(path, int(row["env_steps"]))
        except Exception as err:
            log.warning("could not record a video: %s", err)


class EarlyStopping(Callback):
    """Ends the run at the first evaluation whose decision figure reaches ``eval.stop_at``: the
    confirmation evaluation's with ``eval.confirm_episodes`` > 0 (a lucky cheap evaluation never
    stops a run), else the cheap ``eval.metric`` column (SB3's
    ``StopTrainingOnRewardThreshold``), through the loop's ``request_stop``: the epoch's
    row and checkpoint are written, ``status.json`` says ``finished`` with the reason.

    Args:
        metric: ``eval.metric`` (``auto``, ``eval_success_rate``, ``eval_return``); its
            metrics.csv column is resolved by :meth:`column` once the env is known.
        threshold: ``eval.stop_at``: stop when ``row[column] >= threshold``; epochs without an
            evaluation (NaN, ``eval.every``) never stop.
        confirm_episodes: ``eval.confirm_episodes`` (0: decide on the cheap evaluation).
    """

    def __init__(self, metric: str, threshold: float, confirm_episodes: int = 0) -> None:
        self.metric = metric
        self.threshold = float(threshold)
        self.confirm_episodes = int(confirm_episodes)

    def column(self, loop: Loop) -> str:
        """The row column decisions use (:func:`rlfw.core.decision_metric_name`: the confirmed
        figure with ``eval.confirm_episodes`` > 0; ``auto`` is the success rate on goal envs,
        else the return), the same rule as best.pt and tuning."""
        return decision_metric_name(self.metric, bool(loop.info.goal), self.confirm_episodes)

    def on_epoch(self, loop: Loop, row: dict[str, Any]) -> None:
        column = self.column(loop)
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        if float(value) >= self.threshold:
            loop.request_stop(
                f"{column} {float(value):g} >= eval.stop_at={self.threshold:g} at epoch {loop.epoch}"
            )


def make_callbacks(cfg: DictConfig, run_dir: Path, total_steps: int, multirun: bool = False) -> list[Callback]:
    """The built-in callbacks of a run: the progress bar or lines, the callbacks of every logger
    backend (:func:`rlfw.loggers.backend_callbacks`: ``logger.backends``, by default the chosen
    ``logger`` option), eval videos handed to the backends that show them, :class:`EarlyStopping`
    when ``eval.stop_at`` is set and the plots at the end.
    """
    from rlfw.loggers import backend_callbacks, video_sinks

    lc = cfg.logger
    out: list[Callback] = []
    bar = lc.progress == "bar" or (lc.progress == "auto" and sys.stdout.isatty() and not multirun)
    if bar:
        out.append(ProgressCallback(total_steps))
    out += backend_callbacks(cfg, run_dir)
    if lc.video_every > 0:
        out.append(VideoCallback(int(lc.video_every), video_sinks(out)))
    stop_at = OmegaConf.select(cfg, "eval.stop_at", default=None)
    if stop_at is not None:
        out.append(EarlyStopping(str(OmegaConf.select(cfg, "eval.metric", default="auto")), float(stop_at),
                                 int(OmegaConf.select(cfg, "eval.confirm_episodes", default=0) or 0)))
    if lc.plots:
        out.append(PlotCallback())
    return out
