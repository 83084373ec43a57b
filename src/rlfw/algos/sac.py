"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications").

A squashed Gaussian policy ``a = tanh(u)``, ``u ~ N(mu(s), sigma(s)^2)``; twin critics with the
clipped double-Q soft target; a temperature ``alpha`` learned towards ``target_entropy`` (or
fixed). With ``B`` the batch and Batch fields in brackets::

    a', log pi(a'|s') ~ pi(.|s')                                        # fresh sample, no grad
    y    = [reward] + [discount] (1 - [terminated]) (min_j Q'_j(s', a') - alpha log pi(a'|s'))
    L_Q  = 1/2 sum_j mean_B([weight] (Q_j(s, a) - y)^2)                 # paper Eq. 5, twins
    L_pi = mean_B(alpha log pi(a~|s) - min_j Q_j(s, a~)),  a~ ~ pi(.|s)  # Eq. 7 (reparameterised)
    L_alpha = -mean_B(log_alpha (log pi(a~|s) + target_entropy))        # Eq. 18, on log alpha

The log-probability carries the tanh change of variables (paper App. C, Eq. 21)::

    log pi(a|s) = sum_i [log N(u_i; mu_i, sigma_i^2) - log(1 - tanh(u_i)^2)]
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2 u))                  # exact and stable

Every ``target_update_interval`` critic updates the target critics move by polyak averaging
with ``tau``. Acting: ``explore=True`` samples ``a ~ pi(.|s)`` (SAC explores by sampling, so its
default is ``noise=none``); ``explore=False`` (evaluation) is the mean action ``tanh(mu(s))``.

