"""Scripted starts of Fetch training episodes: ``env.grasped_start`` (FetchPickAndPlace, the
object held) and ``env.near_object_start`` (Fetch tasks with an object, the gripper beside it).

The HER paper (Andrychowicz et al. 2017, Sec. 4.1, pick-and-place) made exploration easier by
starting half of the training episodes from a state in which the box is grasped. Here the state
is reached, not recorded: after the env's own reset (object and goal drawn as usual) a scripted
controller moves the open gripper above the object, lowers it and closes the fingers (about 12
simulator steps that are not part of the episode and not stored). Evaluation envs never get the
wrapper, so eval success is measured from the env's own initial states.

``env.near_object_start`` is the same idea for pushing and sliding, whose gripper is blocked
closed: a fraction of the training episodes start with the gripper beside the object, at its
height, on a side drawn at random, so that the first random pushes move the object and hindsight
relabelling sees goals the object reached. It is the classic "exploring starts" of Sutton and
Barto (2018, Sec. 5.3): starts from states the task's own reset rarely reaches, so that every
state-action pair is tried; the task, its goals and its evaluation are unchanged.
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
# the near-object start: the grip site ends NEAR_DISTANCE metres from the object centre
# horizontally (the box's half-width is 0.025 m, the closed fingers' about 0.02 m), at the
# object's height, within NEAR_TOLERANCE metres per axis group, in at most NEAR_STEPS steps
# (measured on FetchPush-v4, 100 resets: 7-30 steps; in 4 the target lay past the arm's reach at
# the table's far edge and the gripper stopped up to 0.06 m short or high; the object moved at
# most 0.013 m in 30 resets)
NEAR_DISTANCE = 0.06
NEAR_TOLERANCE = 0.01
NEAR_STEPS = 30
NEAR_LIFT = 0.06  # metres above the object centre while travelling (the box is 0.05 m tall)


class ScriptedStart(gym.Wrapper):
    """With probability ``prob`` per episode, end :meth:`reset` with the state that
    :meth:`start` reaches from the env's own reset (subclasses implement :meth:`start`).

    Args:
        env: a Gymnasium-Robotics Fetch env; the scripted steps call its unwrapped ``step``, so
            no wrapper (TimeLimit, the episode statistics) counts them.
        prob: the fraction of episodes, in [0, 1].

    The draws come from the env's own ``np_random`` (seeded by ``reset(seed=...)``), so a
    seeded run repeats.
    """

    def __init__(self, env: gym.Env, prob: float) -> None:
        super().__init__(env)
        self.prob = float(prob)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        base: Any = self.env.unwrapped
        if self.prob > 0.0 and base.np_random.random() < self.prob:
            obs = self.start(base)
        return obs, info

    def start(self, base: Any) -> Any:
        """Step the unwrapped env ``base`` to the start state; its observation dict."""
        raise NotImplementedError


class GraspedStart(ScriptedStart):
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

    def start(self, base: Any) -> Any:
        """:func:`grasp`."""
        return grasp(base)


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


class NearObjectStart(ScriptedStart):
    """With probability ``prob`` per episode, end :meth:`reset` with the gripper beside the object.

    Args:
        env: a Gymnasium-Robotics Fetch env with an object (FetchPush, FetchSlide,
            FetchPickAndPlace); the scripted steps call its unwrapped ``step``, so no wrapper
            (TimeLimit, the episode statistics) counts them.
        prob: the fraction of episodes, in [0, 1].

    The draws (whether, and the side: an angle uniform in [0, 2 pi)) come from the env's own
    ``np_random``, so a seeded run repeats. The returned observation is the env's
    ``_get_obs()`` after the last scripted step (``observation [25]``, ``achieved_goal [3]``,
    the unchanged ``desired_goal [3]``).
    """

    def start(self, base: Any) -> Any:
        """:func:`approach` from a side drawn uniformly in [0, 2 pi)."""
        return approach(base, float(base.np_random.uniform(0.0, 2.0 * np.pi)))


def approach(base: Any, angle: float) -> Any:
    """Move the gripper of the unwrapped Fetch env ``base`` to ``NEAR_DISTANCE`` metres from its
    object in the horizontal direction ``angle`` (radians), at the object's height: up to
    ``NEAR_LIFT`` metres above the object, over the target point, then down (the gripper starts
    at table height, so a straight path could sweep the object off); returns the observation
    dict after the last step."""
    u, model, data = base._utils, base.model, base.data
    obj = u.get_site_xpos(model, data, "object0").copy()
    target = obj + NEAR_DISTANCE * np.array([np.cos(angle), np.sin(angle), 0.0])
    for _ in range(NEAR_STEPS):
        grip = u.get_site_xpos(model, data, "robot0:grip")
        d = target - grip
        if np.linalg.norm(d[:2]) > NEAR_TOLERANCE:  # travel over the table: lift first
            up = obj[2] + NEAR_LIFT - grip[2]
            move = np.array([0.0, 0.0, up]) if up > NEAR_TOLERANCE else np.array([d[0], d[1], up])
        elif abs(d[2]) > NEAR_TOLERANCE:
            move = np.array([0.0, 0.0, d[2]])
        else:
            break
        act = np.clip(move / 0.05, -1.0, 1.0)  # 0.05 m per unit action (Fetch)
        base.step(np.array([act[0], act[1], act[2], 0.0], dtype=np.float32))
    return base._get_obs()
