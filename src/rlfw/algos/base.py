"""What every off-policy agent of rlfw shares: input normalisation, the torch side of the
:class:`rlfw.core.Agent` contract (the batch as tensors, counters, the gradient-sync hook,
hooks before acting and updating) and checkpoints.

A subclass builds its online networks in ``__init__``, then calls :meth:`OffPolicyAgent.setup`
(its targets, optimisers and parameter lists), lists them in :meth:`OffPolicyAgent.networks`
and :meth:`OffPolicyAgent.optimizers`, and implements :meth:`OffPolicyAgent.actions` (acting)
and :meth:`OffPolicyAgent.gradient_step` (one update on a :class:`TensorBatch`; named so as not to be taken for SB3's ``learn``, which is a whole training run). :meth:`act`,
:meth:`update`, :meth:`state_dict`, :meth:`load_state_dict`, :meth:`modules` and
:meth:`normalizers` follow, so a new algorithm's checkpoint, multi-worker broadcast and
federated exchange need no code of their own, and parameter-space exploration
(:meth:`set_networks`, :attr:`pre_act_hooks`, :attr:`pre_update_hooks`) none either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlfw.algos.config import LR_SCHEDULES
from rlfw.algos.normalizer import Normalizer
from rlfw.core import Batch, EnvInfo, UpdateResult


def polyak_update(
    target: Sequence[torch.Tensor], online: Sequence[torch.Tensor], tau: float
) -> None:
    """``target <- tau * online + (1 - tau) * target`` in place (Lillicrap et al. 2016, Alg. 1)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target), list(online), tau)


