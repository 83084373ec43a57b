"""``buffer.sampler=acme_recent``: uniform over the ``buffer.acme_window`` newest transitions, as
another package adds a replay sampler to rlfw: a schema with its own key (it joins every buffer
preset), a class, one ``register`` call."""

# No ``from __future__ import annotations``: OmegaConf reads the annotations at run time.
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlfw.buffers.samplers import Sampler, SamplerConfig
from rlfw.core import in_range
from rlfw.registry import register


@dataclass
class AcmeRecentConfig(SamplerConfig):
    acme_window: int = 1000  # buffer.acme_window: transitions (over all parallel envs)

    @staticmethod
    def validate(node: Any) -> None:
        in_range(node, "acme_window", 1, prefix="buffer.")


class AcmeRecentSampler(Sampler):
    """Uniform over the ``acme_window`` transitions added last (those still stored)."""

    def __init__(self, storage: Any, rng: np.random.Generator, acme_window: int = 1000, **_: Any) -> None:
        super().__init__(storage, rng)
        self.window = int(acme_window)
        self.recent = np.empty(0, np.int64)

    def on_add(self, new: np.ndarray, lost: np.ndarray) -> None:
        self.recent = np.concatenate([self.recent, new])[-self.window :]

    def sample(self, batch_size: int, env_step: int) -> tuple[np.ndarray, np.ndarray]:
        live = self.recent[self.storage.is_transition.reshape(-1)[self.recent]]
        if len(live) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.rng.choice(live, batch_size).astype(np.int64), np.ones(batch_size, np.float32)


register("buffer.sampler", "acme_recent", AcmeRecentConfig, AcmeRecentSampler)
