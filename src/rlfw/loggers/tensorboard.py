"""The ``tensorboard`` logger backend (``logger=tensorboard``, or ``tensorboard`` in
``logger.backends``): TensorBoard event files in ``<run_dir>/tensorboard/``
(``tensorboard --logdir <run_dir>``), with Stable-Baselines3's tag groups.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlfw.core import Callback, LoopView
from rlfw.loggers.schema import TensorBoardLoggerConfig
from rlfw.registry import register

Loop = LoopView


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


def tensorboard_logger(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """The ``tensorboard`` backend's callbacks: one :class:`TensorBoardCallback` (per-cycle
    points with ``logger.log_cycles``)."""
    return [TensorBoardCallback(run_dir, bool(OmegaConf.select(cfg, "logger.log_cycles", default=True)))]


register("logger", "tensorboard", TensorBoardLoggerConfig, tensorboard_logger)
