"""Typed schemas of every config group, stored in Hydra's ConfigStore.

Each option file in ``conf/<group>/`` starts with ``defaults: [<name>_schema, _self_]`` so that
a misspelt key or a wrongly typed value fails at compose time and names the key. Values that
are only known at run time (observation shapes, ``compute_reward``) are never typed into YAML;
the runner passes them to the components it builds.

The root :class:`Config` types ``env``, ``buffer``, ``train``, ``eval`` and ``logger`` directly;
``algo`` and ``noise`` are typed by the schema their chosen option file names, so that keys
that belong to one option (``noise.theta`` for OU) live only in that option's schema and a sweep
``noise=gaussian,ou`` never trips over a key the other option lacks.
"""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time
# (``X | None`` and ``list[int]`` need Python >= 3.10, as pyproject says).
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# --------------------------------------------------------------------------------------------
# algo


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
    # updates and stayed there). rlkit's policy_pre_activation_weight. 0: off.
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


# --------------------------------------------------------------------------------------------
# buffer


@dataclass
class BufferConfig:
    """One replay schema with orthogonal parts; the presets in conf/buffer set some of them.

    ``relabel`` (none, her) x ``sampler`` (uniform, prioritized) x ``n_step`` (>= 1).
    """

    name: str = "uniform"  # the preset's name, for run names and logs only
    capacity: int = 1_000_000  # transitions kept (over all parallel envs)
    relabel: str = "none"  # none, her
    strategy: str = "future"  # HER goal strategy: future, final, episode
    replay_k: float = 4.0  # HER: relabel with probability 1 - 1 / (1 + replay_k)
    sampler: str = "uniform"  # uniform, prioritized
    alpha: float = 0.6  # PER: P(i) = p_i^alpha / sum_k p_k^alpha
    beta0: float = 0.4  # PER: importance-sampling exponent at the first update
    beta_final_step: int | None = None  # env step at which beta reaches 1 (None: run's end)
    priority_eps: float = 1e-6  # PER: p_i = |td_error| + priority_eps
    n_step: int = 1  # n-step returns; 1 is the one-step TD target


# --------------------------------------------------------------------------------------------
# noise


@dataclass
class NoiseConfig:
    """Keys every exploration noise has."""

    name: str = MISSING
    # HER paper: with probability random_eps take a uniformly random action instead.
    random_eps: float = 0.0


@dataclass
class GaussianNoiseConfig(NoiseConfig):
    """a = clip(pi(s) + N(0, sigma^2)), sigma optionally decayed to sigma_final."""

    name: str = "gaussian"
    sigma: float = 0.1  # std, in action units of the [-1, 1] normalised action space
    sigma_final: float | None = None  # None: no decay
    decay_steps: int = 0  # env steps over which sigma goes to sigma_final
    schedule: str = "linear"  # linear, exponential


@dataclass
class OUNoiseConfig(NoiseConfig):
    """Ornstein-Uhlenbeck: dx = theta (mu - x) dt + sigma sqrt(dt) N(0, 1) (Uhlenbeck & Ornstein 1930)."""

    name: str = "ou"
    theta: float = 0.15
    sigma: float = 0.2
    dt: float = 1e-2
    mu: float = 0.0


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


# --------------------------------------------------------------------------------------------
# env, train, eval, logger, root


@dataclass
class EnvConfig:
    """The environment. ``family`` picks the adapter (rlfw.envs.families); ``id`` any Gymnasium id."""

    family: str = "gym"  # fetch, panda, gym
    id: str = MISSING
    max_episode_steps: int | None = None  # None: the registered TimeLimit
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make
    vectorization: str = "sync"  # sync, async (gymnasium.vector)


@dataclass
class TrainConfig:
    """The runner's schedule: epochs x cycles x (collect steps_per_cycle, run updates_per_cycle)."""

    epochs: int = 10
    cycles_per_epoch: int = 10
    steps_per_cycle: int = 100  # env steps per cycle, counted over all parallel envs
    updates_per_cycle: int = 40
    batch_size: int = 256
    learning_starts: int = 0  # env steps of uniform random actions before the policy acts
    num_envs: int = 2  # parallel envs for collection
    device: str = "cpu"  # cpu, cuda, auto
    torch_threads: int = 0  # 0: min(2, cores / train.workers), at least 1
    checkpoint_every: int = 1  # epochs between checkpoints/last.pt writes
    # Also save the replay buffer with each checkpoint (checkpoints/buffer.pt, about the raw
    # size of the stored data). Without it a resumed run starts from an empty buffer.
    save_buffer: bool = False
    # Data-parallel workers (torch.distributed): each has its own envs, buffer and seed
    # (seed + 1000 * rank); gradients and normaliser statistics are averaged so all keep identical
    # networks; steps_per_cycle is per worker. 1: a single process.
    workers: int = 1
    dist_backend: str = "auto"  # auto (nccl on CUDA, else gloo), gloo, nccl


@dataclass
class EvalConfig:
    """Deterministic-policy evaluation after every ``every`` epochs."""

    episodes: int = 10
    num_envs: int = 0  # parallel eval envs; 0: min(episodes, 10)
    every: int = 1


@dataclass
class LoggerConfig:
    """``logger=csv``: console and files only. metrics.csv and episodes.csv are always written."""

    name: str = "csv"
    console: bool = True  # one line per epoch on the console (and in the run's log file)
    progress: str = "auto"  # auto (a bar on a terminal, lines otherwise), bar, lines
    plots: bool = True  # write the run's PNG plots when it ends
    video_every: int = 0  # record one eval episode as MP4 every N epochs (0: never)


@dataclass
class WandbLoggerConfig(LoggerConfig):
    """``logger=wandb``: also log to Weights & Biases (offline by default: no network needed).

    Offline runs land in ``<run_dir>/wandb/`` and upload later with ``wandb sync <dir>``.
    """

    name: str = "wandb"
    project: str = "rlfw"
    entity: str | None = None
    mode: str = "offline"  # offline, online, disabled
    group: str | None = None  # None: the sweep (multirun) or algo-buffer-noise-env
    run_name: str | None = None  # None: algo-buffer-noise-env-seedN (+ the job number)
    tags: list[str] = field(default_factory=list)
    log_cycles: bool = True  # losses and Q values after every cycle, not only per epoch


@dataclass
class Config:
    """The root config (conf/config.yaml)."""

    seed: int = 0
    algo: Any = MISSING
    buffer: BufferConfig = field(default_factory=BufferConfig)
    noise: Any = MISSING
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: Any = MISSING


ALGO_SCHEMAS: dict[str, type] = {"ddpg": DDPGConfig, "td3": TD3Config}
NOISE_SCHEMAS: dict[str, type] = {
    "gaussian": GaussianNoiseConfig,
    "ou": OUNoiseConfig,
    "noisynet": NoisyNetConfig,
}


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent).

    Names: ``config_schema`` (root), ``algo/<name>_schema``, ``noise/<name>_schema``,
    ``buffer/buffer_schema``.
    """
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, schema in ALGO_SCHEMAS.items():
        cs.store(group="algo", name=f"{name}_schema", node=schema)
    for name, schema in NOISE_SCHEMAS.items():
        cs.store(group="noise", name=f"{name}_schema", node=schema)
    cs.store(group="buffer", name="buffer_schema", node=BufferConfig)
    cs.store(group="logger", name="csv_schema", node=LoggerConfig)
    cs.store(group="logger", name="wandb_schema", node=WandbLoggerConfig)
