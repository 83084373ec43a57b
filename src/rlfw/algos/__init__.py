"""Algorithms: DDPG and TD3 on one actor-critic core (:mod:`rlfw.algos.actor_critic`)."""

from rlfw.algos.actor_critic import ActorCritic, UpdateInfo, polyak_update
from rlfw.config.schema import DDPGConfig, TD3Config
from rlfw.registry import Registry

__all__ = ["ALGOS", "ActorCritic", "UpdateInfo", "polyak_update"]

ALGOS: Registry[type] = Registry("algo")
ALGOS.add("ddpg", ActorCritic, DDPGConfig)
ALGOS.add("td3", ActorCritic, TD3Config)
