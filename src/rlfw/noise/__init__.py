"""Exploration: action noise (:mod:`rlfw.noise.action_noise`: none, Gaussian with decay,
Ornstein-Uhlenbeck) and parameter noise (:mod:`rlfw.noise.noisynet`: NoisyNet layers).
Each module registers its options with :func:`rlfw.registry.register`.
"""

from rlfw.noise.action_noise import ActionNoise, GaussianNoise, NoNoise, OUNoise, random_actions
from rlfw.noise.noisynet import NoisyLinear, NoisyNetNoise
from rlfw.registry import registry

NOISES = registry("noise")

__all__ = [
    "NOISES",
    "ActionNoise",
    "GaussianNoise",
    "NoNoise",
    "NoisyLinear",
    "NoisyNetNoise",
    "OUNoise",
    "random_actions",
]
