"""The replay schema (stored in Hydra's ConfigStore by :func:`rlfw.registry.register`)."""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time
# (``X | None`` and ``list[int]`` need Python >= 3.10, as pyproject says).
from dataclasses import dataclass
from typing import Any

from rlfw.core.checks import human_bytes, in_range, memory_bytes, require


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
        in_range(node, "beta_final_step", 1, optional=True, prefix=p)
        in_range(node, "priority_eps", 0.0, low_open=True, prefix=p)
        in_range(node, "n_step", 1, prefix=p)
        require(
            node.n_step <= node.capacity,
            f"buffer.n_step={node.n_step} must be <= buffer.capacity={node.capacity}",
        )
        check_memory(node)


# Bytes per stored transition with one-number observations and actions and no goal
# (rlfw.buffers.storage: float32 obs, action and reward, two bools, two int32 counters); every
# real task needs more. The prioritized sampler adds a float64 sum tree (2 x capacity nodes).
MIN_TRANSITION_BYTES = 4 * (1 + 1 + 1) + 2 + 2 * 4
SUM_TREE_BYTES = 16


def check_memory(node: Any) -> None:
    """Refuse a ``buffer.capacity`` whose storage cannot fit in this machine's memory even with
    the smallest observation (the observation sizes are known only once the env is built).

    Raises:
        ConfigError: one line naming the capacity, the lower bound of its size and the memory.
    """
    per = MIN_TRANSITION_BYTES + (SUM_TREE_BYTES if node.sampler == "prioritized" else 0)
    need = int(node.capacity) * per
    have = memory_bytes()
    if have is not None:
        require(
            need <= have,
            f"buffer.capacity={node.capacity} needs at least {human_bytes(need)} ({per} bytes per "
            f"transition for the smallest observation, more for real ones) but this machine has "
            f"{human_bytes(have)} of memory; use a smaller buffer.capacity (1e6 is usual)",
        )
