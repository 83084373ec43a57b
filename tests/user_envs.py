"""A user's own env module, as a user of rlfw would write one: it registers two tiny envs with
``gymnasium.register`` when imported, and imports nothing of rlfw.

The tests put this folder on ``PYTHONPATH`` and name the module from the command line, either
in ``env.imports=[user_envs]`` or as Gymnasium's ``user_envs:UserDense-v0`` id form.

- ``UserReach-v0``: a goal env (GoalEnv API: ``observation``/``achieved_goal``/``desired_goal``
  observations, vectorised ``compute_reward``): a point in [-1, 1]^2 moved by its action
  (``pos += 0.2 * action``), sparse reward ``-(||ag - g|| > 0.1)``, 10-step episodes.
- ``UserDense-v0``: the same point with a dense reward ``-||pos - target||`` and a Box
  observation ``[pos, target]``, actions in [-2, 2] (so rlfw rescales them), 10-step episodes.
- ``CoinGoal-v0``: one-step goal episodes whose success is a coin with a known rate ``p`` (the
  ``p`` kwarg, default 0.7), whatever the action: every policy's true success rate is ``p``, so
  a test knows what an evaluation should find.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

RADIUS = 0.1  # success distance
STEP = 0.2  # movement per unit action


class UserReachEnv(gym.Env):
    """The goal env ``UserReach-v0`` (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self) -> None:
        box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Dict(
            {"observation": box, "achieved_goal": box, "desired_goal": box}
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.pos = np.zeros(2, np.float32)
        self.goal = np.zeros(2, np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"observation": self.pos.copy(), "achieved_goal": self.pos.copy(), "desired_goal": self.goal.copy()}

    def compute_reward(self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any) -> np.ndarray:
        """``-(||ag - g|| > RADIUS)`` as float32: shape ``[B]`` for ``[B, 2]`` inputs."""
        return -(np.linalg.norm(achieved_goal - desired_goal, axis=-1) > RADIUS).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        self.goal = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        return self._obs(), {}

    def step(self, action: np.ndarray):
        self.pos = np.clip(self.pos + STEP * np.asarray(action, np.float32), -1.0, 1.0).astype(np.float32)
        reward = float(self.compute_reward(self.pos, self.goal, {}))
        return self._obs(), reward, False, False, {"is_success": float(reward == 0.0)}


class UserDenseEnv(gym.Env):
    """The dense env ``UserDense-v0`` (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.pos = np.zeros(2, np.float32)
        self.target = np.zeros(2, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        self.target = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        return np.concatenate([self.pos, self.target]), {}

    def step(self, action: np.ndarray):
        move = 0.5 * STEP * np.asarray(action, np.float32)
        self.pos = np.clip(self.pos + move, -1.0, 1.0).astype(np.float32)
        reward = -float(np.linalg.norm(self.pos - self.target))
        return np.concatenate([self.pos, self.target]), reward, False, False, {}


class CoinGoalEnv(gym.Env):
    """One step per episode; ``is_success`` is drawn with probability ``p`` from the env's own
    generator (seeded by ``reset(seed=...)``), and the achieved goal equals the desired goal
    exactly when it succeeds (so ``compute_reward`` agrees with ``is_success``)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, p: float = 0.7) -> None:
        self.p = float(p)
        box = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.observation_space = gym.spaces.Dict({"observation": box, "achieved_goal": box, "desired_goal": box})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.goal = np.zeros(1, np.float32)

    def compute_reward(self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any) -> np.ndarray:
        return -(np.abs(np.asarray(achieved_goal) - np.asarray(desired_goal))[..., 0] > 0.5).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.goal = self.np_random.uniform(-1.0, 1.0, 1).astype(np.float32)
        return {"observation": self.goal.copy(), "achieved_goal": self.goal + 1.0, "desired_goal": self.goal.copy()}, {}

    def step(self, action: np.ndarray):
        success = bool(self.np_random.random() < self.p)
        achieved = self.goal.copy() if success else self.goal + 1.0
        obs = {"observation": self.goal.copy(), "achieved_goal": achieved, "desired_goal": self.goal.copy()}
        reward = float(self.compute_reward(achieved, self.goal, {}))
        return obs, reward, False, False, {"is_success": float(success)}


class FaultyReachEnv(UserReachEnv):
    """``UserReach-v0`` that breaks its contract at its ``at_step``-th step (counted over its
    life): ``fault`` is ``nan_obs``, ``inf_obs``, ``nan_reward``, ``nan_goal`` (the achieved
    goal), ``raise`` (a RuntimeError in ``step``) or ``shape`` (an observation of 3 entries)."""

    def __init__(self, fault: str = "nan_obs", at_step: int = 25) -> None:
        super().__init__()
        self.fault, self.at_step, self.steps = fault, int(at_step), 0

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        if self.steps == self.at_step:
            if self.fault == "raise":
                raise RuntimeError("the simulator lost its licence")
            if self.fault == "nan_obs":
                obs["observation"][0] = np.nan
            elif self.fault == "inf_obs":
                obs["observation"][1] = np.inf
            elif self.fault == "nan_reward":
                reward = float("nan")
            elif self.fault == "nan_goal":
                obs["achieved_goal"][0] = np.nan
            elif self.fault == "shape":
                obs["observation"] = np.zeros(3, np.float32)
        return obs, reward, terminated, truncated, info


class BlockingReachEnv(UserReachEnv):
    """``UserReach-v0`` whose ``block_at``-th step blocks (sleeps for an hour)."""

    def __init__(self, block_at: int = 25) -> None:
        super().__init__()
        self.block_at, self.steps = int(block_at), 0

    def step(self, action: np.ndarray):
        self.steps += 1
        if self.steps == self.block_at:
            import time

            time.sleep(3600)
        return super().step(action)


gym.register("UserReach-v0", entry_point=UserReachEnv, max_episode_steps=10)
gym.register("BlockingReach-v0", entry_point=BlockingReachEnv, max_episode_steps=10)
gym.register("FaultyReach-v0", entry_point=FaultyReachEnv, max_episode_steps=10)
gym.register("CoinGoal-v0", entry_point=CoinGoalEnv, max_episode_steps=1)
gym.register("UserDense-v0", entry_point=UserDenseEnv, max_episode_steps=10)
gym.register("EndlessDense-v0", entry_point=UserDenseEnv)  # no time limit: its episodes never end


class AlwaysSucceeds(gym.Wrapper):
    """A user's Gymnasium wrapper (for ``env.wrappers``): every step reports ``is_success`` as
    ``value`` whatever the env says, and counts the envs it wrapped in ``AlwaysSucceeds.made``."""

    made = 0

    def __init__(self, env: gym.Env, value: float = 1.0) -> None:
        super().__init__(env)
        self.value = float(value)
        AlwaysSucceeds.made += 1

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "is_success": self.value}
