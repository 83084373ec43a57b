"""The config base every algorithm's schema extends (:class:`AlgoConfig`): the keys DDPG, TD3,
SAC, TQC and CrossQ all have, declared once, and their checks. Each algorithm's schema lives
in its own module (:mod:`rlfw.algos.td3`, :mod:`rlfw.algos.sac`, ...) and overrides the
defaults it differs in; Hydra's ConfigStore gets them from :func:`rlfw.registry.register`."""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time
# (``X | None`` and ``list[int]`` need Python >= 3.10, as pyproject says).
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from rlfw.core.checks import in_range, one_of, require

# algo.lr_schedule's options (rlfw.algos.base.lr_factor)
LR_SCHEDULES = ("constant", "linear", "cosine")

# Widest hidden layer accepted: a 65536 x 65536 float32 layer alone is 16 GiB.
MAX_LAYER = 2**16


@dataclass
class AlgoConfig:
    """Keys every algorithm has, with TD3's defaults (the default algorithm); a subclass
    overrides the defaults it differs in (SAC: learning rates 3e-4, 2x256 networks,
    ``preact_l2`` 0, ``policy_delay`` 1) and adds its own keys. :class:`rlfw.algos.base.OffPolicyAgent`
    reads them.

    Sources: Lillicrap et al. 2016 (DDPG), Fujimoto et al. 2018 (TD3, Alg. 1), Andrychowicz et
    al. 2017 (HER: ``action_l2``, observation normalisation, ``clip_return``).
    """

    name: str = MISSING
    gamma: float = 0.99  # discount factor, in (0, 1]
    tau: float = 0.005  # polyak coefficient: target <- tau * online + (1 - tau) * target
    n_critics: int = 2  # critics in the clipped double-Q minimum (DDPG: 1)
    policy_delay: int = 2  # actor (and target) updates once every policy_delay critic updates
    action_l2: float = 0.0  # HER paper's penalty on the squared actor output
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
    # Clip the critic target to [-1/(1-gamma), 0] (HER baselines' clip_return), valid for rewards
    # in [-1, 0] (Fetch and Panda). null: the algorithm decides (OffPolicyAgent.clips_return):
    # ddpg and td3 clip where the env family bounds rewards to [-1, 0]; sac, tqc, crossq never.
    clip_return: bool | None = None
    max_grad_norm: float | None = None  # gradient-norm clipping of every loss, None: off
    # Learning-rate schedule over the run's train.epochs (every optimiser, the temperature's
    # included, as Stable-Baselines3 applies its schedule): constant, linear (rl-zoo's "lin_"),
    # cosine (Loshchilov & Hutter 2017, SGDR Eq. 5 without restarts). lr_end_factor: the
    # fraction of each initial rate reached at the run's last env step.
    lr_schedule: str = "constant"
    lr_end_factor: float = 0.0

    @staticmethod
    def validate(node: Any) -> None:
        """The keys every algorithm has: ``gamma``, ``tau``, the learning rates, the penalties,
        the layer sizes, the normaliser's ``norm_clip``/``norm_eps``, ``max_grad_norm``,
        ``lr_schedule`` (and an agent that can anneal: ``set_progress``) with ``lr_end_factor``,
        ``activation`` and ``init`` (``n_critics`` and ``policy_delay``: each algorithm's own
        ranges). A subclass's ``validate`` calls this first.

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
        one_of(node.lr_schedule, LR_SCHEDULES, "algo.lr_schedule")
        in_range(node, "lr_end_factor", 0.0, 1.0, prefix=p)
        if node.lr_schedule != "constant":  # an agent from another package may not anneal its rates
            agent_cls = registry("algo").get(node.name).target
            require(
                callable(getattr(agent_cls, "set_progress", None)),
                f"algo.lr_schedule={node.lr_schedule} needs an agent with set_progress(progress) "
                f"(rlfw.algos.base.OffPolicyAgent has it); {agent_cls.__name__} (algo={node.name}) has none: "
                "use algo.lr_schedule=constant",
            )
        registry("algo.activation").check(node.activation)
        registry("algo.init").check(node.init)
