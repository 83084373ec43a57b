"""Typed schemas of every config group, stored in Hydra's ConfigStore.

Each option file in ``conf/<group>/`` starts with ``defaults: [<name>_schema, _self_]`` so that
a misspelt key or a wrongly typed value fails at compose time and names the key. Values that
are only known at run time (observation shapes, ``compute_reward``) are never typed into YAML;
the training loop passes them to the components it builds.

The root :class:`Config` types ``env``, ``train`` and ``eval`` directly; ``algo``, ``buffer``,
``noise`` and ``logger`` are typed by the schema their chosen option file names, so that keys
that belong to one option (``noise.theta`` for OU) live only in that option's schema and a sweep
``noise=gaussian,ou`` never trips over a key the other option lacks. A buffer option's schema
holds the keys of every registered relabeler and sampler (:func:`rlfw.buffers.store_schemas`),
so ``buffer=her buffer.sampler=prioritized buffer.alpha=0.5`` composes.
"""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time
# (``X | None`` and ``list[int]`` need Python >= 3.10, as pyproject says).
import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from rlfw.algos.config import AlgoConfig
from rlfw.algos.td3 import DDPGConfig, TD3Config
from rlfw.buffers.config import BufferConfig
from rlfw.core.checks import check_seed, in_range, one_of, require
from rlfw.envs.schema import EnvConfig
from rlfw.loggers.schema import LoggerConfig, WandbLoggerConfig
from rlfw.noise.config import (
    GaussianNoiseConfig,
    NoiseConfig,
    NoisyNetConfig,
    NoNoiseConfig,
    OUNoiseConfig,
)

__all__ = [
    "AlgoConfig", "BufferConfig", "Config", "DDPGConfig", "EnvConfig", "EvalConfig",
    "GaussianNoiseConfig", "LoggerConfig", "NoNoiseConfig", "NoiseConfig", "NoisyNetConfig",
    "OUNoiseConfig", "TD3Config", "TrainConfig", "WandbLoggerConfig", "register_schemas",
]  # fmt: skip

MAX_ENVS = 1024  # train.num_envs and eval.num_envs above this are refused

# --------------------------------------------------------------------------------------------
# env, train, eval, logger, root


