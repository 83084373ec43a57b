"""Typed schemas of the exploration options (stored in Hydra's ConfigStore by
:func:`rlfw.registry.register`)."""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time
# (``X | None`` and ``list[int]`` need Python >= 3.10, as pyproject says).
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from rlfw.core.checks import in_range, one_of, require


@dataclass
class NoiseConfig:
    """Keys every exploration noise has."""

    name: str = MISSING
    # HER paper: with probability random_eps take a uniformly random action instead.
    random_eps: float = 0.0

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges of these keys (one :class:`rlfw.errors.ConfigError` line)."""
        in_range(node, "random_eps", 0.0, 1.0, prefix="noise.")


@dataclass
class GaussianNoiseConfig(NoiseConfig):
    """a = clip(pi(s) + N(0, sigma^2)), sigma optionally decayed to sigma_final."""

    name: str = "gaussian"
    sigma: float = 0.1  # std, in action units of the [-1, 1] normalised action space
    sigma_final: float | None = None  # None: no decay
    decay_steps: int = 0  # env steps over which sigma goes to sigma_final
    schedule: str = "linear"  # linear, exponential

    @staticmethod
    def validate(node: Any) -> None:
        NoiseConfig.validate(node)
        one_of(node.schedule, ("linear", "exponential"), "noise.schedule")
        in_range(node, "sigma", 0.0, prefix="noise.")
        in_range(node, "decay_steps", 0, prefix="noise.")
        in_range(node, "sigma_final", 0.0, optional=True, prefix="noise.")
        if node.sigma_final is not None and node.schedule == "exponential":
            require(
                node.sigma > 0 and node.sigma_final > 0,
                f"noise.schedule=exponential needs noise.sigma > 0 and noise.sigma_final > 0 "
                f"(got {node.sigma} and {node.sigma_final})",
            )


@dataclass
class OUNoiseConfig(NoiseConfig):
    """Ornstein-Uhlenbeck: dx = theta (mu - x) dt + sigma sqrt(dt) N(0, 1) (Uhlenbeck & Ornstein 1930)."""

    name: str = "ou"
    theta: float = 0.15
    sigma: float = 0.2
    dt: float = 1e-2
    mu: float = 0.0

    @staticmethod
    def validate(node: Any) -> None:
        NoiseConfig.validate(node)
        in_range(node, "theta", 0.0, low_open=True, prefix="noise.")
        in_range(node, "dt", 0.0, low_open=True, prefix="noise.")
        in_range(node, "sigma", 0.0, prefix="noise.")
        in_range(node, "mu", -1.0, 1.0, prefix="noise.")  # the long-run mean, in [-1, 1] action units
        # The Euler-Maruyama step x <- x + theta (mu - x) dt + sigma sqrt(dt) N(0, 1) pulls x
        # past mu when theta * dt > 1 (and diverges beyond 2): dt=1e30 is no OU process.
        require(
            node.theta * node.dt <= 1.0,
            f"noise.dt={node.dt} is out of range: noise.theta * noise.dt must be <= 1 (got "
            f"{node.theta * node.dt:.3g}; the Euler step overshoots the mean beyond it), e.g. noise.dt=0.01",
        )


@dataclass
class NoisyNetConfig(NoiseConfig):
    """NoisyNet (Fortunato et al. 2018): the actor's linear layers become noisy linear layers."""

    name: str = "noisynet"
    factorised: bool = True
    sigma0: float | None = None  # None: the paper's (0.5 factorised, 0.017 independent)
    # when the exploration noise sample is redrawn: step (after every env step), episode (when
    # an episode ends); every update always draws fresh training noise
    resample: str = "step"
    noisy_critic: bool = False

    @staticmethod
    def validate(node: Any) -> None:
        NoiseConfig.validate(node)
        one_of(node.resample, ("step", "episode"), "noise.resample")
        in_range(node, "sigma0", 0.0, optional=True, prefix="noise.")


@dataclass
class NoNoiseConfig(NoiseConfig):
    """``noise=none``: the agent's own actions (stochastic policies explore by sampling);
    ``random_eps`` still applies."""

    name: str = "none"

