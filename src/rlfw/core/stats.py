"""Interval estimates for evaluation figures: Wilson's interval for a success rate and Student's
t interval for a mean return, and the per-run summary built from them (``evaluation.json``).

Why intervals: a 10-episode evaluation of a policy whose true success rate is 0.7 scores 9/10
or more with probability 0.15, and 9/10 has a 95% Wilson interval of [0.60, 0.98]. A figure a
decision is made on (``eval.stop_at``, ``best.pt``, tuning) or that a run reports as what it
delivers comes with its interval (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice": report interval estimates, not point estimates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np


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
