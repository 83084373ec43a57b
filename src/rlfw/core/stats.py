"""Interval estimates for evaluation figures: Wilson's interval for a success rate and Student's
t interval for a mean return, and the per-run summary built from them (``evaluation.json``).

Why intervals: a 10-episode evaluation of a policy whose true success rate is 0.7 scores 9/10
or more with probability 0.15, and 9/10 has a 95% Wilson interval of [0.60, 0.98]. A figure a
decision is made on (``eval.stop_at``, ``best.pt``, tuning) or that a run reports as what it
delivers comes with its interval (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice": report interval estimates, not point estimates).

Over runs (``rlfw.report``): the mean over seeds with a t or bootstrap interval per point
(:func:`mean_interval`), and per setting the IQM and mean of normalised final scores over tasks
with stratified-bootstrap intervals (:func:`aggregate`, through rliable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from rlfw.errors import ConfigError

CI_METHODS = ("t", "bootstrap")


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (Wilson 1927; Brown, Cai and DasGupta
    2001 recommend it over the normal interval for small ``n`` and rates near 0 or 1).

    Args:
        successes: the number of successful episodes (0 <= successes <= n).
        n: the number of episodes (>= 1).
        confidence: the coverage, in (0, 1).

    Returns:
        ``(low, high)`` within [0, 1]; ``(nan, nan)`` for ``n == 0``.

    Raises:
        ValueError: ``successes`` outside [0, n] or ``confidence`` outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    if n <= 0:
        return math.nan, math.nan
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes={successes} must be in [0, n={n}]")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of ``values``: mean +- t_{(1+c)/2, n-1} s / sqrt(n),
    with ``s`` the sample standard deviation (ddof 1).

    Args:
        values: one figure per episode, shape [n] (returns, in the env's reward units).
        confidence: the coverage, in (0, 1).

    Returns:
        ``(low, high)``; ``(mean, mean)`` for one value or all equal; ``(nan, nan)`` for none.

    Raises:
        ValueError: ``confidence`` outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean
    import scipy.stats

    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean - half, mean + half


def episode_summary(returns: Sequence[float] | np.ndarray, successes: Sequence[float] | np.ndarray,
                    confidence: float = 0.95) -> dict[str, Any]:  # fmt: skip
    """What ``evaluation.json`` says of a set of episodes.

    Args:
        returns: the episodes' undiscounted returns, shape [n].
        successes: each episode's success (1.0, 0.0, or NaN where the env reports none), shape [n].
        confidence: the intervals' coverage.

    Returns:
        ``episodes``, ``return_mean``, ``return_std`` (ddof 0), ``return_ci`` (t interval),
        ``success_rate`` and ``success_std`` (None without success reports), ``success_ci``
        (Wilson, None without success reports) and ``confidence``.
    """
    rets = np.asarray(returns, dtype=np.float64).reshape(-1)
    succ = np.asarray(successes, dtype=np.float64).reshape(-1)
    ok = np.isfinite(succ)
    out: dict[str, Any] = {
        "episodes": int(rets.size),
        "return_mean": float(rets.mean()) if rets.size else None,
        "return_std": float(rets.std()) if rets.size else None,
        "return_ci": list(t_interval(rets, confidence)) if rets.size else None,
        "success_rate": None,
        "success_std": None,
        "success_ci": None,
        "confidence": confidence,
    }
    if ok.any():
        s = succ[ok]
        out["success_rate"] = float(s.mean())
        out["success_std"] = float(s.std())
        out["success_ci"] = list(wilson_interval(float(s.sum()), int(s.size), confidence))
    return out


def describe(summary: dict[str, Any]) -> str:
    """One phrase for a summary of :func:`episode_summary`: ``success 0.93 [0.86, 0.97] over 100
    episodes`` for goal envs, ``return 3341 [3290, 3392] over 20 episodes`` otherwise."""
    n = summary["episodes"]
    if summary.get("success_rate") is not None:
        lo, hi = summary["success_ci"]
        return f"success {summary['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] over {n} episodes"
    lo, hi = summary["return_ci"]
    return f"return {summary['return_mean']:.4g} [{lo:.4g}, {hi:.4g}] over {n} episodes"


def mean_interval(
    ys: np.ndarray, ci: str = "t", confidence: float = 0.95, reps: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds with a two-sided confidence interval, per point.

    Args:
        ys: ``[seeds, points]`` values (one row per seed).
        ci: ``t``: mean +- ``scipy.stats.t.ppf((1 + confidence) / 2, n - 1)`` x SE, with
            SE = sample std (ddof 1) / sqrt(n) (Student's t interval); ``bootstrap``: the
            percentile interval of the mean over ``reps`` resamples of the seeds with
            replacement (``scipy.stats.bootstrap``, the same seeds drawn for every point).
        confidence: the interval's coverage (0.95).
        reps: bootstrap resamples.
        seed: the bootstrap's random seed.

    Returns:
        ``(mean, lo, hi)``, each ``[points]``; ``lo = hi = mean`` for a single seed.

    Raises:
        ConfigError: an unknown ``ci``.
    """
    import scipy.stats

    if ci not in CI_METHODS:
        raise ConfigError(f"--ci {ci}: choose one of: {', '.join(CI_METHODS)}")
    ys = np.asarray(ys, dtype=float)
    n = ys.shape[0]
    mean = ys.mean(0)
    if n < 2:
        return mean, mean.copy(), mean.copy()
    if ci == "t":
        half = scipy.stats.t.ppf(0.5 + confidence / 2, n - 1) * ys.std(0, ddof=1) / math.sqrt(n)
        return mean, mean - half, mean + half
    res = scipy.stats.bootstrap(
        (ys,), np.mean, axis=0, vectorized=True, paired=False, n_resamples=reps,
        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    lo, hi = res.confidence_interval
    # all seeds equal: scipy gives NaN for a degenerate distribution; the interval is the point
    return mean, np.where(np.isfinite(lo), lo, mean), np.where(np.isfinite(hi), hi, mean)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of a ``[runs, tasks]`` score matrix: the mean of the middle 50% of
    all scores (``rliable.metrics.aggregate_iqm``, a 25% trimmed mean over every entry)."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(np.asarray(scores, dtype=float)))


def interval_estimates(
    score_dict: dict[str, np.ndarray], statistic: Any, reps: int = 2000, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Point estimates and 95% stratified-bootstrap percentile intervals of ``statistic`` per
    setting: ``rliable.library.get_interval_estimates`` (Agarwal et al. 2021, sec. 4: each
    resample draws, for every task, as many runs as it has, with replacement, from that task's
    runs).

    Args:
        score_dict: ``{setting: [runs, tasks] normalised scores}``.
        statistic: ``[runs, tasks] -> [k]`` (IQM and mean).
        reps: resamples.
        seed: the bootstrap's random seed (``random_state``).

    Returns:
        ``{setting: (point [k], lo [k], hi [k])}``.
    """
    import warnings

    from rliable import library

    with warnings.catch_warnings():  # rliable 1.2 passes arch the random_state arch 7 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        points, intervals = library.get_interval_estimates(
            score_dict, statistic, reps=reps, random_state=np.random.RandomState(seed)
        )
    return {k: (np.asarray(points[k]), np.asarray(intervals[k])[0], np.asarray(intervals[k])[1]) for k in score_dict}


def normalise(finals: dict[str, dict[str, list[float]]], success: dict[str, bool]) -> dict[str, dict[str, list[float]]]:
    """Normalised final scores: ``finals[setting][task]`` -> the same, in [0, 1].

    Success rates stay as they are; returns are min-max normalised per task over every run of
    every setting, ``(R - min) / (max - min)`` (all 0.5 if all runs have the same return).
    """
    out: dict[str, dict[str, list[float]]] = {s: {} for s in finals}
    tasks = {t for by_task in finals.values() for t in by_task}
    for task in tasks:
        values = [v for by_task in finals.values() for v in by_task.get(task, [])]
        lo, hi = min(values), max(values)
        for s, by_task in finals.items():
            if task not in by_task:
                continue
            if success[task]:
                out[s][task] = list(by_task[task])
            else:
                out[s][task] = [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in by_task[task]]
    return out


def score_matrix(by_task: dict[str, list[float]]) -> tuple[np.ndarray, list[str]]:
    """``[runs, tasks]`` from per-task lists (tasks sorted; each cut to the fewest runs any
    task has, as rliable needs a full matrix)."""
    tasks = sorted(by_task)
    runs = min(len(by_task[t]) for t in tasks)
    return np.array([[by_task[t][r] for t in tasks] for r in range(runs)]), tasks


def aggregate(
    finals: dict[str, dict[str, list[float]]], success: dict[str, bool], reps: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """IQM and mean with stratified-bootstrap 95% intervals per setting, over its tasks.

    Args:
        finals: ``finals[setting][task]`` = the final eval metric of each run (seed).
        success: ``success[task]``: whether the task's metric is a success rate.
        reps: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        ``{setting: {"scores": [runs, tasks], "tasks": [...], "iqm": (point, lo, hi),
        "mean": (point, lo, hi)}}``.
    """
    matrices = {setting: score_matrix(by_task) for setting, by_task in normalise(finals, success).items()}
    estimates = interval_estimates({s: m for s, (m, _) in matrices.items()},
                                   lambda x: np.array([iqm(x), x.mean()]), reps, seed)  # fmt: skip
    out = {}
    for setting, (scores, tasks) in matrices.items():
        point, lo, hi = estimates[setting]
        out[setting] = {
            "scores": scores, "tasks": tasks,
            "iqm": (float(point[0]), float(lo[0]), float(hi[0])),
            "mean": (float(point[1]), float(lo[1]), float(hi[1])),
        }  # fmt: skip
    return out
