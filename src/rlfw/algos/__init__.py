"""Algorithms. Each module registers its options with :func:`rlfw.registry.register`:
TD3 and DDPG (:mod:`rlfw.algos.td3`), SAC (:mod:`rlfw.algos.sac`), TQC (:mod:`rlfw.algos.tqc`)
and CrossQ (:mod:`rlfw.algos.crossq`), all on :class:`rlfw.algos.base.OffPolicyAgent`, their
schemas on :class:`rlfw.algos.config.AlgoConfig`. :func:`rlfw.components.load_components` imports the modules pyproject.toml declares.

An algorithm class implements :class:`rlfw.core.Agent` and is built as
``cls(cfg.algo, env_info, device, seed=...)`` (:func:`rlfw.build.build_agent`); an exploration
that needs other layers (NoisyNet) swaps them in afterwards.
"""

from rlfw.algos.base import OffPolicyAgent, TensorBatch, polyak_update
from rlfw.algos.td3 import DDPG, TD3
from rlfw.registry import registry

ALGOS = registry("algo")

__all__ = ["ALGOS", "DDPG", "TD3", "OffPolicyAgent", "TensorBatch", "polyak_update"]
