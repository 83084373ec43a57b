"""Training-loop callbacks built from the config: progress, plots, eval videos, wandb,
TensorBoard, early stopping.

:func:`make_callbacks` turns ``cfg.logger`` (and ``eval.stop_at``) into the list the training
loop is handed. This module registers ``logger=csv``, ``logger=wandb`` and ``logger=tensorboard``.
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
from rlfw.logger_config import LoggerConfig, TensorBoardLoggerConfig, WandbLoggerConfig
from rlfw.registry import register, registry

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
    hands each file to ``sinks`` (the loggers that show videos: :class:`WandbCallback`,
    :class:`TensorBoardCallback`; :func:`make_callbacks` passes the ones it made)."""

    def __init__(self, every: int, sinks: Sequence[Callback] = ()) -> None:
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
                if isinstance(cb, WandbCallback):
                    cb.log_video(path, loop.env_steps)
                elif isinstance(cb, TensorBoardCallback):
                    cb.log_video(path, int(row["env_steps"]))
        except Exception as err:
            log.warning("could not record a video: %s", err)


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
        self.run.log(clean, step=loop.env_steps)

    def log_video(self, path: Path, step: int) -> None:
        self.run.log({"eval/video": self.wandb.Video(str(path), format="mp4")}, step=step)

    def on_end(self, loop: Loop) -> None:
        self.run.finish()


def _total_steps(loop: Loop) -> int:
    """The env steps of all workers (metrics.csv's ``env_steps``), the loggers' x axis."""
    ctx = getattr(loop, "ctx", None)
    return int(loop.env_steps) * int(getattr(ctx, "world", 1))


# metrics.csv columns TensorBoard shows under time/ (the rest: tb_tag)
TIME_COLUMNS = ("epoch", "env_steps", "episodes", "wall_time_s", "steps_per_s", "scripted_steps", "updates")
TB_CYCLE_EVERY = 100  # env steps between TensorBoard's per-cycle points (every cycle of 100 steps or more)


