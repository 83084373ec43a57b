"""TD3 (Fujimoto et al. 2018, Algorithm 1) and DDPG (Lillicrap et al. 2016), its special case.

TD3 is a deterministic actor ``pi(s) = tanh(u(s))`` with twin critics: the clipped double-Q
target, target policy smoothing and delayed actor updates. DDPG is the case
``n_critics=1, policy_delay=1, target_noise=0`` (:class:`DDPG`, :class:`DDPGConfig`). The HER
paper's action L2 penalty, input normalisation and return clipping (Andrychowicz et al. 2017,
Appendix A) are options.

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

Prioritised replay: the update's ``td_error`` is the mean over critics of ``|Q_j(s, a) - y|``
(both critics are trained on the sample, so their mean error measures what is left to learn
from it).

"TD3 + X" overrides the template methods, as TQC does SAC's: :meth:`TD3.make_actor`,
:meth:`TD3.make_critic`, :meth:`TD3.make_optimizer`, :meth:`TD3.critic_target_value`,
:meth:`TD3.critic_loss`, :meth:`TD3.actor_loss`, :meth:`TD3.after_actor_step`.

This module registers ``algo=td3`` and ``algo=ddpg``.
"""

# No ``from __future__ import annotations``: OmegaConf reads the schemas' annotations at run time.
import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlfw.algos.base import OffPolicyAgent, TensorBatch, adam, polyak_update
from rlfw.algos.config import AlgoConfig
from rlfw.algos.networks import MLP, EnsembleMLP
from rlfw.core import EnvInfo, UpdateResult
from rlfw.core.checks import in_range, require
from rlfw.registry import register


@dataclass
class TD3Config(AlgoConfig):
    """Keys of TD3 (Fujimoto et al. 2018): :class:`AlgoConfig`'s (twin critics, policy delay 2,
    3x256 networks, learning rates 1e-3, ``preact_l2`` 1e-3) and the target policy smoothing."""

    name: str = "td3"
    target_noise: float = 0.2  # std of target policy smoothing noise, in action units [-1, 1]
    target_noise_clip: float = 0.5  # smoothing noise is clipped to [-c, c]
    # Act deterministically (evaluation, best.pt's figures, rlfw.load, export) with the target
    # actor, the Polyak average of the actor (an exponential moving average with rate tau per
    # actor update), instead of the actor itself: the averaged weights smooth the late-training
    # swings of the deterministic policy. Exploration still uses the actor.
    act_with_target: bool = False

    @staticmethod
    def validate(node: Any) -> None:
        """:class:`AlgoConfig`'s checks, ``n_critics`` in {1, 2}, ``policy_delay >= 1`` and the
        smoothing noise (one :class:`rlfw.errors.ConfigError` line)."""
        AlgoConfig.validate(node)
        p = "algo."
        require(
            node.n_critics in (1, 2),
            f"algo.n_critics={node.n_critics} is not allowed; choose 1 or 2",
        )
        in_range(node, "policy_delay", 1, prefix=p)
        for key in ("target_noise", "target_noise_clip"):
            in_range(node, key, 0.0, prefix=p)  # in [-1, 1] action units; finite

    @staticmethod
    def validate_with(cfg: Any) -> None:
        """``act_with_target`` averages the actor's weights, which NoisyNet perturbs per layer."""
        require(
            not (bool(cfg.algo.get("act_with_target", False)) and cfg.noise.name == "noisynet"),
            "algo.act_with_target=true acts with the averaged actor, and noise=noisynet swaps the actor's "
            "layers for noisy ones: choose one of them",
        )


@dataclass
class DDPGConfig(TD3Config):
    """DDPG (Lillicrap et al. 2016): TD3 with one critic, no smoothing, no delay."""

    name: str = "ddpg"
    n_critics: int = 1
    policy_delay: int = 1
    target_noise: float = 0.0
    target_noise_clip: float = 0.0


