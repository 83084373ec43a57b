"""The built-in components. Importing this module imports every module of the component
packages (:data:`PACKAGES`), and each registers its options (schema in Hydra's ConfigStore,
class in its registry) with :func:`rlfw.registry.register`.

So a new algorithm, sampler or noise is one module dropped into its package plus one YAML in
``conf/<group>/``: no list to edit. Code outside rlfw registers the same way from its own
module, imported before the config is composed.
"""

from __future__ import annotations

import importlib
import pkgutil

import rlfw.callbacks  # noqa: F401  (logger=csv, logger=wandb)

PACKAGES = ("rlfw.algos", "rlfw.buffers", "rlfw.noise", "rlfw.envs")


def load_builtins() -> list[str]:
    """Import every module of :data:`PACKAGES` (idempotent); returns their names."""
    names: list[str] = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            importlib.import_module(mod.name)
            names.append(mod.name)
    return names


BUILTIN_MODULES = load_builtins()
