"""n-step returns over stored episodes, with HER's recomputed rewards and terminations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlfw.buffers.storage import EpisodeStorage
from rlfw.core import GoalFn
from rlfw.core.checks import in_range, require


@dataclass
class NStepConfig:
    """The keys of :class:`NStepReturns` (every buffer option has them)."""

    n_step: int = 1  # n-step returns; 1 is the one-step TD target

    @staticmethod
    def validate(node: Any) -> None:
        """``1 <= n_step <= capacity`` (the buffer node's ``capacity``)."""
        in_range(node, "n_step", 1, prefix="buffer.")
        require(
            node.n_step <= node.capacity,
            f"buffer.n_step={node.n_step} must be <= buffer.capacity={node.capacity}",
        )


@dataclass
class NStep:
    """The n-step targets of a batch (``B`` samples).

    Attributes:
        reward: ``[B]`` float32 ``sum_{i<k} gamma^i r_{t+i}``.
        terminated: ``[B]`` float32, 1.0 if a summed step terminated (no bootstrap).
        discount: ``[B]`` float32 ``gamma**k``.
        k: ``[B]`` int64 steps summed, ``1 <= k <= n_step``.
        next_row: ``[B]`` int64 physical row of ``o_{t+k}``, the observation to bootstrap from.
    """

    reward: np.ndarray
    terminated: np.ndarray
    discount: np.ndarray
    k: np.ndarray
    next_row: np.ndarray


class NStepReturns:
    """n-step returns (Sutton & Barto 2018, Sec. 7.1, Eq. 7.1) read from an episode storage.

    ``R = sum_{i<k} gamma^i r_{t+i}`` with ``k = min(n_step, end - t)`` (``end``: the episode's
    last stored row), cut after the first termination (then ``terminated=1``: the target does
    not bootstrap). A truncation is no termination: the target bootstraps from ``o_{t+k}``,
    the episode's final observation when the window reaches it.

    For relabelled samples (HER, Andrychowicz et al. 2017, Sec. 3.3) every one of the k
    rewards and terminations is recomputed for the new goal with the env's vectorised
    ``compute_reward(achieved_goal_{t+i+1}, goal)`` and ``compute_terminated`` (same inputs).

    Args:
        storage: the episode storage (read only).
        n_step: n >= 1.
        gamma: discount.
        compute_reward: the env's vectorised reward function
            (``[B, G], [B, G] -> [B]``); needed only if samples are relabelled.
        compute_terminated: as ``compute_reward`` (the termination function).
    """

    def __init__(
        self,
        storage: EpisodeStorage,
        n_step: int,
        gamma: float,
        compute_reward: GoalFn | None = None,
        compute_terminated: GoalFn | None = None,
    ) -> None:
        self.storage = storage
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.compute_reward = compute_reward
        self.compute_terminated = compute_terminated
        self.gamma_pow = self.gamma ** np.arange(self.n_step + 1, dtype=np.float64)

    def __call__(
        self,
        t: np.ndarray,
        envs: np.ndarray,
        end: np.ndarray,
        goal: np.ndarray | None = None,
        relabelled: np.ndarray | None = None,
    ) -> NStep:
        """The targets of a batch.

        Args:
            t: ``[B]`` int64 absolute rows of the transitions (each a stored transition).
            envs: ``[B]`` their envs.
            end: ``[B]`` absolute last stored rows of their episodes.
            goal: ``[B, goal_dim]`` the goals trained on (needed where ``relabelled``).
            relabelled: ``[B]`` bool, the samples whose rewards are recomputed (None: none).

        Raises:
            ValueError: relabelled samples without goals or without the env's goal functions.
        """
        st = self.storage
        R = st.rows
        n = self.n_step
        steps = t[:, None] + np.arange(n)[None, :]  # [B, n] absolute rows t .. t+n-1
        valid = steps < end[:, None]  # a transition exists at that step of the episode
        srows = steps % R
        senv = np.broadcast_to(envs[:, None], steps.shape)
        rew = st.reward[srows, senv].astype(np.float64)
        term = st.terminated[srows, senv].copy()
        if relabelled is not None and relabelled.any():
            if goal is None or self.compute_reward is None or self.compute_terminated is None:
                raise ValueError(
                    "relabelled samples need goals and the env's compute_reward/compute_terminated"
                )
            hb, hs = np.nonzero(relabelled[:, None] & valid)
            nxt = (steps[hb, hs] + 1) % R
            ag_next = st.achieved_goal[nxt, envs[hb]]
            g = goal[hb]
            rew[hb, hs] = self.compute_reward(ag_next, g)
            term[hb, hs] = self.compute_terminated(ag_next, g)
        # alive[i]: step i is summed, i.e. it exists and no earlier step terminated
        term &= valid
        ended_before = np.cumsum(term, axis=1) - term
        alive = valid & (ended_before == 0)
        k = alive.sum(axis=1)
        ret = (rew * alive * self.gamma_pow[None, :n]).sum(axis=1)
        done = (term & alive).any(axis=1)
        return NStep(
            reward=ret.astype(np.float32),
            terminated=done.astype(np.float32),
            discount=self.gamma_pow[k].astype(np.float32),
            k=k.astype(np.int64),
            next_row=(t + k) % R,
        )
