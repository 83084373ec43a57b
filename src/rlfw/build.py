"""One build step: a composed config -> the components of a run.

:func:`build` is what training (:class:`rlfw.training.loop.TrainLoop`), ``rlfw.evaluate``,
the federated clients, the public API (:func:`rlfw.load`) and the benchmarks use, so envs and
agents are made one way everywhere (``env.kwargs`` included) and a checkpoint always loads into
the same network layout. Each choice is looked up in its registry (:mod:`rlfw.registry`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

from rlfw.components import load_components
from rlfw.core import Agent, EnvInfo, Exploration, ReplayBuffer
from rlfw.envs import (
    EnvFamily,
    env_imports,
    env_wrappers,
    make_vector_env,
    read_env_info,
    resolve_env_id,
)
from rlfw.errors import ConfigError
from rlfw.registry import registry

log = logging.getLogger("rlfw")


def pick_device(name: str, index: int = 0) -> torch.device:
    """``train.device``: ``auto`` is CUDA when available, else the CPU. On CUDA, process
    ``index`` (> 0) of a machine's workers takes device ``index % device_count`` (the one device
    choice of every way a run starts: :func:`rlfw.training.start.run_device`)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda" and index > 0:
        device = torch.device("cuda", index % torch.cuda.device_count())
    return device


def env_kwargs(cfg: Any) -> dict[str, Any]:
    """``env.kwargs`` as a plain dict (passed to ``gymnasium.make``)."""
    raw = OmegaConf.to_container(cfg.env.kwargs, resolve=True) if OmegaConf.is_config(cfg.env.kwargs) else cfg.env.kwargs
    return {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}


@dataclass
class EnvParts:
    """The env side of a run: the resolved id, its family, a reference env and its EnvInfo."""

    env_id: str
    family: EnvFamily
    kwargs: dict[str, Any]
    ref_env: gym.Env
    info: EnvInfo


def build_env(cfg: Any, log_resolution: bool = True) -> EnvParts:
    """Resolve ``env.id``, make one reference env and read its :class:`EnvInfo`.

    Raises:
        ConfigError: an unknown id, an env that does not fit its family, or a HER buffer on an
            env without goals.
    """
    env_id, message = resolve_env_id(str(cfg.env.id), cfg.env.family, bool(cfg.env.resolve_version), env_imports(cfg))
    if message and log_resolution:
        log.warning(message)
    family = registry("env.family").get(cfg.env.family).target
    kwargs = env_kwargs(cfg)
    ref_env = family.make(env_id, cfg.env.max_episode_steps, kwargs, wrappers=env_wrappers(cfg))
    info = read_env_info(cfg.env.family, ref_env, env_id)
    if cfg.buffer.relabel == "her" and not info.goal:
        ref_env.close()
        raise ConfigError(f"buffer.relabel=her needs a goal env; env.id '{env_id}' has no goals")
    return EnvParts(env_id, family, kwargs, ref_env, info)


def build_exploration(cfg: Any, num_envs: int, act_dim: int, rng: np.random.Generator) -> Exploration:
    """The exploration ``cfg.noise.name`` names (registry ``noise``)."""
    cls = registry("noise").get(cfg.noise.name).target
    return cls(cfg.noise, num_envs, act_dim, rng)  # type: ignore[no-any-return]


def build_agent(cfg: Any, info: EnvInfo, exploration: Exploration, device: str | torch.device = "cpu",
                seed: int = 0) -> Agent:  # fmt: skip
    """The agent ``cfg.algo`` names, attached to the exploration (NoisyNet swaps its noisy
    layers into the agent's networks there).

    Raises:
        ConfigError: an unknown ``cfg.algo.name``, or an exploration that does not fit the agent.
    """
    cls = registry("algo").get(cfg.algo.name).target
    agent = cls(cfg.algo, info, device, seed=seed)
    exploration.attach(agent)
    return agent  # type: ignore[no-any-return]


def build_buffer(
    cfg: Any, info: EnvInfo, num_envs: int, total_env_steps: int, seed: int
) -> ReplayBuffer:
    """The replay buffer ``cfg.buffer`` describes: the class its option (``buffer.name``) is
    registered with in registry ``buffer``, built as :class:`rlfw.core.ReplayBuffer` says."""
    from rlfw.core.checks import human_bytes, memory_bytes

    cls = registry("buffer").get(cfg.buffer.name).target
    sampler = registry("buffer.sampler").get(str(cfg.buffer.sampler)).schema
    # the storage's arrays per transition (rlfw.buffers.storage): float32 observation, achieved
    # and desired goal, action and reward; terminated and is_transition flags; int32 ep_t, ep_len
    per = 4 * (info.obs_dim + 2 * info.goal_dim + info.act_dim + 1) + 2 + 8 + int(getattr(sampler, "bytes_per_transition", 0))
    need, have = int(cfg.buffer.capacity) * per, memory_bytes()
    if have is not None and need > have:
        raise ConfigError(
            f"buffer.capacity={cfg.buffer.capacity} needs {human_bytes(need)} for this env's transitions ({per} bytes "
            f"each: observation {info.obs_dim}, goals 2 x {info.goal_dim}, action {info.act_dim}) but this machine "
            f"has {human_bytes(have)} of memory; use a smaller buffer.capacity (1e6 is usual)"
        )
    try:
        buffer: ReplayBuffer = cls(cfg.buffer, info, num_envs, float(cfg.algo.gamma), total_env_steps, seed)
    except MemoryError as err:
        raise ConfigError(f"buffer.capacity={cfg.buffer.capacity} does not fit in memory ({err}); use a smaller "
                          "buffer.capacity (1e6 is usual)") from None  # fmt: skip
    return buffer


