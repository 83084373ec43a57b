"""A test-only sampler with a key of its own: ``buffer.sampler=recent`` replays the
``buffer.recent_window`` newest transitions, uniformly. One module (this) and one YAML
(``tests/recent_conf/buffer/recent.yaml``), as the README's "Extending" shows; nothing of rlfw is
edited. Imported by ``tests/test_buffers.py`` (which also removes it again).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlfw.buffers import ReplayBuffer
from rlfw.buffers.config import BufferConfig
from rlfw.buffers.samplers import Sampler, SamplerConfig
from rlfw.buffers.storage import EpisodeStorage
from rlfw.core import in_range
from rlfw.registry import register


@dataclass
class RecentSamplerConfig(SamplerConfig):
    recent_window: int = 1000  # replay only the newest transitions (over all parallel envs)

    @staticmethod
    def validate(node: Any) -> None:
        in_range(node, "recent_window", 1, prefix="buffer.")


class RecentSampler(Sampler):
    """Uniform over the ``recent_window`` transitions added last (those still stored)."""

    def __init__(
        self, storage: EpisodeStorage, rng: np.random.Generator, recent_window: int = 1000, **_: Any
    ) -> None:
        super().__init__(storage, rng)
        self.window = int(recent_window)
        self.recent = np.empty(0, np.int64)

    def on_add(self, new: np.ndarray, lost: np.ndarray) -> None:
        self.recent = np.concatenate([self.recent, new])[-self.window :]

    def sample(self, batch_size: int, env_step: int) -> tuple[np.ndarray, np.ndarray]:
        live = self.recent[self.storage.is_transition.reshape(-1)[self.recent]]
        if len(live) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.rng.choice(live, batch_size).astype(np.int64), np.ones(batch_size, np.float32)


register("buffer.sampler", "recent", RecentSamplerConfig, RecentSampler)
register("buffer", "recent", BufferConfig, ReplayBuffer)  # the preset buffer=recent (its YAML)
