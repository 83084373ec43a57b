"""Registries: the short names a user types, mapped to classes and their typed schemas.

Each config key that names a choice (``algo``, ``noise``, ``buffer.sampler``, ...) has one
:class:`Registry`. An entry is a class (or factory) plus the dataclass schema of its config.
Unknown names fail with the list of known ones::

    unknown buffer.sampler 'prio'; choose one of: prioritized, uniform

Every entry is added in one call, :func:`register`, which stores the class in the group's
registry and, for a config group, the schema in Hydra's ConfigStore (``<group>/<name>_schema``,
the node the option's YAML extends)::

    register("algo", "sac", SACConfig, SAC)            # plus conf/algo/sac.yaml
    register("algo.activation", "relu", None, nn.ReLU)  # a nested choice: no schema, no YAML

This module is a leaf: it imports nothing of rlfw but :mod:`rlfw.errors`. Which modules
register is decided at the entry edges, which import them through the ``rlfw.components``
entry points (:func:`rlfw.components.load_components`); a read of a registry first calls the
loader handed to :func:`set_loader` (``import rlfw`` hands it that function), so a Python user
who imports one component package still sees every installed option.
"""

from __future__ import annotations

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

    def _add(self, name: str, target: T, schema: type | None = None) -> None:
        """Store ``target`` under ``name``; only :func:`register` calls this.

        Raises:
            ValueError: if ``name`` is already registered.
        """
        if name in self._entries:
            raise ValueError(f"{self.key} '{name}' is already registered")
        self._entries[name] = Entry(name, target, schema)

    def names(self) -> list[str]:
        """The registered names, sorted (every installed option included: see :func:`set_loader`)."""
        _load()
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``.

        Raises:
            ConfigError: ``unknown <key> '<name>'; choose one of: a, b, c``.
        """
        _load()
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
        _load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


_GROUPS: dict[str, Registry[Any]] = {}
_LOADER: Callable[[], object] | None = None


def set_loader(loader: Callable[[], object] | None) -> None:
    """Hand the registries the function that imports every component module.

    ``import rlfw`` hands it :func:`rlfw.components.load_components` (idempotent), which every
    read of a registry (:meth:`Registry.names`, :meth:`Registry.get`, ``in``) then calls, so the
    registry never names the modules it is filled from. ``None`` unsets it.
    """
    global _LOADER
    _LOADER = loader


def _load() -> None:
    if _LOADER is not None:
        _LOADER()


def registry(key: str) -> Registry[Any]:
    """The registry of a config key (``"algo"``, ``"buffer.sampler"``), created on first use."""
    if key not in _GROUPS:
        _GROUPS[key] = Registry(key)
    return _GROUPS[key]


def register(group: str, name: str, schema: type | None, target: Any) -> None:
    """Register ``target`` as option ``name`` of ``group`` with its dataclass ``schema``: the
    one way every component (rlfw's own and other packages') registers.

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
    registry(group)._add(name, target, schema)
    if schema is not None and "." not in group:
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(group=group, name=f"{name}_schema", node=schema)
