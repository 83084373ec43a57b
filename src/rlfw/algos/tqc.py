"""Truncated Quantile Critics (Kuznetsov et al. 2020, "Controlling Overestimation Bias with
Truncated Mixture of Continuous Distributional Quantile Critics").

``N = n_critics`` critics of ``M = n_quantiles`` quantiles each; SAC's actor and temperature.
With ``d = top_quantiles_to_drop_per_net`` and ``B`` the batch::

    a', log pi(a'|s') ~ pi(.|s')
    z     = sort(pool_n {theta'_n^m(s', a')})[: k N]        # k = M - d: drop the d N largest
    y_i   = [reward] + [discount] (1 - [terminated]) (z_i - alpha log pi(a'|s'))   # kN atoms
    L_Z   = sum_n mean_B([weight] 1/(kNM) sum_{m, i} rho_{tau_m}(y_i - theta_n^m(s, a)))  # Eq. 10
    rho_tau(u) = |tau - 1{u < 0}| * huber(u),  huber(u) = u^2/2 if |u| <= 1 else |u| - 1/2
    tau_m = (2m - 1) / (2M)                                  # quantile midpoints, m = 1..M
    L_pi  = mean_B(alpha log pi(a~|s) - 1/(NM) sum_{n, m} theta_n^m(s, a~))        # Eq. 11

The target critics follow the online ones by polyak averaging with ``tau``. sb3-contrib's TQC
averages the quantile Huber loss over everything, the N critics included
(``quantile_huber_loss(..., sum_over_quantiles=False)``), so ``L_Z`` here, a sum over the critics
of the per-critic mean, is N times its loss; Adam's step is invariant to that constant factor
(up to its epsilon), and this module keeps the paper's per-critic sum.

Prioritised replay: the update's ``td_error`` is each sample's quantile Huber loss averaged over the
critics, ``1/N sum_n 1/(kM) sum_{m, i} rho_{tau_m}(y_i - theta_n^m)`` (the distributional loss
as priority, as in Rainbow; Hessel et al. 2018).

``action_l2`` and ``preact_l2`` are SAC's; ``clip_return`` is refused as for SAC.
This module registers ``algo=tqc``.
"""

# No ``from __future__ import annotations``: OmegaConf reads the schema's annotations at run time.
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlfw.algos.base import TensorBatch
from rlfw.algos.networks import EnsembleMLP
from rlfw.algos.sac import SAC, SACConfig
from rlfw.core.checks import in_range, require
from rlfw.registry import register


@dataclass
class TQCConfig(SACConfig):
    """Keys of TQC: SAC's, plus the quantile critics (paper's defaults for MuJoCo: 5 critics of
    25 quantiles, 2 dropped per critic; sb3-contrib's: 2 critics)."""

    name: str = "tqc"
    n_critics: int = 2  # N
    n_quantiles: int = 25  # M, quantiles per critic
    top_quantiles_to_drop_per_net: int = 2  # d: d * N of the N * M pooled target atoms dropped

    @staticmethod
    def validate(node: Any) -> None:
        """SAC's checks, and ``0 <= top_quantiles_to_drop_per_net < n_quantiles``."""
        SACConfig.validate(node)
        in_range(node, "n_quantiles", 1, 1000, prefix="algo.")  # the paper: 25; memory grows with it
        in_range(node, "top_quantiles_to_drop_per_net", 0, prefix="algo.")
        require(
            node.top_quantiles_to_drop_per_net < node.n_quantiles,
            f"algo.top_quantiles_to_drop_per_net={node.top_quantiles_to_drop_per_net} must be smaller "
            f"than algo.n_quantiles={node.n_quantiles} (some target atoms must be left)",
        )


def quantile_huber_loss(theta: torch.Tensor, y: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """Per-sample quantile Huber loss ``[N, B]``, averaged over the quantiles and target atoms.

    Args:
        theta: ``[N, B, M]`` the critics' quantiles at ``(s, a)``.
        y: ``[B, K]`` target atoms (no gradient flows into them).
        kappa: the Huber threshold (1 in the paper).

    Returns:
        ``[N, B]``: ``1/(MK) sum_{m, i} |tau_m - 1{u < 0}| huber_kappa(u) / kappa`` with
        ``u = y_i - theta^m`` and ``tau_m = (2m - 1) / (2M)`` (Dabney et al. 2018, QR-DQN Eq. 10;
        TQC Eq. 10).
    """
    m = theta.shape[-1]
    u = y.detach()[None, :, None, :] - theta[..., None]  # [N, B, M, K]
    abs_u = u.abs()
    huber = torch.where(abs_u <= kappa, 0.5 * u.square(), kappa * (abs_u - 0.5 * kappa))
    tau = (torch.arange(m, device=theta.device, dtype=theta.dtype) + 0.5) / m  # [M]
    rho = (tau[:, None] - (u < 0).to(theta.dtype)).abs() * huber / kappa
    return rho.mean(dim=(-2, -1))


class TQC(SAC):
    """TQC (module docstring): SAC with truncated quantile critics.

    :meth:`update` returns SAC's metrics; ``q_mean`` is the mean over the first critic's
    quantiles at ``(s, a)`` and ``critic_loss`` is ``L_Z``. Arguments as :class:`SAC`.
    """

    def make_critic(self) -> nn.Module:
        """``n_critics`` quantile critics: ``[B, in + A] -> [N, B, M]``."""
        c = self.cfg
        return EnsembleMLP(self.n_critics, self.in_dim + self.act_dim, list(c.critic_hidden), c.activation, c.init,
                           out_features=int(c.n_quantiles))  # fmt: skip

    @torch.no_grad()
    def quantile_target(self, next_in: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor,
                        discount: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The truncated target atoms ``y [B, kN]`` (module docstring), sorted ascending."""
        next_a, next_logp, _ = self.actor.sample(next_in, self.generator)
        z = self.critic_target(torch.cat([next_in, next_a], dim=-1))  # type: ignore[misc]  # [N, B, M]
        n, b, m = z.shape
        keep = (m - int(self.cfg.top_quantiles_to_drop_per_net)) * n
        z = z.permute(1, 0, 2).reshape(b, n * m).sort(dim=1).values[:, :keep]
        bootstrap = (discount * (1.0 - terminated))[:, None]
        return self.soft_bootstrap(reward[:, None], bootstrap, z, alpha * next_logp[:, None])

    def critic_loss(self, b: TensorBatch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_Z, per-sample quantile loss [B], q_mean)`` (module docstring)."""
        y = self.quantile_target(b.next_in, b.reward, b.terminated, b.discount, alpha)
        theta = self.critic(torch.cat([b.obs_in, b.action], dim=-1))  # [N, B, M]
        per_sample = quantile_huber_loss(theta, y)  # [N, B]
        loss = (b.weight * per_sample).mean(dim=1).sum()
        return loss, per_sample.detach().mean(dim=0), theta[0].detach().mean()

    def policy_value(self, obs_in: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The mean over every critic's quantiles at ``(s, a)``: ``[B]`` (paper Eq. 11)."""
        return self.critic(torch.cat([obs_in, action], dim=-1)).mean(dim=(0, 2))  # type: ignore[no-any-return]


register("algo", "tqc", TQCConfig, TQC)
