"""Environments: family adapters (Fetch, Panda, any Gymnasium id), id resolution, vector envs.

The ``env`` config group has one file per family and one per task id. ``env.family`` picks an
:class:`EnvFamily` from :data:`FAMILIES`; it knows which package registers the ids, whether the
observations carry goals, and how to recompute rewards and terminations for relabelled goals.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import parse_env_id
from gymnasium.vector import AutoresetMode

from rlfw.core import EnvInfo, GoalFn
from rlfw.errors import ConfigError
from rlfw.registry import registry

__all__ = ["FAMILIES", "EnvFamily", "EnvInfo", "GoalFn", "make_vector_env", "read_env_info", "resolve_env_id"]

log = logging.getLogger(__name__)

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")

class EnvFamily:
    """How to make and read the envs of one family. Subclasses override the goal functions.

    Attributes:
        modules: packages imported to register the family's ids with Gymnasium.
        goal: True if every env of the family is a goal env, None to read it off the env.
    """

    modules: tuple[str, ...] = ()
    goal: bool | None = None

    def register(self) -> None:
        """Import the packages that register this family's ids (a missing one is skipped)."""
        for name in self.modules:
            try:
                # gymnasium-robotics prints a notice about Adroit envs at import: keep it quiet
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    module = importlib.import_module(name)
            except ImportError:  # pragma: no cover - an optional suite not installed
                continue
            if name == "gymnasium_robotics":
                gym.register_envs(module)

    def make(
        self,
        env_id: str,
        max_episode_steps: int | None = None,
        kwargs: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> gym.Env:
        """One env, its actions rescaled to [-1, 1] when the bounds differ."""
        extra: dict[str, Any] = dict(kwargs or {})
        if max_episode_steps is not None:
            extra["max_episode_steps"] = max_episode_steps
        if render_mode is not None:
            extra["render_mode"] = render_mode
        env = gym.make(env_id, **extra)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(
                f"env.id '{env_id}' has a {type(space).__name__} action space; rlfw's algorithms "
                "need continuous (Box) actions"
            )
        if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
            env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))
        return env

    def goal_functions(self, env: gym.Env) -> tuple[GoalFn, GoalFn]:
        """Vectorised (compute_reward, compute_terminated) of a goal env (GoalEnv API).

        A function that does not return one value per row (panda-gym 3.0.7's PandaFlip uses
        ``np.inner`` and returns a ``[B, B]`` matrix) is evaluated row by row instead.
        """
        base = env.unwrapped
        term_fn = getattr(base, "compute_terminated", None)
        reward = _rowwise(lambda ag, g: base.compute_reward(ag, g, {}), np.float32)  # type: ignore[attr-defined]
        if term_fn is None:
            return reward, _never_terminated
        return reward, _rowwise(lambda ag, g: term_fn(ag, g, {}), bool)


