"""Registries: the short names a user types, mapped to classes and their typed schemas.

Each config key that names a choice (``algo``, ``noise``, ``buffer.sampler``, ...) has one
:class:`Registry`. An entry is a class (or factory) plus the dataclass schema of its config.
Unknown names fail with the list of known ones::

    unknown buffer.sampler 'prio'; choose one of: prioritized, uniform

A config-group option is added in one call, :func:`register`, which stores the schema in
Hydra's ConfigStore (``<group>/<name>_schema``, the node the option's YAML extends) and the
class in the group's registry::

    register("algo", "sac", SACConfig, SAC)   # plus conf/algo/sac.yaml
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rlfw.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered choice: its name, the class that implements it and its schema."""

    name: str
    target: T
    schema: type | None = None


class Registry(Generic[T]):
    """A name -> :class:`Entry` map for one config key.

    Args:
        key: the config key the names are typed into (``"algo"``, ``"buffer.sampler"``);
            used in error messages.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, schema: type | None = None) -> Callable[[T], T]:
        """Decorator: register ``target`` under ``name``.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def deco(target: T) -> T:
            self.add(name, target, schema)
            return target

        return deco

    def add(self, name: str, target: T, schema: type | None = None) -> None:
        """Register ``target`` under ``name`` (see :meth:`register`)."""
        if name in self._entries:
            raise ValueError(f"{self.key} '{name}' is already registered")
        self._entries[name] = Entry(name, target, schema)

    def names(self) -> list[str]:
        """The registered names, sorted (every built-in option included: see :func:`load_builtins`)."""
        load_builtins()
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``.

        Raises:
            ConfigError: ``unknown <key> '<name>'; choose one of: a, b, c``.
        """
        load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.key} '{name}'; choose one of: {', '.join(self.names())}"
            ) from None

    def check(self, name: Any) -> None:
        """Raise :class:`ConfigError` unless ``name`` is registered."""
        self.get(str(name))

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


_GROUPS: dict[str, Registry[Any]] = {}
_BUILTINS_LOADED = False


def load_builtins() -> None:
    """Import :mod:`rlfw.components` once, the first time any registry is read.

    Each built-in option registers when its module is imported, so without this an API user
    who imports one package (``from rlfw.algos import ALGOS``) would see only the options of
    the modules imported so far (td3 and ddpg, not sac). Registering does not call it, and
    the import is by name so this bottom layer does not depend on the component packages.
    """
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True  # first, so the modules' own registrations do not recurse
        importlib.import_module("rlfw.components")


def registry(key: str) -> Registry[Any]:
    """The registry of a config key (``"algo"``, ``"buffer.sampler"``), created on first use."""
    if key not in _GROUPS:
        _GROUPS[key] = Registry(key)
    return _GROUPS[key]


def register(group: str, name: str, schema: type | None, target: Any) -> None:
    """Register ``target`` as option ``name`` of ``group`` with its dataclass ``schema``.

    The schema is stored in Hydra's ConfigStore as ``<group>/<name>_schema`` (only for the
    config groups; a nested choice such as ``buffer.sampler`` has no option file), so
    ``conf/<group>/<name>.yaml`` can start with ``defaults: [<name>_schema, _self_]``. A
    schema may define ``validate(node)`` (a static method) that checks its own fields and
    raises :class:`rlfw.errors.ConfigError` with one line, and ``validate_with(cfg)`` for its
    rules with other groups (given the whole config); :func:`rlfw.config.validate.validate`
    calls both for the chosen option.

    Raises:
        ValueError: ``name`` is already registered for ``group``.
    """
    registry(group).add(name, target, schema)
    if schema is not None and "." not in group:
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(group=group, name=f"{name}_schema", node=schema)
