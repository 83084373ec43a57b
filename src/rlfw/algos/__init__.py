"""Algorithms. Each module registers its options with :func:`rlfw.registry.register`:
DDPG and TD3 on one actor-critic core (:mod:`rlfw.algos.actor_critic`), SAC
(:mod:`rlfw.algos.sac`), TQC (:mod:`rlfw.algos.tqc`) and CrossQ (:mod:`rlfw.algos.crossq`), all on
:class:`rlfw.algos.base.OffPolicyAgent`. :func:`rlfw.components.load_components` imports the modules pyproject.toml declares.

An algorithm class implements :class:`rlfw.core.Agent` and is built as
``cls(cfg.algo, env_info, device, actor_linear=..., critic_linear=..., seed=...)``
(:func:`rlfw.build.build_agent`).
"""

from rlfw.algos.actor_critic import ActorCritic
from rlfw.algos.base import OffPolicyAgent, polyak_update
from rlfw.registry import registry

ALGOS = registry("algo")

__all__ = ["ALGOS", "ActorCritic", "OffPolicyAgent", "polyak_update"]
