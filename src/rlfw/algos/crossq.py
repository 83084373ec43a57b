"""CrossQ (Bhatt et al. 2024, "CrossQ: Batch Normalization in Deep Reinforcement Learning for
Greater Sample Efficiency and Simplicity", ICLR).

SAC without target networks: the critics carry batch renormalisation layers (Ioffe 2017), and
the current and next state-action pairs go through them in one joint forward pass, so the
normalisation statistics are those of the mixture of both (paper Sec. 3, Eq. 4)::

    a', log pi(a'|s') ~ pi(.|s')                                  # actor's norm layers in eval mode
    [Q_j(s, a); Q_j(s', a')] = Q_j([s, a; s', a'])                # critics in train mode, 2B rows
    y   = [reward] + [discount] (1 - [terminated]) (min_j sg(Q_j(s', a')) - alpha log pi(a'|s'))
    L_Q = 1/2 sum_j mean_B([weight] (Q_j(s, a) - y)^2)

Every ``policy_delay`` critic updates (3 in the paper), one actor step with the critics in eval
mode (their running statistics) and the actor's own norm layers, if any, in train mode, and one
temperature step, as SAC. There is no polyak update.

Batch renormalisation of a feature ``x`` over a batch ``[..., B, F]`` (Ioffe 2017, Alg. 1)::

    mu_B, var_B = mean and (biased) variance over B;  sigma_B = sqrt(var_B + eps)
    sigma = sqrt(running_var + eps)
    r = clip(sigma_B / sigma, 1/r_max, r_max),  d = clip((mu_B - running_mean) / sigma, -d_max, d_max)
    x^ = (x - mu_B) / sigma_B * r + d            # r, d without gradient; r=1, d=0 in warmup
    out = weight * x^ + bias
    running_mean += momentum (mu_B - running_mean); running_var += momentum (var_B' - running_var)

``var_B'`` is the unbiased batch variance; the first ``bn_warmup_steps`` training passes are
plain batch normalisation. In eval mode ``x^ = (x - running_mean) / sigma``.

Multi-worker training: the running statistics are averaged over the workers after every
critic (and actor) step through the agent's ``grad_sync`` hook, so the networks stay equal.

Prioritised replay: the update's ``td_error`` is the mean over the critics of ``|Q_j(s, a) - y|``.
``action_l2`` and ``preact_l2`` are SAC's; ``clip_return`` is refused as for SAC. Registers
``algo=crossq``.
"""

# No ``from __future__ import annotations``: OmegaConf reads the schema's annotations at run time.
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rlfw.algos.base import TensorBatch, adam
from rlfw.algos.networks import ACTIVATIONS, INITS, EnsembleLinear
from rlfw.algos.sac import SAC, SACConfig, SquashedGaussianActor
from rlfw.core.checks import in_range
from rlfw.registry import register


@dataclass
class CrossQConfig(SACConfig):
    """Keys of CrossQ: SAC's (no ``tau``/``target_update_interval`` effect: no target networks),
    plus the batch renormalisation. Defaults from the paper's code (``bn_mode='brn_actor'``) and
    sb3-contrib's CrossQ: learning rate 1e-3, Adam beta1 0.5 for actor and critics (the
    temperature's Adam keeps beta1 0.9), policy delay 3, batch renormalisation in the critics and
    the actor, momentum 0.01, r_max 3, d_max 5, warmup 100k. Only the critic width differs."""

    name: str = "crossq"
    policy_delay: int = 3
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    adam_beta1: float = 0.5  # the paper's Adam beta1 for actor and critics (the temperature: 0.9)
    # The paper's critics are 2048 wide (sb3-contrib: 1024); 256 fits a 2-core CPU.
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    # Batch renormalisation in the actor as well: the reference code's bn_mode='brn_actor' and
    # sb3-contrib's default (false before issue 19).
    actor_batch_norm: bool = True
    bn_momentum: float = 0.01  # running-statistics rate (flax's 0.99 = 1 - 0.01)
    bn_eps: float = 1e-3
    bn_r_max: float = 3.0
    bn_d_max: float = 5.0
    bn_warmup_steps: int = 100_000  # training passes of plain batch normalisation first

    @staticmethod
    def validate(node: Any) -> None:
        """SAC's checks and the batch renormalisation's ranges."""
        SACConfig.validate(node)
        p = "algo."
        in_range(node, "adam_beta1", 0.0, 1.0, high_open=True, prefix=p)  # torch.optim.Adam: [0, 1)
        in_range(node, "bn_momentum", 0.0, 1.0, low_open=True, prefix=p)
        in_range(node, "bn_eps", 0.0, low_open=True, prefix=p)
        in_range(node, "bn_r_max", 1.0, prefix=p)
        in_range(node, "bn_d_max", 0.0, prefix=p)
        in_range(node, "bn_warmup_steps", 0, prefix=p)


