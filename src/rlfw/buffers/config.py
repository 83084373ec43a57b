"""The replay schema (stored in Hydra's ConfigStore by :func:`rlfw.registry.register`)."""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time
# (``X | None`` and ``list[int]`` need Python >= 3.10, as pyproject says).
from dataclasses import dataclass
from typing import Any

from rlfw.core import in_range


@dataclass
class BufferConfig:
    """One replay schema with orthogonal parts; the presets in conf/buffer set some of them.

    ``relabel`` (none, her) x ``sampler`` (uniform, prioritized) x ``n_step`` (>= 1).
    """

    name: str = "uniform"  # the preset's name, for run names and logs only
    capacity: int = 1_000_000  # transitions kept (over all parallel envs)
    relabel: str = "none"  # none, her
    strategy: str = "future"  # HER goal strategy: future, final, episode
    replay_k: float = 4.0  # HER: relabel with probability 1 - 1 / (1 + replay_k)
    sampler: str = "uniform"  # uniform, prioritized
    alpha: float = 0.6  # PER: P(i) = p_i^alpha / sum_k p_k^alpha
    beta0: float = 0.4  # PER: importance-sampling exponent at the first update
    beta_final_step: int | None = None  # env step at which beta reaches 1 (None: run's end)
    priority_eps: float = 1e-6  # PER: p_i = |td_error| + priority_eps
    n_step: int = 1  # n-step returns; 1 is the one-step TD target

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges and names of these keys (one :class:`rlfw.errors.ConfigError` line)."""
        from rlfw.registry import registry

        p = "buffer."
        registry("buffer.relabel").check(node.relabel)
        registry("buffer.sampler").check(node.sampler)
        registry("buffer.strategy").check(node.strategy)
        in_range(node, "capacity", 1, prefix=p)
        in_range(node, "replay_k", 0.0, prefix=p)
        in_range(node, "alpha", 0.0, prefix=p)
        in_range(node, "beta0", 0.0, 1.0, prefix=p)
        in_range(node, "priority_eps", 0.0, low_open=True, prefix=p)
        in_range(node, "n_step", 1, prefix=p)
