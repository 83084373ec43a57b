"""Environments: family adapters (Fetch, Panda, any Gymnasium id), id resolution, vector envs.

The ``env`` config group has one file per family and one per task id. ``env.family`` picks an
:class:`EnvFamily` from :data:`FAMILIES` (:mod:`rlfw.envs.families`); it knows which package registers the ids, whether the
observations carry goals, and how to recompute rewards and terminations for relabelled goals.

A user's own envs: ``env.imports`` lists modules imported before an id is resolved or an env
is made (their ``gymnasium.register`` calls run; rl-zoo's ``--gym-packages``), and an id may
take Gymnasium's ``module:Env-v0`` form (``gymnasium.make`` imports ``module`` first). Both are
the user's explicit keys, saved with the run, so ``resume=`` and ``rlfw.evaluate`` import the
same modules.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import parse_env_id
from gymnasium.vector import AutoresetMode

from rlfw.core import EnvInfo, GoalFn
from rlfw.envs.families import (
    FAMILIES,
    EnvFamily,
    FetchFamily,
    GymFamily,
    MujocoFamily,
    PandaFamily,
)
from rlfw.errors import ConfigError

__all__ = [
    "FAMILIES",
    "EnvFamily",
    "EnvInfo",
    "FetchFamily",
    "GoalFn",
    "GymFamily",
    "MujocoFamily",
    "PandaFamily",
    "env_imports",
    "env_wrappers",
    "import_env_modules",
    "make_vector_env",
    "read_env_info",
    "resolve_env_id",
]

log = logging.getLogger(__name__)

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")

def env_imports(cfg: Any) -> tuple[str, ...]:
    """``cfg.env.imports`` as a tuple of module names; () for a config saved without the key."""
    names = getattr(cfg.env, "imports", None)
    return tuple(str(n) for n in names) if names else ()


def env_wrappers(cfg: Any) -> list[Any]:
    """``cfg.env.wrappers`` as plain data (paths and ``{path: kwargs}`` mappings); [] for a
    config saved without the key."""
    from omegaconf import OmegaConf

    raw = getattr(cfg.env, "wrappers", None)
    if raw is None:
        return []
    plain = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
    return list(plain) if isinstance(plain, list | tuple) else []


def named_modules(env_cfg: Any) -> tuple[str, ...]:
    """The modules a saved env config would import to make its env: ``env.imports``, the
    module of a ``module:Env-v0`` id and those of ``env.wrappers``.

    Args:
        env_cfg: a config's ``env`` node or dict.
    """
    get = env_cfg.get if hasattr(env_cfg, "get") else lambda k, d=None: getattr(env_cfg, k, d)
    from rlfw.envs.wrappers import wrapper_modules

    given = get("imports", None) or ()
    names = [given] if isinstance(given, str) else [str(n) for n in given]
    env_id = str(get("id", "") or "")
    if ":" in env_id:
        names.append(env_id.rsplit(":", 1)[0])
    names += wrapper_modules(get("wrappers", None) or ())
    return tuple(dict.fromkeys(names))


def check_trusted(env_cfg: Any, trusted: Sequence[str], source: str, how: str) -> None:
    """Refuse to import code that a run directory names (issue 33: a run directory from someone
    else is data only): every module of :func:`named_modules` must be in ``trusted``, the
    modules the user named again.

    Args:
        env_cfg: the saved config's ``env`` node or dict.
        trusted: the modules the user trusts (named on the command line or in the call).
        source: the run directory (for the message).
        how: how the user names them, e.g. ``imports=[user_envs]``, with ``{modules}`` where
            the names go.

    Raises:
        ConfigError: one line naming the modules and how to trust them.
    """
    untrusted = [m for m in named_modules(env_cfg) if m not in set(map(str, trusted))]
    if untrusted:
        names = ",".join(untrusted)
        raise ConfigError(
            f"{source}: its config imports {', '.join(untrusted)} to make its env, and rlfw runs no code a run "
            f"directory names; if you trust it, name it again: {how.format(modules=names)}"
        )


def import_env_modules(modules: Sequence[str], key: str = "env.imports") -> None:
    """Import the user's modules that register envs (their ``gymnasium.register`` calls run).

    This runs the user's own code, by the user's explicit request (``env.imports`` or the
    module of a ``module:Env-v0`` id); rlfw imports no other module of the user's.

    Raises:
        ConfigError: a name that is not a dotted module name, a module that cannot be found, or
            one whose import fails, as one line naming ``key``, the module and the cause.
    """
    for name in modules:
        name = str(name)
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"{key}: '{name}' is not a Python module name (a.b.c)")
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(
                f"{key}: cannot import module '{name}' ({err}); put the folder that holds it on "
                "PYTHONPATH, run from that folder, or install its package"
            ) from None
        except Exception as err:  # the user's module raised while it was imported
            first = next((ln for ln in str(err).splitlines() if ln.strip()), "")
            raise ConfigError(
                f"{key}: importing module '{name}' failed: {type(err).__name__}: {first}"
            ) from None


def _entry_point(spec: Any) -> str:
    """A spec's entry point as ``module.path:Name`` (Gymnasium takes a string or a callable)."""
    ep = spec.entry_point
    if isinstance(ep, str):
        return ep
    return f"{getattr(ep, '__module__', '')}:{getattr(ep, '__qualname__', '')}"


