"""The user's Gymnasium wrappers, named by ``env.wrappers`` (rl-zoo's ``env_wrapper``).

Each entry is a wrapper class (or any callable ``f(env, **kwargs) -> env``) by its import
path, ``package.module:Name`` or ``package.module.Name``, alone or as a one-key mapping to its
keyword arguments::

    env:
      wrappers:
        - gymnasium.wrappers:TimeAwareObservation
        - gymnasium.wrappers:ClipReward: {min_reward: -1.0, max_reward: 0.0}

On the command line: ``env.wrappers='[gymnasium.wrappers:TimeAwareObservation]'``, and with
keyword arguments the dotted form (Hydra's grammar takes no ``:`` in a mapping's key):
``env.wrappers='[{gymnasium.wrappers.ClipReward: {min_reward: -1.0}}]'``. The
wrappers are applied in order to every env rlfw makes (training, evaluation, video), right
after ``gymnasium.make`` and before rlfw's own action rescaling, so they see the env as
``gymnasium.make(env.id)`` returns it. Importing a wrapper's module runs the user's code: a run
directory's saved wrappers are imported only when the user names their modules again
(:func:`rlfw.envs.check_trusted`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from rlfw.errors import ConfigError

Spec = tuple[str, str, dict[str, Any]]  # (module, attribute, kwargs)


def _split(path: str, where: str) -> tuple[str, str]:
    module, sep, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not sep or not module or not name.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
        raise ConfigError(f"{where}: '{path}' is not a wrapper's import path (package.module:Name or package.module.Name)")
    return module, name


def parse_wrappers(entries: Any) -> list[Spec]:
    """``env.wrappers`` as ``(module, name, kwargs)`` triples, without importing anything.

    Raises:
        ConfigError: an entry that is neither a path nor a one-key mapping of a path to its
            keyword arguments (one line naming ``env.wrappers[i]``).
    """
    out: list[Spec] = []
    for i, entry in enumerate(entries or ()):
        where = f"env.wrappers[{i}]"
        if isinstance(entry, str):
            out.append((*_split(entry, where), {}))
        elif isinstance(entry, Mapping) and len(entry) == 1:
            ((path, kwargs),) = entry.items()
            if kwargs is not None and not isinstance(kwargs, Mapping):
                raise ConfigError(f"{where}: the keyword arguments of {path} must be a mapping, not {kwargs!r}")
            out.append((*_split(str(path), where), {str(k): v for k, v in (kwargs or {}).items()}))
        else:
            raise ConfigError(f"{where}: give package.module:Name, or {{package.module:Name: {{kwarg: value}}}}; got {entry!r}")
    return out


def wrapper_modules(entries: Any) -> tuple[str, ...]:
    """The modules ``env.wrappers`` imports (for the trust check of a saved config).

    Raises:
        ConfigError: as :func:`parse_wrappers`.
    """
    return tuple(dict.fromkeys(module for module, _, _ in parse_wrappers(entries)))


def load_wrappers(entries: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Import each wrapper and check its keyword arguments against its signature.

    Returns:
        ``[(wrapper, kwargs)]`` in order.

    Raises:
        ConfigError: a module that does not import, a name it lacks, something not callable,
            or keyword arguments its constructor does not take (one line naming
            ``env.wrappers[i]``).
    """
    loaded = []
    for i, (module, name, kwargs) in enumerate(parse_wrappers(entries)):
        where = f"env.wrappers[{i}]"
        try:
            obj = getattr(importlib.import_module(module), name)
        except ImportError as err:
            raise ConfigError(f"{where}: cannot import module '{module}' ({err})") from None
        except AttributeError:
            raise ConfigError(f"{where}: module '{module}' has no '{name}'") from None
        if not callable(obj):
            raise ConfigError(f"{where}: {module}:{name} is not a wrapper class or function")
        try:
            inspect.signature(obj).bind(None, **kwargs)
        except TypeError as err:
            raise ConfigError(f"{where}: {module}:{name} does not take {sorted(kwargs)} ({err})") from None
        except ValueError:  # no signature to read (a builtin): gymnasium will say
            pass
        loaded.append((obj, kwargs))
    return loaded


def apply_wrappers(env: Any, entries: Sequence[Any]) -> Any:
    """``env`` wrapped by each of ``env.wrappers`` in order.

    Raises:
        ConfigError: as :func:`load_wrappers`, or a wrapper whose constructor raised (one
            line naming it and the error).
    """
    for i, (wrapper, kwargs) in enumerate(load_wrappers(entries)):
        try:
            env = wrapper(env, **kwargs)
        except Exception as err:
            raise ConfigError(f"env.wrappers[{i}]: {getattr(wrapper, '__name__', wrapper)} failed on the env: "
                              f"{type(err).__name__}: {err}") from None  # fmt: skip
    return env
