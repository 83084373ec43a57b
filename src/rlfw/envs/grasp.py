"""Scripted starts of training episodes: ``env.grasped_start`` (FetchPickAndPlace, the object
held) and ``env.near_object_start`` (Fetch and Panda tasks with an object, the gripper beside it).

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

Both can be set at once (FetchPickAndPlace): each episode draws one start, grasped, near or the
env's own (:class:`ScriptedStart`). The scripted steps are simulator steps that no episode
counts; :attr:`ScriptedStart.scripted_steps` adds them up (metrics.csv's ``scripted_steps``).

On panda-gym (PyBullet) the near-object start places the arm instead of driving it
(:func:`place_beside`): the Panda's end-effector controller lags its targets, so a driven
approach overshoots and knocks the object away in about one reset in four (measured on
PandaPush-v3, 50 resets), while setting the joints to their inverse-kinematics solution, as
panda-gym's own reset does for the neutral pose, takes no simulator step and leaves the object
where the env put it.
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
# the Panda's placement (place_beside): inverse kinematics is solved again from the placed pose
# until the end effector is within PLACE_TOLERANCE metres of its target, at most PLACE_ITERS times
# (measured on PandaPush-v3, 200 resets: within 0.008 m in 95%, 0.025 m at worst; the object
# never moved)
PLACE_TOLERANCE = 0.005
PLACE_ITERS = 5


class ScriptedStart(gym.Wrapper):
    """Per episode, draw one of the scripted starts: with probability ``grasped`` end
    :meth:`reset` with the object in the gripper (:func:`grasp`), with probability ``near`` with
    the gripper beside the object (:func:`approach`), else keep the env's own start. The two are
    exclusive, so together they cover ``grasped + near`` of the episodes (<= 1).

    Args:
        env: a Gymnasium-Robotics Fetch env with an object (a gripper that opens for
            ``grasped``: FetchPickAndPlace); the scripted steps call its unwrapped ``step``, so
            no wrapper (TimeLimit, the episode statistics) counts them. Or a panda-gym env with
            one object (``near`` only: PandaPush, PandaSlide, PandaPickAndPlace), whose arm is
            placed (:func:`place_beside`, no simulator steps).
        grasped: the fraction of episodes that start grasped, in [0, 1].
        near: the fraction that start beside the object, in [0, 1 - grasped].

    Attributes:
        scripted_steps: the simulator steps the scripted starts took so far (not env steps of
            any episode; the learning table reports them beside the env steps).

    The draws (one uniform per episode, then the side of a near start) come from the env's own
    ``np_random`` (seeded by ``reset(seed=...)``), so a seeded run repeats. The returned
    observation is the env's ``_get_obs()`` after the last scripted step (Fetch:
    ``observation [25]``, ``achieved_goal [3]``, the unchanged ``desired_goal [3]``) or after
    the placement (Panda: ``observation [18]`` on PandaPush-v3, no step).

    Raises:
        ValueError: a fraction outside [0, 1], or ``grasped + near > 1``.
    """

    def __init__(self, env: gym.Env, grasped: float = 0.0, near: float = 0.0) -> None:
        super().__init__(env)
        self.grasped, self.near = float(grasped), float(near)
        if min(self.grasped, self.near) < 0.0 or self.grasped + self.near > 1.0:
            raise ValueError(f"scripted start fractions grasped={grasped}, near={near}: each in [0, 1], sum <= 1")
        self.scripted_steps = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        base: Any = self.env.unwrapped
        if self.grasped + self.near > 0.0:
            u = base.np_random.random()
            if u < self.grasped:
                obs, steps = grasp(base)
                self.scripted_steps += steps
            elif u < self.grasped + self.near:
                angle = float(base.np_random.uniform(0.0, 2.0 * np.pi))
                obs, steps = place_beside(base, angle) if _is_panda(base) else approach(base, angle)
                self.scripted_steps += steps
        return obs, info


class GraspedStart(ScriptedStart):
    """:class:`ScriptedStart` with grasped starts only (``env.grasped_start``): with
    probability ``prob`` per episode the object starts in the gripper (HER paper, Sec. 4.1)."""

    def __init__(self, env: gym.Env, prob: float) -> None:
        super().__init__(env, grasped=prob)


class NearObjectStart(ScriptedStart):
    """:class:`ScriptedStart` with near-object starts only (``env.near_object_start``): with
    probability ``prob`` per episode the gripper starts beside the object, on a side drawn
    uniformly in [0, 2 pi) (exploring starts)."""

    def __init__(self, env: gym.Env, prob: float) -> None:
        super().__init__(env, near=prob)


def grasp(base: Any) -> tuple[Any, int]:
    """Move the open gripper of the unwrapped Fetch env ``base`` over its object, lower it and
    close it; returns the observation dict after the last step and the simulator steps taken."""
    u, model, data = base._utils, base.model, base.data
    steps = 0
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
        steps += 1
    for _ in range(CLOSE_STEPS):
        base.step(np.array([0.0, 0.0, 0.0, -1.0], dtype=np.float32))
    return base._get_obs(), steps + CLOSE_STEPS


def approach(base: Any, angle: float) -> tuple[Any, int]:
    """Move the gripper of the unwrapped Fetch env ``base`` to ``NEAR_DISTANCE`` metres from its
    object in the horizontal direction ``angle`` (radians), at the object's height: up to
    ``NEAR_LIFT`` metres above the object, over the target point, then down (the gripper starts
    at table height, so a straight path could sweep the object off); returns the observation
    dict after the last step and the simulator steps taken."""
    u, model, data = base._utils, base.model, base.data
    steps = 0
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
        steps += 1
    return base._get_obs(), steps


def _is_panda(base: Any) -> bool:
    """Whether ``base`` is a panda-gym ``RobotTaskEnv`` (a robot and a task over one PyBullet sim)."""
    return hasattr(base, "robot") and hasattr(base, "task") and hasattr(base, "sim")


def place_beside(base: Any, angle: float) -> tuple[Any, int]:
    """Place the Panda arm of the unwrapped panda-gym env ``base`` so that its end effector is
    ``NEAR_DISTANCE`` metres from the object centre in the horizontal direction ``angle``
    (radians), at the object's height, pointing down (the orientation panda-gym's end-effector
    control keeps; under joint control, ``Panda*Joints``, a start like any other).

    The joints are set (PyBullet ``resetJointState`` through the robot's ``set_joint_angles``,
    as panda-gym's reset sets the neutral pose) to the inverse-kinematics solution for that
    point, solved again from the placed pose up to ``PLACE_ITERS`` times until within
    ``PLACE_TOLERANCE`` metres; the joint velocities are zero and the fingers keep their
    neutral width. No simulator step runs, so the object and goal stay as the env's reset drew
    them.

    Returns:
        The observation dict after the placement (``observation [18]`` on PandaPush-v3,
        ``achieved_goal [3]``, the unchanged ``desired_goal [3]``) and 0 simulator steps.
    """
    robot = base.robot
    obj = np.asarray(base.sim.get_base_position("object"), dtype=np.float64)
    target = obj + NEAR_DISTANCE * np.array([np.cos(angle), np.sin(angle), 0.0])
    fingers = np.asarray(robot.neutral_joint_values, dtype=np.float64)[7:]
    down = np.array([1.0, 0.0, 0.0, 0.0])  # the end effector's orientation in panda-gym's ee control
    for _ in range(PLACE_ITERS):
        arm = robot.inverse_kinematics(link=robot.ee_link, position=target, orientation=down)[:7]
        robot.set_joint_angles(np.concatenate([arm, fingers]))
        if np.linalg.norm(robot.get_ee_position() - target) <= PLACE_TOLERANCE:
            break
    return base._get_obs(), 0