def resolve_env_id(
    env_id: str, family: str = "gym", resolve_version: bool = False, imports: Sequence[str] = ()
) -> tuple[str, str | None]:
    """Map a user's id to a registered one.

    First the family's packages and then ``imports`` (``env.imports``) are imported; an id of
    the form ``module:Env-v0`` (Gymnasium's) imports ``module`` too and keeps the prefix, so
    ``gymnasium.make`` of the returned id works in any process. An id that is registered is
    returned unchanged. An unregistered version of a registered name is refused unless
    ``resolve_version`` (``env.resolve_version``; the ``env=Fetch*-v2`` option files set it),
    then it resolves to the highest registered version that does not need mujoco-py
    (gymnasium-robotics 1.4 registers Fetch v1 for mujoco-py and v4 only, so ``FetchSlide-v2``
    becomes ``FetchSlide-v4``). Finally the id must belong to the family (its entry point under
    :attr:`EnvFamily.entry_points`): ``env.id=Pendulum-v1`` with the default Fetch family is
    refused with the ``env=gym`` fix.

    Returns:
        (resolved id, a one-line message saying what was changed, or None).

    Raises:
        ConfigError: a module that cannot be imported (:func:`import_env_modules`); no version
            of the name registered (with close matches); the version not registered and
            ``resolve_version`` False (naming the ones that are); an id of another family.
    """
    adapter = FAMILIES.get(family).target
    adapter.register()
    before = set(gym.registry)
    import_env_modules(imports)
    module, sep, bare = env_id.rpartition(":")
    if sep:
        import_env_modules([module], key=f"env.id '{env_id}'")
    imported = [*imports, *([module] if sep else [])]
    after = f" after importing {', '.join(imported)}" if imported else ""
    theirs = sorted(set(gym.registry) - before) or sorted(
        i for i, spec in gym.registry.items() if imported and _entry_point(spec).startswith(tuple(f"{m}{c}" for m in imported for c in ":."))
    )  # the ids the user's modules register (this call, or an earlier import of them)
    resolved, message = _resolve_registered(bare, env_id, resolve_version, after, theirs if imported else None)
    entry = _entry_point(gym.spec(resolved))
    if adapter.entry_points and not entry.startswith(adapter.entry_points):
        owner = next((n for n in FAMILIES.names() if FAMILIES.get(n).target.entry_points
                      and entry.startswith(FAMILIES.get(n).target.entry_points)), None)  # fmt: skip
        fix = (f"env={owner} env.id={env_id}" if owner else
               f"env=gym env.id={env_id} (any Gymnasium id) or env=hopper env.id={env_id} (dense MuJoCo tasks)")
        raise ConfigError(
            f"env.id '{env_id}' is not a {adapter.title or family} task (env.family '{family}' runs "
            f"the ids of {', '.join(p.rstrip('.:') for p in adapter.entry_points)}); choose the "
            f"id's family first: {fix}"
        )
    return (f"{module}:{resolved}" if sep else resolved), message


