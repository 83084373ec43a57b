"""Evaluation of the deterministic policy on a vector env (the loop's, ``rlfw.evaluate``'s)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rlfw.core import eval_metric_name  # noqa: F401  (re-exported: the rule lives in rlfw.core)
from rlfw.envs.obs import split_obs, success_of


def run_episodes(
    envs: Any,
    act: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    episodes: int,
    goal: bool,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``episodes`` episodes of ``act(obs [N, obs_dim], goal [N, goal_dim] | None) -> [N, A]``
    on this process's vector env and return each episode's figures.

    The episodes are spread evenly over the vector env's sub-envs (the first ``episodes % N``
    get one more), so no env's short episodes are over-represented.

    Args:
        envs: a vector env with same-step autoreset.
        act: the deterministic policy.
        episodes: how many episodes (<= 0: none).
        goal: whether observations carry goals.
        seed: reset seed (None: the envs' generators go on).

    Returns:
        ``(returns [episodes], successes [episodes])``: undiscounted returns, and 1.0/0.0 per
        episode (NaN where the env reports no ``is_success``).
    """
    if envs is None or episodes <= 0:
        return np.zeros(0), np.zeros(0)
    n = envs.num_envs
    quota = np.array([episodes // n + (e < episodes % n) for e in range(n)])
    got = np.zeros(n, np.int64)
    returns: list[float] = []
    successes: list[float] = []
    ep_ret = np.zeros(n)
    raw, _ = envs.reset(seed=seed)
    while (got < quota).any():
        obs = split_obs(raw, goal)
        raw, reward, terminated, truncated, infos = envs.step(act(obs["observation"], obs.get("desired_goal")))
        ep_ret += reward
        done = np.logical_or(terminated, truncated)
        if done.any():
            success = success_of(infos, done)
            for e in np.flatnonzero(done):
                if got[e] < quota[e]:
                    returns.append(float(ep_ret[e]))
                    successes.append(float(success[e]))
                    got[e] += 1
            ep_ret[done] = 0.0
    return np.array(returns), np.array(successes)


def evaluate_policy(
    envs: Any,
    act: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    episodes: int,
    goal: bool,
    seed: int | None = None,
    all_reduce_sum: Callable[[torch.Tensor], None] | None = None,
) -> tuple[float, float, float]:
    """Run ``episodes`` episodes (:func:`run_episodes`) and summarise them.

    Args:
        envs: a vector env with same-step autoreset.
        act: the deterministic policy.
        episodes: how many episodes (<= 0: none, all NaN).
        goal: whether observations carry goals.
        seed: reset seed (None: the envs' generators go on).
        all_reduce_sum: sums a float64 tensor over data-parallel workers in place; then the
            figures are over every worker's episodes.

    Returns:
        (mean return, std of returns, success rate or NaN where the env reports none).
    """
    if envs is None or episodes <= 0:
        return math.nan, math.nan, math.nan
    rets, succ = run_episodes(envs, act, episodes, goal, seed)
    if all_reduce_sum is not None:
        ok = np.isfinite(succ)
        t = torch.tensor([rets.sum(), np.square(rets).sum(), len(rets), succ[ok].sum(), ok.sum()], dtype=torch.float64)
        all_reduce_sum(t)
        s, s2, n_ep, s_succ, n_succ = t.tolist()
        mean = s / n_ep
        return mean, math.sqrt(max(s2 / n_ep - mean * mean, 0.0)), (s_succ / n_succ if n_succ else math.nan)
    rate = float(np.nanmean(succ)) if np.isfinite(succ).any() else math.nan
    return float(rets.mean()), float(rets.std()), rate
