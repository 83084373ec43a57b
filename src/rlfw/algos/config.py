"""Typed schemas of DDPG and TD3 (stored in Hydra's ConfigStore by :func:`rlfw.registry.register`)."""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time
# (``X | None`` and ``list[int]`` need Python >= 3.10, as pyproject says).
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from rlfw.core.checks import in_range, require

# Widest hidden layer accepted: a 65536 x 65536 float32 layer alone is 16 GiB.
MAX_LAYER = 2**16


def validate_shared(node: Any) -> None:
    """The keys every algorithm has (DDPG, TD3, SAC, TQC, CrossQ): ``gamma``, ``tau``, the
    learning rates, the penalties, the layer sizes, ``activation`` and ``init``.

    Raises:
        ConfigError: one line naming the first key out of range or unknown.
    """
    from rlfw.registry import registry

    p = "algo."
    in_range(node, "gamma", 0.0, 1.0, low_open=True, prefix=p)
    in_range(node, "tau", 0.0, 1.0, low_open=True, prefix=p)
    for key in ("action_l2", "preact_l2"):
        in_range(node, key, 0.0, prefix=p)
    # Adam's step is lr * m / sqrt(v): an infinite or zero rate is no training at all
    in_range(node, "actor_lr", 0.0, low_open=True, prefix=p)
    in_range(node, "critic_lr", 0.0, low_open=True, prefix=p)
    for key in ("actor_hidden", "critic_hidden"):
        require(
            len(node[key]) >= 1 and all(0 < int(h) <= MAX_LAYER for h in node[key]),
            f"algo.{key}={list(node[key])} must be a non-empty list of layer sizes in [1, {MAX_LAYER}]",
        )
    # The normaliser clips (x - mean) / max(std, norm_eps) to [-norm_clip, norm_clip]: a clip
    # <= 0 maps every input to 0 (or flips it), an eps <= 0 divides by a zero std.
    in_range(node, "norm_clip", 0.0, low_open=True, prefix=p)
    in_range(node, "norm_eps", 0.0, low_open=True, prefix=p)
    # torch.nn.utils.clip_grad_norm_ scales by max_norm / norm: a negative bound flips every
    # gradient, 0 zeroes them; null switches clipping off.
    in_range(node, "max_grad_norm", 0.0, low_open=True, optional=True, prefix=p)
    registry("algo.activation").check(node.activation)
    registry("algo.init").check(node.init)


@dataclass
class ActorCriticConfig:
    """Keys shared by DDPG and TD3 (one actor-critic core; see rlfw.algos.actor_critic).

    Sources: Lillicrap et al. 2016 (DDPG), Fujimoto et al. 2018 (TD3, Alg. 1), Andrychowicz et
    al. 2017 (HER: ``action_l2``, observation normalisation, ``clip_return``).
    """

    name: str = MISSING
    gamma: float = 0.99  # discount factor, in (0, 1]
    tau: float = 0.005  # polyak coefficient: target <- tau * online + (1 - tau) * target
    n_critics: int = 2  # 1: DDPG, 2: TD3's clipped double-Q (min over the twins)
    policy_delay: int = 2  # actor and target updates once every policy_delay critic updates
    target_noise: float = 0.2  # std of target policy smoothing noise, in action units [-1, 1]
    target_noise_clip: float = 0.5  # smoothing noise is clipped to [-c, c]
    action_l2: float = 0.0  # HER paper's penalty on the squared pre-scaling actor output
    # Penalty on the squared pre-tanh actor output u (pi = tanh(u)): keeps the actor out of
    # tanh's flat tails, where d tanh/du ~ 4 exp(-2|u|) vanishes and the actor can never leave
    # a saturated corner (measured on Hopper-v4: |u| reached 25-35 within the first 1000
    # updates and stayed there). A mean over batch and action dimensions: rlkit's
    # policy_pre_activation_weight sums over the A action dimensions, so this is rlkit's weight
    # divided by A. 0: off.
    preact_l2: float = 1e-3
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    actor_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    activation: str = "relu"  # relu, leaky_relu, tanh, elu, gelu, silu
    init: str = "default"  # default (PyTorch's), he_normal, orthogonal, xavier_uniform
    # Running mean/std normalisation of observations and goals (HER paper). None: on for goal
    # envs, off otherwise.
    normalize: bool | None = None
    norm_clip: float = 5.0  # normalised inputs are clipped to [-norm_clip, norm_clip]
    norm_eps: float = 0.01  # lower bound on the running std
    # Clip the critic target to [-1/(1-gamma), 0], valid for the {-1, 0} sparse rewards of
    # Fetch and Panda (HER baselines' clip_return).
    clip_return: bool = False
    max_grad_norm: float | None = None  # gradient-norm clipping for both losses, None: off

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges and names of these keys (one :class:`rlfw.errors.ConfigError` line)."""
        validate_shared(node)
        p = "algo."
        require(
            node.n_critics in (1, 2),
            f"algo.n_critics={node.n_critics} is not allowed; choose 1 or 2",
        )
        in_range(node, "policy_delay", 1, prefix=p)
        for key in ("target_noise", "target_noise_clip"):
            in_range(node, key, 0.0, prefix=p)  # in [-1, 1] action units; finite


@dataclass
class TD3Config(ActorCriticConfig):
    """TD3 (Fujimoto et al. 2018): twin critics, target smoothing, delayed actor updates."""

    name: str = "td3"


@dataclass
class DDPGConfig(ActorCriticConfig):
    """DDPG (Lillicrap et al. 2016): TD3's core with one critic, no smoothing, no delay."""

    name: str = "ddpg"
    n_critics: int = 1
    policy_delay: int = 1
    target_noise: float = 0.0
    target_noise_clip: float = 0.0