def _never_terminated(ag: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.zeros(len(ag), dtype=bool)


def _rowwise(fn: Callable[[np.ndarray, np.ndarray], Any], dtype: Any) -> GoalFn:
    """Wrap ``fn(ag [B, G], g [B, G])`` to return ``[B]``; fall back to one call per row."""

    def call(ag: np.ndarray, g: np.ndarray) -> np.ndarray:
        n = len(ag)
        out = np.asarray(fn(ag, g), dtype=dtype)
        if out.size == n:
            return out.reshape(n)
        if out.size == 1:
            return np.full(n, out.reshape(()), dtype=dtype)
        return np.array([np.asarray(fn(ag[i : i + 1], g[i : i + 1])).reshape(-1)[0] for i in range(n)], dtype=dtype)

    return call


class GymFamily(EnvFamily):
    """Any Gymnasium id (MuJoCo locomotion such as Hopper, or a goal env of another suite)."""

    modules: tuple[str, ...] = ("gymnasium_robotics", "panda_gym")


class MujocoFamily(GymFamily):
    """Gymnasium's MuJoCo locomotion tasks (Hopper, Walker2d, HalfCheetah, ...): no goals."""

    modules: tuple[str, ...] = ()
    goal = False


class FetchFamily(EnvFamily):
    """Gymnasium-Robotics Fetch (MuJoCo): episodes are truncated at 50 steps, never terminated."""

    modules = ("gymnasium_robotics",)
    goal = True

    def goal_functions(self, env: gym.Env) -> tuple[GoalFn, GoalFn]:
        reward_fn, _ = super().goal_functions(env)
        return reward_fn, _never_terminated


class PandaFamily(EnvFamily):
    """panda-gym 3 (PyBullet): an episode is terminated when the task succeeds.

    The panda-gym 3.0.7 wheel ships without its texture ``colored_cube.png``, so PandaFlip-v3
    fails to build (``pybullet.error: Error loading texture``). :meth:`register` points
    panda-gym's asset lookup at rlfw's copy (a generated six-colour texture) when the file is
    missing; the texture only changes how the cube looks in renders.
    """

    modules = ("panda_gym",)
    goal = True

    def register(self) -> None:
        super().register()
        try:
            import panda_gym.assets as assets
        except ImportError:  # pragma: no cover
            return
        own = Path(assets.__file__).parent
        if not (own / "colored_cube.png").exists() and not getattr(assets, "_rlfw_patched", False):
            ours = str(Path(__file__).parent / "assets")
            assets.get_data_path = lambda: ours
            assets._rlfw_patched = True  # type: ignore[attr-defined]

    def goal_functions(self, env: gym.Env) -> tuple[GoalFn, GoalFn]:
        reward_fn, _ = super().goal_functions(env)
        task = env.unwrapped.task  # type: ignore[attr-defined]
        return reward_fn, _rowwise(task.is_success, bool)


FAMILIES = registry("env.family")
FAMILIES.add("gym", GymFamily())
FAMILIES.add("mujoco", MujocoFamily())
FAMILIES.add("fetch", FetchFamily())
FAMILIES.add("panda", PandaFamily())


def resolve_env_id(env_id: str, family: str = "gym", resolve_version: bool = False) -> tuple[str, str | None]:
    """Map a user's id to a registered one.

    An id that is registered is returned unchanged. An unregistered version of a registered name
    is refused unless ``resolve_version`` (``env.resolve_version``; the ``env=Fetch*-v2`` option
    files set it), then it resolves to the highest registered version that does not need
    mujoco-py (gymnasium-robotics 1.4 registers Fetch v1 for mujoco-py and v4 only, so
    ``FetchSlide-v2`` becomes ``FetchSlide-v4``).

    Returns:
        (resolved id, a one-line message saying what was changed, or None).

    Raises:
        ConfigError: if no version of the name is registered (with close matches), or the
            version is not registered and ``resolve_version`` is False (naming the ones that are).
    """
    FAMILIES.get(family).target.register()
    if env_id in gym.registry:
        return env_id, None
    try:
        ns, name, _ = parse_env_id(env_id)
    except gym.error.Error as err:
        raise ConfigError(f"env.id '{env_id}' is not a Gymnasium id: {err}") from None
    versions = [
        spec
        for spec in gym.registry.values()
        if spec.namespace == ns and spec.name == name and spec.version is not None
    ]
    usable = [s for s in versions if "mujocopy" not in str(s.entry_point).lower().replace("_", "")]
    if not usable:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise ConfigError(f"env.id '{env_id}' is not a registered Gymnasium id{hint}")
    best = max(usable, key=lambda s: s.version or 0)
    have = ", ".join(f"v{s.version}" for s in sorted(versions, key=lambda s: s.version or 0))
    if not resolve_version:
        raise ConfigError(
            f"env.id '{env_id}' is not registered (installed: {have}); use env.id={best.id}, or "
            f"env.resolve_version=true to run the newest registered version"
        )
    message = f"env.id '{env_id}' is not registered (installed: {have}); using '{best.id}'"
    return best.id, message


def make_env_fn(
    family: EnvFamily,
    env_id: str,
    max_episode_steps: int | None,
    kwargs: dict[str, Any],
    render_mode: str | None = None,
) -> Callable[[], gym.Env]:
    """A picklable-enough thunk for gymnasium.vector (sync or async)."""

    def thunk() -> gym.Env:
        family.register()
        return family.make(env_id, max_episode_steps, kwargs, render_mode)

    return thunk


def make_vector_env(
    family: EnvFamily,
    env_id: str,
    num_envs: int,
    max_episode_steps: int | None = None,
    kwargs: dict[str, Any] | None = None,
    vectorization: str = "sync",
) -> gym.vector.VectorEnv:
    """``num_envs`` copies in a Gymnasium vector env with same-step autoreset.

    Same-step autoreset means a finished sub-env returns its reset observation at once and the
    final observation in ``info["final_obs"]``: every vector step is a real transition.
    """
    fns = [make_env_fn(family, env_id, max_episode_steps, dict(kwargs or {})) for _ in range(num_envs)]
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


def read_env_info(family_name: str, env: gym.Env, env_id: str) -> EnvInfo:
    """Shapes and goal functions of a built (single) env.

    Raises:
        ConfigError: if the family expects goals and the observations carry none.
    """
    family = FAMILIES.get(family_name).target
    space = env.observation_space
    is_goal = isinstance(space, gym.spaces.Dict) and all(k in space.spaces for k in GOAL_KEYS)
    if family.goal and not is_goal:
        raise ConfigError(
            f"env.family '{family_name}' expects a goal env, but env.id '{env_id}' has no "
            f"observation/achieved_goal/desired_goal observations; use env=hopper env.id={env_id}"
        )
    act_dim = int(np.prod(env.action_space.shape))  # type: ignore[arg-type]
    spec = env.spec
    max_steps = spec.max_episode_steps if spec is not None else None
    if is_goal:
        obs_dim = int(np.prod(space["observation"].shape))  # type: ignore[index,arg-type]
        goal_dim = int(np.prod(space["desired_goal"].shape))  # type: ignore[index,arg-type]
        reward_fn, term_fn = family.goal_functions(env)
        return EnvInfo(env_id, True, obs_dim, goal_dim, act_dim, max_steps, reward_fn, term_fn)
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(
            f"env.id '{env_id}' has a {type(space).__name__} observation space; rlfw needs a Box "
            "or a goal Dict (observation, achieved_goal, desired_goal)"
        )
    return EnvInfo(env_id, False, int(np.prod(space.shape)), 0, act_dim, max_steps)
