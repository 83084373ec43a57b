"""The one training loop for every algo x buffer x noise x env combination.

Per epoch: ``cycles_per_epoch`` times (collect ``steps_per_cycle`` env steps into the buffer,
add up normaliser statistics over the workers, run ``updates_per_cycle`` gradient steps), then
evaluate the deterministic policy and tell the callbacks. The HER paper's schedule (epochs x
cycles x episodes, 40 updates a cycle) and the TD3 paper's (one update per env step) are two
settings of this loop.

Files in the run directory (Hydra's output dir), written by rank 0 through callbacks
(:mod:`rlfw.training.outputs`) and the checkpointer:

- ``.hydra/`` the resolved config (Hydra's),
- ``metrics.csv`` one row per epoch (:func:`rlfw.training.csvfiles.metric_columns`),
- ``episodes.csv`` one row per finished training episode,
- ``checkpoints/last.pt`` (and per-worker buffer files with ``train.save_buffer``), and
  ``checkpoints/best.pt`` whenever an evaluation's decision figure is the best so far (the
  confirmed figure, below),
- ``evaluation.json`` the delivered checkpoint's final evaluation (below),
- ``status.json`` ``running`` while training, ``finished``, ``failed`` or ``interrupted`` at the end,
- ``versions.json`` the package versions and the git commit (:func:`rlfw.training.outputs.versions`).

The evaluation protocol (the screen, the confirmation, the final evaluation of what the run
delivers) is :class:`rlfw.training.protocol.EvaluationProtocol`; early stops and stop signals
are :class:`rlfw.training.stopping.StopControl`. :class:`TrainLoop` has both.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rlfw.build import Components, build, total_steps
from rlfw.core import Callback, decision_metric_name, eval_metric_name
from rlfw.errors import TrainingDiverged, TrainingInterrupted
from rlfw.training.checkpoint import Checkpointer, TrainingState, divergence_advice, has_checkpoint
from rlfw.training.collector import Collector
from rlfw.training.context import LocalContext
from rlfw.training.cores import torch_threads
from rlfw.training.csvfiles import CsvFiles
from rlfw.training.outputs import ConsoleLine, StatusFile, VersionsFile
from rlfw.training.protocol import EvaluationProtocol
from rlfw.training.stopping import STOP_SIGNALS, StopControl

log = logging.getLogger("rlfw")

__all__ = ["STOP_SIGNALS", "TrainLoop"]


class TrainLoop(EvaluationProtocol, StopControl):
    """Trains the components :func:`rlfw.build.build` makes from a composed config.

    Args:
        cfg: the composed root config (see conf/config.yaml).
        run_dir: where to write (Hydra's ``runtime.output_dir``).
        callbacks: extra callbacks (progress, plots, videos, wandb: :mod:`rlfw.callbacks`).
        ctx: the worker context (:class:`rlfw.training.context.DistContext`); None: one process.
        components: already built components (None: built here from ``cfg``).

    ``cfg`` is validated by the caller, once per process at the edge
    (:func:`rlfw.config.preflight.ensure_valid`; :func:`rlfw.training.start.start_run` starts
    every run).

    Raises:
        ConfigError: the env does not fit the config (HER without goals).
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, callbacks: list[Callback] | None = None,
                 ctx: LocalContext | None = None, components: Components | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = ctx or LocalContext()
        tr = cfg.train
        # torch threads: the key, else the cores shared out among the workers (at most 2 each:
        # more does not speed up 256-wide MLPs and starves the simulators)
        # (train.overlap with async envs: one core of the share is the simulators')
        beside = int(bool(tr.overlap) and cfg.env.vectorization == "async")
        torch.set_num_threads(torch_threads(int(tr.torch_threads), self.ctx.world, reserve=beside))
        self.parts = components or build(cfg, self.ctx.rank, self.ctx.device if ctx is not None else None)
        p = self.parts
        self.env_id, self.info, self.device = p.env.env_id, p.info, p.device
        self.agent, self.exploration, self.buffer = p.agent, p.exploration, p.buffer
        self.rng, self.seed = p.rng, p.seed
        self.ctx.attach(self.agent)
        if tr.autocast != "none":
            self.agent.autocast_dtype = getattr(torch, str(tr.autocast))
        if tr.compile:
            from rlfw.training.accelerate import compile_networks

            compile_networks(self.agent, self.device)
        # algo.lr_schedule: the rates follow this worker's env steps over train.epochs' (0: constant)
        schedule = str(OmegaConf.select(cfg, "algo.lr_schedule", default="constant") or "constant")
        self._lr_steps = total_steps(cfg) if schedule != "constant" else 0
        self.collector = Collector(p.envs, self.agent, self.exploration, self.buffer, self.info.goal,
                                   self.info.act_dim, tr.learning_starts, self.rng, self.seed, self.env_id)  # fmt: skip
        # the run's generator (p.rng) has one owner, the components: the collector and the
        # exploration draw from it, the checkpointer saves and restores it in place
        self.checkpointer = Checkpointer(self.run_dir, self.ctx.rank, tr.save_buffer, cfg=cfg, parts=p)
        self.epoch = 0
        self.wall_time = 0.0
        # rank 0's files: the CSV rows are written before the checkpoint (a checkpoint never runs
        # ahead of metrics.csv), the other outputs after it, with the callbacks
        self._csv: CsvFiles | None = CsvFiles() if self.ctx.is_main else None
        outputs: list[Callback] = []
        if self.ctx.is_main:
            outputs = [StatusFile(), VersionsFile()] + ([ConsoleLine()] if cfg.logger.console else [])
        self._outputs = outputs
        self.callbacks: list[Callback] = list(callbacks or []) if self.ctx.is_main else []
        self.last_cycle: dict[str, float] = {}  # mean metrics of the last cycle (for loggers)
        self.last_episodes: list[dict[str, Any]] = []  # training episodes of the last epoch
        self.status = "running"
        self.error: str | None = None
        self.stop_reason: str | None = None  # set by request_stop: the run ends after this epoch
        self._eval_seeded = False
        # the evaluation protocol: the cheap evaluation's column and the one decisions use
        self.confirm_episodes = int(OmegaConf.select(cfg, "eval.confirm_episodes", default=0) or 0)
        self.eval_metric = eval_metric_name(str(cfg.eval.metric), bool(self.info.goal))
        self.decision_metric = decision_metric_name(str(cfg.eval.metric), bool(self.info.goal), self.confirm_episodes)
        # the final evaluation of the delivered checkpoint (evaluation.json's content), or None
        self.delivered: dict[str, Any] | None = None
        # simulator steps of scripted starts (env.grasped_start, env.near_object_start) over all
        # workers: those of the checkpoint resumed from, and the total at the last epoch's end
        self._scripted_base = self._scripted_total = 0

    # ---------------------------------------------------------------------------------------

    @property
    def env_steps(self) -> int:
        """This worker's env steps so far."""
        return self.collector.env_steps

    @property
    def episodes(self) -> int:
        """This worker's finished training episodes so far."""
        return self.collector.episodes

    def training_state(self) -> TrainingState:
        """The counters a checkpoint saves (:class:`rlfw.training.checkpoint.TrainingState`)."""
        return TrainingState(self.epoch, self.env_steps, self.episodes, self.wall_time, self._scripted_total)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint (:meth:`rlfw.training.checkpoint.Checkpointer.load`)."""
        state = self.checkpointer.load(path)
        self.epoch, self.wall_time = state.epoch, state.wall_time
        self._scripted_base = self._scripted_total = state.scripted_steps
        self.collector.env_steps, self.collector.episodes = state.env_steps, state.episodes

    def checkpoint(self) -> None:
        """Write this worker's checkpoint files now."""
        self.checkpointer.save(self.training_state())

    def train_epoch(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One epoch in named steps: :meth:`run_cycle` ``train.cycles_per_epoch`` times (collect,
        update, tell the callbacks), then :meth:`evaluate_if_due`, :meth:`confirm_if_due`
        and :meth:`epoch_row`.

        Returns:
            (the metrics row, the training episodes finished in it).
        """
        t0 = time.perf_counter()
        steps0 = self.env_steps
        finished: list[dict[str, Any]] = []
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(self.cfg.train.cycles_per_epoch):
            finished += self.run_cycle(sums, counts)
        self.epoch += 1
        evaluation = self.evaluate_if_due()
        confirmation = self.confirm_if_due(evaluation)
        dt = time.perf_counter() - t0
        self.wall_time += dt
        row = self.epoch_row(finished, evaluation, sums, counts, self.env_steps - steps0, dt)
        row["confirm_return"], row["confirm_success_rate"] = confirmation
        row["scripted_steps"] = self._scripted_total = self._scripted_base + self._scripted_steps()
        return row, finished

    def _scripted_steps(self) -> int:
        """Simulator steps the training envs' scripted starts took in this process's run so
        far, summed over the workers (:class:`rlfw.envs.grasp.ScriptedStart`); 0 without them."""
        env = self.cfg.env
        if not (float(env.get("grasped_start", 0) or 0) > 0 or float(env.get("near_object_start", 0) or 0) > 0):
            return 0
        try:
            envs: Any = self.parts.envs  # a SyncVectorEnv or AsyncVectorEnv (get_attr: per sub-env)
            counts = envs.get_attr("scripted_steps")
            local = int(sum(int(n) for n in counts))
        except (AttributeError, TypeError, ValueError):
            local = 0
        if self.ctx.world > 1:
            total = torch.tensor([float(local)], dtype=torch.float64)
            self.ctx.all_reduce_sum(total)
            return int(total.item())
        return local

    def run_cycle(self, sums: dict[str, float], counts: dict[str, int]) -> list[dict[str, Any]]:
        """One cycle: set the learning rates of ``algo.lr_schedule`` (if not constant) at this
        worker's env steps at the cycle's end, collect ``train.steps_per_cycle`` env steps and run
        ``train.updates_per_cycle`` updates (after the steps, or spread over them with
        ``train.overlap``), add the update metrics to ``sums``/``counts``, call the callbacks'
        ``on_cycle`` and check for a stop signal.

        Returns:
            The training episodes finished in the cycle (rows of episodes.csv).

        Raises:
            TrainingDiverged: a loss came out non-finite.
            TrainingInterrupted: a stop signal arrived (:meth:`_check_stop`).
        """
        tr = self.cfg.train
        vector_steps = tr.steps_per_cycle // self.collector.num_envs
        cycle: dict[str, list[float]] = {}
        during = None
        if tr.overlap:  # the cycle's updates spread evenly over its steps, run while the envs step
            def during(i: int) -> None:
                self._updates(((i + 1) * tr.updates_per_cycle) // vector_steps
                              - (i * tr.updates_per_cycle) // vector_steps, cycle)  # fmt: skip

        if self._lr_steps:  # the cycle's updates at the rate of its last env step (SB3's order)
            self.agent.set_progress((self.env_steps + tr.steps_per_cycle) / self._lr_steps)
        finished = self.collector.collect(tr.steps_per_cycle, self.epoch, during)
        self.ctx.sync_normalizers(self.agent)
        if not tr.overlap:
            self._updates(tr.updates_per_cycle, cycle)
        if cycle:
            self.last_cycle = {k: float(np.mean(vs)) for k, vs in cycle.items()}
            for k, vs in cycle.items():
                sums[k] = sums.get(k, 0.0) + float(np.sum(vs))
                counts[k] = counts.get(k, 0) + len(vs)
        for cb in self.callbacks:
            cb.on_cycle(self)
        self._check_stop()
        return finished

    def evaluate_if_due(self) -> tuple[float, float, float]:
        """:meth:`evaluate` after every ``eval.every`` epochs and after the last one, else NaNs:
        ``(eval_return, eval_return_std, eval_success_rate)``."""
        cfg = self.cfg
        if self.epoch % cfg.eval.every == 0 or self.epoch == cfg.train.epochs:
            return self.evaluate(cfg.eval.episodes)
        return math.nan, math.nan, math.nan

    def epoch_row(self, finished: list[dict[str, Any]], evaluation: tuple[float, float, float],
                  sums: dict[str, float], counts: dict[str, int], steps: int, dt: float) -> dict[str, Any]:  # fmt: skip
        """The epoch's metrics.csv row (:func:`rlfw.training.csvfiles.metric_columns`).

        Args:
            finished: the epoch's finished training episodes.
            evaluation: ``(eval_return, eval_return_std, eval_success_rate)``.
            sums: the update metrics' sums over the epoch.
            counts: their counts over the epoch.
            steps: this worker's env steps in the epoch.
            dt: the epoch's wall seconds.
        """
        eval_ret, eval_std, eval_succ = evaluation
        rets = [f["return"] for f in finished]
        succ = [f["success"] for f in finished if not math.isnan(f["success"])]
        world = self.ctx.world
        return {
            "epoch": self.epoch,
            "env_steps": self.env_steps * world,  # over all workers
            "updates": self.agent.updates,
            "episodes": self.episodes,
            "wall_time_s": self.wall_time,
            "steps_per_s": steps * world / dt,
            "train_return": float(np.mean(rets)) if rets else math.nan,
            "train_success_rate": float(np.mean(succ)) if succ else math.nan,
            "eval_return": eval_ret,
            "eval_return_std": eval_std,
            "eval_success_rate": eval_succ,
            **{k: sums[k] / counts[k] if counts.get(k) else math.nan for k in self.agent.metric_names},
            **self.exploration.metrics(self.env_steps),
        }

    def _updates(self, n: int, cycle: dict[str, list[float]]) -> None:
        """``n`` gradient steps (none before ``learning_starts`` or a batch's worth of data),
        PER priorities updated after each; their metrics appended to ``cycle``.

        Raises:
            TrainingDiverged: a loss came out non-finite (:meth:`_diverged`).
        """
        tr = self.cfg.train
        if n <= 0 or self.env_steps < tr.learning_starts or len(self.buffer) < tr.batch_size:
            return
        for _ in range(n):
            batch = self.buffer.sample(tr.batch_size, self.env_steps)
            result = self.agent.update(batch)
            metrics = result.metrics
            if not all(math.isfinite(v) for v in metrics.values()):
                self._diverged(metrics)
            if result.td_error is not None:
                self.buffer.update_priorities(batch.index, result.td_error)
            for k, value in metrics.items():
                cycle.setdefault(k, []).append(value)

    def _diverged(self, metrics: dict[str, float]) -> None:
        """The divergence guard: stop the run on a non-finite loss (a non-finite gradient or
        parameter shows up as one at the next update, and :meth:`Checkpointer.save` refuses
        non-finite tensors).

        Raises:
            TrainingDiverged: naming the epoch, the update and the values.
        """
        bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v))
        good = self.epoch - self.epoch % self.cfg.train.checkpoint_every
        raise TrainingDiverged(
            f"training diverged at epoch {self.epoch + 1}, update {self.agent.updates}: {bad}; "
            f"nothing of this epoch was saved; "
            + divergence_advice(self.run_dir, self.cfg, good, has_checkpoint(self.checkpointer.dir))
        )

    def run(self, epochs: int | None = None, close: bool = True) -> dict[str, Any]:
        """Train ``epochs`` more epochs (default: up to ``train.epochs`` in all).

        Each epoch the output callbacks append to metrics.csv and episodes.csv, every worker
        writes its checkpoint files when due, and the callbacks are told. ``status.json`` says
        ``finished`` once ``train.epochs`` are done, or after the epoch in which a callback
        called :meth:`request_stop` (with its ``stop_reason``).

        Args:
            epochs: epochs to train now (federated rounds call this repeatedly).
            close: close the envs afterwards.

        Returns:
            The last metrics row.
        """
        tr, cfg = self.cfg.train, self.cfg
        target = tr.epochs if epochs is None else self.epoch + epochs
        every = [*([self._csv] if self._csv else []), *self._outputs, *self.callbacks]
        self.status, self.error, self.stop_reason = "running", None, None
        for cb in every:
            cb.on_start(self)
        if self.epoch == 0 and self.is_main:
            log.info(
                "training %s on %s (%s, %s, %s): %d epochs x %d cycles x %d steps, run dir %s",
                cfg.algo.name, self.env_id, cfg.buffer.name, cfg.noise.name, self.device,
                tr.epochs, tr.cycles_per_epoch, tr.steps_per_cycle, self.run_dir,
            )  # fmt: skip
        row: dict[str, Any] = {}
        try:
            with self._stop_signals():
                while self.epoch < target:
                    row, self.last_episodes = self.train_epoch()
                    if self._record(row):  # rows, checkpoints, callbacks; True: stop early
                        break
                if self.epoch >= tr.epochs or self.stop_reason is not None:
                    self._deliver()
        except BaseException as err:
            # with several workers, a collective that fails after a stop signal came is a peer
            # that stopped at once (a second signal): the run was interrupted, not broken
            stopping = self.ctx.world > 1 and self._stop_signal is not None
            interrupted = stopping or isinstance(err, KeyboardInterrupt | TrainingInterrupted)
            self.status = "interrupted" if interrupted else "failed"
            self.error = f"{type(err).__name__}: {err}"
            self._end(every)
            if close:
                self.close()
            raise
        if self.epoch >= tr.epochs or self.stop_reason is not None:
            self.status = "finished"
        self._end(every)
        if close:
            self.close()
        line = self.delivered_line()
        if line:
            log.info("%s", line)
        return row

    def _record(self, row: dict[str, Any]) -> bool:
        """The epoch's log/checkpoint step: the CSV rows first (a checkpoint never runs ahead),
        ``best.pt`` (before ``last.pt``, which records it), ``last.pt`` when due, then the other
        outputs and the callbacks. Returns whether a callback asked to stop (then the
        checkpoint is written even between ``train.checkpoint_every`` epochs)."""
        tr = self.cfg.train
        if self._csv is not None:
            self._csv.on_epoch(self, row)
        self.checkpointer.save_best(self.training_state(), row)
        saved = self.epoch % tr.checkpoint_every == 0 or self.epoch == tr.epochs
        if saved:
            self.checkpoint()  # every worker: rank 0's last.pt, each rank's buffer
        for cb in [*self._outputs, *self.callbacks]:
            cb.on_epoch(self, row)
        if not self._stop_agreed():  # a callback asked (eval.stop_at, a user's)
            return False
        if not saved:
            self.checkpoint()
        if self.is_main:
            log.info("stopped early: %s", self.stop_reason)
        return True

    def _end(self, callbacks: list[Callback]) -> None:
        for cb in callbacks:
            try:
                cb.on_end(self)
            except Exception as err:  # a logger must not turn a finished run into a failure
                log.warning("callback %s failed at the end: %s", type(cb).__name__, err)

    def close(self) -> None:
        """Close the envs."""
        self.parts.close()
