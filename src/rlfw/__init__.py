"""rlfw: Hydra-configured off-policy RL experiments.

``python -m rlfw algo=td3 buffer=her env=FetchSlide-v2`` composes conf/config.yaml with one
option per group, looks each choice up in a registry (:mod:`rlfw.registry`), builds it with its
typed config, and hands everything to :class:`rlfw.training.loop.TrainLoop`.

The Python API (:mod:`rlfw.api`, imported on first use so ``import rlfw`` stays light)::

    run_dir = rlfw.train(["env=FetchReach-v4", "train.epochs=1"])   # as python -m rlfw does
    policy = rlfw.load(run_dir)                                     # an rlfw.Policy
    action, _ = policy.predict(obs)                                 # SB3's signature; policy.act(obs): the action alone
"""

import ctypes.util
import os
from typing import TYPE_CHECKING, Any

from rlfw import registry as _registry

if TYPE_CHECKING:
    from rlfw.api import Policy, load, train
    from rlfw.pretrained import load_pretrained

__all__ = ["Policy", "__version__", "load", "load_pretrained", "train"]

__version__ = "0.1.0"

# Headless MuJoCo rendering (eval videos): without a display, use OSMesa on the CPU when the
# library is installed (Debian: libosmesa6). MUJOCO_GL must be set before mujoco is imported;
# a value the user set is kept.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY") and ctypes.util.find_library("OSMesa"):
    os.environ["MUJOCO_GL"] = "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


_API = ("Policy", "load", "train")


def _load_components() -> object:
    """Every read of a registry first loads the installed components (the registry itself
    names no module; see :func:`rlfw.components.load_components`)."""
    from rlfw.components import load_components

    return load_components()


_registry.set_loader(_load_components)


def __getattr__(name: str) -> Any:
    """``rlfw.train``, ``rlfw.load`` and ``rlfw.Policy`` import :mod:`rlfw.api` on first use,
    ``rlfw.load_pretrained`` :mod:`rlfw.pretrained`."""
    if name in _API:
        from rlfw import api

        return getattr(api, name)
    if name == "load_pretrained":
        from rlfw.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'rlfw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "load_pretrained"])