def adam(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015, Alg. 1) over ``params``, fused into one kernel per step where
    torch has the fused kernel for their device (CPU and CUDA float parameters, torch >= 2.4).

    The fused step computes the same update as the per-tensor loop, without a Python loop over
    the parameters. Measured on a quiet 2-core machine, a whole TD3 update of the FetchPush-v4
    preset's 2x256 networks (batch 256, median of 5x200 updates, 3 alternations): 4.22-4.33 ->
    3.87-3.94 ms with 2 threads, 6.24-6.54 -> 5.81-5.88 ms with one (about 8-9% less).
    """
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)


def lr_factor(schedule: str, progress: float, end_factor: float = 0.0) -> float:
    """The learning-rate multiplier of ``algo.lr_schedule`` at ``progress`` in [0, 1] (the
    run's env steps over ``train.epochs``' env steps; clipped to [0, 1]).

    ``constant``: 1. ``linear``: ``1 - (1 - end_factor) * progress`` (rl-zoo's ``lin_``
    schedules, which end at 0). ``cosine``: ``end_factor + (1 - end_factor) * (1 + cos(pi *
    progress)) / 2`` (Loshchilov & Hutter 2017, SGDR, Eq. 5, one period, no restart).

    Raises:
        ValueError: an unknown schedule (the config check names the options first).
    """
    f = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - end_factor) * f
    if schedule == "cosine":
        return end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * f))
    raise ValueError(f"unknown algo.lr_schedule {schedule!r}; choose one of: {', '.join(sorted(LR_SCHEDULES))}")


@dataclass
class TensorBatch:
    """A :class:`rlfw.core.Batch` as float32 tensors on the agent's device, inputs normalised
    (:meth:`OffPolicyAgent.tensors`); ``B`` is the batch size, ``in`` the agent's ``in_dim``.

    Attributes:
        obs_in: ``[B, in]`` normalised observation (and goal) of ``s_t``.
        next_in: ``[B, in]`` the same of ``s_{t+k}`` (with the same goal).
        action, reward, terminated, discount, weight: as the Batch's fields (``[B, A]``, ``[B]``).
    """

    obs_in: torch.Tensor
    next_in: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    discount: torch.Tensor
    weight: torch.Tensor


class OffPolicyAgent:
    """Base of the algorithms: normalisers of observations and goals, counters, checkpoints.

    Args:
        cfg: the algorithm's config node; reads the keys every algorithm has (``gamma``,
            ``tau``, ``action_l2``, ``preact_l2``, ``max_grad_norm``, ``clip_return``) and
            ``normalize`` (None: on for goal envs), ``norm_clip``, ``norm_eps``.
        env: observation, goal and action sizes.
        device: torch device of the networks.
        seed: seeds :attr:`generator` (per-worker draws: policy samples, target smoothing).

    Attributes:
        return_low: ``-1 / (1 - gamma)``, the lowest return of {-1, 0} rewards (``clip_return``).
        clip_return: whether critic targets are clipped to ``[return_low, 0]``: ``cfg.clip_return``,
            or where it is None, :attr:`clips_return` and rewards in [-1, 0] (``env.reward_range``).
        in_dim: the networks' state input size, ``obs_dim + goal_dim``.
        updates: critic updates done (checkpointed).
        grad_sync: multi-worker training sets it: averages a list of tensors over the workers
            in place (gradients between ``backward()`` and ``step()``).
        pre_act_hooks: called with ``explore`` at the start of every :meth:`act` (NoisyNet
            switches its layers to the exploration sample or the mean weights).
        pre_update_hooks: called at the start of every :meth:`update` (NoisyNet draws fresh
            training noise).
        autocast_dtype: None (float32 updates) or ``torch.bfloat16``: :meth:`update` runs
            :meth:`gradient_step` under ``torch.autocast`` (``train.autocast``; Micikevicius et al. 2018,
            "Mixed precision training", without loss scaling, which bfloat16's 8-bit exponent
            makes unnecessary). Acting stays float32.
    """

    metric_names: tuple[str, ...] = ()
    # what ``algo.clip_return: null`` resolves to where the env's rewards lie in [-1, 0]
    # (:attr:`rlfw.core.EnvInfo.reward_range`): DDPG and TD3 clip (HER); a soft value holds the
    # future entropy bonus, which the bound does not cover, so SAC's family does not
    clips_return: bool = False
    # whether the policy is stochastic (predict(deterministic=False) samples it): SAC's family
    stochastic: bool = False
    # The network contract: the methods (besides nn.Module's forward) that the algorithm's
    # update calls on what make_actor() and make_critic() return; check_networks() refuses a
    # network without them when the agent is built, not at the first update.
    actor_methods: tuple[str, ...] = ()
    critic_methods: tuple[str, ...] = ()

    def check_networks(self) -> None:
        """Check :attr:`actor_methods` on ``self.actor`` and :attr:`critic_methods` on
        ``self.critic`` (a subclass's ``__init__`` calls it after making them).

        Raises:
            TypeError: one line: ``TD3.make_actor() returned Sequential, which has no
                forward_pre(): TD3's update calls it (rlfw.algos.networks.MLP has it)``.
        """
        for role, methods in (("actor", self.actor_methods), ("critic", self.critic_methods)):
            net = getattr(self, role, None)
            for method in methods:
                if not callable(getattr(net, method, None)):
                    raise TypeError(
                        f"{type(self).__name__}.make_{role}() returned {type(net).__name__}, which has no {method}(): "
                        f"{type(self).__name__}'s update calls it (the {role} rlfw builds by default has it; "
                        f"see {type(self).__name__}.make_{role}'s docstring)"
                    )

    def export_actor(self) -> tuple[nn.Sequential, int | None]:
        """The deterministic actor as a plain layer sequence for :mod:`rlfw.export`: ``(layers,
        keep)`` where ``layers`` maps the normalised ``[obs, goal]`` input to the pre-tanh
        output through ``nn.Linear``, activation, ``BatchRenorm`` and ``NoisyLinear`` layers (the
        exporter appends the tanh), and ``keep`` the output columns that are the action (None:
        all; SAC's mean uses the first ``act_dim`` of ``(mu, log_sigma)``).

        Raises:
            NotImplementedError: the algorithm does not say how its actor exports (an
                algorithm from another package overrides this).
        """
        raise NotImplementedError(f"{type(self).__name__} does not define export_actor(), so its policy cannot be exported")

    def __init__(
        self, cfg: Any, env: EnvInfo, device: str | torch.device = "cpu", seed: int = 0
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.act_dim = env.act_dim
        # the keys every algorithm has (rlfw.algos.config.AlgoConfig)
        self.gamma = float(cfg.gamma)
        self.tau = float(cfg.tau)
        self.action_l2 = float(cfg.action_l2)
        self.preact_l2 = float(cfg.preact_l2)
        self.max_grad_norm = cfg.max_grad_norm
        # null: this algorithm's own choice, where the env family bounds rewards to [-1, 0]
        self.clip_return = (bool(cfg.clip_return) if cfg.clip_return is not None
                            else self.clips_return and env.reward_range == (-1.0, 0.0))  # fmt: skip
        # HER's return clipping: critic targets in [return_low, 0] for {-1, 0} rewards
        self.return_low = -1.0 / (1.0 - self.gamma) if self.gamma < 1.0 else -np.inf
        normalize = cfg.normalize if cfg.normalize is not None else env.goal
        self.obs_norm = Normalizer(env.obs_dim, cfg.norm_clip, cfg.norm_eps, bool(normalize)).to(
            self.device
        )
        self.goal_norm = (
            Normalizer(env.goal_dim, cfg.norm_clip, cfg.norm_eps, bool(normalize)).to(self.device)
            if env.goal
            else None
        )
        self.in_dim = env.obs_dim + (env.goal_dim if env.goal else 0)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.updates = 0
        self.grad_sync: Callable[[list[Any]], None] | None = None
        self.pre_act_hooks: list[Callable[[bool], None]] = []
        self.pre_update_hooks: list[Callable[[], None]] = []
        self.autocast_dtype: torch.dtype | None = None

    # ---------------------------------------------------------------------------------------
    # inputs

    def _inputs(self, obs: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """Normalised ``[B, obs_dim (+ goal_dim)]`` network input."""
        x = self.obs_norm(obs)
        if self.goal_norm is not None:
            assert goal is not None
            x = torch.cat([x, self.goal_norm(goal)], dim=-1)
        return x

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    def tensors(self, batch: Batch) -> TensorBatch:
        """``batch`` as float32 tensors on the device, observations (and goals) normalised."""
        t = self._tensor
        goal = None if batch.goal is None else t(batch.goal)
        return TensorBatch(
            obs_in=self._inputs(t(batch.obs), goal),
            next_in=self._inputs(t(batch.next_obs), goal),
            action=t(batch.action),
            reward=t(batch.reward),
            terminated=t(batch.terminated),
            discount=t(batch.discount),
            weight=t(batch.weight),
        )

    # ---------------------------------------------------------------------------------------
    # acting and learning: the contract's entry points and what subclasses implement

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, goal: np.ndarray | None = None, explore: bool = False
    ) -> np.ndarray:
        """Actions for ``obs [N, obs_dim]`` (and ``goal [N, goal_dim]``): ``[N, act_dim]``
        float32 NumPy in [-1, 1], from :meth:`actions` after the :attr:`pre_act_hooks`.

        Args:
            explore: the exploring policy (a sample of a stochastic policy; a NoisyNet actor's
                exploration noise) or, False, the deterministic one evaluation uses.
        """
        for hook in self.pre_act_hooks:
            hook(explore)
        x = self._inputs(self._tensor(obs), None if goal is None else self._tensor(goal))
        return self.actions(x, explore).cpu().numpy()

    def update(self, batch: Batch) -> UpdateResult:
        """One update on ``batch`` (:meth:`gradient_step` on :meth:`tensors`, after the
        :attr:`pre_update_hooks`): its metrics and per-sample TD error ``[B]``."""
        for hook in self.pre_update_hooks:
            hook()
        if self.autocast_dtype is None:
            return self.gradient_step(self.tensors(batch))
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.gradient_step(self.tensors(batch))

    def actions(self, x: torch.Tensor, explore: bool) -> torch.Tensor:
        """Actions ``[N, A]`` in [-1, 1] for normalised inputs ``x [N, in]``; subclasses implement it."""
        raise NotImplementedError

    def gradient_step(self, batch: TensorBatch) -> UpdateResult:
        """One gradient update on a tensor batch; subclasses implement it."""
        raise NotImplementedError

    def setup(self) -> None:
        """Make the targets, optimisers and parameter lists from the online networks; a
        subclass calls it at the end of ``__init__`` and implements it."""
        raise NotImplementedError

    def set_networks(self, nets: Mapping[str, nn.Module]) -> None:
        """Replace online networks by their :meth:`networks` name (moved to the device), then
        :meth:`setup` again: fresh targets and optimisers over the new parameters. Parameter-space
        exploration (NoisyNet) calls it once, right after the agent is built.

        Raises:
            KeyError: a name that is not one of :meth:`networks`.
        """
        known = self.networks()
        for name, net in nets.items():
            if name not in known:
                raise KeyError(f"{type(self).__name__} has no network {name!r} (it has {sorted(known)})")
            setattr(self, name, net.to(self.device))
        self.setup()

    def observe(self, obs: np.ndarray, goals: np.ndarray | None = None) -> None:
        """Update the normalisers with collected observations ``[B, obs_dim]`` and goals."""
        self.obs_norm.update(obs)
        if self.goal_norm is not None and goals is not None:
            self.goal_norm.update(goals)

    def set_progress(self, progress: float) -> float:
        """Anneal every optimiser's learning rate (:meth:`optimizers`, the temperature's
        included) to its initial rate times :func:`lr_factor` of ``algo.lr_schedule`` at
        ``progress`` in [0, 1]; the training loop calls it before each cycle's updates.

        The initial rate is kept in each parameter group as ``initial_lr`` (torch's
        ``lr_scheduler`` key), so it travels with the optimiser's checkpoint and a resumed run
        continues the same schedule; the rate depends on ``progress`` alone.

        Returns:
            The factor applied.

        Raises:
            ValueError: an unknown ``algo.lr_schedule`` (:func:`lr_factor`; the config check
                refuses it first).
        """
        factor = lr_factor(str(self.cfg.lr_schedule), progress, float(self.cfg.lr_end_factor))
        for opt in self.optimizers().values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor
        return factor

    def _minimize(self, opt: torch.optim.Optimizer, params: list[nn.Parameter], loss: torch.Tensor,
                  max_grad_norm: float | None) -> None:  # fmt: skip
        """``loss.backward()``, then average ``params``' gradients over workers, clip, step ``opt``."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in params if p.grad is not None])
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, float(max_grad_norm))
        opt.step()

    def _step(self, opt: torch.optim.Optimizer, params: list[nn.Parameter], grads: Iterable[torch.Tensor],
              max_grad_norm: float | None) -> None:  # fmt: skip
        """Set ``params``' gradients, average them over workers, clip, and step ``opt``."""
        grads = list(grads)
        for p, g in zip(params, grads):
            p.grad = g
        if self.grad_sync is not None:
            self.grad_sync(grads)
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, float(max_grad_norm))
        opt.step()

    # ---------------------------------------------------------------------------------------
    # the contract's module lists and checkpoints

    def networks(self) -> dict[str, nn.Module]:
        """The trained networks (and targets) by name; subclasses list theirs."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by checkpoint key; subclasses list theirs."""
        raise NotImplementedError

    def normalizers(self) -> dict[str, Normalizer]:
        """``obs_norm`` and, for goal envs, ``goal_norm``."""
        norms = {"obs_norm": self.obs_norm}
        if self.goal_norm is not None:
            norms["goal_norm"] = self.goal_norm
        return norms

    def modules(self) -> dict[str, nn.Module]:
        """The agent's modules by name (networks, targets, normalisers)."""
        return {**self.networks(), **self.normalizers()}

    def state_dict(self) -> dict[str, Any]:
        """Modules, optimisers, the update counter and the generator state."""
        state: dict[str, Any] = {k: m.state_dict() for k, m in self.modules().items()}
        state.update({k: opt.state_dict() for k, opt in self.optimizers().items()})
        state["updates"] = self.updates
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            KeyError: ``state`` lacks a module or optimiser of this agent (another algorithm's
                checkpoint).
        """
        for k, m in self.modules().items():
            m.load_state_dict(state[k])
        for k, opt in self.optimizers().items():
            opt.load_state_dict(state[k])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"])
