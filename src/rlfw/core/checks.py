"""One-line config checks shared by every schema's ``validate`` (imports nothing of rlfw but
:mod:`rlfw.errors`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rlfw.errors import ConfigError


def require(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def in_range(node: Any, key: str, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, prefix: str = "") -> None:  # fmt: skip
    """Check ``low <(=) node[key] <= high``; the message names ``prefix + key``.

    Raises:
        ConfigError: ``<prefix><key>=<value> is out of range: it must be >= <low>``.
    """
    value = node[key]
    name = f"{prefix}{key}"
    if low is not None:
        ok = value > low if low_open else value >= low
        bound = f"> {low}" if low_open else f">= {low}"
        require(ok, f"{name}={value} is out of range: it must be {bound}")
    if high is not None:
        require(value <= high, f"{name}={value} is out of range: it must be <= {high}")


def one_of(value: Any, allowed: Iterable[str], key: str) -> None:
    """Check that ``value`` is one of ``allowed``.

    Raises:
        ConfigError: ``unknown <key> '<value>'; choose one of: a, b, c``.
    """
    names = sorted(allowed)
    require(str(value) in names, f"unknown {key} '{value}'; choose one of: {', '.join(names)}")
