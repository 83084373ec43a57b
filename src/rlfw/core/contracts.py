"""The contracts (see :mod:`rlfw.core`). Imports nothing of rlfw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from torch import nn

# (achieved_goal [B, G], desired_goal [B, G]) -> [B]
GoalFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (in_features, out_features) -> a linear layer (nn.Linear, or NoisyNet's noisy linear; MLP's
# ``linear`` argument)
LinearFactory = Callable[[int, int], "nn.Module"]


@dataclass
class EnvInfo:
    """What the agent and the buffer need to know of an env, read from a built instance.

    Attributes:
        id: the resolved Gymnasium id (``FetchSlide-v2`` -> ``FetchSlide-v4``).
        goal: whether observations are dicts with observation/achieved_goal/desired_goal.
        obs_dim: length of the (flattened) ``observation`` vector.
        goal_dim: length of ``desired_goal`` (0 for envs without goals).
        act_dim: action dimension; actions are in [-1, 1] (rescaled by a wrapper if needed).
        max_episode_steps: the TimeLimit, or None.
        compute_reward: vectorised reward for (achieved_goal [B, G], desired_goal [B, G]) -> [B]
            float32; None for envs without goals.
        compute_terminated: vectorised termination for the same inputs -> [B] bool; None for
            envs without goals.
        reward_range: ``(low, high)`` bounds on every reward when the env's family guarantees
            them (Fetch and Panda: ``(-1.0, 0.0)``), else None; ``algo.clip_return: null`` clips
            critic targets only where it is ``(-1.0, 0.0)``.
    """

    id: str
    goal: bool
    obs_dim: int
    goal_dim: int
    act_dim: int
    max_episode_steps: int | None
    compute_reward: GoalFn | None = None
    compute_terminated: GoalFn | None = None
    reward_range: tuple[float, float] | None = None


@dataclass
class Batch:
    """A sampled batch (NumPy, float32 unless said otherwise); ``B`` is the batch size.

    Attributes:
        obs: ``[B, obs_dim]`` observation ``o_t`` (the ``observation`` part for goal envs).
        action: ``[B, act_dim]`` action ``a_t`` in [-1, 1].
        reward: ``[B]`` the (n-step) discounted return ``sum_{i<k} gamma^i r_{t+i}``.
        next_obs: ``[B, obs_dim]`` observation ``o_{t+k}`` to bootstrap from.
        terminated: ``[B]`` 1.0 if the episode terminated within the k steps (Gymnasium's
            ``terminated``: no bootstrap), else 0.0. A truncation (time limit) is not a
            termination: the target bootstraps through it.
        discount: ``[B]`` ``gamma**k``, with ``k <= n_step`` the steps actually summed.
        weight: ``[B]`` importance-sampling weight (1 without prioritised replay).
        index: ``[B]`` int64 flat storage indices, for ``update_priorities``.
        goal: ``[B, goal_dim]`` the (possibly relabelled) goal, or None for envs without goals.
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    discount: np.ndarray
    weight: np.ndarray
    index: np.ndarray
    goal: np.ndarray | None = None


@dataclass
class UpdateResult:
    """What one :meth:`Agent.update` returns.

    Attributes:
        metrics: the update's metrics by name (keys from the agent's ``metric_names``; floats).
        td_error: ``[B]`` float32, the per-sample TD error magnitude of the batch (the
            prioritised-replay signal, passed to the buffer's ``update_priorities``), or None for
            an agent that has none.
    """

    metrics: dict[str, float]
    td_error: np.ndarray | None = None


