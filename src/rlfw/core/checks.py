"""One-line config checks shared by every schema's ``validate`` (imports nothing of rlfw but
:mod:`rlfw.errors`)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

from rlfw.errors import ConfigError

# Seeds rlfw accepts: numpy's SeedSequence takes any non-negative int, torch.manual_seed any
# int below 2**64; rlfw adds offsets to the run's seed (workers + 1000 * rank, federated
# clients + index, ``seed * 100_003 + epoch`` on resume), so the run's seed stays below 2**32
# (the range of Gymnasium's and numpy's legacy 32-bit seeds).
SEED_LIMIT = 2**32


def require(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def finite(node: Any, key: str, prefix: str = "") -> None:
    """Check that ``node[key]`` is a finite number (not NaN, not +-inf).

    Raises:
        ConfigError: ``<prefix><key>=<value> must be a finite number``.
    """
    value = node[key]
    require(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
        f"{prefix}{key}={value} must be a finite number",
    )


def in_range(node: Any, key: str, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, optional: bool = False,
             prefix: str = "") -> None:  # fmt: skip
    """Check ``low <(=) node[key] <(=) high`` and that the value is finite; the message names
    ``prefix + key``. ``optional``: ``None`` (null) passes.

    Raises:
        ConfigError: ``<prefix><key>=<value> must be a finite number`` or
            ``<prefix><key>=<value> is out of range: it must be >= <low>``.
    """
    value = node[key]
    if optional and value is None:
        return
    name = f"{prefix}{key}"
    finite(node, key, prefix)
    if low is not None:
        ok = value > low if low_open else value >= low
        bound = f"> {low}" if low_open else f">= {low}"
        require(ok, f"{name}={value} is out of range: it must be {bound}")
    if high is not None:
        ok = value < high if high_open else value <= high
        bound = f"< {high}" if high_open else f"<= {high}"
        require(ok, f"{name}={value} is out of range: it must be {bound}")


def one_of(value: Any, allowed: Iterable[str], key: str) -> None:
    """Check that ``value`` is one of ``allowed``.

    Raises:
        ConfigError: ``unknown <key> '<value>'; choose one of: a, b, c``.
    """
    names = sorted(allowed)
    require(str(value) in names, f"unknown {key} '{value}'; choose one of: {', '.join(names)}")


def check_seed(value: Any, key: str = "seed") -> None:
    """Check ``0 <= value < 2**32`` (:data:`SEED_LIMIT`).

    Raises:
        ConfigError: ``seed=-1 is out of range: seeds must be integers in [0, 2**32)``.
    """
    require(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEED_LIMIT,
        f"{key}={value} is out of range: seeds must be integers in [0, 2**32) (0..{SEED_LIMIT - 1})",
    )


def memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (``os.sysconf``), or None where unknown."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(pages) * int(size) if pages > 0 and size > 0 else None


def human_bytes(n: float) -> str:
    """``n`` bytes as ``'36.4 TiB'`` (binary prefixes)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def eval_metric_name(metric: str, goal: bool) -> str:
    """The metrics.csv column that ranks evaluations for ``eval.metric``.

    Args:
        metric: ``auto``, ``eval_success_rate`` or ``eval_return`` (``eval.metric``).
        goal: whether the env is a goal env (it reports success).

    Returns:
        ``eval_success_rate`` for ``auto`` on a goal env, ``eval_return`` for ``auto`` otherwise,
        else ``metric`` itself.
    """
    if metric == "auto":
        return "eval_success_rate" if goal else "eval_return"
    return metric


def decision_metric_name(metric: str, goal: bool, confirm_episodes: int) -> str:
    """The metrics.csv column that decisions are made on (``checkpoints/best.pt``,
    ``eval.stop_at``, tuning): the confirmation evaluation's column (``confirm_success_rate``
    or ``confirm_return``) when ``eval.confirm_episodes`` > 0, else the cheap evaluation's
    (:func:`eval_metric_name`).

    Args:
        metric: ``eval.metric``.
        goal: whether the env is a goal env.
        confirm_episodes: ``eval.confirm_episodes`` (0: decide on the cheap evaluation).
    """
    name = eval_metric_name(metric, goal)
    return "confirm_" + name.removeprefix("eval_") if confirm_episodes > 0 else name