def tb_tag(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column, grouped as Stable-Baselines3 groups them:
    ``eval/`` (``eval_success_rate`` -> ``eval/success_rate``; ``confirm_*`` ->
    ``eval/confirm_*``), ``rollout/`` (the training episodes: ``train_success_rate`` ->
    ``rollout/success_rate``; the exploration's ``noise_sigma``), ``time/`` (:data:`TIME_COLUMNS`),
    ``train/`` (losses, Q values, temperatures: everything else)."""
    if column.startswith("eval_"):
        return "eval/" + column.removeprefix("eval_")
    if column.startswith("confirm_"):
        return "eval/" + column
    if column.startswith("train_"):
        return "rollout/" + column.removeprefix("train_")
    if column in TIME_COLUMNS:
        return "time/" + column
    if column == "noise_sigma":
        return "rollout/noise_sigma"
    return "train/" + column


def hparams_of(cfg: Any) -> dict[str, Any]:
    """The run's settings for TensorBoard's HPARAMS tab: every scalar leaf of ``algo``,
    ``buffer``, ``noise`` and ``train``, with ``env.id`` and ``seed`` (``group.key`` names;
    lists as their text)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    out: dict[str, Any] = {"env.id": str(plain.get("env", {}).get("id")), "seed": int(plain.get("seed", 0))}
    for group in ("algo", "buffer", "noise", "train"):
        for key, value in (plain.get(group) or {}).items():
            if isinstance(value, bool | int | float | str):
                out[f"{group}.{key}"] = value
            elif isinstance(value, list):
                out[f"{group}.{key}"] = str(value)
    return out


class TensorBoardCallback(Callback):
    """TensorBoard event files in ``<run_dir>/tensorboard/``, written with torch's
    :class:`torch.utils.tensorboard.SummaryWriter`, with Stable-Baselines3's tag groups.

    Per epoch every metrics.csv column as a scalar under :func:`tb_tag` (``eval/``,
    ``rollout/``, ``train/``, ``time/``; x axis: ``env_steps``; empty cells, NaN, are left
    out as in wandb); with ``logger.log_cycles`` every cycle's losses and Q values as
    ``cycle/<name>`` (at most one point per :data:`TB_CYCLE_EVERY` env steps, so a Hopper
    cycle of one env step is not a point each); at the start the run's config as text
    (``config``, YAML); at the end an HPARAMS entry (:func:`hparams_of`) with the delivered
    figures (``hparams/delivered_success_rate``, ``hparams/delivered_return``); eval videos
    (``logger.video_every``) as ``eval/video`` (an animated GIF, TensorBoard's video format,
    made with imageio instead of moviepy). A resumed run writes a new event file in the same
    directory with ``purge_step`` at its first step, so TensorBoard drops the points of the
    lost epoch instead of drawing them twice.
    """

    def __init__(self, run_dir: Path, log_cycles: bool = True) -> None:
        self.log_dir = Path(run_dir) / "tensorboard"
        self.log_cycles = log_cycles
        self.writer: Any = None
        self._last_cycle_log = -TB_CYCLE_EVERY

    def on_start(self, loop: Loop) -> None:
        from omegaconf import OmegaConf
        from torch.utils.tensorboard import SummaryWriter

        start = _total_steps(loop)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=start if start > 0 else None)
        self._last_cycle_log = start - TB_CYCLE_EVERY
        cfg = getattr(loop, "cfg", None)
        if cfg is not None and start == 0:
            text = OmegaConf.to_yaml(cfg, resolve=True)
            self.writer.add_text("config", "```yaml\n" + text + "```", 0)  # markdown: a code block

    def on_cycle(self, loop: Loop) -> None:
        """The last cycle's losses, every cycle (at most one point per :data:`TB_CYCLE_EVERY` env steps)."""
        step = _total_steps(loop)
        if not (self.log_cycles and loop.last_cycle) or step - self._last_cycle_log < TB_CYCLE_EVERY:
            return
        self._last_cycle_log = step
        for k, v in loop.last_cycle.items():
            self.writer.add_scalar(f"cycle/{k}", v, step)

    def on_epoch(self, loop: Loop, row: dict[str, Any]) -> None:
        step = int(row["env_steps"])
        for k, v in row.items():
            if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
                self.writer.add_scalar(tb_tag(k), v, step)
        self.writer.flush()

    def log_video(self, path: Path, step: int) -> None:
        """Add the MP4 at ``path`` as ``eval/video`` at env step ``step``."""
        import imageio.v2 as imageio
        import numpy as np
        from tensorboard.compat.proto.summary_pb2 import Summary

        reader = imageio.get_reader(path)
        fps = float(reader.get_meta_data().get("fps") or 25)
        frames = np.stack([np.asarray(f)[..., :3] for f in reader.iter_data()])  # [T, H, W, 3] uint8
        reader.close()
        gif = imageio.mimwrite("<bytes>", list(frames), format="GIF", duration=1000.0 / fps, loop=0)
        _, h, w, c = frames.shape
        image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif)
        # torch's own add_video writes this summary through the same file writer
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag="eval/video", image=image)]), step)
        self.writer.flush()

    def on_end(self, loop: Loop) -> None:
        if self.writer is None:
            return
        delivered = getattr(loop, "delivered", None) or {}
        cfg = getattr(loop, "cfg", None)
        metrics = {f"hparams/delivered_{k}": float(delivered[k]) for k in ("success_rate", "return_mean")
                   if isinstance(delivered.get(k), int | float) and math.isfinite(float(delivered[k]))}  # fmt: skip
        if cfg is not None and metrics:
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(hparams_of(cfg), metrics):  # the HPARAMS tab's experiment and session
                self.writer._get_file_writer().add_summary(summary)
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, _total_steps(loop))
        self.writer.close()
        self.writer = None


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
    """The callbacks ``cfg.logger`` asks for (progress bar, plots, videos, wandb, TensorBoard) and
    :class:`EarlyStopping` when ``eval.stop_at`` is set.

    ``logger.tensorboard`` adds a :class:`TensorBoardCallback` to whatever ``logger`` option is
    chosen (``logger=tensorboard`` is the csv logger with it on), so wandb and TensorBoard
    compose as ``logger=wandb logger.tensorboard=true``.
    """
    lc = cfg.logger
    out: list[Callback] = []
    bar = lc.progress == "bar" or (lc.progress == "auto" and sys.stdout.isatty() and not multirun)
    if bar:
        out.append(ProgressCallback(total_steps))
    out += registry("logger").get(lc.name).target(cfg, run_dir)  # the logger's own callbacks
    if OmegaConf.select(cfg, "logger.tensorboard", default=False):
        out.append(TensorBoardCallback(run_dir, bool(OmegaConf.select(cfg, "logger.log_cycles", default=True))))
    if lc.video_every > 0:
        out.append(VideoCallback(int(lc.video_every), [cb for cb in out if isinstance(cb, WandbCallback | TensorBoardCallback)]))
    stop_at = OmegaConf.select(cfg, "eval.stop_at", default=None)
    if stop_at is not None:
        out.append(EarlyStopping(str(OmegaConf.select(cfg, "eval.metric", default="auto")), float(stop_at),
                                 int(OmegaConf.select(cfg, "eval.confirm_episodes", default=0) or 0)))
    if lc.plots:
        out.append(PlotCallback())
    return out


def csv_logger(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """``logger=csv``: no callback of its own (metrics.csv and episodes.csv are always written)."""
    return []


def tensorboard_logger(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """``logger=tensorboard``: the csv logger's (none); its ``logger.tensorboard=true`` makes
    :func:`make_callbacks` add the :class:`TensorBoardCallback`, as for any other logger."""
    return []


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


# a logger option is a factory (cfg, run_dir) -> its callbacks
register("logger", "csv", LoggerConfig, csv_logger)
register("logger", "wandb", WandbLoggerConfig, wandb_logger)
register("logger", "tensorboard", TensorBoardLoggerConfig, tensorboard_logger)
LOGGERS = registry("logger")
