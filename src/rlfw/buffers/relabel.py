"""Goal relabelling at sample time: none, or hindsight experience replay (HER).

A :class:`Relabeler` gets the sampled transitions (absolute rows, envs, episode bounds of
:class:`rlfw.buffers.storage.EpisodeStorage`) with their stored desired goals and returns the
goals to train on and which samples it relabelled. :class:`rlfw.buffers.ReplayBuffer` builds
the one named by ``buffer.relabel`` from ``registry("buffer.relabel")``, where each relabeler is
registered with the schema of its keys (a subclass of :class:`RelabelConfig`, as samplers are:
:mod:`rlfw.buffers.samplers`); HER's goal strategy (``buffer.strategy``) is a function of
``registry("buffer.strategy")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlfw.buffers.keys import option_keys
from rlfw.buffers.storage import EpisodeStorage
from rlfw.core import EnvInfo
from rlfw.core.checks import in_range
from rlfw.registry import register, registry


@dataclass
class RelabelConfig:
    """The relabelling choice (``buffer.relabel``); a relabeler's schema subclasses it with its
    own keys, which become keys of every buffer option (``buffer.<key>``)."""

    relabel: str = "none"  # none, her

    @staticmethod
    def validate(node: Any) -> None:
        """The name is registered (one :class:`rlfw.errors.ConfigError` line otherwise)."""
        registry("buffer.relabel").check(node.relabel)


@dataclass
class HerRelabelConfig(RelabelConfig):
    """The keys of :class:`HerRelabel` (``buffer.relabel=her``)."""

    strategy: str = "future"  # HER goal strategy: future, final, episode
    replay_k: float = 4.0  # HER: relabel with probability 1 - 1 / (1 + replay_k)

    @staticmethod
    def validate(node: Any) -> None:
        """The strategy's name and ``replay_k >= 0``."""
        registry("buffer.strategy").check(node.strategy)
        in_range(node, "replay_k", 0.0, prefix="buffer.")

# (rng, t [k], start [k], end [k]) -> absolute rows [k] of the goals' states, for the relabelled
# samples only (t: the transition's row, start/end: its episode's first and last stored rows)
Strategy = Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def future(
    rng: np.random.Generator, t: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """A state after the transition, uniform on ``t+1 .. end`` (HER's ``future``, Sec. 4.5)."""
    return rng.integers(t + 1, end + 1)


def final(
    rng: np.random.Generator, t: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """The episode's last stored state ``end`` (HER's ``final``, Sec. 3.3); draws nothing."""
    return end


def episode(
    rng: np.random.Generator, t: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """Any stored state of the episode, uniform on ``start .. end`` (HER's ``episode``,
    Sec. 4.5)."""
    return rng.integers(start, end + 1)


STRATEGIES = registry("buffer.strategy")
for _fn in (future, final, episode):
    register("buffer.strategy", _fn.__name__, None, _fn)


class Relabeler:
    """The goals a sampled batch trains on.

    Args:
        storage: the episode storage (read only).
        rng: the buffer's random generator (the only source of randomness).
        env: the env's :class:`~rlfw.core.EnvInfo`.
        **cfg: the keys every registered relabeler declares (:func:`rlfw.buffers.keys.
            option_keys`: ``strategy``, ``replay_k``, see :meth:`from_config`); a relabeler
            ignores the keys it does not use.
    """

    def __init__(
        self, storage: EpisodeStorage, rng: np.random.Generator, env: EnvInfo, **cfg: Any
    ) -> None:
        self.storage = storage
        self.rng = rng

    @classmethod
    def from_config(
        cls, storage: EpisodeStorage, rng: np.random.Generator, env: EnvInfo, cfg: Any
    ) -> Relabeler:
        """Build from a buffer config (:class:`~rlfw.buffers.config.BufferConfig` or its node):
        the constructor gets the relabelers' keys (:func:`rlfw.buffers.keys.option_keys`)."""
        return cls(storage, rng, env, **option_keys("buffer.relabel", cfg))

    def __call__(
        self,
        t: np.ndarray,
        envs: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        goal: np.ndarray | None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Relabel a batch.

        Args:
            t: ``[B]`` int64 absolute rows of the sampled transitions.
            envs: ``[B]`` their envs.
            start: ``[B]`` absolute first stored rows of their episodes
                (:meth:`EpisodeStorage.episode_bounds`).
            end: ``[B]`` absolute last stored rows of their episodes.
            goal: ``[B, goal_dim]`` the stored desired goals (a copy the relabeler may write
                into), or None for envs without goals.

        Returns:
            (goals ``[B, goal_dim]`` or None, mask ``[B]`` bool of the relabelled samples).
        """
        raise NotImplementedError


class NoRelabel(Relabeler):
    """Every sample keeps its desired goal (``buffer.relabel=none``); draws nothing."""

    def __call__(
        self,
        t: np.ndarray,
        envs: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        goal: np.ndarray | None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """The goals unchanged and an all-False mask ``[B]``."""
        return goal, np.zeros(len(t), bool)


class HerRelabel(Relabeler):
    """Hindsight experience replay (Andrychowicz et al. 2017, Sec. 3.3 and 4.5).

    With probability ``p = 1 - 1/(1 + replay_k)`` a sample's goal is replaced by the achieved
    goal of a state of its own episode chosen by ``strategy`` (:func:`future`, :func:`final`,
    :func:`episode`); ``replay_k`` is the paper's ratio k of relabelled to original goals
    (``replay_k=4``: p = 0.8). Only rows still stored are used: the running episode relabels
    with the states stored so far, an episode partly overwritten by the ring with its oldest
    stored state onwards. Rewards are recomputed by :class:`rlfw.buffers.returns.NStepReturns`.

    Draws, in this order: ``rng.random(B)`` (who is relabelled), then the strategy's draws for
    the relabelled samples.

    Args:
        storage: as :class:`Relabeler`.
        rng: as ``storage``.
        env: as ``storage``.
        strategy: a name of ``registry("buffer.strategy")``.
        replay_k: k >= 0.

    Raises:
        ValueError: if ``env`` has no goals.
        rlfw.errors.ConfigError: an unknown strategy.
    """

    def __init__(
        self,
        storage: EpisodeStorage,
        rng: np.random.Generator,
        env: EnvInfo,
        strategy: str = "future",
        replay_k: float = 4.0,
        **cfg: Any,
    ) -> None:
        super().__init__(storage, rng, env)
        if not env.goal:
            raise ValueError(f"buffer.relabel=her needs a goal env; '{env.id}' has no goals")
        self.strategy = strategy
        self.pick: Strategy = STRATEGIES.get(strategy).target
        self.future_p = 1.0 - 1.0 / (1.0 + float(replay_k))

    def __call__(
        self,
        t: np.ndarray,
        envs: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        goal: np.ndarray | None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """``goal`` with the relabelled rows replaced in place, and the mask ``[B]``."""
        assert goal is not None
        her = self.rng.random(len(t)) < self.future_p
        hi = np.flatnonzero(her)
        g_t = self.pick(self.rng, t[hi], start[hi], end[hi])
        goal[hi] = self.storage.achieved_goal[g_t % self.storage.rows, envs[hi]]
        return goal, her


register("buffer.relabel", "none", RelabelConfig, NoRelabel)
register("buffer.relabel", "her", HerRelabelConfig, HerRelabel)
RELABEL = registry("buffer.relabel")