HER options: ``action_l2`` penalises the mean action, ``action_l2 * mean(tanh(mu(s))^2)``;
``preact_l2`` penalises the pre-tanh mean, ``preact_l2 * mean(mu(s)^2)`` (a mean over the batch
and the A action dimensions: rlkit's ``policy_pre_activation_weight`` sums over the action
dimensions, so ``preact_l2`` equals rlkit's weight divided by A).

``clip_return`` is refused (:meth:`SACConfig.validate`): HER's clip bounds the return of {-1, 0}
rewards, ``[-1/(1-gamma), 0]``, but a soft Q-value also holds every later entropy bonus
``-gamma^t alpha log pi``, which has no bound. Clipping ``r + gamma Q'`` and adding the bonus
after it (what rlfw did before issue 19) moves the fixed point: on one state with a self-loop,
gamma 0.98, r = -0.5 and alpha log pi = 1.5 it is -51.47 instead of the soft value
``(r - gamma alpha log pi) / (1 - gamma) = -98.5``.

Prioritised replay: the update's ``td_error`` is the mean over the critics of ``|Q_j(s, a) - y|``.

This module registers ``algo=sac``; :mod:`rlfw.algos.tqc` and :mod:`rlfw.algos.crossq` build on it.
"""

# No ``from __future__ import annotations``: OmegaConf reads the schema's annotations at run time.
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlfw.algos.base import OffPolicyAgent, TensorBatch, adam, polyak_update
from rlfw.algos.config import AlgoConfig
from rlfw.algos.networks import MLP, EnsembleMLP
from rlfw.core import EnvInfo, UpdateResult, require
from rlfw.core.checks import in_range
from rlfw.errors import ConfigError
from rlfw.registry import register

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the policy's log std is clamped here (SB3, softlearning)
LOG2 = math.log(2.0)
MAX_CRITICS = 100  # algo.n_critics above this is refused (memory, not a published setting)


@dataclass
class SACConfig(AlgoConfig):
    """Keys of SAC (Haarnoja et al. 2018): :class:`AlgoConfig`'s with SAC's defaults, plus the
    temperature and the target interval; TQC and CrossQ extend them.

    ``alpha`` is the entropy temperature: its start value when ``autotune_alpha`` is true (learned
    towards ``target_entropy``, None: ``-act_dim``), else its fixed value.
    """

    name: str = "sac"
    policy_delay: int = 1  # actor (and alpha) updates once every policy_delay critic updates
    preact_l2: float = 0.0  # penalty on the squared pre-tanh mean mu(s)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    actor_hidden: list[int] = field(default_factory=lambda: [256, 256])
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    action_l2: float = 0.0  # HER paper's penalty, here on the mean action tanh(mu(s))
    # Kept so that every algorithm has the key; true is refused (module docstring): the bound
    # of {-1, 0} returns does not hold for soft values, which carry the future entropy bonus.
    # null (the default) resolves to false (SAC.clips_return).
    clip_return: bool | None = None
    target_update_interval: int = 1  # critic updates between target updates
    # Entropy temperature, > 0 (start value if autotune_alpha). 0.1 is Yarats & Kostrikov's
    # pytorch_sac init_temperature; SB3 starts at 1.0, which on sparse {-1, 0} rewards lets the
    # entropy bonus swamp the reward: measured on FetchReach-v4 (4 epochs of 1000 steps), SAC
    # at 1.0 stayed at train success 0 with alpha still 0.67, at 0.1 it reached eval success 1.0
    # in epoch 3 (TQC and CrossQ the same).
    alpha: float = 0.1
    autotune_alpha: bool = True  # learn alpha towards target_entropy (paper Sec. 5, Eq. 18)
    target_entropy: float | None = None  # None: -act_dim (the paper's heuristic)
    alpha_lr: float = 3e-4

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges and names of these keys (one :class:`rlfw.errors.ConfigError` line)."""
        AlgoConfig.validate(node)
        p = "algo."
        for key in ("target_update_interval", "policy_delay"):
            in_range(node, key, 1, prefix=p)
        # an ensemble of critics: REDQ's 10 is the largest in the literature
        in_range(node, "n_critics", 1, MAX_CRITICS, prefix=p)
        in_range(node, "alpha", 0.0, low_open=True, prefix=p)
        in_range(node, "alpha_lr", 0.0, low_open=True, prefix=p)
        # nats; null: -act_dim. NaN would make the temperature loss NaN at the first update.
        in_range(node, "target_entropy", optional=True, prefix=p)
        require(
            not node.clip_return,
            f"algo.clip_return=true is for ddpg and td3: algo={node.name}'s soft Q-value holds the "
            "future entropy bonus, which the return bound [-1/(1-gamma), 0] does not cover, so the "
            "clip would bias every target; set algo.clip_return=false (or null)",
        )

    @staticmethod
    def validate_with(cfg: Any) -> None:
        """Rules with other groups: NoisyNet perturbs a deterministic actor's weights; a
        stochastic policy explores by sampling and has no such actor."""
        if cfg.noise.name == "noisynet":
            raise ConfigError(
                f"algo={cfg.algo.name} explores by sampling its stochastic policy, and noise=noisynet "
                "replaces a deterministic actor's layers (ddpg, td3): choose noise=none, gaussian or ou"
            )


class SquashedGaussianActor(nn.Module):
    """The SAC policy: an MLP to ``(mu [B, A], log_sigma [B, A])``, actions ``tanh(u)``.

    Args:
        in_features: state input size.
        act_dim: A.
        hidden: as :class:`rlfw.algos.networks.MLP`.
        activation: as ``hidden``.
        init: as ``hidden``.
        linear: layer factory (``nn.Linear``).
        norm: normalisation layer factory (CrossQ's batch renormalisation), or None.

    ``log_sigma`` is clamped to ``[LOG_STD_MIN, LOG_STD_MAX]`` = [-20, 2].
    """

    def __init__(self, in_features: int, act_dim: int, hidden: list[int], activation: str, init: str,
                 linear: Callable[[int, int], nn.Module] = nn.Linear,
                 norm: Callable[[int], nn.Module] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.act_dim = act_dim
        self.net = MLP(in_features, 2 * act_dim, hidden, activation, init, linear=linear, norm=norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu [B, A], log_sigma [B, A])`` for inputs ``x [B, in]``."""
        # float32 for the Gaussian's log-density also under train.autocast=bfloat16 (a no-op otherwise)
        mu, log_std = self.net(x).float().split(self.act_dim, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """A reparameterised sample: ``(a [B, A] in (-1, 1), log pi(a|s) [B], mu [B, A])``."""
        mu, log_std = self(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        u = mu + log_std.exp() * eps
        return torch.tanh(u), squashed_log_prob(u, mu, log_std), mu


def squashed_log_prob(u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``log pi(tanh(u)|s)`` ``[B]`` of a pre-tanh sample ``u [B, A]`` of ``N(mu, exp(log_std)^2)``.

    The Gaussian density less the tanh Jacobian, Haarnoja et al. 2018, App. C, Eq. 21, with
    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (exact, finite for any ``u``).
    """
    z = (u - mu) / log_std.exp()
    gauss = -0.5 * z.square() - log_std - 0.5 * math.log(2.0 * math.pi)
    jacobian = 2.0 * (LOG2 - u - F.softplus(-2.0 * u))
    return (gauss - jacobian).sum(dim=-1)


class Temperature(nn.Module):
    """The entropy temperature as ``log_alpha`` (a scalar parameter; ``alpha = exp(log_alpha)``)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)))

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()


class SAC(OffPolicyAgent):
    """Soft Actor-Critic (module docstring): implements :class:`rlfw.core.Agent`.

    :meth:`update` returns ``critic_loss``, ``q_mean`` (mean ``Q_1(s, a)``), ``alpha`` (the
    temperature used in this update) and, on actor updates, ``actor_loss``, ``entropy`` (the
    policy's entropy estimate ``-mean log pi(a~|s)``, nats) and, when learned, ``alpha_loss``.

    Args:
        cfg: a :class:`SACConfig` node.
        env: observation, goal and action sizes.
        device: torch device.
        seed: seeds the policy's samples (:attr:`generator`).

    Raises:
        ConfigError: ``cfg.clip_return`` true (module docstring).
    """

    metric_names: tuple[str, ...] = (
        "actor_loss",
        "critic_loss",
        "q_mean",
        "alpha",
        "alpha_loss",
        "entropy",
    )
    has_target_critic = True

    stochastic = True  # a squashed Gaussian: predict(deterministic=False) samples it
    actor_methods = ("sample",)  # (action [B, A], log-prob [B], tanh(mu) [B, A]): see make_actor

    def export_actor(self) -> tuple[nn.Sequential, int | None]:
        """The actor's MLP to ``(mu, log_sigma)``; the exported mean action keeps ``mu``, the
        first ``act_dim`` outputs (``tanh(mu(s))``, what evaluation acts with)."""
        if not isinstance(self.actor, SquashedGaussianActor):
            raise NotImplementedError(f"cannot export an actor of type {type(self.actor).__name__}: override export_actor()")
        return self.actor.net.net, self.act_dim

    def __init__(
        self,
        cfg: Any,
        env: EnvInfo,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(cfg, env, device, seed)
        if self.clip_return:
            raise ConfigError(
                f"algo.clip_return=true is for ddpg and td3, not algo={cfg.name} (see SACConfig.validate)"
            )
        self.target_update_interval = int(cfg.target_update_interval)
        self.policy_delay = int(cfg.policy_delay)
        self.n_critics = int(cfg.n_critics)
        self.autotune_alpha = bool(cfg.autotune_alpha)
        self.target_entropy = (
            float(cfg.target_entropy) if cfg.target_entropy is not None else -float(env.act_dim)
        )
        self.actor = self.make_actor().to(self.device)
        self.critic = self.make_critic().to(self.device)
        self.temperature = Temperature(float(cfg.alpha)).to(self.device)
        self.temperature.requires_grad_(self.autotune_alpha)
        self.check_networks()
        self.setup()

    def setup(self) -> None:
        """The target critics (if any), the optimisers and the update's parameter lists."""
        c = self.cfg
        self.critic_target = (
            copy.deepcopy(self.critic).requires_grad_(False) if self.has_target_critic else None
        )
        self.actor_opt = self.make_optimizer(self.actor.parameters(), float(c.actor_lr))
        self.critic_opt = self.make_optimizer(self.critic.parameters(), float(c.critic_lr))
        self.alpha_opt = self.make_alpha_optimizer(self.temperature.parameters(), float(c.alpha_lr))
        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._alpha_params = list(self.temperature.parameters())

    # ---------------------------------------------------------------------------------------
    # what subclasses change

    def make_actor(self) -> SquashedGaussianActor:
        """The policy network: ``forward(x [B, in]) -> (mu [B, A], log_sigma [B, A])`` and
        ``sample(x, generator) -> (action [B, A], log-prob [B], tanh(mu) [B, A])``, reparameterised
        (Haarnoja et al. 2018, Eq. 11); :class:`SquashedGaussianActor` has both. Checked when the
        agent is built (:attr:`actor_methods`)."""
        c = self.cfg
        return SquashedGaussianActor(self.in_dim, self.act_dim, list(c.actor_hidden), c.activation, c.init)

    def make_critic(self) -> nn.Module:
        """The critic ensemble: ``[B, in + A] -> [n_critics, B]``."""
        c = self.cfg
        return EnsembleMLP(
            self.n_critics, self.in_dim + self.act_dim, list(c.critic_hidden), c.activation, c.init
        )

    def make_optimizer(self, params: Any, lr: float) -> torch.optim.Optimizer:
        """The actor's and critics' optimiser: Adam (Kingma & Ba 2015) with its default betas."""
        return adam(params, lr)

    def make_alpha_optimizer(self, params: Any, lr: float) -> torch.optim.Optimizer:
        """The temperature's optimiser: Adam with its default betas (0.9, 0.999), for every soft
        algorithm (CrossQ's reference code and sb3-contrib too)."""
        return adam(params, lr)

    @torch.no_grad()
    def soft_target(self, next_in: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor,
                    discount: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The soft clipped double-Q target ``y [B]`` (module docstring; paper Eq. 3 and 5)."""
        next_a, next_logp, _ = self.actor.sample(next_in, self.generator)
        q_next = self.critic_target(torch.cat([next_in, next_a], dim=-1)).min(dim=0).values  # type: ignore[misc]
        return self.soft_bootstrap(reward, discount * (1.0 - terminated), q_next, alpha * next_logp)

    def soft_bootstrap(self, reward: torch.Tensor, bootstrap: torch.Tensor, q_next: torch.Tensor,
                       entropy_cost: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``y = reward + bootstrap (q_next - entropy_cost)`` (paper Eq. 3).

        Shapes broadcast: ``reward``, ``bootstrap`` (``discount (1 - terminated)``) and
        ``entropy_cost`` (``alpha log pi(a'|s')``) ``[B]`` or ``[B, 1]``; ``q_next`` ``[B]`` or
        ``[B, K]`` (TQC's atoms). No return clipping (module docstring).
        """
        return reward + bootstrap * (q_next - entropy_cost)

    def critic_loss(self, b: TensorBatch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_Q, td_error [B], q_mean)`` for one batch (module docstring)."""
        y = self.soft_target(b.next_in, b.reward, b.terminated, b.discount, alpha)
        q = self.critic(torch.cat([b.obs_in, b.action], dim=-1))  # [E, B]
        td = q - y
        loss = 0.5 * (b.weight * td.square()).mean(dim=1).sum()
        return loss, td.detach().abs().mean(dim=0), q[0].detach().mean()

    def policy_value(self, obs_in: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The value the actor maximises, ``min_j Q_j(s, a) [B]``."""
        return self.critic(torch.cat([obs_in, action], dim=-1)).min(dim=0).values  # type: ignore[no-any-return]

    def after_critic_step(self) -> None:
        """The target critics' polyak update every ``target_update_interval`` critic updates."""
        if self.critic_target is not None and self.updates % self.target_update_interval == 0:
            polyak_update(list(self.critic_target.parameters()), self._critic_params, self.tau)

    # ---------------------------------------------------------------------------------------
    # acting

    def actions(self, x: torch.Tensor, explore: bool) -> torch.Tensor:
        """``[N, A]`` actions in [-1, 1] for inputs ``x [N, in]``: a sample of the policy with
        ``explore``, else the mean action ``tanh(mu(s))``."""
        if explore:
            return self.actor.sample(x, self.generator)[0]
        return torch.tanh(self.actor(x)[0])

    # ---------------------------------------------------------------------------------------
    # learning

    def gradient_step(self, b: TensorBatch) -> UpdateResult:
        """One critic step; every ``policy_delay`` steps one actor and temperature step.

        Returns:
            The metrics (class docstring) and the ``td_error [B]`` (module docstring).
        """
        alpha = self.temperature().detach()
        critic_loss, td, q_mean = self.critic_loss(b, alpha)
        self._minimize(self.critic_opt, self._critic_params, critic_loss, self.max_grad_norm)
        self.updates += 1
        self.after_critic_step()

        metrics = {
            "critic_loss": float(critic_loss.detach()),
            "q_mean": float(q_mean),
            "alpha": float(alpha),
        }
        if self.updates % self.policy_delay == 0:
            metrics.update(self.actor_step(b.obs_in, alpha))
        return UpdateResult(metrics, td.cpu().numpy())

    def actor_step(self, obs_in: torch.Tensor, alpha: torch.Tensor) -> dict[str, float]:
        """One step of ``L_pi`` on the actor and, with ``autotune_alpha``, of ``L_alpha``."""
        a, logp, mu = self.actor.sample(obs_in, self.generator)
        actor_loss = (alpha * logp - self.policy_value(obs_in, a)).mean()
        if self.action_l2 > 0.0:
            actor_loss = actor_loss + self.action_l2 * torch.tanh(mu).square().mean()
        if self.preact_l2 > 0.0:
            actor_loss = actor_loss + self.preact_l2 * mu.square().mean()
        # gradients for the actor only: the critics' weight gradients are never formed
        self._step(self.actor_opt, self._actor_params, torch.autograd.grad(actor_loss, self._actor_params),
                   self.max_grad_norm)  # fmt: skip
        logp = logp.detach()
        out = {"actor_loss": float(actor_loss.detach()), "entropy": float(-logp.mean())}
        if self.autotune_alpha:
            alpha_loss = -(self.temperature.log_alpha * (logp + self.target_entropy)).mean()
            self._step(self.alpha_opt, self._alpha_params, torch.autograd.grad(alpha_loss, self._alpha_params),
                       None)  # fmt: skip
            out["alpha_loss"] = float(alpha_loss.detach())
        return out

    # ---------------------------------------------------------------------------------------
    # the contract's module lists

    def networks(self) -> dict[str, nn.Module]:
        """Actor, critics, target critics (if any) and the temperature, by name."""
        nets: dict[str, nn.Module] = {"actor": self.actor, "critic": self.critic}
        if self.critic_target is not None:
            nets["critic_target"] = self.critic_target
        nets["temperature"] = self.temperature
        return nets

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``actor_opt``, ``critic_opt`` and ``alpha_opt``."""
        return {
            "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt,
            "alpha_opt": self.alpha_opt,
        }


register("algo", "sac", SACConfig, SAC)
