"""rlfw: Hydra-configured off-policy RL experiments.

``python -m rlfw algo=td3 buffer=her env=FetchSlide-v2`` composes conf/config.yaml with one
option per group, looks each choice up in a registry (:mod:`rlfw.registry`), builds it with its
typed config, and hands everything to :class:`rlfw.runner.Runner`.
"""

__version__ = "0.1.0"
