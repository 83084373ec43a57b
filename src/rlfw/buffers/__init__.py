"""Replay: episode storage x relabelling (none, HER) x sampler (uniform, prioritized, energy) x n-step.

:class:`ReplayBuffer` (the :class:`rlfw.core.ReplayBuffer` contract) composes the orthogonal
parts of :class:`rlfw.buffers.config.BufferConfig`, each a class of its own with a schema of its
own keys: a :class:`~rlfw.buffers.samplers.Sampler` (``buffer.sampler``), a
:class:`~rlfw.buffers.relabel.Relabeler` (``buffer.relabel``, with HER's ``buffer.strategy``)
and :class:`~rlfw.buffers.returns.NStepReturns` (``buffer.n_step``). Samplers and relabelers are
looked up in their registries, so a new one is registered with its schema, not typed into the
buffer or its config: its keys join every buffer option (:func:`store_schemas`).
Every batch carries ``discount`` (``gamma**k`` per sample) and ``weight`` (importance sampling),
so an algorithm never asks which buffer it has.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hydra.core.config_store import ConfigStore

from rlfw.buffers.config import BufferConfig, buffer_schema
from rlfw.buffers.relabel import RELABEL, STRATEGIES, HerRelabel, NoRelabel, Relabeler
from rlfw.buffers.returns import NStep, NStepReturns
from rlfw.buffers.samplers import PrioritizedSampler, Sampler, SumTree, UniformSampler
from rlfw.buffers.storage import EpisodeStorage
from rlfw.core import Batch, EnvInfo
from rlfw.registry import register, registry

__all__ = [
    "BUFFERS",
    "RELABEL",
    "SAMPLERS",
    "STRATEGIES",
    "Batch",
    "EpisodeStorage",
    "HerRelabel",
    "NStep",
    "NStepReturns",
    "NoRelabel",
    "PrioritizedSampler",
    "Relabeler",
    "ReplayBuffer",
    "Sampler",
    "SumTree",
    "UniformSampler",
    "store_schemas",
]


SAMPLERS = registry("buffer.sampler")


class ReplayBuffer:
    """Episode storage with a sampler, goal relabelling and n-step returns, all at sample time.

    Args:
        cfg: the buffer config (:class:`BufferConfig` or a node of :func:`~rlfw.buffers.config.
            buffer_schema`: capacity, relabel and the relabelers' keys, sampler and the samplers'
            keys, n_step).
        env: shapes and (for HER) the env's vectorised ``compute_reward`` and
            ``compute_terminated``.
        num_envs: parallel envs writing at each step.
        gamma: discount, for n-step returns (passed at run time, never typed into YAML).
        total_env_steps: the run's length, the default for ``beta_final_step``.
        seed: seed of the buffer's own generator, shared by the sampler and the relabeler.

    Parts (attributes): ``storage`` (:class:`EpisodeStorage`), ``sampler`` (the
    :class:`~rlfw.buffers.samplers.Sampler` subclass registered as ``cfg.sampler``, built with
    its ``from_config``), ``relabeler`` (the :class:`~rlfw.buffers.relabel.Relabeler` registered
    as ``cfg.relabel``) and ``returns`` (:class:`~rlfw.buffers.returns.NStepReturns`).

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
        ValueError: HER on an env without goals.
        rlfw.errors.ConfigError: an unknown sampler, relabelling or strategy.
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
        relabel_cls: type[Relabeler] = RELABEL.get(cfg.relabel).target
        STRATEGIES.check(cfg.strategy)
        self.gamma = float(gamma)
        self.rng = np.random.default_rng(seed)
        self.storage = EpisodeStorage(
            int(cfg.capacity), num_envs, env.obs_dim, env.act_dim, env.goal_dim if env.goal else 0
        )
        self.goal = env.goal
        self.relabeler = relabel_cls.from_config(self.storage, self.rng, env, cfg)
        sampler_cls: type[Sampler] = SAMPLERS.get(cfg.sampler).target
        self.sampler = sampler_cls.from_config(self.storage, self.rng, cfg, total_env_steps)
        self.returns = NStepReturns(
            self.storage, int(cfg.n_step), self.gamma, env.compute_reward, env.compute_terminated
        )

    def __len__(self) -> int:
        """Stored transitions."""
        return self.storage.n_transitions

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (the sampler's, e.g. priority trees, included)."""
        return self.storage.nbytes + self.sampler.nbytes

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
        """Draw a batch: sampler -> relabeler (goals) -> n-step returns.

        Args:
            batch_size: B.
            env_step: the run's env step (anneals PER's beta).

        Returns:
            A :class:`Batch` of B samples (``goal`` is None for envs without goals).

        Raises:
            ValueError: if the buffer is empty.
        """
        st = self.storage
        index, weight = self.sampler.sample(batch_size, env_step)
        rows, envs = st.split(index)
        t = st.to_abs(rows, envs)
        start, end = st.episode_bounds(t, envs)
        goal = st.desired_goal[rows, envs] if self.goal else None
        goal, relabelled = self.relabeler(t, envs, start, end, goal)
        ret = self.returns(t, envs, end, goal, relabelled)
        return Batch(
            obs=st.obs[rows, envs],
            action=st.action[rows, envs],
            reward=ret.reward,
            next_obs=st.obs[ret.next_row, envs],
            terminated=ret.terminated,
            discount=ret.discount,
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


# The options of conf/buffer/, each a choice of parts (another package's option file registers
# its name the same way, next to its sampler or relabeler).
register("buffer", "uniform", BufferConfig, ReplayBuffer)
register("buffer", "her", BufferConfig, ReplayBuffer)
register("buffer", "per", BufferConfig, ReplayBuffer)
register("buffer", "nstep", BufferConfig, ReplayBuffer)
BUFFERS = registry("buffer")


def store_schemas() -> None:
    """Store ``buffer/<option>_schema`` in Hydra's ConfigStore as its schema extended with the
    keys of every relabeler and sampler registered so far (:func:`~rlfw.buffers.config.
    buffer_schema`), so ``buffer=her buffer.sampler=recent buffer.recent_window=100`` composes
    once the module of a ``recent`` sampler is imported. Called before each composition
    (:func:`rlfw.config.schema.register_schemas`).

    Raises:
        ValueError: two parts declare one key with different types.
    """
    store = ConfigStore.instance()
    for name in BUFFERS.names():
        schema = BUFFERS.get(name).schema
        if schema is None:
            continue
        store.store(group="buffer", name=f"{name}_schema", node=buffer_schema(schema))