@runtime_checkable
class ReplayBuffer(Protocol):
    """Replay as the collector, the training loop and the checkpointer see it
    (:class:`rlfw.buffers.ReplayBuffer` implements it; TorchRL's ``ReplayBuffer``, SB3's
    ``ReplayBuffer.add``/``sample``).

    Built as ``cls(cfg.buffer, env_info, num_envs, gamma, total_env_steps, seed)``. Arrays are
    NumPy with one row per parallel env (``N``): observations are dicts of ``[N, dim]`` arrays
    (``observation``, and ``achieved_goal``/``desired_goal`` for goal envs), actions
    ``[N, act_dim]`` in [-1, 1], rewards ``[N]`` float, flags ``[N]`` bool.
    """

    def __len__(self) -> int:
        """Stored transitions (the loop samples once there are ``train.batch_size``)."""
        ...

    def start(self, obs: dict[str, np.ndarray]) -> None:
        """Store the observations the vector env's ``reset`` returned (the episodes' first)."""
        ...

    def add(
        self,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: dict[str, np.ndarray],
        final_obs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Store one vector step: ``next_obs`` is what the env returned (after same-step
        autoreset, the new episode's first observation where an episode ended), ``final_obs``
        the ended episodes' last observations (rows of the other envs unused)."""
        ...

    def sample(self, batch_size: int, env_step: int = 0) -> Batch:
        """A :class:`Batch` of ``batch_size`` samples; ``env_step`` drives schedules (PER's
        beta). Raises ``ValueError`` when the buffer is empty."""
        ...

    def update_priorities(self, index: np.ndarray, td_error: np.ndarray) -> None:
        """Feed the TD errors ``[B]`` of a sampled batch back by its ``index`` ``[B]`` (PER;
        a no-op for uniform replay)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The stored data and the buffer's own state (generator, priorities), for
        ``train.save_buffer``."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (raises when it does not fit this buffer)."""
        ...


@runtime_checkable
class Agent(Protocol):
    """An off-policy algorithm as the rest of rlfw sees it.

    Actions are in the normalised space [-1, 1]; observations and goals are float32 arrays
    ``[N, obs_dim]`` and ``[N, goal_dim]``.

    Optional: ``set_progress(progress)`` (``progress`` in [0, 1], the run's env steps over its
    planned length) anneals the agent's learning rates; ``algo.lr_schedule`` other than
    ``constant`` is refused at the config check for an agent without it
    (:meth:`rlfw.algos.base.OffPolicyAgent.set_progress` has it).

    Attributes:
        metric_names: the keys of the metrics :meth:`update` returns, in the order of their
            metrics.csv columns (known before the first update, so the CSV header can be written).
        updates: gradient steps done so far (checkpointed).
        grad_sync: set by multi-worker training: averages a list of tensors over the workers
            in place; the agent calls it with its gradients between ``backward()`` and
            ``step()`` (and with any other state the workers must share, such as CrossQ's
            batch-renormalisation statistics).
        autocast_dtype: set by the loop from ``train.autocast``: None (float32 updates) or the
            ``torch.dtype`` under which :meth:`update` runs ``torch.autocast``.
        stochastic: whether the policy is a distribution that ``predict(deterministic=False)``
            samples (``act(explore=True)``); False: a deterministic policy.
    """

    metric_names: tuple[str, ...]
    updates: int
    grad_sync: Callable[[list[Any]], None] | None
    autocast_dtype: Any
    stochastic: bool  # the policy samples (predict(deterministic=False)); SAC's family

    def export_actor(self) -> tuple[nn.Module, int | None]:
        """The deterministic actor as a layer sequence ``(layers, keep)`` for
        :mod:`rlfw.export` (:meth:`rlfw.algos.base.OffPolicyAgent.export_actor`)."""
        ...

    def act(self, obs: np.ndarray, goal: np.ndarray | None = None, explore: bool = False) -> np.ndarray:
        """Actions ``[N, act_dim]`` in [-1, 1]; ``explore=False`` is the deterministic policy."""
        ...

    def observe(self, obs: np.ndarray, goals: np.ndarray | None = None) -> None:
        """Feed collected observations (and goals) to the agent's normalisers."""
        ...

    def update(self, batch: Batch) -> UpdateResult:
        """One gradient step on ``batch``; returns its metrics (keys from :attr:`metric_names`)
        and the per-sample TD error prioritised replay needs."""
        ...

    def networks(self) -> dict[str, nn.Module]:
        """The trained networks and their targets, by name: what data-parallel workers keep
        identical and federated clients average."""
        ...

    def normalizers(self) -> dict[str, Any]:
        """Running-statistics normalisers by name (``rlfw.algos.normalizer.Normalizer``): their
        sums are added up over workers and federated clients."""
        ...

    def modules(self) -> dict[str, nn.Module]:
        """:meth:`networks` and :meth:`normalizers` together (broadcast, digests)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training (networks, optimisers, counters)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


class Exploration(Protocol):
    """How collection perturbs the agent's actions, per parallel env (SB3 ``ActionNoise``).

    ``__call__(actions [N, A], env_step) -> actions [N, A]`` in [-1, 1]; ``reset(done [N])`` for
    the envs whose episode ended; ``metrics(env_step)`` values for metrics.csv (keys from
    :attr:`metric_names`, as an agent declares its own). :meth:`attach` is called once with the
    built agent: parameter-space exploration (NoisyNet, ``parameter_noise`` true) perturbs no
    action; it swaps its noisy layers into the agent's networks there and redraws their noise.

    Attributes:
        metric_names: the keys :meth:`metrics` may return (``noise_sigma``), or none.
        parameter_noise: whether the exploration perturbs the policy's weights (NoisyNet) rather
            than its actions; then :meth:`resample` draws a new exploration sample of them.
    """

    metric_names: tuple[str, ...]
    parameter_noise: bool

    def __call__(self, actions: np.ndarray, env_step: int) -> np.ndarray: ...

    def reset(self, done: np.ndarray) -> None: ...

    def metrics(self, env_step: int) -> dict[str, float]: ...

    def attach(self, agent: Any) -> None: ...

    def resample(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LoopView(Protocol):
    """What a :class:`Callback` sees of the training loop: read-only attributes and one action,
    :meth:`request_stop`. :class:`rlfw.training.loop.TrainLoop` implements it; a callback that
    needs more than this is asking to change the loop, and should say so in this contract.

    Attributes:
        run_dir: the run directory (``pathlib.Path``).
        cfg: the run's resolved config (an OmegaConf ``DictConfig``).
        agent: the :class:`Agent` being trained.
        info: the env's sizes (:class:`EnvInfo`).
        env_steps: env steps this worker has collected; epoch: epochs finished (0 before the first).
        wall_time: seconds of training so far (resumes add to it).
        last_cycle: the mean update metrics of the last cycle (``{name: value}``, empty before any).
        last_episodes: the training episodes finished in the last epoch (episodes.csv rows).
        status: ``running``, then ``finished``, ``failed`` or ``interrupted`` (in ``on_end``).
        error: ``"<Type>: <message>"`` of the exception that ended the run, or None.
    """

    @property
    def run_dir(self) -> Any: ...
    @property
    def cfg(self) -> Any: ...
    @property
    def agent(self) -> Agent: ...
    @property
    def info(self) -> EnvInfo: ...
    @property
    def env_steps(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def wall_time(self) -> float: ...
    @property
    def last_cycle(self) -> dict[str, float]: ...
    @property
    def last_episodes(self) -> list[dict[str, Any]]: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...

    def request_stop(self, reason: str) -> None:
        """End the run after the current epoch (status ``finished``, ``stop_reason`` = ``reason``)."""


class Callback:
    """Hooks into the training loop (progress bars, loggers, plots, early stop). Every method
    is optional. ``loop`` is the training loop seen through :class:`LoopView` (read-only
    attributes and :meth:`LoopView.request_stop`)."""

    def on_start(self, loop: LoopView) -> None:
        """When the loop starts (or resumes) training."""

    def on_cycle(self, loop: LoopView) -> None:
        """After each cycle's collection and updates."""

    def on_epoch(self, loop: LoopView, row: dict[str, Any]) -> None:
        """After each epoch's metrics row is written (and the checkpoint, when due)."""

    def on_end(self, loop: LoopView) -> None:
        """When the loop returns normally or is interrupted."""
