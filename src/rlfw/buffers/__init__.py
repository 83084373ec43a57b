"""Replay: episode storage x relabelling (none, HER) x sampler (uniform, prioritized) x n-step.

:class:`ReplayBuffer` composes the three orthogonal parts of :class:`rlfw.config.schema.BufferConfig`.
Every batch carries ``discount`` (``gamma**k`` per sample) and ``weight`` (importance sampling),
so an algorithm never asks which buffer it has.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlfw.buffers.config import BufferConfig
from rlfw.buffers.samplers import PrioritizedSampler, UniformSampler
from rlfw.buffers.storage import EpisodeStorage
from rlfw.core import Batch, EnvInfo, GoalFn
from rlfw.registry import register, registry

__all__ = [
    "BUFFERS",
    "RELABEL",
    "SAMPLERS",
    "STRATEGIES",
    "Batch",
    "EpisodeStorage",
    "ReplayBuffer",
]


SAMPLERS = registry("buffer.sampler")
SAMPLERS.add("uniform", UniformSampler)
SAMPLERS.add("prioritized", PrioritizedSampler)

RELABEL = registry("buffer.relabel")
RELABEL.add("none", None)
RELABEL.add("her", None)

STRATEGIES = registry("buffer.strategy")
for _name in ("future", "final", "episode"):
    STRATEGIES.add(_name, None)


class ReplayBuffer:
    """Episode storage with HER relabelling, a sampler and n-step returns, all at sample time.

    Args:
        cfg: the buffer config (relabel, strategy, replay_k, sampler, alpha, beta0,
            beta_final_step, priority_eps, n_step, capacity).
        env: shapes and (for HER) the env's vectorised ``compute_reward`` and
            ``compute_terminated``.
        num_envs: parallel envs writing at each step.
        gamma: discount, for n-step returns (passed at run time, never typed into YAML).
        total_env_steps: the run's length, the default for ``beta_final_step``.
        seed: seed of the buffer's own generator.

    HER (Andrychowicz et al. 2017, Sec. 3.3 and 4.5): with probability
    ``1 - 1/(1 + replay_k)`` a sample's goal is replaced by an achieved goal of the same
    episode: ``future`` draws it uniformly from the states after the transition, ``final`` takes
    the episode's last state, ``episode`` any state of it. Rewards and terminations are
    recomputed with the env's vectorised ``compute_reward``/``compute_terminated``.

    n-step (Sutton & Barto 2018, Sec. 7.1): ``R = sum_{i<k} gamma^i r_{t+i}`` with
    ``k = min(n_step, steps left in the episode)``, cut after a termination (then ``terminated=1``,
    no bootstrap); on truncation it bootstraps from the episode's final observation. With HER
    each of the k rewards is recomputed for the relabelled goal.

    Raises:
        ValueError: HER on an env without goals; an unknown sampler, relabelling or strategy.
    """

    def __init__(
        self,
        cfg: BufferConfig | Any,
        env: EnvInfo,
        num_envs: int,
        gamma: float,
        total_env_steps: int = 1,
        seed: int = 0,
    ) -> None:
        RELABEL.check(cfg.relabel)
        STRATEGIES.check(cfg.strategy)
        self.her = cfg.relabel == "her"
        if self.her and not env.goal:
            raise ValueError(f"buffer.relabel=her needs a goal env; '{env.id}' has no goals")
        self.strategy = cfg.strategy
        self.future_p = 1.0 - 1.0 / (1.0 + float(cfg.replay_k))
        self.n_step = int(cfg.n_step)
        self.gamma = float(gamma)
        self.rng = np.random.default_rng(seed)
        self.storage = EpisodeStorage(
            int(cfg.capacity), num_envs, env.obs_dim, env.act_dim, env.goal_dim if env.goal else 0
        )
        self.goal = env.goal
        self.compute_reward: GoalFn | None = env.compute_reward
        self.compute_terminated: GoalFn | None = env.compute_terminated
        beta_final = cfg.beta_final_step if cfg.beta_final_step is not None else total_env_steps
        sampler_cls = SAMPLERS.get(cfg.sampler).target
        self.sampler = sampler_cls(
            self.storage,
            self.rng,
            alpha=cfg.alpha,
            beta0=cfg.beta0,
            beta_final_step=beta_final,
            priority_eps=cfg.priority_eps,
        )
        self._gamma_pow = self.gamma ** np.arange(self.n_step + 1, dtype=np.float64)

    def __len__(self) -> int:
        """Stored transitions."""
        return self.storage.n_transitions

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (priority trees included)."""
        extra = 0
        if isinstance(self.sampler, PrioritizedSampler):
            extra = self.sampler.sum_tree.tree.nbytes + self.sampler.min_tree.tree.nbytes
        return self.storage.nbytes + extra

    # ---------------------------------------------------------------------------------------
    # writing

    def start(self, obs: dict[str, np.ndarray]) -> None:
        """Store the observations returned by the vector env's ``reset`` (``[N, dim]`` per key)."""
        lost = self.storage.start(obs)
        self.sampler.on_add(np.empty(0, np.int64), lost)

    def add(
        self,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: dict[str, np.ndarray],
        final_obs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Store one vector step (see :meth:`EpisodeStorage.add`)."""
        new, lost = self.storage.add(action, reward, terminated, truncated, next_obs, final_obs)
        self.sampler.on_add(new, lost)

    def update_priorities(self, index: np.ndarray, td_error: np.ndarray) -> None:
        """Feed TD errors ``[B]`` of a sampled batch back (a no-op for uniform replay)."""
        self.sampler.update(index, td_error)

    # ---------------------------------------------------------------------------------------
    # sampling

    def sample(self, batch_size: int, env_step: int = 0) -> Batch:
        """Draw a batch: sampler -> HER goals -> n-step returns.

        Args:
            batch_size: B.
            env_step: the run's env step (anneals PER's beta).

        Raises:
            ValueError: if the buffer is empty.
        """
        st = self.storage
        index, weight = self.sampler.sample(batch_size, env_step)
        rows, envs = st.split(index)
        t = st.to_abs(rows, envs)
        start, end = st.episode_bounds(t, envs)
        R = st.rows

        goal = st.desired_goal[rows, envs] if self.goal else None
        her = np.zeros(batch_size, bool)
        if self.her:
            her = self.rng.random(batch_size) < self.future_p
            hi = np.flatnonzero(her)
            if self.strategy == "future":
                g_t = self.rng.integers(t[hi] + 1, end[hi] + 1)
            elif self.strategy == "final":
                g_t = end[hi]
            else:  # episode
                g_t = self.rng.integers(start[hi], end[hi] + 1)
            assert goal is not None
            goal[hi] = st.achieved_goal[g_t % R, envs[hi]]

        n = self.n_step
        steps = t[:, None] + np.arange(n)[None, :]  # [B, n] absolute rows t .. t+n-1
        valid = steps < end[:, None]  # a transition exists at that step of the episode
        srows = steps % R
        senv = np.broadcast_to(envs[:, None], steps.shape)
        rew = st.reward[srows, senv].astype(np.float64)
        term = st.terminated[srows, senv].copy()
        if her.any():
            assert self.compute_reward is not None and self.compute_terminated is not None
            assert goal is not None
            hb, hs = np.nonzero(her[:, None] & valid)
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
        ret = (rew * alive * self._gamma_pow[None, :n]).sum(axis=1)
        done = (term & alive).any(axis=1)
        nrow = (t + k) % R

        return Batch(
            obs=st.obs[rows, envs],
            action=st.action[rows, envs],
            reward=ret.astype(np.float32),
            next_obs=st.obs[nrow, envs],
            terminated=done.astype(np.float32),
            discount=self._gamma_pow[k].astype(np.float32),
            weight=weight,
            index=index,
            goal=goal,
        )

    # ---------------------------------------------------------------------------------------
    # checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Storage arrays, sampler state and the generator's state."""
        return {
            "storage": self.storage.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.storage.load_state_dict(state["storage"])
        self.sampler.load_state_dict(state["sampler"])
        self.rng.bit_generator.state = state["rng"]
        self.sampler.rng = self.rng


for _preset in ("uniform", "her", "per", "nstep"):
    register("buffer", _preset, BufferConfig, ReplayBuffer)
BUFFERS = registry("buffer")
