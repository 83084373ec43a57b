"""Contracts: the types every part of rlfw agrees on. This package imports nothing of rlfw
except :mod:`rlfw.errors`, and everything else depends on it, never the reverse.

- :class:`EnvInfo`: what an agent and a buffer need to know of an env.
- :class:`Batch`: what a replay buffer hands an agent (Gymnasium's ``terminated``).
- :class:`ReplayBuffer`: what the collector writes, the loop samples and the checkpointer
  saves (TorchRL's ``ReplayBuffer``, SB3's ``ReplayBuffer``).
- :class:`Agent`: what the training loop, evaluation, multi-worker and federated training ask
  of an algorithm (SB3's ``BaseAlgorithm.train``/``predict``, BenchMARL's ``Algorithm``).
- :class:`Exploration`: how actions are perturbed while collecting (SB3 ``common/noise.py``),
  or, for parameter noise (NoisyNet), which layers it swaps into the agent's networks.
- :class:`UpdateResult`: what an agent's update returns (metrics and the PER signal).
- :class:`Callback`: hooks into the training loop.
"""

from rlfw.core.checks import decision_metric_name, eval_metric_name, in_range, one_of, require
from rlfw.core.contracts import (
    Agent,
    Batch,
    Callback,
    EnvInfo,
    Exploration,
    GoalFn,
    LinearFactory,
    LoopView,
    ReplayBuffer,
    UpdateResult,
)

__all__ = [
    "Agent",
    "Batch",
    "Callback",
    "EnvInfo",
    "Exploration",
    "GoalFn",
    "LinearFactory",
    "LoopView",
    "ReplayBuffer",
    "UpdateResult",
    "decision_metric_name",
    "eval_metric_name",
    "in_range",
    "one_of",
    "require",
]