class TD3(OffPolicyAgent):
    """TD3 (module docstring): actor, critic ensemble, targets, optimisers and normalisers.

    Implements the :class:`rlfw.core.Agent` contract. :meth:`update` returns the metrics
    ``critic_loss`` (summed over the critics), ``q_mean`` (mean ``Q_1(s, a)``) and, on steps
    with an actor update, ``actor_loss``, and the ``td_error [B]`` (module docstring).

    Args:
        cfg: a :class:`TD3Config` or :class:`DDPGConfig` (or DictConfig of one).
        env: observation, goal and action sizes.
        device: torch device for the networks.
        seed: seeds the target-smoothing noise generator.

    Actions are in the normalised space [-1, 1] everywhere. Checkpoint keys: ``actor``,
    ``critic``, ``actor_target``, ``critic_target``, ``actor_opt``, ``critic_opt``.
    """

    actor_methods = ("forward_pre",)
    critic_methods = ("first",)

    metric_names: tuple[str, ...] = ("actor_loss", "critic_loss", "q_mean")
    clips_return = True  # algo.clip_return: null clips on [-1, 0] rewards (HER baselines)

    def __init__(self, cfg: Any, env: EnvInfo, device: str | torch.device = "cpu", seed: int = 0) -> None:
        super().__init__(cfg, env, device, seed)
        self.policy_delay = int(cfg.policy_delay)
        self.target_noise = float(cfg.target_noise)
        self.target_noise_clip = float(cfg.target_noise_clip)
        self.n_critics = int(cfg.n_critics)
        self.actor: nn.Module = self.make_actor().to(self.device)
        self.critic: nn.Module = self.make_critic().to(self.device)
        self.check_networks()
        self.setup()

    # ---------------------------------------------------------------------------------------
    # what subclasses change

    def make_actor(self) -> nn.Module:
        """The deterministic actor ``tanh(u(s))``: a module with ``forward(x [B, in]) -> [B, A]``
        and ``forward_pre(x) -> (u [B, A], tanh(u) [B, A])`` (the actor loss penalises ``u``,
        ``algo.action_l2``); :class:`MLP` has both. Checked when the agent is built
        (:attr:`actor_methods`)."""
        c = self.cfg
        return MLP(self.in_dim, self.act_dim, list(c.actor_hidden), c.activation, c.init,
                   output_activation=nn.Tanh())  # fmt: skip

    def make_critic(self) -> nn.Module:
        """The critic ensemble: ``forward([B, in + A]) -> [n_critics, B]`` and ``first(x) -> [B]``
        for ``Q_1`` (the actor's loss); :class:`EnsembleMLP` has both. Checked when the agent is
        built (:attr:`critic_methods`)."""
        c = self.cfg
        return EnsembleMLP(self.n_critics, self.in_dim + self.act_dim, list(c.critic_hidden), c.activation, c.init)

    def make_optimizer(self, params: Any, lr: float) -> torch.optim.Optimizer:
        """The actor's and critics' optimiser: Adam (Kingma & Ba 2015) with its default betas."""
        return adam(params, lr)

    def setup(self) -> None:
        """Targets (copies of the online networks), optimisers and the update's parameter lists."""
        c = self.cfg
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = self.make_optimizer(self.actor.parameters(), float(c.actor_lr))
        self.critic_opt = self.make_optimizer(self.critic.parameters(), float(c.critic_lr))
        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.actor_target.parameters()) + list(self.critic_target.parameters())
        self._online_params = self._actor_params + self._critic_params

    @torch.no_grad()
    def critic_target_value(self, next_in: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor,
                            discount: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The bootstrapped target ``y [B]`` (module docstring; TD3 Eq. 10 with smoothing Eq. 14)."""
        next_a = self.actor_target(next_in)
        if self.target_noise > 0.0:
            noise = torch.randn(next_a.shape, generator=self.generator, device=self.device)
            noise = (noise * self.target_noise).clamp(-self.target_noise_clip, self.target_noise_clip)
            next_a = (next_a + noise).clamp(-1.0, 1.0)
        q_next = self.critic_target(torch.cat([next_in, next_a], dim=-1)).min(dim=0).values
        y = reward + discount * (1.0 - terminated) * q_next
        if self.clip_return:
            y = y.clamp(self.return_low, 0.0)
        return y

    def critic_loss(self, b: TensorBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_Q, td_error [B], q_mean)`` for one batch (module docstring)."""
        y = self.critic_target_value(b.next_in, b.reward, b.terminated, b.discount)
        q = self.critic(torch.cat([b.obs_in, b.action], dim=-1))  # [E, B]
        td = q - y
        loss = (b.weight * td.square()).mean(dim=1).sum()
        return loss, td.detach().abs().mean(dim=0), q[0].detach().mean()

    def actor_loss(self, obs_in: torch.Tensor) -> torch.Tensor:
        """``L_pi`` (module docstring): ``-mean Q_1(s, pi(s))`` plus the HER penalties."""
        pre, pi = self.actor.forward_pre(obs_in)  # type: ignore[operator]
        loss = -self.critic.first(torch.cat([obs_in, pi], dim=-1)).mean()  # type: ignore[operator]
        if self.action_l2 > 0.0:
            loss = loss + self.action_l2 * pi.square().mean()
        if self.preact_l2 > 0.0:
            loss = loss + self.preact_l2 * pre.square().mean()
        return loss  # type: ignore[no-any-return]

    def after_actor_step(self) -> None:
        """Polyak averaging of the actor's and critics' targets."""
        polyak_update(self._target_params, self._online_params, self.tau)

    # ---------------------------------------------------------------------------------------
    # acting and learning

    @property
    def eval_actor(self) -> nn.Module:
        """The network that acts deterministically: ``actor_target`` with
        ``algo.act_with_target``, else ``actor`` (evaluation, :func:`rlfw.load`, export)."""
        return self.actor_target if bool(getattr(self.cfg, "act_with_target", False)) else self.actor

    def export_actor(self) -> tuple[nn.Sequential, int | None]:
        """:attr:`eval_actor`'s layers (an :class:`rlfw.algos.networks.MLP` ending in tanh).

        Raises:
            NotImplementedError: an actor from :meth:`make_actor` that is not such an MLP.
        """
        from rlfw.algos.networks import MLP

        actor = self.eval_actor
        if not (isinstance(actor, MLP) and isinstance(actor.output_activation, nn.Tanh)):
            raise NotImplementedError(f"cannot export an actor of type {type(actor).__name__}: override export_actor()")
        return actor.net, None

    def actions(self, x: torch.Tensor, explore: bool) -> torch.Tensor:
        """``pi(s)`` of the actor when exploring (the noise is added by the exploration), of
        :attr:`eval_actor` otherwise."""
        return (self.actor if explore else self.eval_actor)(x)  # type: ignore[no-any-return]

    def gradient_step(self, b: TensorBatch) -> UpdateResult:
        """One critic step and, every ``policy_delay`` steps, one actor step and target update."""
        critic_loss, td, q_mean = self.critic_loss(b)
        self._minimize(self.critic_opt, self._critic_params, critic_loss, self.max_grad_norm)
        self.updates += 1
        metrics: dict[str, float] = {}
        if self.updates % self.policy_delay == 0:
            actor_loss = self.actor_loss(b.obs_in)
            # gradients for the actor only: the critic's weight gradients are never formed
            grads = torch.autograd.grad(actor_loss, self._actor_params)
            self._step(self.actor_opt, self._actor_params, grads, self.max_grad_norm)
            self.after_actor_step()
            metrics["actor_loss"] = float(actor_loss.detach())
        metrics["critic_loss"] = float(critic_loss.detach())
        metrics["q_mean"] = float(q_mean)
        return UpdateResult(metrics, td.cpu().numpy())

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


class DDPG(TD3):
    """DDPG (Lillicrap et al. 2016): :class:`TD3` run with :class:`DDPGConfig`'s one critic, no
    target smoothing and no delay (the min over one critic is that critic)."""


register("algo", "td3", TD3Config, TD3)
register("algo", "ddpg", DDPGConfig, DDPG)
