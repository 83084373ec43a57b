"""The evaluation protocol. Every ``eval.every`` epochs a cheap evaluation of ``eval.episodes``
(10) deterministic episodes screens the policy. Whenever it reaches ``eval.stop_at`` or beats
the best confirmed figure so far, a confirmation evaluation of ``eval.confirm_episodes`` (100)
episodes on fresh episode seeds runs (:meth:`TrainLoop.confirm_if_due`); ``best.pt``,
``eval.stop_at`` and tuning decide on the confirmed figure alone (metrics.csv's
``confirm_success_rate`` / ``confirm_return``), so a lucky 10-episode score neither stops a run
nor names its best checkpoint (a true 0.7 scores 9/10 or more with probability 0.15). The
design is a screen-then-confirm: the HER code evaluates about 190 episodes per point (10 on each
of 19 workers), which on one machine costs as much as the training between two points; the
screen keeps most evaluations at 10 episodes, and the 100 of a confirmation give a standard
error of 0.03 at a success rate of 0.9 (Agarwal et al. 2021: decide and report on interval
estimates). A run that finishes (not one ended by a signal or an error) then evaluates what it
delivers, ``best.pt`` (else ``last.pt``), over ``eval.final_episodes`` (100) more fresh episodes:
``evaluation.json`` with 95% intervals (Wilson for the success rate, t for the return), and the
last log line, e.g. ``delivered best.pt (epoch 19): success 0.93 [0.86, 0.97] over 100 episodes``.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rlfw.core import EnvInfo
from rlfw.core.stats import describe, episode_summary
from rlfw.training.collector import CONFIRM_STREAM, EVAL_STREAM, FINAL_STREAM, reset_seed
from rlfw.training.evaluation import evaluate_policy, run_episodes
from rlfw.training.outputs import write_json

log = logging.getLogger("rlfw")


class EvaluationProtocol:
    """The evaluation methods of :class:`rlfw.training.loop.TrainLoop` (a mixin: it reads the
    loop's components, counters and checkpointer, annotated below)."""

    cfg: DictConfig
    run_dir: Path
    ctx: Any  # rlfw.training.context.LocalContext
    parts: Any  # rlfw.build.Components
    agent: Any  # rlfw.core.Agent
    info: EnvInfo
    checkpointer: Any  # rlfw.training.checkpoint.Checkpointer
    seed: int
    epoch: int
    confirm_episodes: int
    eval_metric: str
    decision_metric: str
    delivered: dict[str, Any] | None
    _eval_seeded: bool
    _stop_signal: int | None  # rlfw.training.stopping.StopControl

    @property
    def is_main(self) -> bool:
        return bool(self.ctx.is_main)

    def evaluate(self, episodes: int) -> tuple[float, float, float]:
        """Deterministic-policy episodes: (mean return, std of returns, success rate or NaN),
        over every worker's episodes."""
        # seeded on the first evaluation of this process (then the envs' generators go on)
        seed = None if self._eval_seeded else reset_seed(self.seed, EVAL_STREAM, self.epoch)
        self._eval_seeded = True
        return self._evaluate(episodes, seed)

    def confirm_if_due(self, evaluation: tuple[float, float, float]) -> tuple[float, float]:
        """The confirmation evaluation (see the module docstring): ``eval.confirm_episodes``
        episodes on fresh seeds (stream ``CONFIRM_STREAM``, keyed by the epoch) when this
        epoch's cheap evaluation reaches ``eval.stop_at`` or beats the best confirmed figure so
        far (``checkpointer.best``; none yet: always). Rank 0 decides; with several workers the
        decision is shared by one all-reduce and each worker runs its share of the episodes.

        Args:
            evaluation: the cheap evaluation, ``(eval_return, eval_return_std, eval_success_rate)``
                (NaNs: none this epoch).

        Returns:
            ``(confirm_return, confirm_success_rate)``, NaNs when no confirmation ran.
        """
        if self.confirm_episodes <= 0:
            return math.nan, math.nan
        cheap = evaluation[2] if self.eval_metric == "eval_success_rate" else evaluation[0]
        wanted = self.is_main and self._wants_confirmation(float(cheap))
        if self.ctx.world > 1:
            flag = torch.tensor([1.0 if wanted else 0.0])
            self.ctx.all_reduce_sum(flag)
            wanted = float(flag) > 0
        if not wanted:
            return math.nan, math.nan
        ret, _, succ = self._evaluate(self.confirm_episodes, reset_seed(self.seed, CONFIRM_STREAM, self.epoch))
        return ret, succ

    def _wants_confirmation(self, cheap: float) -> bool:
        if not math.isfinite(cheap):
            return False
        stop_at = OmegaConf.select(self.cfg, "eval.stop_at", default=None)
        if stop_at is not None and cheap >= float(stop_at):
            return True
        best = self.checkpointer.best
        if best is None or best.get("metric") != self.decision_metric:
            return True
        return cheap > float(best["value"])

    def _evaluate(self, episodes: int, seed: int | None) -> tuple[float, float, float]:
        reduce = self.ctx.all_reduce_sum if self.ctx.world > 1 else None
        return evaluate_policy(self.parts.eval_envs, lambda o, g: self.agent.act(o, g, explore=False),
                               episodes, self.info.goal, seed, reduce)  # fmt: skip

    def final_evaluation(self) -> dict[str, Any] | None:
        """Evaluate what the run delivers: ``checkpoints/best.pt`` (else ``last.pt``, else the
        networks in memory) over ``eval.final_episodes`` fresh episodes (stream
        ``FINAL_STREAM``) on rank 0; writes ``<run_dir>/evaluation.json`` (the fields of
        :func:`rlfw.core.stats.episode_summary` plus ``checkpoint``, ``checkpoint_epoch``,
        ``seed`` and ``source``); :meth:`run` logs :meth:`delivered_line` last. The networks
        in memory are restored after.

        Returns:
            The summary written, or None (not rank 0, ``eval.final_episodes`` 0, no eval envs).
        """
        n = int(OmegaConf.select(self.cfg, "eval.final_episodes", default=0) or 0)
        if not self.is_main or n <= 0 or self.parts.eval_envs is None:
            return None
        from rlfw.training.checkpoint import BEST, LAST, safe_load

        name, epoch, state = "memory", self.epoch, None
        for candidate in (BEST, LAST):
            path = self.checkpointer.dir / candidate
            if path.is_file() and not path.is_symlink():
                try:
                    state = safe_load(path)
                    name, epoch = candidate, int(state["counters"]["epoch"])
                    break
                except Exception as err:  # a damaged file: the next candidate
                    log.warning("final evaluation: %s is unreadable (%s)", path, err)
                    state = None
        current = copy.deepcopy(self.agent.state_dict()) if state is not None else None  # nested: a deep copy
        seed = reset_seed(self.seed, FINAL_STREAM, 0)
        try:
            if state is not None:
                self.agent.load_state_dict(state["agent"])
            rets, succ = run_episodes(self.parts.eval_envs, lambda o, g: self.agent.act(o, g, explore=False),
                                      n, self.info.goal, seed)  # fmt: skip
        finally:
            if current is not None:
                self.agent.load_state_dict(current)
        summary = {"run_dir": str(self.run_dir), "checkpoint": name, "checkpoint_epoch": epoch, "seed": seed,
                   "source": "final evaluation of the run", **episode_summary(rets, succ)}  # fmt: skip
        write_json(self.run_dir / "evaluation.json", summary)
        return summary

    def delivered_line(self) -> str | None:
        """The run's last log line: ``delivered best.pt (epoch 19): success 0.93 [0.86, 0.97]
        over 100 episodes`` (None without a final evaluation)."""
        d = self.delivered
        return f"delivered {d['checkpoint']} (epoch {d['checkpoint_epoch']}): {describe(d)}" if d else None

    def _deliver(self) -> None:
        """:meth:`final_evaluation` once training is done; a failure of it is a warning (the
        training is done and saved), and so is a stop signal that arrives during it."""
        try:
            self.delivered = self.final_evaluation()
        except Exception as err:
            log.warning("final evaluation failed: %s: %s", type(err).__name__, err)
        if self._stop_signal is not None:
            log.warning("a stop signal arrived during the final evaluation: the training was complete")
