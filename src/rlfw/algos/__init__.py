"""Algorithms: DDPG and TD3 on one actor-critic core (:mod:`rlfw.algos.actor_critic`)."""

from typing import Any

import torch

from rlfw.algos.actor_critic import ActorCritic, UpdateInfo, polyak_update
from rlfw.config.schema import DDPGConfig, TD3Config
from rlfw.envs import EnvInfo
from rlfw.registry import Registry

__all__ = ["ALGOS", "ActorCritic", "UpdateInfo", "build_agent", "polyak_update"]

ALGOS: Registry[type] = Registry("algo")
ALGOS.add("ddpg", ActorCritic, DDPGConfig)
ALGOS.add("td3", ActorCritic, TD3Config)


def build_agent(cfg: Any, info: EnvInfo, noise: Any, device: str | torch.device = "cpu", seed: int = 0) -> Any:
    """The agent ``cfg.algo`` names, with the layers ``noise`` asks for (NoisyNet's noisy
    linear layers; plain ``nn.Linear`` otherwise). Used by the runner, evaluation and the
    federated clients, so a checkpoint always loads into the same network layout.

    Raises:
        ConfigError: an unknown ``cfg.algo.name``.
    """
    return ALGOS.get(cfg.algo.name).target(
        cfg.algo,
        info,
        device,
        actor_linear=noise.actor_linear() or torch.nn.Linear,
        critic_linear=noise.critic_linear(),
        seed=seed,
    )
