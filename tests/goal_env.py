"""A tiny deterministic goal env and helpers that feed hand-built episodes into a ReplayBuffer.

Every observation is recognisable: step ``t`` of episode ``ep`` has
``observation == achieved_goal == value(ep, t) + offsets`` with ``value(ep, t) = 100 * ep + t``
(``offsets = 0.25 * arange(dim)``), so :func:`decode` tells which state any stored or sampled
vector came from. The desired goal of episode ``ep`` is ``100 * ep + 50 + offsets``, which no
achieved goal ever equals (episodes have at most 49 steps): a sample's goal tells at once
whether it was relabelled, and from which state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from rlfw.envs import EnvInfo

EPS = 0.5  # success radius: distinct states are >= 1 apart, equal ones 0
MAX_T = 49  # longest episode: keeps t < 50 so goals and states never collide
KEYS = ("observation", "achieved_goal", "desired_goal")


# ------------------------------------------------------------------------------------------
# the env


class PointGoalEnv(gym.Env):
    """A point in R^dim moved by its action; goal reached within ``eps``.

    ``compute_reward`` is vectorised, ``-(||ag - g|| > eps)`` as float32 (shape ``[B]`` for
    ``[B, dim]`` inputs, a scalar for ``[dim]`` inputs); ``compute_terminated`` returns zeros
    (or success, with ``terminate_on_success=True``).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        dim: int = 1,
        max_steps: int = 5,
        goal: float = 3.0,
        eps: float = EPS,
        terminate_on_success: bool = False,
    ) -> None:
        self.dim = dim
        self.max_steps = max_steps
        self.goal = np.full(dim, goal, np.float32)
        self.eps = eps
        self.terminate_on_success = terminate_on_success
        box = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.observation_space = gym.spaces.Dict({k: box for k in KEYS})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self.pos = np.zeros(dim, np.float32)
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "observation": self.pos.copy(),
            "achieved_goal": self.pos.copy(),
            "desired_goal": self.goal.copy(),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.pos = np.zeros(self.dim, np.float32)
        self.t = 0
        return self._obs(), {}

    def step(self, action):  # type: ignore[override]
        self.pos = (self.pos + np.clip(np.asarray(action, np.float32), -1.0, 1.0)).astype(
            np.float32
        )
        self.t += 1
        obs = self._obs()
        reward = float(self.compute_reward(obs["achieved_goal"], obs["desired_goal"], {}))
        terminated = bool(self.compute_terminated(obs["achieved_goal"], obs["desired_goal"], {}))
        truncated = self.t >= self.max_steps
        return obs, reward, terminated, truncated, {"is_success": reward == 0.0}

    def _dist(self, achieved_goal: np.ndarray, desired_goal: np.ndarray) -> np.ndarray:
        ag = np.asarray(achieved_goal, np.float64)
        g = np.asarray(desired_goal, np.float64)
        return np.linalg.norm(ag - g, axis=-1)

    def compute_reward(self, achieved_goal, desired_goal, info) -> np.ndarray:
        return -(self._dist(achieved_goal, desired_goal) > self.eps).astype(np.float32)

    def compute_terminated(self, achieved_goal, desired_goal, info) -> np.ndarray:
        d = self._dist(achieved_goal, desired_goal)
        if self.terminate_on_success:
            return d <= self.eps
        return np.zeros(np.shape(d), bool)


def goal_env_info(
    dim: int = 1, eps: float = EPS, terminate_on_success: bool = False, max_steps: int = 5
) -> EnvInfo:
    """An :class:`EnvInfo` for :class:`PointGoalEnv` (goal=True, vectorised goal functions)."""
    env = PointGoalEnv(dim, max_steps=max_steps, eps=eps, terminate_on_success=terminate_on_success)

    def compute_reward(ag: np.ndarray, g: np.ndarray) -> np.ndarray:
        return np.asarray(env.compute_reward(ag, g, {}), np.float32).reshape(len(ag))

    def compute_terminated(ag: np.ndarray, g: np.ndarray) -> np.ndarray:
        return np.asarray(env.compute_terminated(ag, g, {}), bool).reshape(len(ag))

    return EnvInfo(
        "PointGoal-v0", True, dim, dim, dim, max_steps, compute_reward, compute_terminated
    )


