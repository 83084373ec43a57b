"""The off-policy actor-critic core shared by DDPG and TD3.

DDPG (Lillicrap et al. 2016) is the case ``n_critics=1, policy_delay=1, target_noise=0``;
TD3 (Fujimoto et al. 2018, Algorithm 1) adds the clipped double-Q target over twin critics,
target policy smoothing and delayed actor updates. The HER paper's action L2 penalty, input
normalisation and return clipping (Andrychowicz et al. 2017, Appendix A) are options.

Critic target for a sampled batch (Batch fields in brackets)::

    a'  = clip(pi'(s') + clip(N(0, target_noise^2), -c, c), -1, 1)    # c = target_noise_clip
    y   = [reward] + [discount] * (1 - [terminated]) * min_j Q'_j(s', a')   # TD3 Eq. 10, n-step
    y   = clip(y, -1 / (1 - gamma), 0)                                  # if clip_return
    L_Q = sum_j mean_B([weight] * (Q_j(s, a) - y)^2)

Every ``policy_delay`` critic updates, with ``pi(s) = tanh(u(s))``:
``L_pi = -mean_B Q_1(s, pi(s)) + action_l2 * mean(pi(s)^2) + preact_l2 * mean(u(s)^2)``
and polyak averaging ``theta' <- tau * theta + (1 - tau) * theta'`` of actor and critics.

``preact_l2`` keeps the actor out of tanh's flat tails: once ``|u|`` is large the actor's
gradient ``dQ/da * (1 - tanh(u)^2)`` vanishes and it can never leave a saturated corner, which
is how TD3 on Hopper-v4 collapsed to +1 on every joint. The mean runs over the batch and the A
action dimensions: rlkit's ``policy_pre_activation_weight`` sums over the action dimensions, so
``preact_l2`` is rlkit's weight divided by A.

This module registers ``algo=td3`` and ``algo=ddpg`` (schemas in :mod:`rlfw.algos.config`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from rlfw.algos.base import OffPolicyAgent, polyak_update
from rlfw.algos.config import DDPGConfig, TD3Config
from rlfw.algos.networks import MLP, EnsembleMLP
from rlfw.core import Batch, EnvInfo
from rlfw.registry import register


class ActorCritic(OffPolicyAgent):
    """DDPG/TD3 agent: actor, critic ensemble, targets, optimisers and normalisers.

    Implements the :class:`rlfw.core.Agent` contract. :meth:`update` returns ``critic_loss``
    (summed over the critics), ``q_mean`` (mean ``Q_1(s, a)``) and, on steps with an actor
    update, ``actor_loss``; :attr:`td_error` is the mean over critics of ``|Q_j(s, a) - y|``
    (the priority signal for prioritised replay: both critics are trained on the sample, so
    their mean error measures what is left to learn from it).

    Args:
        cfg: an :class:`rlfw.config.schema.ActorCriticConfig` (or DictConfig of one).
        env: observation, goal and action sizes.
        device: torch device for the networks.
        actor_linear: factory ``(in, out) -> module`` for the actor's layers (NoisyNet swaps in
            noisy layers here); ``critic_linear`` likewise for the critics (None: the fused
            ensemble of plain linear layers).
        seed: seeds the target-smoothing noise generator.

    Actions are in the normalised space [-1, 1] everywhere.
    """

    metric_names: tuple[str, ...] = ("actor_loss", "critic_loss", "q_mean")

    def __init__(
        self,
        cfg: Any,
        env: EnvInfo,
        device: str | torch.device = "cpu",
        actor_linear: Callable[[int, int], nn.Module] = nn.Linear,
        critic_linear: Callable[[int, int], nn.Module] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(cfg, env, device, seed)
        self.policy_delay = int(cfg.policy_delay)
        self.target_noise = float(cfg.target_noise)
        self.target_noise_clip = float(cfg.target_noise_clip)
        in_dim = self.in_dim
        self.actor = MLP(
            in_dim, env.act_dim, list(cfg.actor_hidden), cfg.activation, cfg.init,
            output_activation=nn.Tanh(), linear=actor_linear,
        ).to(self.device)  # fmt: skip
        self.n_critics = int(cfg.n_critics)
        self.critic: nn.Module
        if critic_linear is None:
            self.critic = EnsembleMLP(
                self.n_critics,
                in_dim + env.act_dim,
                list(cfg.critic_hidden),
                cfg.activation,
                cfg.init,
            ).to(self.device)
        else:
            self.critic = _ModuleEnsemble(
                [
                    MLP(
                        in_dim + env.act_dim,
                        1,
                        list(cfg.critic_hidden),
                        cfg.activation,
                        cfg.init,
                        linear=critic_linear,
                    )
                    for _ in range(self.n_critics)
                ]
            ).to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=float(cfg.actor_lr))
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=float(cfg.critic_lr))
        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.actor_target.parameters()) + list(
            self.critic_target.parameters()
        )
        self._online_params = self._actor_params + self._critic_params
        # NoisyNet: layers with reset_noise(); the actor's exploration sample is kept apart
        self._noisy_actor: list[Any] = [
            m for m in self.actor.modules() if hasattr(m, "reset_noise")
        ]
        self._noisy_all: list[Any] = [
            m
            for net in (self.actor, self.actor_target, self.critic, self.critic_target)
            for m in net.modules()
            if hasattr(m, "reset_noise")
        ]
        self._explore_noise: list[Any] = []
        if self._noisy_actor:
            self.resample_exploration()

    # ---------------------------------------------------------------------------------------
    # acting

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, goal: np.ndarray | None = None, explore: bool = False
    ) -> np.ndarray:
        """The actor's action ``pi(s)`` in [-1, 1].

        Args:
            obs: ``[N, obs_dim]`` observations.
            goal: ``[N, goal_dim]`` desired goals (goal envs) or None.
            explore: with a NoisyNet actor, use the exploration noise sample; otherwise (and
                always for evaluation) the mean weights. No effect on plain actors.

        Returns:
            ``[N, act_dim]`` float32 NumPy.
        """
        for m, noise in zip(self._noisy_actor, self._explore_noise):
            m.noise_enabled = explore
            if explore:
                m.set_noise(noise)
        x = self._inputs(self._tensor(obs), None if goal is None else self._tensor(goal))
        return self.actor(x).cpu().numpy()

    def resample_exploration(self) -> None:
        """Draw a new exploration noise sample for a NoisyNet actor (no-op otherwise)."""
        for m in self._noisy_actor:
            m.reset_noise()
        self._explore_noise = [m.get_noise() for m in self._noisy_actor]

    # ---------------------------------------------------------------------------------------
    # learning

    @torch.no_grad()
    def critic_target_value(
        self,
        next_in: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        discount: torch.Tensor,
    ) -> torch.Tensor:
        """The bootstrapped target ``y [B]`` (module docstring; TD3 Eq. 10 with smoothing Eq. 14)."""
        next_a = self.actor_target(next_in)
        if self.target_noise > 0.0:
            noise = torch.randn(next_a.shape, generator=self.generator, device=self.device)
            noise = (noise * self.target_noise).clamp(
                -self.target_noise_clip, self.target_noise_clip
            )
            next_a = (next_a + noise).clamp(-1.0, 1.0)
        q_next = self.critic_target(torch.cat([next_in, next_a], dim=-1)).min(dim=0).values
        y = reward + discount * (1.0 - terminated) * q_next
        if self.clip_return:
            y = y.clamp(self.return_low, 0.0)
        return y

    def update(self, batch: Batch) -> dict[str, float]:
        """One critic step and, every ``policy_delay`` steps, one actor step and target update.

        Returns:
            ``critic_loss``, ``q_mean`` and (actor steps only) ``actor_loss``; sets
            :attr:`td_error` ``[B]``.
        """
        for m in self._noisy_all:  # fresh, independent noise for online and target nets
            m.noise_enabled = True
            m.reset_noise()
        t = self._tensor
        obs, next_obs = t(batch.obs), t(batch.next_obs)
        goal = None if batch.goal is None else t(batch.goal)
        obs_in = self._inputs(obs, goal)
        next_in = self._inputs(next_obs, goal)
        action = t(batch.action)
        weight = t(batch.weight)

        y = self.critic_target_value(
            next_in, t(batch.reward), t(batch.terminated), t(batch.discount)
        )
        q = self.critic(torch.cat([obs_in, action], dim=-1))  # [E, B]
        td = q - y
        critic_loss = (weight * td.square()).mean(dim=1).sum()
        self._minimize(self.critic_opt, self._critic_params, critic_loss, self.max_grad_norm)
        self.updates += 1

        metrics: dict[str, float] = {}
        if self.updates % self.policy_delay == 0:
            pre, pi = self.actor.forward_pre(obs_in)
            q_pi = self.critic.first(torch.cat([obs_in, pi], dim=-1))  # type: ignore[operator]
            actor_loss = -q_pi.mean()
            if self.action_l2 > 0.0:
                actor_loss = actor_loss + self.action_l2 * pi.square().mean()
            if self.preact_l2 > 0.0:
                actor_loss = actor_loss + self.preact_l2 * pre.square().mean()
            # gradients for the actor only: the critic's weight gradients are never formed
            grads = torch.autograd.grad(actor_loss, self._actor_params)
            self._step(self.actor_opt, self._actor_params, grads, self.max_grad_norm)
            polyak_update(self._target_params, self._online_params, self.tau)
            metrics["actor_loss"] = float(actor_loss.detach())

        with torch.no_grad():
            self.td_error = td.abs().mean(dim=0).cpu().numpy()
            metrics["critic_loss"] = float(critic_loss.detach())
            metrics["q_mean"] = float(q[0].mean())
        return metrics

    # ---------------------------------------------------------------------------------------
    # checkpoints

    def networks(self) -> dict[str, nn.Module]:
        """Actor, critics and their targets by name (exchanged between workers and clients)."""
        return {
            "actor": self.actor,
            "critic": self.critic,
            "actor_target": self.actor_target,
            "critic_target": self.critic_target,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``actor_opt`` and ``critic_opt``."""
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}


class _ModuleEnsemble(nn.Module):
    """A list of scalar-output critics with :class:`EnsembleMLP`'s interface: ``[B, in] -> [E, B]``."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).squeeze(-1) for m in self.members])

    def first(self, x: torch.Tensor) -> torch.Tensor:
        return self.members[0](x).squeeze(-1)


register("algo", "td3", TD3Config, ActorCritic)
register("algo", "ddpg", DDPGConfig, ActorCritic)