@dataclass
class TrainConfig:
    """The training loop's schedule: epochs x cycles x (collect steps_per_cycle, run updates_per_cycle)."""

    epochs: int = 10
    # Total env steps of the run, over all envs and workers (Stable-Baselines3's total_timesteps);
    # when set it gives train.epochs = total_steps / (cycles_per_epoch x steps_per_cycle x workers),
    # which must divide it. null: train.epochs decides.
    total_steps: int | None = None
    cycles_per_epoch: int = 10
    steps_per_cycle: int = 100  # env steps per cycle, counted over all parallel envs
    updates_per_cycle: int = 40
    batch_size: int = 256
    learning_starts: int = 0  # env steps of uniform random actions before the policy acts
    num_envs: int = 2  # parallel envs for collection
    device: str = "cpu"  # cpu, cuda, auto
    # 0: a fair share, min(2, cores / (train.workers x parallel launcher jobs)), at least 1;
    # cores from SLURM_CPUS_PER_TASK or the CPU affinity mask (rlfw.training.cores)
    torch_threads: int = 0
    # Run each cycle's updates while the envs step instead of after them: the cycle's
    # updates_per_cycle are spread evenly over its vector steps, and with env.vectorization=async
    # each share runs while the env processes simulate the next step (the simulator and the
    # update on different cores). The policy then changes within a cycle, as in the TD3 schedule.
    overlap: bool = False
    # torch.compile the agent's networks (CUDA: CUDA graphs, mode reduce-overhead; CPU: fused
    # kernels); compiled at the first update (rlfw.training.accelerate)
    compile: bool = False
    # Mixed precision for the updates (torch.autocast): none (float32 throughout) or bfloat16
    # (matrix products in bfloat16, weights, optimiser state and losses stay float32; no loss
    # scaling is needed at bfloat16's float32 exponent range). Acting and evaluation stay float32.
    autocast: str = "none"
    checkpoint_every: int = 1  # epochs between checkpoints/last.pt writes
    # Also keep the last N checkpoints as checkpoints/epoch_<k>.pt (Stable-Baselines3's
    # CheckpointCallback), loaded with checkpoint=epoch_<k>.pt. 0: only last.pt, previous.pt, best.pt
    keep_checkpoints: int = 0
    # Also save the replay buffer with each checkpoint (checkpoints/buffer.pt, about the raw
    # size of the stored data). Without it a resumed run starts from an empty buffer.
    save_buffer: bool = False
    # Data-parallel workers (torch.distributed): each has its own envs, buffer and seed
    # (seed + 1000 * rank); gradients and normaliser statistics are averaged so all keep identical
    # networks; steps_per_cycle is per worker. 1: a single process.
    workers: int = 1
    dist_backend: str = "auto"  # auto (nccl on CUDA, else gloo), gloo, nccl

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges and names of these keys (one :class:`rlfw.errors.ConfigError` line)."""
        p = "train."
        for key in ("epochs", "cycles_per_epoch", "steps_per_cycle", "batch_size"):
            in_range(node, key, 1, prefix=p)
        in_range(node, "total_steps", 1, optional=True, prefix=p)
        # one simulator each (processes with env.vectorization=async)
        in_range(node, "num_envs", 1, MAX_ENVS, prefix=p)
        for key in ("updates_per_cycle", "learning_starts", "torch_threads"):
            in_range(node, key, 0, prefix=p)
        in_range(node, "checkpoint_every", 1, prefix=p)
        in_range(node, "keep_checkpoints", 0, prefix=p)
        in_range(node, "workers", 1, prefix=p)
        require(
            node.device in ("cpu", "cuda", "auto") or str(node.device).startswith("cuda:"),
            f"unknown train.device '{node.device}'; choose one of: auto, cpu, cuda, cuda:N",
        )
        one_of(node.dist_backend, ("auto", "gloo", "nccl"), "train.dist_backend")
        one_of(node.autocast, ("none", "bfloat16"), "train.autocast")
        device = str(node.device)
        if device.startswith("cuda"):
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            require(count > 0, f"train.device={device} but this machine has no CUDA device; use train.device=cpu (or auto)")
            index = int(device.split(":")[1]) if ":" in device else 0
            require(index < count, f"train.device={device} but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}")
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        require(
            node.workers <= cores,
            f"train.workers={node.workers} is more than the {cores} CPU cores this process may use "
            f"(each worker needs one); use train.workers<={cores}",
        )
        require(
            node.steps_per_cycle % node.num_envs == 0,
            f"train.steps_per_cycle={node.steps_per_cycle} must be a multiple of "
            f"train.num_envs={node.num_envs} (steps are counted over all parallel envs)",
        )


EVAL_METRICS = ("auto", "eval_success_rate", "eval_return")


@dataclass
class EvalConfig:
    """Deterministic-policy evaluation after every ``every`` epochs."""

    episodes: int = 10
    num_envs: int = 0  # parallel eval envs; 0: min(episodes, 10)
    every: int = 1
    # The metrics.csv column that ranks evaluations (checkpoints/best.pt, eval.stop_at, tuning):
    # auto: eval_success_rate for goal envs, eval_return otherwise
    # (rlfw.core.eval_metric_name).
    metric: str = "auto"
    # End the run (status finished) at the first evaluation whose eval.metric is >= stop_at
    # (the confirmed figure when confirm_episodes > 0); null: run every epoch (SB3's
    # StopTrainingOnRewardThreshold).
    stop_at: float | None = None
    # A confirmation evaluation of this many episodes (fresh episode seeds) runs whenever the
    # cheap evaluation of `episodes` reaches stop_at or beats the best confirmed figure so far;
    # best.pt, stop_at and tuning decide on it (metrics.csv's confirm_* columns). 0: decide on
    # the cheap evaluation alone.
    confirm_episodes: int = 100
    # At the end of a run that finishes (not one ended by a signal or an error) the delivered
    # checkpoint (best.pt, else last.pt) is evaluated over this many fresh episodes:
    # <run>/evaluation.json with 95% intervals, and the run's last log line. 0: skip it.
    final_episodes: int = 100

    @staticmethod
    def validate(node: Any) -> None:
        """Ranges and names of these keys."""
        in_range(node, "episodes", 0, prefix="eval.")
        in_range(node, "num_envs", 0, MAX_ENVS, prefix="eval.")
        in_range(node, "every", 1, prefix="eval.")
        in_range(node, "confirm_episodes", 0, prefix="eval.")
        in_range(node, "final_episodes", 0, prefix="eval.")
        one_of(node.metric, EVAL_METRICS, "eval.metric")
        require(
            node.stop_at is None or math.isfinite(float(node.stop_at)),
            f"eval.stop_at={node.stop_at} must be a finite number (or null: no early stop)",
        )


@dataclass
class Config:
    """The root config (conf/config.yaml)."""

    seed: int = 0
    algo: Any = MISSING
    buffer: Any = MISSING
    noise: Any = MISSING
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: Any = MISSING

    @staticmethod
    def validate(cfg: Any) -> None:
        """The root keys: ``seed`` in [0, 2**32) (numpy's generators refuse negative seeds)."""
        check_seed(cfg.seed)


def register_schemas() -> None:
    """Store the root schema in Hydra's ConfigStore and load every installed component
    (:func:`rlfw.components.load_components`, the ``rlfw.components`` entry points), whose
    modules register their own schemas (``algo/<name>_schema``, ...) with
    :func:`rlfw.registry.register`; and the ``${rlfw_run_id:}`` resolver. Idempotent.
    """
    from rlfw.components import load_components
    from rlfw.config.paths import register_resolvers

    register_resolvers()  # ${rlfw_run_id:} in the run directories' names
    ConfigStore.instance().store(name="config_schema", node=Config)
    load_components()
    from rlfw.buffers import store_schemas

    store_schemas()  # the buffer options with the keys of every registered sampler, relabeler
