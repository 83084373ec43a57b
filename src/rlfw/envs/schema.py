"""The ``env`` group's schema (:class:`EnvConfig`), the keys every env family shares; a family
with keys of its own extends it (:class:`FetchEnvConfig`, the Fetch family's: its scripted
starts; :class:`PandaEnvConfig`, panda-gym's), registered with the family and selected by the
family's env option files. Re-exported by
:mod:`rlfw.config.schema`."""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time.
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from rlfw.core.checks import in_range, one_of, require

__all__ = ["EnvConfig", "FetchEnvConfig", "PandaEnvConfig"]


@dataclass
class EnvConfig:
    """The environment. ``family`` picks the adapter (registry ``env.family``, :mod:`rlfw.envs`); ``id`` any Gymnasium id.

    A family with keys of its own extends this schema (:class:`FetchEnvConfig`:
    the scripted starts) and its env option files select it (``/env_schema@env: fetch``)."""

    family: str = "gym"  # fetch, panda, gym
    # Any registered Gymnasium id, or Gymnasium's module:Env-v0 form (the module is imported first)
    id: str = MISSING
    # Modules imported before the id is resolved and each env is made (their gymnasium.register
    # calls add the user's envs; rl-zoo's --gym-packages), e.g. [my_pkg.envs]. Saved with the
    # run, so resume= and rlfw.evaluate import them too.
    imports: list[str] = field(default_factory=list)
    max_episode_steps: int | None = None  # None: the registered TimeLimit
    # Passed to gymnasium.make: env.kwargs.reward_type=dense (no + needed), checked against the
    # env's constructor.
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Gymnasium wrappers applied in order after gymnasium.make (rl-zoo's env_wrapper):
    # [package.module:Name, {package.module:Name: {kwarg: value}}]; rlfw.envs.wrappers
    wrappers: list[Any] = field(default_factory=list)
    vectorization: str = "sync"  # sync, async (gymnasium.vector)
    # An id whose version is not registered (FetchSlide-v3) is refused; true runs the newest
    # registered version instead, with one log line (the env=Fetch*-v2 option files set it).
    resolve_version: bool = False
    # The family's Gaussian exploration scale (std in [-1, 1] action units): noise=gaussian's
    # sigma is ${env.noise_sigma}, so a family file can set it whatever the noise choice (a
    # family file cannot name noise.sigma: noise=none has no such key). noise.sigma=x still wins.
    noise_sigma: float = 0.1

    @staticmethod
    def validate(node: Any) -> None:
        """The family's name and the vectorisation (the id is resolved by the validator)."""
        from rlfw.registry import registry

        registry("env.family").check(node.family)
        one_of(node.vectorization, ("sync", "async"), "env.vectorization")
        in_range(node, "max_episode_steps", 1, optional=True, prefix="env.")
        in_range(node, "noise_sigma", 0.0, prefix="env.")

    @staticmethod
    def check_kwargs(env_id: str, kwargs: Any, family: Any = None) -> None:
        """Refuse ``env.kwargs`` keys that the env's constructor does not take, read from the
        signatures of the registered entry point's ``__init__`` (and, where it passes
        ``**kwargs`` on, its base classes') without building the env. Keys of
        ``gymnasium.make`` itself are allowed; a constructor that takes ``**kwargs`` all the
        way down accepts anything.

        Raises:
            ConfigError: ``env.kwargs.foo: FetchReach-v4's constructor takes no such argument``.
        """
        import inspect

        import gymnasium as gym

        keys = [str(k) for k in (kwargs or {})]
        if not keys:
            return
        owned = {"max_episode_steps": "set env.max_episode_steps=<steps> instead",
                 "render_mode": "rlfw sets it itself (videos: rlfw.evaluate video=true, logger.video_every)"}  # fmt: skip
        for key in keys:
            require(key not in owned, f"env.kwargs.{key}: {owned.get(key, '')}")
        if family is not None:
            family.register()
        try:
            spec = gym.spec(env_id)
            creator: Any = spec.entry_point
            if isinstance(creator, str):
                creator = gym.envs.registration.load_env_creator(creator)
        except Exception:  # an id or entry point that cannot be read: gym.make will say why
            return
        allowed = {"max_episode_steps", "disable_env_checker", "render_mode"}
        chain = inspect.getmro(creator) if inspect.isclass(creator) else (creator,)
        for obj in chain:
            init = obj.__init__ if inspect.isclass(obj) else obj
            if init is object.__init__:
                break
            try:
                params = inspect.signature(init).parameters.values()
            except (TypeError, ValueError):
                return
            allowed |= {q.name for q in params if q.kind is not q.VAR_KEYWORD}
            if not any(q.kind is q.VAR_KEYWORD for q in params):
                unknown = [k for k in keys if k not in allowed]
                require(
                    not unknown,
                    f"env.kwargs.{unknown[0] if unknown else ''}: {env_id}'s constructor takes no such "
                    f"argument; it takes: {', '.join(sorted(allowed - {'self'}))}",
                )
                return


@dataclass
class FetchEnvConfig(EnvConfig):
    """The Fetch family's env keys (``env=Fetch*``, :class:`rlfw.envs.families.FetchFamily`):
    the shared ones plus its scripted starts, training episodes that begin in a state the
    family's scripts put the robot in (:mod:`rlfw.envs.grasp`). Evaluation starts as the env
    does. Which task can have which start is the family's rule
    (:meth:`rlfw.envs.families.FetchFamily.check_env`).
    """

    # Fraction of training episodes that start with the object in the gripper (HER paper,
    # Andrychowicz et al. 2017, Sec. 4.1: half of the pick-and-place training episodes); only for
    # Fetch tasks whose gripper can grasp (FetchPickAndPlace).
    grasped_start: float = 0.0
    # Fraction of training episodes that start with the gripper beside the object, at its height
    # ("exploring starts", Sutton and Barto 2018, Sec. 5.3; rlfw.envs.grasp.NearObjectStart);
    # only for Fetch tasks with an object (Push, Slide, PickAndPlace).
    near_object_start: float = 0.0

    @staticmethod
    def validate(node: Any) -> None:
        """The shared keys, the two fractions' ranges, and their sum (each training episode
        starts one way).

        Raises:
            ConfigError: one line naming the key and its allowed range.
        """
        EnvConfig.validate(node)
        in_range(node, "grasped_start", 0.0, 1.0, prefix="env.")
        in_range(node, "near_object_start", 0.0, 1.0, prefix="env.")
        require(
            float(node.grasped_start) + float(node.near_object_start) <= 1.0,
            f"env.grasped_start={node.grasped_start} and env.near_object_start={node.near_object_start} are "
            "fractions of the same training episodes (each starts one way): their sum must be <= 1",
        )


@dataclass
class PandaEnvConfig(EnvConfig):
    """The panda-gym family's env keys (``env=Panda*``, :class:`rlfw.envs.families.PandaFamily`):
    the shared ones plus the near-object start (:mod:`rlfw.envs.grasp`). Evaluation starts as the
    env does; the family's rule names the tasks that can have it
    (:meth:`rlfw.envs.families.PandaFamily.check_env`).
    """

    # Fraction of training episodes that start with the gripper beside the object, at its height
    # ("exploring starts", Sutton and Barto 2018, Sec. 5.3; rlfw.envs.grasp.place_beside); only for
    # panda-gym tasks with one object (PandaPush, PandaSlide, PandaPickAndPlace).
    near_object_start: float = 0.0

    @staticmethod
    def validate(node: Any) -> None:
        """The shared keys and the fraction's range.

        Raises:
            ConfigError: one line naming the key and its allowed range.
        """
        EnvConfig.validate(node)
        in_range(node, "near_object_start", 0.0, 1.0, prefix="env.")