def _resolve_registered(
    env_id: str, shown: str, resolve_version: bool, after: str, theirs: list[str] | None = None
) -> tuple[str, str | None]:
    """:func:`resolve_env_id` on an id without a module prefix (``shown`` is what the user typed;
    ``theirs``: the ids the user's modules registered, None when no module was named)."""
    if env_id in gym.registry:
        return env_id, None
    try:
        ns, name, _ = parse_env_id(env_id)
    except gym.error.Error as err:
        raise ConfigError(f"env.id '{shown}' is not a Gymnasium id: {err}") from None
    versions = [
        spec
        for spec in gym.registry.values()
        if spec.namespace == ns and spec.name == name and spec.version is not None
    ]
    usable = [s for s in versions if "mujocopy" not in str(s.entry_point).lower().replace("_", "")]
    if not usable:
        if theirs is not None:  # the user named their module: its ids, not Gymnasium's
            close = difflib.get_close_matches(env_id, theirs, n=5, cutoff=0.0)
            hint = (f"; the modules register: {', '.join(close)}" if close else
                    "; the modules register no Gymnasium id (call gymnasium.register in them)")  # fmt: skip
        else:
            close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.6)
            hint = (f"; did you mean: {', '.join(close)}" if close else "") + (
                "; if it is your own env, name the module that registers it: env.imports=[my_pkg.envs] "
                "or env.id=my_pkg.envs:" + shown)
        raise ConfigError(f"env.id '{shown}' is not a registered Gymnasium id{after}{hint}")
    best = max(usable, key=lambda s: s.version or 0)
    have = ", ".join(f"v{s.version}" for s in sorted(versions, key=lambda s: s.version or 0))
    if not resolve_version:
        raise ConfigError(
            f"env.id '{shown}' is not registered (installed: {have}); use env.id={best.id}, or "
            f"env.resolve_version=true to run the newest registered version"
        )
    message = f"env.id '{shown}' is not registered (installed: {have}); using '{best.id}'"
    return best.id, message


def make_env_fn(
    family: EnvFamily,
    env_id: str,
    max_episode_steps: int | None,
    kwargs: dict[str, Any],
    render_mode: str | None = None,
    imports: Sequence[str] = (),
    grasped_start: float = 0.0,
    near_object_start: float = 0.0,
    wrappers: Sequence[Any] = (),
) -> Callable[[], gym.Env]:
    """A picklable-enough thunk for gymnasium.vector (sync or async); it imports the family's
    packages and ``imports`` (``env.imports``) first, so a spawned env process knows the id.
    ``grasped_start`` or ``near_object_start`` > 0 wraps the env in
    :class:`rlfw.envs.grasp.ScriptedStart` (training envs; one start drawn per episode)."""
    modules = tuple(imports)

    def thunk() -> gym.Env:
        family.register()
        import_env_modules(modules)
        env = family.make(env_id, max_episode_steps, kwargs, render_mode, wrappers)
        if grasped_start > 0.0 or near_object_start > 0.0:
            from rlfw.envs.grasp import ScriptedStart

            env = ScriptedStart(env, grasped=grasped_start, near=near_object_start)
        return env

    return thunk


def make_vector_env(
    family: EnvFamily,
    env_id: str,
    num_envs: int,
    max_episode_steps: int | None = None,
    kwargs: dict[str, Any] | None = None,
    vectorization: str = "sync",
    imports: Sequence[str] = (),
    grasped_start: float = 0.0,
    near_object_start: float = 0.0,
    wrappers: Sequence[Any] = (),
) -> gym.vector.VectorEnv:
    """``num_envs`` copies in a Gymnasium vector env with same-step autoreset.

    Same-step autoreset means a finished sub-env returns its reset observation at once and the
    final observation in ``info["final_obs"]``: every vector step is a real transition.
    ``imports`` (``env.imports``) are imported in each env's process before it is made;
    ``grasped_start`` and ``near_object_start`` (``env.grasped_start``,
    ``env.near_object_start``; training envs only): :func:`make_env_fn`; ``wrappers``
    (``env.wrappers``): :meth:`EnvFamily.make`.
    """
    fns = [make_env_fn(family, env_id, max_episode_steps, dict(kwargs or {}), imports=imports,
                       grasped_start=grasped_start, near_object_start=near_object_start, wrappers=wrappers)
           for _ in range(num_envs)]  # fmt: skip
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
        return EnvInfo(env_id, True, obs_dim, goal_dim, act_dim, max_steps, reward_fn, term_fn, family.reward_range)
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(
            f"env.id '{env_id}' has a {type(space).__name__} observation space; rlfw needs a Box "
            "or a goal Dict (observation, achieved_goal, desired_goal)"
        )
    return EnvInfo(env_id, False, int(np.prod(space.shape)), 0, act_dim, max_steps)
