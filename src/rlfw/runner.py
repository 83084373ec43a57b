"""Compatibility names for code written against rlfw 0.1's ``Runner``.

The loop now lives in :mod:`rlfw.training` (:class:`rlfw.training.loop.TrainLoop`), the build
step in :mod:`rlfw.build`; ``Runner(cfg, run_dir, callbacks).run()`` works as before.
"""

from rlfw.build import pick_device
from rlfw.core import Callback
from rlfw.envs.obs import final_obs, split_obs, success_of
from rlfw.training.checkpoint import atomic_torch_save, truncate_csv, truncate_logs
from rlfw.training.loop import TrainLoop as Runner
from rlfw.training.outputs import EPISODE_COLUMNS, CsvLog, metric_columns

# metrics.csv's columns for DDPG/TD3 (other algorithms: metric_columns(agent.metric_names))
METRIC_COLUMNS = metric_columns(("actor_loss", "critic_loss", "q_mean"))

__all__ = [
    "EPISODE_COLUMNS", "METRIC_COLUMNS", "Callback", "CsvLog", "Runner", "atomic_torch_save",
    "final_obs", "pick_device", "split_obs", "success_of", "truncate_csv", "truncate_logs",
]  # fmt: skip
