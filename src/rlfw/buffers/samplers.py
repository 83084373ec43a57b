"""Which stored transitions to replay: uniform, proportional prioritised (Schaul et al. 2016), or
by the trajectory energy of the achieved goal (Zhao and Tresp 2018).

A sampler sees flat transition indices (``row * num_envs + env`` of
:class:`rlfw.buffers.storage.EpisodeStorage`) and returns them with importance-sampling weights.
Every sampler derives from :class:`Sampler` and its keys from :class:`SamplerConfig`;
:class:`rlfw.buffers.ReplayBuffer` builds the one named by ``buffer.sampler`` from
``registry("buffer.sampler")``, so a new sampler with a key of its own is one module (the
README's "Extending" shows one)::

    @dataclass
    class RecentSamplerConfig(SamplerConfig):
        recent_window: int = 10_000            # buffer.recent_window

    class RecentSampler(Sampler):
        def sample(self, batch_size, env_step): ...

    register("buffer.sampler", "recent", RecentSamplerConfig, RecentSampler)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rlfw.buffers.keys import option_keys
from rlfw.buffers.storage import EpisodeStorage
from rlfw.core.checks import in_range
from rlfw.registry import register, registry


@dataclass
class SamplerConfig:
    """The sampler choice (``buffer.sampler``); a sampler's schema subclasses it with its own
    keys, which become keys of every buffer option (``buffer.<key>``).

    ``bytes_per_transition``: the bytes the sampler keeps per stored transition (for the memory
    check of ``buffer.capacity``, :func:`rlfw.buffers.config.check_memory`).
    """

    sampler: str = "uniform"  # uniform, prioritized, energy

    bytes_per_transition: ClassVar[int] = 0

    @staticmethod
    def validate(node: Any) -> None:
        """The name is registered (one :class:`rlfw.errors.ConfigError` line otherwise)."""
        registry("buffer.sampler").check(node.sampler)


@dataclass
class PrioritizedSamplerConfig(SamplerConfig):
    """The keys of :class:`PrioritizedSampler` (``buffer.sampler=prioritized``)."""

    alpha: float = 0.6  # PER: P(i) = p_i^alpha / sum_k p_k^alpha
    beta0: float = 0.4  # PER: importance-sampling exponent at the first update
    beta_final_step: int | None = None  # env step at which beta reaches 1 (None: run's end)
    priority_eps: float = 1e-6  # PER: p_i = |td_error| + priority_eps

    bytes_per_transition: ClassVar[int] = 16  # a float64 sum tree (2 x capacity nodes)

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges of these keys."""
        p = "buffer."
        in_range(node, "alpha", 0.0, prefix=p)
        in_range(node, "beta0", 0.0, 1.0, prefix=p)
        in_range(node, "beta_final_step", 1, optional=True, prefix=p)
        in_range(node, "priority_eps", 0.0, low_open=True, prefix=p)


