"""``noise=acme_uniform``: a + U(-width, width), clipped to [-1, 1]."""

# No ``from __future__ import annotations``: OmegaConf reads the annotations at run time.
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra.core.config_store import ConfigStore

from rlfw.core import in_range
from rlfw.noise.action_noise import ActionNoise
from rlfw.noise.config import NoiseConfig
from rlfw.registry import register


@dataclass
class AcmeUniformConfig(NoiseConfig):
    name: str = "acme_uniform"
    width: float = 0.2  # in [-1, 1] action units

    @staticmethod
    def validate(node: Any) -> None:
        NoiseConfig.validate(node)
        in_range(node, "width", 0.0, prefix="noise.")


class AcmeUniformNoise(ActionNoise):
    metric_names = ("noise_sigma", "noise_width")  # declared: both become metrics.csv columns

    def perturb(self, actions: np.ndarray, env_step: int) -> np.ndarray:
        return actions + self.rng.uniform(-self.cfg.width, self.cfg.width, actions.shape)

    def metrics(self, env_step: int) -> dict[str, float]:
        return {"noise_sigma": float(self.cfg.width), "noise_width": 2.0 * float(self.cfg.width)}


register("noise", "acme_uniform", AcmeUniformConfig, AcmeUniformNoise)
ConfigStore.instance().store(group="noise", name="acme_uniform", node=AcmeUniformConfig)
