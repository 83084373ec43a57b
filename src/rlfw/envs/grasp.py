"""``env.grasped_start``: training episodes of FetchPickAndPlace that start with the object held.

The HER paper (Andrychowicz et al. 2017, Sec. 4.1, pick-and-place) made exploration easier by
starting half of the training episodes from a state in which the box is grasped. Here the state
is reached, not recorded: after the env's own reset (object and goal drawn as usual) a scripted
controller moves the open gripper above the object, lowers it and closes the fingers (about 12
simulator steps that are not part of the episode and not stored). Evaluation envs never get the
wrapper, so eval success is measured from the env's own initial states.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

# the scripted grasp: at most this many simulator steps to reach the object, then CLOSE_STEPS
# steps closing the fingers (measured on FetchPickAndPlace-v4: 11-13 steps reach it, and after
# 4 closing steps a lift of 5 steps raises the object with the gripper in 20 of 20 resets)
REACH_STEPS = 25
CLOSE_STEPS = 4
TOLERANCE = 0.005  # metres between the grip site and the object centre (per axis group)


class GraspedStart(gym.Wrapper):
    """With probability ``prob`` per episode, end :meth:`reset` with the object in the gripper.

    Args:
        env: a Gymnasium-Robotics Fetch env with an object and a gripper that opens
            (FetchPickAndPlace); the scripted steps call its unwrapped ``step``, so no wrapper
            (TimeLimit, the episode statistics) counts them.
        prob: the fraction of episodes, in [0, 1].

    The draw comes from the env's own ``np_random`` (seeded by ``reset(seed=...)``), so a seeded
    run repeats. The returned observation is the env's ``_get_obs()`` after the grasp: the
    ``observation [25]``, ``achieved_goal [3]`` (the object, now in the gripper) and the
    unchanged ``desired_goal [3]``.
    """

    def __init__(self, env: gym.Env, prob: float) -> None:
        super().__init__(env)
        self.prob = float(prob)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        base: Any = self.env.unwrapped
        if self.prob > 0.0 and base.np_random.random() < self.prob:
            obs = grasp(base)
        return obs, info


def grasp(base: Any) -> Any:
    """Move the open gripper of the unwrapped Fetch env ``base`` over its object, lower it and
    close it; returns the observation dict after the last step."""
    u, model, data = base._utils, base.model, base.data
    for _ in range(REACH_STEPS):
        d = u.get_site_xpos(model, data, "object0") - u.get_site_xpos(model, data, "robot0:grip")
        if np.linalg.norm(d[:2]) <= TOLERANCE:
            if d[2] >= -TOLERANCE:
                break
            move_z = float(np.clip(d[2] / 0.05, -1.0, 1.0))  # 0.05 m per unit action (Fetch)
        else:
            move_z = 0.0  # over the object first, then down: the fingers never hit it from the side
        xy = np.clip(d[:2] / 0.05, -1.0, 1.0)
        base.step(np.array([xy[0], xy[1], move_z, 1.0], dtype=np.float32))
    for _ in range(CLOSE_STEPS):
        base.step(np.array([0.0, 0.0, 0.0, -1.0], dtype=np.float32))
    return base._get_obs()