class Sampler:
    """The interface :class:`rlfw.buffers.ReplayBuffer` uses to choose transitions.

    A subclass implements :meth:`sample`; :meth:`on_add`, :meth:`update`, :meth:`state_dict`
    and :meth:`load_state_dict` default to no-ops (a sampler without state of its own).

    Args:
        storage: the episode storage the flat indices refer to (read its ``is_transition``
            ``[R, N]`` and ``n_transitions``; never write it).
        rng: the buffer's random generator, shared with relabelling: draw only from it, so a
            seed fixes the whole batch.
        **cfg: the keys every registered sampler declares (:func:`rlfw.buffers.keys.
            option_keys`: ``alpha``, ``beta0``, ``beta_final_step``, ``priority_eps`` and a new
            sampler's own, see :meth:`from_config`); a sampler ignores the keys it does not use.
    """

    def __init__(self, storage: EpisodeStorage, rng: np.random.Generator, **cfg: Any) -> None:
        self.storage = storage
        self.rng = rng

    @classmethod
    def from_config(
        cls, storage: EpisodeStorage, rng: np.random.Generator, cfg: Any, total_env_steps: int = 1
    ) -> Sampler:
        """Build from a buffer config (:class:`~rlfw.buffers.config.BufferConfig` or its node):
        the constructor gets the samplers' keys (:func:`rlfw.buffers.keys.option_keys`);
        ``total_env_steps`` is the run's length (for schedules, see
        :meth:`PrioritizedSampler.from_config`)."""
        return cls(storage, rng, **option_keys("buffer.sampler", cfg))

    @property
    def nbytes(self) -> int:
        """Bytes of the sampler's own arrays (0 unless it keeps any, e.g. priority trees)."""
        return 0

    def sample(self, batch_size: int, env_step: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``batch_size`` stored transitions.

        Args:
            batch_size: B.
            env_step: the run's env step (for schedules such as PER's beta).

        Returns:
            (flat indices ``[B]`` int64, each a stored transition; importance-sampling weights
            ``[B]`` float32).

        Raises:
            ValueError: if the storage holds no transition yet.
        """
        raise NotImplementedError

    def on_add(self, new: np.ndarray, lost: np.ndarray) -> None:
        """Called after each storage write with the flat indices of new transitions ``[k]`` and
        of transitions overwritten ``[m]`` (int64; a new index may already be lost again)."""

    def update(self, index: np.ndarray, td_error: np.ndarray) -> None:
        """TD errors ``[B]`` of the sampled ``index`` ``[B]`` (ignored unless overridden)."""

    def state_dict(self) -> dict[str, Any]:
        """The sampler's own state for checkpoints (the generator is the buffer's)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class UniformSampler(Sampler):
    """Every stored transition with equal probability; weights are 1.

    Args:
        storage: the episode storage the indices refer to.
        rng: the buffer's random generator.
        **cfg: ignored (the prioritised keys).
    """

    def __init__(self, storage: EpisodeStorage, rng: np.random.Generator, **cfg: Any) -> None:
        super().__init__(storage, rng)
        self._valid = storage.is_transition.reshape(-1)  # a view: sees every write

    def sample(self, batch_size: int, env_step: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` flat indices (int64) and weights (float32, all 1).

        Rejection sampling over the written rows: the share of rows that are not transitions
        (terminal rows, current rows) is small, so one or two rounds suffice.

        Raises:
            ValueError: if the storage holds no transition yet.
        """
        if self.storage.n_transitions == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        hi = self.storage.filled_rows() * self.storage.num_envs
        self._valid = self.storage.is_transition.reshape(-1)
        out: list[np.ndarray] = []
        need = batch_size
        while need > 0:
            cand = self.rng.integers(0, hi, size=need + need // 8 + 8)
            cand = cand[self._valid[cand]][:need]
            out.append(cand)
            need -= len(cand)
        idx = np.concatenate(out).astype(np.int64)
        return idx, np.ones(batch_size, np.float32)


class SumTree:
    """A binary sum tree (or min tree) over ``size`` leaves, with batched updates and search.

    Leaves live at ``tree[P:P + size]`` with ``P`` the next power of two; node ``i`` holds
    ``op(tree[2i], tree[2i + 1])``. All operations are vectorised over a batch of leaves:
    :meth:`update` is O(k log P) in NumPy, :meth:`find_prefix` O(B log P).

    Args:
        size: number of leaves.
        op: ``"sum"`` or ``"min"``.
    """

    def __init__(self, size: int, op: str = "sum") -> None:
        self.size = size
        self.P = 1 << max(1, (size - 1).bit_length())
        self.depth = self.P.bit_length() - 1
        self.op = op
        fill = 0.0 if op == "sum" else np.inf
        self.tree = np.full(2 * self.P, fill, np.float64)

    @property
    def root(self) -> float:
        """The total (sum tree) or minimum (min tree) over all leaves."""
        return float(self.tree[1])

    def leaves(self, idx: np.ndarray) -> np.ndarray:
        """Leaf values at ``idx``."""
        return self.tree[self.P + idx]

    def update(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``idx`` to ``values`` (last write wins for repeated indices)."""
        if len(idx) == 0:
            return
        node = np.asarray(idx, np.int64) + self.P
        self.tree[node] = values
        reduce = np.add if self.op == "sum" else np.minimum
        # every leaf is at the same depth, so all nodes of a level are updated together; a
        # repeated parent gets the same value twice (it is computed from its children), so no
        # de-duplication is needed
        for _ in range(self.depth):
            node >>= 1
            self.tree[node] = reduce(self.tree[2 * node], self.tree[2 * node + 1])

    def find_prefix(self, u: np.ndarray) -> np.ndarray:
        """For each ``u`` in ``[0, root)``, the leaf ``i`` with ``prefix(i) <= u < prefix(i+1)``."""
        u = np.array(u, np.float64)
        node = np.ones(len(u), np.int64)
        for _ in range(self.depth):
            left = 2 * node
            lv = self.tree[left]
            right = u >= lv
            u = np.where(right, u - lv, u)
            node = left + right
        return node - self.P


def stratified_draw(tree: SumTree, rng: np.random.Generator, batch_size: int) -> np.ndarray:
    """``batch_size`` leaves ``[B]`` int64 drawn in proportion to their values: the total is cut
    into ``B`` equal segments and one ``u`` is drawn uniformly in each (Schaul et al. 2016,
    Appendix B.2.1); a ``u`` that lands on a zero leaf (a floating-point edge) is redrawn."""
    total = tree.root
    bounds = np.linspace(0.0, total, batch_size + 1)
    u = np.minimum(rng.uniform(bounds[:-1], bounds[1:]), np.nextafter(total, 0.0))
    idx = tree.find_prefix(u)
    bad = tree.leaves(idx) <= 0.0
    while bad.any():
        idx[bad] = tree.find_prefix(rng.uniform(0.0, total, int(bad.sum())))
        bad = tree.leaves(idx) <= 0.0
    return idx.astype(np.int64)


class PrioritizedSampler(Sampler):
    """Proportional prioritised replay (Schaul et al. 2016, Sec. 3.3 and 3.4).

    ``P(i) = p_i^alpha / sum_k p_k^alpha`` with ``p_i = |delta_i| + priority_eps``; new
    transitions enter at the largest priority seen so far. Importance-sampling weights are
    ``w_i = (N * P(i))^-beta / max_j w_j`` (Eq. 1 and the normalisation of Sec. 3.4), where
    ``max_j w_j = (N * min_k P(k))^-beta`` comes from a min tree, ``N`` is the number of stored
    transitions, and ``beta`` goes linearly from ``beta0`` at env step 0 to 1 at
    ``beta_final_step``.

    Batches are drawn stratified: the total is cut into ``B`` equal segments and one ``u`` is
    drawn uniformly in each (the paper's Appendix B.2.1).

    With HER the priority belongs to the *stored* transition: it decides which transitions are
    replayed, whatever goal they are then relabelled with, and the TD error of the relabelled
    sample updates the stored transition's priority. A transition thus keeps a high priority
    while some of its relabelled versions are still surprising.

    Args:
        storage: the episode storage the indices refer to.
        rng: the buffer's random generator.
        alpha: priority exponent.
        beta0: importance-sampling exponent at env step 0.
        beta_final_step: env step at which beta reaches 1 (at least 1).
        priority_eps: added to ``|delta|`` so no stored transition has probability 0.
    """

    def __init__(
        self,
        storage: EpisodeStorage,
        rng: np.random.Generator,
        alpha: float = 0.6,
        beta0: float = 0.4,
        beta_final_step: int = 1,
        priority_eps: float = 1e-6,
        **_: Any,
    ) -> None:
        super().__init__(storage, rng)
        self.alpha, self.beta0, self.priority_eps = alpha, beta0, priority_eps
        self.beta_final_step = max(1, int(beta_final_step))
        size = storage.rows * storage.num_envs
        self.sum_tree = SumTree(size, "sum")
        self.min_tree = SumTree(size, "min")
        self.max_priority = 1.0

    @classmethod
    def from_config(
        cls, storage: EpisodeStorage, rng: np.random.Generator, cfg: Any, total_env_steps: int = 1
    ) -> Sampler:
        """As :meth:`Sampler.from_config`; ``beta_final_step=None`` resolves to
        ``total_env_steps``, the run's length."""
        keys = option_keys("buffer.sampler", cfg)
        if keys["beta_final_step"] is None:
            keys["beta_final_step"] = total_env_steps
        return cls(storage, rng, **keys)

    @property
    def nbytes(self) -> int:
        """Bytes of the sum and min trees."""
        return int(self.sum_tree.tree.nbytes + self.min_tree.tree.nbytes)

    def beta(self, env_step: int) -> float:
        """beta at ``env_step``: linear from beta0 to 1 over ``beta_final_step`` steps."""
        frac = min(1.0, max(0.0, env_step / self.beta_final_step))
        return self.beta0 + frac * (1.0 - self.beta0)

    def on_add(self, new: np.ndarray, lost: np.ndarray) -> None:
        """New transitions get ``max_priority^alpha``; overwritten ones leave the trees.

        A new transition can be overwritten within the same write (a ring of 2 rows per env,
        when the next episode's first observation claims its row): only indices that still hold
        a transition enter the trees.
        """
        new = new[self.storage.is_transition.reshape(-1)[new]]
        if len(lost):
            self.sum_tree.update(lost, np.zeros(len(lost)))
            self.min_tree.update(lost, np.full(len(lost), np.inf))
        p = np.full(len(new), self.max_priority**self.alpha)
        self.sum_tree.update(new, p)
        self.min_tree.update(new, p)

    def sample(self, batch_size: int, env_step: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` flat indices (int64) and IS weights (float32, max 1).

        Raises:
            ValueError: if the storage holds no transition yet.
        """
        n = self.storage.n_transitions
        if n == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        total = self.sum_tree.root
        idx = stratified_draw(self.sum_tree, self.rng, batch_size)
        leaf = self.sum_tree.leaves(idx)
        beta = self.beta(env_step)
        prob = leaf / total
        p_min = self.min_tree.root / total
        weight = (n * prob) ** (-beta) / (n * p_min) ** (-beta)
        return idx.astype(np.int64), weight.astype(np.float32)

    def update(self, index: np.ndarray, td_error: np.ndarray) -> None:
        """Set ``p_i = |td_error_i| + priority_eps`` for the sampled indices."""
        p = np.abs(np.asarray(td_error, np.float64)) + self.priority_eps
        self.max_priority = max(self.max_priority, float(p.max(initial=0.0)))
        pa = p**self.alpha
        self.sum_tree.update(index, pa)
        self.min_tree.update(index, pa)

    def state_dict(self) -> dict[str, Any]:
        """Both trees and the largest priority seen."""
        return {
            "sum": self.sum_tree.tree,
            "min": self.min_tree.tree,
            "max_priority": self.max_priority,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sum_tree.tree = np.asarray(state["sum"], np.float64)
        self.min_tree.tree = np.asarray(state["min"], np.float64)
        self.max_priority = float(state["max_priority"])


@dataclass
class EnergySamplerConfig(SamplerConfig):
    """The keys of :class:`EnergySampler` (``buffer.sampler=energy``)."""

    energy_clip: float = 0.5  # EBP's clip_energy: the most one transition adds to the trajectory energy
    energy_dt: float = 0.04  # seconds between observations (Fetch: 20 substeps of 2 ms)
    # added to each episode's trajectory energy: an episode whose achieved goal never moved is
    # still replayed, energy_eps / (its energy + energy_eps) as often as one with that energy
    energy_eps: float = 0.01

    bytes_per_transition: ClassVar[int] = 16  # a float64 sum tree (2 x capacity nodes)

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges of these keys."""
        p = "buffer."
        for key in ("energy_clip", "energy_dt", "energy_eps"):
            in_range(node, key, 0.0, low_open=True, prefix=p)


GRAVITY = 9.81  # m/s^2, the potential energy g z of the achieved goal (unit mass)


class EnergySampler(Sampler):
    """Energy-based hindsight experience prioritisation (EBP; Zhao and Tresp 2018, "Energy-Based
    Hindsight Experience Prioritization", CoRL, Sec. 4, Eq. 1-4): episodes in which the object
    moved are replayed more often.

    The achieved goal (the object's position on Fetch and Panda) is treated as a unit mass: its
    energy at step t is ``E_t = g z_t + |v_t|^2 / 2`` with ``v_t = (ag_t - ag_{t-1}) / energy_dt``
    (0 at an episode's first step), each transition adds ``clip(E_{t+1} - E_t, 0, energy_clip)``,
    and an episode's trajectory energy is the sum over its transitions. A finished episode of
    ``T`` transitions is replayed with probability proportional to ``energy + energy_eps``, its
    transitions uniformly (each has priority ``(energy + energy_eps) / T`` in a sum tree); the
    transitions of a running episode have the mean priority of the stored ones until it ends. As
    in the paper, the weights are 1 (no importance-sampling correction). The paper's rotational
    energy is left out: the achieved goal of these tasks is a position.

    Args:
        storage: the episode storage the indices refer to (its ``achieved_goal``, ``ep_t`` and
            ``ep_len``).
        rng: the buffer's random generator.
        energy_clip, energy_dt, energy_eps: :class:`EnergySamplerConfig`.
    """

    def __init__(self, storage: EpisodeStorage, rng: np.random.Generator, energy_clip: float = 0.5,
                 energy_dt: float = 0.04, energy_eps: float = 0.01, **_: Any) -> None:  # fmt: skip
        super().__init__(storage, rng)
        self.energy_clip, self.energy_dt, self.energy_eps = energy_clip, energy_dt, energy_eps
        self.sum_tree = SumTree(storage.rows * storage.num_envs, "sum")
        self.running = np.zeros(storage.num_envs, np.float64)  # each env's episode energy so far

    @property
    def nbytes(self) -> int:
        """Bytes of the sum tree."""
        return int(self.sum_tree.tree.nbytes)

    def _energy(self, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """``E_t [k]`` of the observations at ``rows``, ``envs``."""
        st = self.storage
        ag = st.achieved_goal[rows, envs].astype(np.float64)
        prev = st.achieved_goal[(rows - 1) % st.rows, envs].astype(np.float64)
        v = np.where((st.ep_t[rows, envs] > 0)[:, None], (ag - prev) / self.energy_dt, 0.0)
        return GRAVITY * ag[:, -1] + 0.5 * np.square(v).sum(axis=1)

    def on_add(self, new: np.ndarray, lost: np.ndarray) -> None:
        """Add each new transition's energy increase to its episode; a new transition enters
        at the mean priority, and the transitions of an episode that ended get
        ``(energy + energy_eps) / T``; overwritten ones leave the tree."""
        st = self.storage
        if len(lost):
            self.sum_tree.update(lost, np.zeros(len(lost)))
        new = new[st.is_transition.reshape(-1)[new]]
        if len(new) == 0:
            return
        rows, envs = new // st.num_envs, new % st.num_envs
        gain = self._energy((rows + 1) % st.rows, envs) - self._energy(rows, envs)
        np.add.at(self.running, envs, np.clip(gain, 0.0, self.energy_clip))
        n = max(st.n_transitions - len(new), 1)
        mean = self.sum_tree.root / n if self.sum_tree.root > 0 else 1.0
        self.sum_tree.update(new, np.full(len(new), mean))
        for row, env in zip(rows, envs):
            T = int(st.ep_len[row, env])
            if T < 0:  # the episode runs on
                continue
            ep_rows = (row - np.arange(T)) % st.rows
            ep_rows = ep_rows[st.is_transition[ep_rows, env] & (st.ep_len[ep_rows, env] == T)]
            p = (self.running[env] + self.energy_eps) / T
            self.sum_tree.update(ep_rows * st.num_envs + env, np.full(len(ep_rows), p))
            self.running[env] = 0.0

    def sample(self, batch_size: int, env_step: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` flat indices (int64), drawn stratified over the sum tree, and weights
        (float32, all 1).

        Raises:
            ValueError: if the storage holds no transition yet.
        """
        if self.storage.n_transitions == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return stratified_draw(self.sum_tree, self.rng, batch_size), np.ones(batch_size, np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The sum tree and each env's running episode energy."""
        return {"sum": self.sum_tree.tree, "running": self.running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sum_tree.tree = np.asarray(state["sum"], np.float64)
        self.running = np.asarray(state["running"], np.float64).copy()


register("buffer.sampler", "uniform", SamplerConfig, UniformSampler)
register("buffer.sampler", "prioritized", PrioritizedSamplerConfig, PrioritizedSampler)
register("buffer.sampler", "energy", EnergySamplerConfig, EnergySampler)
