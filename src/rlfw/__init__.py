"""rlfw: Hydra-configured off-policy RL experiments.

``python -m rlfw algo=td3 buffer=her env=FetchSlide-v2`` composes conf/config.yaml with one
option per group, looks each choice up in a registry (:mod:`rlfw.registry`), builds it with its
typed config, and hands everything to :class:`rlfw.runner.Runner`.
"""

import ctypes.util
import os

__version__ = "0.1.0"

# Headless MuJoCo rendering (eval videos): without a display, use OSMesa on the CPU when the
# library is installed (Debian: libosmesa6). MUJOCO_GL must be set before mujoco is imported;
# a value the user set is kept.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY") and ctypes.util.find_library("OSMesa"):
    os.environ["MUJOCO_GL"] = "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