class BatchRenorm(nn.Module):
    """Batch renormalisation over the second-to-last axis (module docstring; Ioffe 2017).

    Args:
        features: F.
        ensemble: E for inputs ``[E, B, F]`` (statistics per member, ``[E, 1, F]``), or None for
            inputs ``[B, F]`` (statistics ``[1, F]``).
        momentum: as :class:`CrossQConfig`'s ``bn_*`` keys.
        eps: as ``momentum``.
        r_max: as ``momentum``.
        d_max: as ``momentum``.
        warmup_steps: as ``momentum``.

    Buffers: ``running_mean``, ``running_var`` and ``steps`` (training passes so far, float32 so
    that every exchanged tensor is floating point).
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor
    steps: torch.Tensor

    def __init__(self, features: int, ensemble: int | None = None, momentum: float = 0.01, eps: float = 1e-3,
                 r_max: float = 3.0, d_max: float = 5.0, warmup_steps: int = 100_000) -> None:  # fmt: skip
        super().__init__()
        shape = (1, features) if ensemble is None else (ensemble, 1, features)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("steps", torch.zeros(()))
        self.momentum, self.eps, self.r_max, self.d_max = momentum, eps, r_max, d_max
        self.warmup_steps = warmup_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            x_hat = (x - self.running_mean) / (self.running_var + self.eps).sqrt()
            return self.weight * x_hat + self.bias
        mean = x.mean(dim=-2, keepdim=True)
        var = x.var(dim=-2, keepdim=True, unbiased=False)
        std = (var + self.eps).sqrt()
        x_hat = (x - mean) / std
        if float(self.steps) >= self.warmup_steps:
            with torch.no_grad():
                running_std = (self.running_var + self.eps).sqrt()
                r = (std / running_std).clamp(1.0 / self.r_max, self.r_max)
                d = ((mean - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
            x_hat = x_hat * r + d
        with torch.no_grad():
            n = x.shape[-2]
            self.running_mean += self.momentum * (mean - self.running_mean)
            self.running_var += self.momentum * (var * n / max(n - 1, 1) - self.running_var)
            self.steps += 1
        return self.weight * x_hat + self.bias


def renorm_layers(module: nn.Module) -> list[BatchRenorm]:
    """The :class:`BatchRenorm` layers of ``module``."""
    return [m for m in module.modules() if isinstance(m, BatchRenorm)]


class RenormEnsembleCritic(nn.Module):
    """``E`` critics with batch renormalisation: input norm, then ``[linear, activation, norm]``
    per hidden layer, then a linear output (the paper's and sbx's layout).

    Shapes: ``forward(x [B, in]) -> [E, B]``.
    """

    def __init__(self, ensemble: int, in_features: int, hidden: Sequence[int], activation: str, init: str,
                 bn: dict[str, Any]) -> None:  # fmt: skip
        super().__init__()
        sizes = [in_features, *hidden, 1]
        self.ensemble = ensemble
        self.input_norm = BatchRenorm(in_features, ensemble, **bn)
        self.layers: list[EnsembleLinear] = nn.ModuleList(  # type: ignore[assignment]
            EnsembleLinear(ensemble, a, b) for a, b in itertools.pairwise(sizes)
        )
        self.norms: list[BatchRenorm] = nn.ModuleList(
            BatchRenorm(h, ensemble, **bn) for h in hidden
        )  # type: ignore[assignment]
        self.act: nn.Module = ACTIVATIONS.get(activation).target()
        init_fn = INITS.get(init).target
        for i, layer in enumerate(self.layers):
            layer.reset_parameters(init_fn, last=i == len(self.layers) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_norm(x.unsqueeze(0).expand(self.ensemble, *x.shape))
        for layer, norm in zip(self.layers[:-1], self.norms):
            h = norm(self.act(layer(h)))
        return self.layers[-1](h).squeeze(-1)


class CrossQ(SAC):
    """CrossQ (module docstring): SAC's actor and temperature, renormalised critics, no targets.

    Metrics as :class:`SAC`. Arguments as :class:`SAC`.
    """

    has_target_critic = False

    def _bn(self) -> dict[str, Any]:
        c = self.cfg
        return {"momentum": float(c.bn_momentum), "eps": float(c.bn_eps), "r_max": float(c.bn_r_max),
                "d_max": float(c.bn_d_max), "warmup_steps": int(c.bn_warmup_steps)}  # fmt: skip

    def make_actor(self) -> SquashedGaussianActor:
        """The squashed Gaussian policy, with batch renormalisation if ``actor_batch_norm``."""
        c = self.cfg
        bn = self._bn()
        norm = (lambda f: BatchRenorm(f, None, **bn)) if c.actor_batch_norm else None
        actor = SquashedGaussianActor(self.in_dim, self.act_dim, list(c.actor_hidden), c.activation, c.init,
                                      norm=norm)  # fmt: skip
        return actor.eval()  # acting uses the running statistics; actor_step switches to train

    def make_critic(self) -> nn.Module:
        c = self.cfg
        critic = RenormEnsembleCritic(self.n_critics, self.in_dim + self.act_dim, list(c.critic_hidden),
                                      c.activation, c.init, self._bn())  # fmt: skip
        return critic.eval()  # train mode only inside the joint forward pass

    def make_optimizer(self, params: Any, lr: float) -> torch.optim.Optimizer:
        """The actor's and critics' Adam with ``betas=(adam_beta1, 0.999)`` (the paper's 0.5); the
        temperature's keeps Adam's default betas (:meth:`SAC.make_alpha_optimizer`)."""
        return adam(params, lr, betas=(float(self.cfg.adam_beta1), 0.999))

    def critic_loss(self, b: TensorBatch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_Q, td_error [B], q_mean)`` from one joint forward pass (module docstring)."""
        n = b.obs_in.shape[0]
        with torch.no_grad():  # the actor is in eval mode outside actor_step
            next_a, next_logp, _ = self.actor.sample(b.next_in, self.generator)
        self.critic.train()
        q_all = self.critic(
            torch.cat([torch.cat([b.obs_in, b.action], -1), torch.cat([b.next_in, next_a], -1)])
        )
        self.critic.eval()
        q, q_next = q_all[:, :n], q_all[:, n:].detach()  # [E, B] each
        with torch.no_grad():
            bootstrap = b.discount * (1.0 - b.terminated)
            y = self.soft_bootstrap(b.reward, bootstrap, q_next.min(dim=0).values, alpha * next_logp)
        td = q - y
        loss = 0.5 * (b.weight * td.square()).mean(dim=1).sum()
        return loss, td.detach().abs().mean(dim=0), q[0].detach().mean()

    def after_critic_step(self) -> None:
        """No targets; average the critics' running statistics over workers (if any)."""
        self._sync_stats(self.critic)

    def actor_step(self, obs_in: torch.Tensor, alpha: torch.Tensor) -> dict[str, float]:
        """SAC's actor and temperature step, the critics in eval mode, the actor in train mode."""
        self.critic.eval()
        self.actor.train()
        out = super().actor_step(obs_in, alpha)
        self.actor.eval()
        self._sync_stats(self.actor)
        return out

    def _sync_stats(self, module: nn.Module) -> None:
        if self.grad_sync is None:
            return
        stats = [
            s for layer in renorm_layers(module) for s in (layer.running_mean, layer.running_var)
        ]
        if stats:
            self.grad_sync(stats)


register("algo", "crossq", CrossQConfig, CrossQ)
