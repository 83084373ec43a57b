"""NoisyNet (Fortunato et al. 2018, "Noisy Networks for Exploration").

A noisy linear layer computes ``y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b``
(Eq. 9) with learnable ``mu`` and ``sigma``. Two noise models (Sec. 3.1):

- independent Gaussian: every ``eps_w[i, j]`` and ``eps_b[i]`` drawn from N(0, 1);
- factorised Gaussian: ``eps_w = f(eps_out) f(eps_in)^T`` and ``eps_b = f(eps_out)`` with
  ``f(x) = sgn(x) sqrt(|x|)`` (Eq. 10 and 11), p + q draws instead of p q + q.

Initialisation (Sec. 3.2), ``p`` the input size: independent ``mu ~ U[-sqrt(3/p), sqrt(3/p)]``,
``sigma = 0.017``; factorised ``mu ~ U[-1/sqrt(p), 1/sqrt(p)]``, ``sigma = sigma0 / sqrt(p)``
with ``sigma0 = 0.5``.

How rlfw uses it with DDPG/TD3 (:class:`NoisyNetNoise`, which owns every step of it; the
algorithm knows nothing of NoisyNet):

- layers: once the agent is built, the actor's ``nn.Linear`` layers are swapped for noisy ones
  (with ``noisy_critic``, the fused critic ensemble becomes one MLP of noisy layers per critic)
  and the agent re-makes its targets and optimisers (:meth:`rlfw.algos.base.OffPolicyAgent.set_networks`);
- acting: the actor's noisy layers use the *exploration* noise sample, resampled after every
  env step (``resample=step``) or when an episode ends (``resample=episode``; the sample is
  shared by the parallel envs, so with several envs it changes when any of them finishes);
- evaluation: noise off, the mean weights ``mu`` (the paper's greedy evaluation);
- updates: every gradient step draws fresh noise for the online networks and independent noise
  for the target networks (the paper's treatment of the target network, Alg. 1: ``eps'``);
- TD3's target policy smoothing still applies on top.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from rlfw.core import LinearFactory
from rlfw.errors import ConfigError
from rlfw.noise.action_noise import random_actions
from rlfw.noise.config import NoisyNetConfig
from rlfw.registry import register


def f_scale(x: torch.Tensor) -> torch.Tensor:
    """``f(x) = sgn(x) sqrt(|x|)`` (Fortunato et al. 2018, Sec. 3.1)."""
    return x.sign() * x.abs().sqrt()


class NoisyLinear(nn.Module):
    """A linear layer with learnable Gaussian weight noise.

    Args:
        in_features: p.
        out_features: q.
        factorised: factorised (True) or independent (False) Gaussian noise.
        sigma0: factorised: ``sigma = sigma0 / sqrt(p)`` (default 0.5); independent:
            ``sigma = sigma0`` (default 0.017).

    Shapes: ``[B, p] -> [B, q]``. ``mu_w, sigma_w [q, p]``; ``mu_b, sigma_b [q]``; buffers
    ``eps_w [q, p]``, ``eps_b [q]`` (and ``eps_in [p]``, ``eps_out [q]`` when factorised).
    With ``noise_enabled`` False the layer is ``mu_w x + mu_b``.
    """

    eps_w: torch.Tensor
    eps_b: torch.Tensor
    eps_in: torch.Tensor
    eps_out: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, factorised: bool = True, sigma0: float | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.factorised = in_features, out_features, factorised
        p = in_features
        if factorised:
            sigma0 = 0.5 if sigma0 is None else sigma0
            bound, sigma = 1.0 / math.sqrt(p), sigma0 / math.sqrt(p)
        else:
            sigma0 = 0.017 if sigma0 is None else sigma0
            bound, sigma = math.sqrt(3.0 / p), sigma0
        self.mu_w = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.mu_b = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.sigma_w = nn.Parameter(torch.full((out_features, in_features), sigma))
        self.sigma_b = nn.Parameter(torch.full((out_features,), sigma))
        self.register_buffer("eps_w", torch.zeros(out_features, in_features))
        self.register_buffer("eps_b", torch.zeros(out_features))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.noise_enabled = True
        self.reset_noise()

    @torch.no_grad()
    def reset_noise(self) -> None:
        """Draw new noise (from torch's global generator)."""
        if self.factorised:
            self.eps_in.normal_()
            self.eps_out.normal_()
            fi, fo = f_scale(self.eps_in), f_scale(self.eps_out)
            self.eps_w.copy_(torch.outer(fo, fi))
            self.eps_b.copy_(fo)
        else:
            self.eps_w.normal_()
            self.eps_b.normal_()

    def get_noise(self) -> list[torch.Tensor]:
        """A copy of the current noise sample."""
        return [t.clone() for t in (self.eps_w, self.eps_b, self.eps_in, self.eps_out)]

    @torch.no_grad()
    def set_noise(self, noise: list[torch.Tensor]) -> None:
        """Load a sample returned by :meth:`get_noise`."""
        for t, v in zip((self.eps_w, self.eps_b, self.eps_in, self.eps_out), noise):
            t.copy_(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.noise_enabled:
            return nn.functional.linear(x, self.mu_w, self.mu_b)
        w = self.mu_w + self.sigma_w * self.eps_w
        b = self.mu_b + self.sigma_b * self.eps_b
        return nn.functional.linear(x, w, b)

    def extra_repr(self) -> str:
        kind = "factorised" if self.factorised else "independent"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


def noisy_layers(*modules: nn.Module) -> list[NoisyLinear]:
    """All :class:`NoisyLinear` layers inside ``modules``."""
    return [m for mod in modules for m in mod.modules() if isinstance(m, NoisyLinear)]


class _Member(nn.Module):
    """One noisy critic: ``net`` of ``[linear, activation]*, linear``; ``[B, in] -> [B, 1]``.
    The layout (and so the state-dict keys) of ``rlfw.algos.networks.MLP``."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def _noisy_mlp(sizes: list[int], act: type[nn.Module], make: LinearFactory) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(make(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return _Member(nn.Sequential(*layers))


class NoisyCritics(nn.Module):
    """Noisy critics with the fused ensemble's interface: ``forward(x [B, in]) -> [E, B]``,
    ``first(x) -> [B]`` (member 0, the actor's ``Q_1``). Noisy layers cannot share one fused
    matmul, so each critic is its own MLP. State-dict keys: ``members.<i>.net.<j>.<param>``."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).squeeze(-1) for m in self.members])

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """Member 0 alone: ``[B, in] -> [B]``."""
        return self.members[0](x).squeeze(-1)  # type: ignore[no-any-return]


def swap_linear(module: nn.Module, make: LinearFactory) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by ``make(in_features, out_features)``, in
    place and in module order (the state-dict keys keep their place: ``net.0.weight`` becomes
    ``net.0.mu_w``, ...). Returns ``module``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, make(child.in_features, child.out_features))
    return module


class NoisyNetNoise:
    """Parameter-space exploration (:class:`rlfw.core.Exploration`): noisy actor weights, no
    action noise (``random_eps`` still applies).

    It owns its layers (module docstring): :meth:`attach` swaps them into the built agent's
    ``actor`` (and with ``noisy_critic`` its ``critic``), registers the agent's hooks that pick
    the exploration sample or the mean weights when acting and draw fresh training noise before
    each update, and draws the first exploration sample. After each exploratory step
    (``resample=step``) or at an episode end (``resample=episode``) the sample is redrawn.
    """

    metric_names: tuple[str, ...] = ("noise_sigma",)
    parameter_noise = True

    def __init__(self, cfg: Any, num_envs: int, act_dim: int, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.num_envs, self.act_dim, self.rng = num_envs, act_dim, rng
        self.random_eps = float(cfg.random_eps)
        self.factorised = bool(cfg.factorised)
        self.sigma0 = None if cfg.sigma0 is None else float(cfg.sigma0)
        self.resample_on = str(cfg.resample)
        self.noisy_critic = bool(cfg.noisy_critic)
        self.agent: Any = None
        self._actor_layers: list[NoisyLinear] = []  # the online actor's: acting
        self._all_layers: list[NoisyLinear] = []  # every network's: training noise
        self._explore_noise: list[list[torch.Tensor]] = []

    def _factory(self) -> LinearFactory:
        factorised, sigma0 = self.factorised, self.sigma0
        return lambda i, o: NoisyLinear(i, o, factorised, sigma0)

    def _noisy_critic(self, critic: nn.Module, agent: Any) -> nn.Module:
        """:class:`NoisyCritics` with the sizes and activation of the fused ensemble ``critic``
        (``rlfw.algos.networks.EnsembleMLP``: ``layers`` of ``[E, in, out]`` weights, ``act``)."""
        layers = getattr(critic, "layers", None)
        if layers is None or not hasattr(critic, "act") or getattr(critic, "out_features", None) != 1:
            raise ConfigError(
                f"noise.noisy_critic=true needs a critic ensemble of scalar Q-values; algo={agent.cfg.name}'s "
                f"critic is a {type(critic).__name__}: set noise.noisy_critic=false"
            )
        sizes = [int(layers[0].weight.shape[1]), *(int(layer.weight.shape[2]) for layer in layers)]
        act: type[nn.Module] = type(critic.act)  # type: ignore[assignment]
        return NoisyCritics([_noisy_mlp(sizes, act, self._factory()) for _ in range(int(layers[0].weight.shape[0]))])

    def attach(self, agent: Any) -> None:
        """Swap the noisy layers into ``agent`` (its ``actor``; with ``noisy_critic`` its
        ``critic``), hook its acting and updates, and draw the first exploration sample.

        Raises:
            ConfigError: the agent has no ``actor`` network to perturb, or (``noisy_critic``) no
                ensemble of scalar critics.
        """
        nets = agent.networks()
        if "actor" not in nets or not hasattr(agent, "set_networks"):
            raise ConfigError(
                f"noise=noisynet perturbs a deterministic actor's layers, and algo={agent.cfg.name} has no "
                "actor network it can replace: choose noise=none, gaussian or ou"
            )
        swapped = {"actor": swap_linear(nets["actor"], self._factory())}
        if self.noisy_critic:
            swapped["critic"] = self._noisy_critic(nets["critic"], agent)
        agent.set_networks(swapped)
        nets = agent.networks()
        self._actor_layers = noisy_layers(nets["actor"])
        order = ("actor", "actor_target", "critic", "critic_target")
        self._all_layers = noisy_layers(*(nets[k] for k in order if k in nets))
        agent.pre_act_hooks.append(self._before_act)
        agent.pre_update_hooks.append(self._before_update)
        self.agent = agent
        self.resample()

    def _before_act(self, explore: bool) -> None:
        """Acting: the exploration sample with ``explore``, else (evaluation) the mean weights."""
        for m, noise in zip(self._actor_layers, self._explore_noise):
            m.noise_enabled = explore
            if explore:
                m.set_noise(noise)

    def _before_update(self) -> None:
        """Fresh, independent training noise for the online and the target networks."""
        for m in self._all_layers:
            m.noise_enabled = True
            m.reset_noise()

    def resample(self) -> None:
        """Draw a new exploration sample of the actor's weight noise (kept apart from the
        training noise the updates draw)."""
        for m in self._actor_layers:
            m.reset_noise()
        self._explore_noise = [m.get_noise() for m in self._actor_layers]

    def __call__(self, actions: np.ndarray, env_step: int) -> np.ndarray:
        out = random_actions(np.clip(actions, -1.0, 1.0), self.random_eps, self.rng).astype(np.float32)
        if self.resample_on == "step" and self.agent is not None:
            self.resample()
        return out

    def reset(self, done: np.ndarray) -> None:
        if self.resample_on == "episode" and self.agent is not None and np.any(done):
            self.resample()

    def metrics(self, env_step: int) -> dict[str, float]:
        """``noise_sigma``: mean |sigma_w| of the actor's noisy layers (how much noise is left)."""
        if not self._actor_layers:
            return {}
        return {"noise_sigma": float(torch.cat([m.sigma_w.detach().abs().flatten() for m in self._actor_layers]).mean())}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


register("noise", "noisynet", NoisyNetConfig, NoisyNetNoise)
