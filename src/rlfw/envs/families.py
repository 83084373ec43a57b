"""Env families: how to make and read the envs of one suite (Fetch, Panda, MuJoCo locomotion,
any Gymnasium id). ``env.family`` picks one from the ``env.family`` registry
(:data:`rlfw.envs.FAMILIES`); another package adds one with
``register("env.family", "<name>", None, MyFamily())`` in a module its entry point names.

A family with env keys of its own (Fetch: ``env.grasped_start``, ``env.near_object_start``;
Panda: ``env.near_object_start``)
registers their schema, a subclass of :class:`rlfw.envs.schema.EnvConfig`, with it and stores it
in Hydra's ConfigStore as ``env_schema/<name>``; its env option files select it with
``defaults: [/env_schema@env: <name>]`` (conf/env/fetch.yaml).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rlfw.core import GoalFn
from rlfw.envs.schema import FetchEnvConfig, PandaEnvConfig
from rlfw.errors import ConfigError, first_line
from rlfw.registry import register, registry

log = logging.getLogger("rlfw.envs")


class EnvFamily:
    """How to make and read the envs of one family. Subclasses override the goal functions.

    Attributes:
        modules: packages imported to register the family's ids with Gymnasium.
        goal: True if every env of the family is a goal env, None to read it off the env.
        entry_points: prefixes of the registered entry points (``module.path:Class``) of the
            ids this family runs; empty: any id. Checked when the id is resolved, so an id of
            another family stops at preflight rather than when the env is built.
        title: the family's name in messages (``Fetch``).
        reward_range: ``(low, high)``, bounds every reward of the family's goal envs when the
            family guarantees them (Fetch and Panda: ``(-1.0, 0.0)``), else None
            (:attr:`rlfw.core.EnvInfo.reward_range`; ``algo.clip_return: null`` reads it).
    """

    modules: tuple[str, ...] = ()
    goal: bool | None = None
    entry_points: tuple[str, ...] = ()
    title: str = ""
    reward_range: tuple[float, float] | None = None

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
        wrappers: Sequence[Any] = (),
    ) -> gym.Env:
        """One env: ``gymnasium.make``, the user's ``env.wrappers`` in order
        (:func:`rlfw.envs.wrappers.apply_wrappers`), then its actions rescaled to [-1, 1] when
        the bounds differ."""
        extra: dict[str, Any] = dict(kwargs or {})
        if max_episode_steps is not None:
            extra["max_episode_steps"] = max_episode_steps
        if render_mode is not None:
            extra["render_mode"] = render_mode
        try:
            env = gym.make(env_id, **extra)
        except Exception as err:
            if render_mode is not None or isinstance(err, ConfigError):
                raise  # record_episodes says what rendering needs
            shown = ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())
            raise ConfigError(f"env.id '{env_id}' cannot be made" + (f" with env.kwargs {shown}" if shown else "")
                              + f": {type(err).__name__}: {first_line(err)}") from None  # fmt: skip
        if wrappers:
            from rlfw.envs.wrappers import apply_wrappers

            env = apply_wrappers(env, wrappers)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(
                f"env.id '{env_id}' has a {type(space).__name__} action space; rlfw's algorithms "
                "need continuous (Box) actions"
            )
        if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
            env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))
        return env

    def check_env(self, env: Any, env_id: str) -> None:
        """The family's own rules on the composed ``env`` node for the resolved ``env_id``
        (called by :func:`rlfw.config.validate.validate`). Here: the scripted starts
        (``env.grasped_start``, ``env.near_object_start``) are off; the Fetch and Panda
        families allow them on their tasks with an object.

        Raises:
            ConfigError: one line naming the key, the env id and the value to set.
        """
        _check_starts(env, env_id, grasps=False, has_object=False)

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
    """Wrap ``fn(ag [B, G], g [B, G])`` to return ``[B]``.

    A function that does not return one value per row is called once per row with 1-D goals
    ``[G]`` (as a non-vectorised GoalEnv ``compute_reward`` expects), from then on: one that
    returns a single value for a batch of several rows (``-float(norm(ag - g) > eps)``, the norm
    taken over the whole batch) or a ``[B, B]`` matrix (panda-gym 3.0.7's PandaFlip uses
    ``np.inner``). A batch of one row cannot tell, so it is called as a batch.
    """
    rowwise = False

    def per_row(ag: np.ndarray, g: np.ndarray) -> np.ndarray:
        return np.array([np.asarray(fn(ag[i], g[i])).reshape(-1)[0] for i in range(len(ag))], dtype=dtype)

    def call(ag: np.ndarray, g: np.ndarray) -> np.ndarray:
        nonlocal rowwise
        n = len(ag)
        if rowwise:
            return per_row(ag, g)
        out = np.asarray(fn(ag, g), dtype=dtype)
        if out.size == n:
            return out.reshape(n)
        rowwise = True
        log.info("the env's goal function returned shape %s for %d rows: calling it once per row", out.shape, n)
        return per_row(ag, g)

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
    entry_points = ("gymnasium_robotics.envs.fetch.",)
    title = "Gymnasium-Robotics Fetch"
    reward_range = (-1.0, 0.0)  # sparse {-1, 0}; dense rewards (-distance, < 0.5 m) lie in it too

    def goal_functions(self, env: gym.Env) -> tuple[GoalFn, GoalFn]:
        reward_fn, _ = super().goal_functions(env)
        return reward_fn, _never_terminated

    def check_env(self, env: Any, env_id: str) -> None:
        """Scripted starts where the task has what they need: ``env.grasped_start`` on the
        tasks whose gripper grasps (PickAndPlace), ``env.near_object_start`` on the tasks with
        an object (Push, Slide, PickAndPlace)."""
        _check_starts(env, env_id, grasps="PickAndPlace" in env_id,
                      has_object=any(t in env_id for t in ("Push", "Slide", "PickAndPlace")))  # fmt: skip


class PandaFamily(EnvFamily):
    """panda-gym 3 (PyBullet): an episode is terminated when the task succeeds.

    The panda-gym 3.0.7 wheel ships without its texture ``colored_cube.png``, so PandaFlip-v3
    fails to build (``pybullet.error: Error loading texture``). :meth:`register` points
    panda-gym's asset lookup at rlfw's copy (a generated six-colour texture) when the file is
    missing; the texture only changes how the cube looks in renders.
    """

    modules = ("panda_gym",)
    goal = True
    entry_points = ("panda_gym.",)
    title = "panda-gym"
    reward_range = (-1.0, 0.0)  # sparse {-1, 0}; dense rewards (-distance, < 0.5 m) lie in it too

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

    def check_env(self, env: Any, env_id: str) -> None:
        """``env.near_object_start`` on the tasks with one object (PandaPush, PandaSlide,
        PandaPickAndPlace); no grasped start (no scripted grasp for the Panda)."""
        _check_starts(env, env_id, grasps=False,
                      has_object=any(t in env_id for t in ("Push", "Slide", "PickAndPlace")))  # fmt: skip

    def goal_functions(self, env: gym.Env) -> tuple[GoalFn, GoalFn]:
        reward_fn, _ = super().goal_functions(env)
        task = env.unwrapped.task  # type: ignore[attr-defined]
        return reward_fn, _rowwise(task.is_success, bool)


def _check_starts(env: Any, env_id: str, grasps: bool, has_object: bool) -> None:
    """Refuse a scripted start the task cannot have (:meth:`EnvFamily.check_env`).

    Raises:
        ConfigError: ``env.grasped_start`` > 0 where nothing grasps, or
            ``env.near_object_start`` > 0 where there is no object.
    """
    grasped = float(getattr(env, "grasped_start", 0.0) or 0.0)
    near = float(getattr(env, "near_object_start", 0.0) or 0.0)
    if grasped > 0.0 and not grasps:
        raise ConfigError(
            f"env.grasped_start={env.grasped_start} starts episodes with the object in the gripper, which "
            f"only a Fetch task with a gripper that grasps has (FetchPickAndPlace-v4); env.id is '{env_id}': "
            "set env.grasped_start=0"
        )
    if near > 0.0 and not has_object:
        raise ConfigError(
            f"env.near_object_start={env.near_object_start} starts episodes with the gripper beside the object, "
            f"which only a task with one object has (Fetch or Panda Push, Slide, PickAndPlace); env.id is "
            f"'{env_id}': set env.near_object_start=0"
        )


FAMILIES = registry("env.family")
register("env.family", "gym", None, GymFamily())
register("env.family", "mujoco", None, MujocoFamily())
register("env.family", "fetch", FetchEnvConfig, FetchFamily())
register("env.family", "panda", PandaEnvConfig, PandaFamily())


def _store_family_schemas() -> None:
    """``env_schema/<name>`` in Hydra's ConfigStore for each family above with a schema."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="env_schema", name="fetch", node=FetchEnvConfig)
    ConfigStore.instance().store(group="env_schema", name="panda", node=PandaEnvConfig)


_store_family_schemas()
