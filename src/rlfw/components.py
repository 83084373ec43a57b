"""The one loader of components: Python entry points of the group ``rlfw.components``.

A component (an algorithm, buffer option, sampler, relabeler, HER strategy, noise, env family,
logger, activation, init) is registered by its module with :func:`rlfw.registry.register` when
the module is imported. Which modules to import is declared, not discovered: each installed
package lists them under the entry-point group ``rlfw.components`` in its pyproject.toml, one
entry per option, named ``<registry key>.<option>`` and pointing at the module that registers
it::

    [project.entry-points."rlfw.components"]
    "algo.td3" = "rlfw.algos.td3"
    "noise.uniform" = "my_package.noise"        # another installed package adds its own

rlfw's own entries are declared the same way in its pyproject.toml. The entry edges (the CLI's
preflight through :func:`rlfw.config.schema.register_schemas`, :mod:`rlfw.build`, and
``import rlfw`` for Python users, through :func:`rlfw.registry.set_loader`) call
:func:`load_components`, which imports them once per process.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

GROUP = "rlfw.components"
DIST = "rlfw"

# The checkout's pyproject.toml: src/rlfw/components.py -> the repository root (the parent of
# conf/, see rlfw.config.paths), where a wheel has no pyproject.toml.
PYPROJECT = Path(__file__).resolve().parent.parent.parent / "pyproject.toml"

_LOADED: list[str] | None = None


def _pyproject_entries(path: Path) -> dict[str, str]:
    """The ``[project.entry-points."rlfw.components"]`` table of ``path`` (name -> value)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with path.open("rb") as f:
        data = tomllib.load(f)
    table = data.get("project", {}).get("entry-points", {}).get(GROUP, {})
    return {str(k): str(v) for k, v in table.items()}


def declared_entries(pyproject: Path | None = None) -> dict[str, str]:
    """Every ``rlfw.components`` entry point to load: ``{name: "module[:attr]"}``, rlfw's first.

    rlfw's own entries come from the installed distribution's metadata (``entry_points.txt``
    of a wheel or an up-to-date install). When distribution ``rlfw`` declares none in the group
    (a source tree run without install, or an install older than the declaration, such as an
    editable install made before it), they come from the ``[project.entry-points."rlfw.components"]``
    table of the checkout's ``pyproject.toml`` (``pyproject``, default :data:`PYPROJECT`), the
    same single source the metadata is built from. Other distributions' entries always come
    from the metadata.

    Raises:
        RuntimeError: distribution ``rlfw`` declares no entry and there is no pyproject.toml
            with the table (a broken install).
    """
    own: dict[str, str] = {}
    others: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        (own if dist == DIST else others)[ep.name] = ep.value
    if not own:
        path = pyproject or PYPROJECT
        if path.is_file():
            own = _pyproject_entries(path)
        if not own:
            raise RuntimeError(
                f"no '{GROUP}' entry points: distribution '{DIST}' declares none and {path} has no "
                f'[project.entry-points."{GROUP}"] table; reinstall rlfw'
            )
    return {**own, **{k: v for k, v in others.items() if k not in own}}


def load_components() -> list[str]:
    """Import the module of every ``rlfw.components`` entry point, once per process.

    Each module registers its options on import (:func:`rlfw.registry.register`). Idempotent:
    later calls return the first call's list at once. The sources of the entries and their
    order are :func:`declared_entries`'s. An entry's value is a module (``pkg.mod``) or, as
    ``importlib.metadata`` allows, ``pkg.mod:attr``; only the module is imported.

    Returns:
        The imported module names, in order, without repeats.

    Raises:
        ImportError: an entry's module cannot be imported (the message names the entry); a
            registration clash raises :class:`ValueError` from the registry.
    """
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    _LOADED = []  # first: a registry read during the imports below must not recurse
    for name, value in declared_entries().items():
        module = value.split(":", 1)[0].strip()
        if module in _LOADED:
            continue
        try:
            importlib.import_module(module)
        except ImportError as err:
            _LOADED = None  # a later call tries again (and fails again, naming the entry)
            raise ImportError(f"{GROUP} entry point '{name} = {value}' failed to import: {err}") from err
        _LOADED.append(module)
    return _LOADED
