"""``env.family=acme_fetch``: the Gymnasium-Robotics Fetch family with 25-step episodes, as
another package adds an env family to rlfw: a subclass of ``EnvFamily`` (here of the Fetch
family, so the goal functions, the ids it accepts and the reward bounds stay) and one
``register`` call."""

from typing import Any

import gymnasium as gym

from rlfw.envs.families import FetchFamily
from rlfw.registry import register

ACME_EPISODE_STEPS = 25


class AcmeFetchFamily(FetchFamily):
    """Fetch tasks cut to :data:`ACME_EPISODE_STEPS` steps (``env.max_episode_steps`` still wins)."""

    title = "Acme Fetch"

    def make(self, env_id: str, max_episode_steps: int | None = None, kwargs: dict[str, Any] | None = None,
             render_mode: str | None = None, wrappers: Any = ()) -> gym.Env:  # fmt: skip
        steps = ACME_EPISODE_STEPS if max_episode_steps is None else max_episode_steps
        return super().make(env_id, steps, kwargs, render_mode, wrappers)


register("env.family", "acme_fetch", None, AcmeFetchFamily())