def plain_env_info(obs_dim: int = 1, act_dim: int = 1) -> EnvInfo:
    """An :class:`EnvInfo` of an env without goals."""
    return EnvInfo("Plain-v0", False, obs_dim, 0, act_dim, None)


# ------------------------------------------------------------------------------------------
# hand-built episodes


def value(ep_id: int, t: int | np.ndarray) -> Any:
    """The recognisable scalar of step ``t`` of episode ``ep_id``."""
    return 100 * ep_id + t


def decode(x: Any) -> tuple[int, int]:
    """``(ep_id, t)`` of a stored observation / achieved goal vector (its first component)."""
    v = round(float(np.asarray(x).reshape(-1)[0]))
    return divmod(v, 100)


def is_desired_goal(g: Any) -> bool:
    """True for an (unrelabelled) desired goal, ``100 * ep + 50``."""
    v = round(float(np.asarray(g).reshape(-1)[0]))
    return v % 100 == 50


def default_rewards(ep_id: int, T: int) -> np.ndarray:
    """Stored rewards distinct per step and per episode (exact in float32)."""
    return (-(ep_id % 8) - 0.125 * (np.arange(T) + 1)).astype(np.float32)


@dataclass
class Episode:
    """One hand-built episode of ``T`` steps (``T + 1`` observations)."""

    ep_id: int
    obs: np.ndarray  # [T + 1, dim]
    achieved_goal: np.ndarray  # [T + 1, dim]
    desired_goal: np.ndarray  # [dim]
    action: np.ndarray  # [T, dim]
    reward: np.ndarray  # [T]
    terminated: bool  # how it ends if it ends: terminated at step T - 1, else truncated

    @property
    def T(self) -> int:
        return len(self.reward)

    def obs_dict(self, t: int) -> dict[str, np.ndarray]:
        return {
            "observation": self.obs[t],
            "achieved_goal": self.achieved_goal[t],
            "desired_goal": self.desired_goal,
        }


def make_episode(
    ep_id: int,
    T: int,
    terminated: bool = False,
    dim: int = 1,
    rewards: Any = None,
) -> Episode:
    """Episode ``ep_id`` of ``T`` steps; step ``t`` observes ``value(ep_id, t) + offsets``."""
    if not 1 <= T <= MAX_T:
        raise ValueError(f"T={T} must be in [1, {MAX_T}]")
    off = 0.25 * np.arange(dim)
    v = value(ep_id, np.arange(T + 1)).astype(np.float64)
    ag = (v[:, None] + off[None, :]).astype(np.float32)
    action = np.repeat((((v[:-1] % 1000) / 1000.0)[:, None]), dim, axis=1).astype(np.float32)
    rew = default_rewards(ep_id, T) if rewards is None else np.asarray(rewards, np.float32)
    assert rew.shape == (T,)
    return Episode(
        ep_id=ep_id,
        obs=ag.copy(),
        achieved_goal=ag,
        desired_goal=(value(ep_id, 50) + off).astype(np.float32),
        action=action,
        reward=rew,
        terminated=terminated,
    )


@dataclass
class FeedLog:
    """What :func:`feed` wrote, for pure-Python reference computations.

    Attributes:
        rows: per env, ``(ep_id, t)`` of each stored observation row in write order: the
            position in the list is the storage's absolute row index (``EpisodeStorage.abs``).
        episodes: every episode that was (partly) fed, by id (phantom fillers included).
        taken: steps actually taken in each episode (``T`` for finished ones).
        finished: ids of the finished episodes.
        steps: vector steps fed.
    """

    rows: list[list[tuple[int, int]]]
    episodes: dict[int, Episode] = field(default_factory=dict)
    taken: dict[int, int] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    steps: int = 0

    def end(self, ep_id: int) -> int:
        """Last step whose observation is stored (the terminal or the current observation)."""
        return self.taken[ep_id]

    def live_rows(self, env: int, ring_rows: int) -> list[tuple[int, int]]:
        """Observation rows still in an env's ring of ``ring_rows`` rows."""
        return self.rows[env][-ring_rows:]

    def live_transitions(self, env: int, ring_rows: int) -> set[tuple[int, int]]:
        """Transitions ``(ep_id, t)`` still stored: their row is live and step t was taken."""
        return {(ep, t) for ep, t in self.live_rows(env, ring_rows) if t < self.taken[ep]}