@dataclass
class Components:
    """Everything a run trains with. ``seed`` is this process's (``cfg.seed + 1000 * rank``)."""

    env: EnvParts
    envs: gym.vector.VectorEnv
    eval_envs: gym.vector.VectorEnv | None
    exploration: Exploration
    agent: Agent
    buffer: ReplayBuffer
    rng: np.random.Generator
    device: torch.device
    seed: int

    @property
    def info(self) -> EnvInfo:
        return self.env.info

    def close(self) -> None:
        """Close every env."""
        for env in (self.envs, self.eval_envs, self.env.ref_env):
            if env is not None:
                env.close()


def total_steps(cfg: Any) -> int:
    """Env steps one process trains for: ``train.epochs * cycles_per_epoch * steps_per_cycle``
    (``steps_per_cycle`` is per worker): the buffer's schedule (PER's beta) and the progress
    bar's total, in every way a run starts."""
    tr = cfg.train
    return int(tr.epochs * tr.cycles_per_epoch * tr.steps_per_cycle)


def build(cfg: Any, rank: int = 0, device: torch.device | None = None) -> Components:
    """Build a run's components for worker ``rank`` (0 for a single process).

    Every worker starts from the same networks (``torch.manual_seed(cfg.seed)`` before the
    agent is made); afterwards each draws its own randomness from ``seed = cfg.seed + 1000 * rank``
    (collection, buffer sampling, NoisyNet and target smoothing).

    Args:
        device: where the networks go (None: :func:`pick_device` of ``train.device`` for ``rank``).

    Raises:
        ConfigError: see :func:`build_env`.
    """
    load_components()  # every installed component registers (once per process)
    tr = cfg.train
    seed = int(cfg.seed) + 1000 * rank
    torch.manual_seed(cfg.seed)  # the same initial networks on every worker
    rng = np.random.default_rng(seed)
    device = device if device is not None else pick_device(str(tr.device), rank)
    env = build_env(cfg, log_resolution=rank == 0)
    num_envs = int(tr.num_envs)
    envs = make_vector_env(env.family, env.env_id, num_envs, cfg.env.max_episode_steps, env.kwargs,
                           cfg.env.vectorization, imports=env_imports(cfg),
                           grasped_start=float(cfg.env.get("grasped_start", 0.0)),  # the Fetch family's keys
                           near_object_start=float(cfg.env.get("near_object_start", 0.0)), wrappers=env_wrappers(cfg))  # fmt: skip
    n_eval = int(cfg.eval.num_envs or min(cfg.eval.episodes, 10))
    eval_envs = (
        make_vector_env(env.family, env.env_id, n_eval, cfg.env.max_episode_steps, env.kwargs, "sync",
                        imports=env_imports(cfg), wrappers=env_wrappers(cfg))
        if cfg.eval.episodes > 0
        else None
    )
    exploration = build_exploration(cfg, num_envs, env.info.act_dim, rng)
    agent = build_agent(cfg, env.info, exploration, device, seed=int(cfg.seed))
    # from here on each worker draws its own randomness (NoisyNet, target smoothing)
    torch.manual_seed(seed)
    generator = getattr(agent, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
    buffer = build_buffer(cfg, env.info, num_envs, total_steps(cfg), seed)
    return Components(env, envs, eval_envs, exploration, agent, buffer, rng, device, seed)


def build_policy(cfg: Any, state: dict[str, Any] | None = None,
                 device: str = "cpu") -> tuple[Agent, Exploration, EnvParts]:  # fmt: skip
    """An agent for acting only (evaluation, :func:`rlfw.load`): no vector envs, no buffer.

    Returns:
        (the agent with ``state`` loaded if given, the exploration attached to it (one env;
        NoisyNet's ``resample`` draws a new weight sample), the env parts; its reference env is
        closed).
    """
    load_components()
    env = build_env(cfg, log_resolution=False)
    env.ref_env.close()
    exploration = build_exploration(cfg, 1, env.info.act_dim, np.random.default_rng(0))
    agent = build_agent(cfg, env.info, exploration, device)
    if state is not None:
        agent.load_state_dict(state)
    return agent, exploration, env


def build_policy_agent(cfg: Any, state: dict[str, Any] | None = None, device: str = "cpu") -> tuple[Agent, EnvParts]:
    """:func:`build_policy` without the exploration: (the agent, the env parts)."""
    agent, _, env = build_policy(cfg, state, device)
    return agent, env