def feed(
    buffer: Any,
    scripts: list[list[Episode]],
    steps: int | None = None,
    after_step: Callable[[Any, FeedLog], None] | None = None,
) -> FeedLog:
    """Play ``scripts[e]`` (episodes in order) in env ``e`` of ``buffer``, like the runner does.

    ``buffer.start(reset obs)`` once, then one ``buffer.add`` per vector step with Gymnasium's
    same-step autoreset: for an env that finishes, ``next_obs`` already holds the next
    episode's first observation and ``final_obs`` the finished episode's last one (``final_obs``
    is ``next_obs`` with the finished rows replaced, as :func:`rlfw.envs.obs.final_obs` builds it).
    An env that runs out of episodes continues with phantom truncated episodes of ``MAX_T``
    steps (ids ``900 + 10 * env + k``).

    Args:
        steps: vector steps; default: the shortest script (in steps).
        after_step: called as ``after_step(buffer, log)`` after every add.
    """
    N = len(scripts)
    if steps is None:
        steps = min(sum(ep.T for ep in s) for s in scripts)
    dim = scripts[0][0].obs.shape[1]
    log = FeedLog(rows=[[] for _ in range(N)])
    phantoms: list[list[Episode]] = [[] for _ in range(N)]

    def episode(e: int, i: int) -> Episode:
        if i < len(scripts[e]):
            ep = scripts[e][i]
        else:
            k = i - len(scripts[e])
            while len(phantoms[e]) <= k:
                phantoms[e].append(make_episode(900 + 10 * e + len(phantoms[e]), MAX_T, dim=dim))
            ep = phantoms[e][k]
        if ep.ep_id in log.episodes and log.episodes[ep.ep_id] is not ep:
            raise ValueError(f"episode id {ep.ep_id} used twice")
        log.episodes[ep.ep_id] = ep
        log.taken.setdefault(ep.ep_id, 0)
        return ep

    def stack(dicts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.stack([d[k] for d in dicts]).astype(np.float32) for k in KEYS}

    cur = [0] * N  # index of each env's current episode
    t = [0] * N  # step within it
    first = [episode(e, 0) for e in range(N)]
    buffer.start(stack([ep.obs_dict(0) for ep in first]))
    for e in range(N):
        log.rows[e].append((first[e].ep_id, 0))

    for _ in range(steps):
        action = np.zeros((N, dim), np.float32)
        reward = np.zeros(N, np.float32)
        terminated = np.zeros(N, bool)
        truncated = np.zeros(N, bool)
        nxt: list[dict[str, np.ndarray]] = []
        fin: list[dict[str, np.ndarray]] = []
        for e in range(N):
            ep = episode(e, cur[e])
            s = t[e]
            action[e] = ep.action[s]
            reward[e] = ep.reward[s]
            log.taken[ep.ep_id] = s + 1
            if s + 1 == ep.T:  # the episode ends with this step
                terminated[e] = ep.terminated
                truncated[e] = not ep.terminated
                log.finished.add(ep.ep_id)
                fin.append(ep.obs_dict(s + 1))
                log.rows[e].append((ep.ep_id, s + 1))
                cur[e] += 1
                t[e] = 0
                new = episode(e, cur[e])
                nxt.append(new.obs_dict(0))
                log.rows[e].append((new.ep_id, 0))
            else:
                t[e] = s + 1
                nxt.append(ep.obs_dict(s + 1))
                fin.append(ep.obs_dict(s + 1))
                log.rows[e].append((ep.ep_id, s + 1))
        done = terminated | truncated
        buffer.add(
            action, reward, terminated, truncated, stack(nxt), stack(fin) if done.any() else None
        )
        log.steps += 1
        if after_step is not None:
            after_step(buffer, log)
    return log
