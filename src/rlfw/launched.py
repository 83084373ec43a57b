"""A run whose processes a standard launcher started: torchrun (any ``--nnodes``,
``--nproc_per_node`` or rendezvous) or SLURM's srun.

``python -m rlfw`` sees the launcher's variables (:func:`launcher_env`), joins the process
group before Hydra runs (:func:`join_launched_group`: rank 0 picks the run directory and
broadcasts it) and trains one run as this rank (:func:`run_launched`) with the semantics of
``train.workers`` (:mod:`rlfw.distributed`): rank 0 writes, gradients are averaged, normaliser
sums added up, per-rank seeds and buffers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from rlfw.distributed import _leave_group, backend_for
from rlfw.training.start import Worker, start_run

log = logging.getLogger("rlfw")


JOIN_TIMEOUT_MIN = 10  # minutes a launcher's rank waits for the others to join
JOIN_QUIET_S = 5.0  # seconds of waiting before a rank says what it waits for


def launcher_env() -> tuple[int, int, int] | None:
    """``(rank, world, local_rank)`` when a launcher started this process as one of several:
    torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or srun with more than one task
    (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; the sbatch script exports
    ``MASTER_ADDR``/``MASTER_PORT``). None for a plain process.

    Raises:
        ConfigError: a variable that is not an integer, or a rank outside the world (variables
            left over from another job).
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and _env_int("WORLD_SIZE", 1) > 1:
        return _rank_of("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if _env_int("SLURM_NTASKS", 1, "1") > 1 and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        return _rank_of("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    return None


def _env_int(name: str, low: int, default: str | None = None) -> int:
    """The environment variable ``name`` as an int >= ``low`` (``default`` when unset or empty).

    Raises:
        ConfigError: one line naming the variable, its value and that a launcher sets it.
    """
    from rlfw.errors import ConfigError

    raw = os.environ.get(name) or default
    try:
        value = int(str(raw))
    except ValueError:
        value = low - 1
    if value < low:
        raise ConfigError(
            f"{name}={raw!r} in the environment must be an integer >= {low} (torchrun or srun sets it); "
            f"a variable left over from another job: unset {name} for a plain run"
        )
    return value


def _rank_of(rank_key: str, world_key: str, local_key: str) -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from a launcher's variables, checked: ``0 <= rank < world``.

    Raises:
        ConfigError: a variable that is not an integer, or a rank outside the world.
    """
    from rlfw.errors import ConfigError

    world = _env_int(world_key, 1)
    rank = _env_int(rank_key, 0)
    local = _env_int(local_key, 0, "0")
    if rank >= world:
        raise ConfigError(
            f"{rank_key}={rank} is not a rank of {world_key}={world} (ranks are 0..{world - 1}): variables left "
            f"over from another job? unset {rank_key} and {world_key} for a plain run"
        )
    return rank, world, local


def launched_group_joined() -> bool:
    """Whether this process is a launcher's rank that has joined its process group."""
    return launcher_env() is not None and dist.is_available() and dist.is_initialized()


def join_launched_group(args: list[str]) -> list[str]:
    """Join the process group the launcher describes (``env://``) and agree on one run
    directory: rank 0's (``hydra.run.dir`` if given, else its resolution of the configured
    pattern), broadcast to every rank. Returns the overrides every rank adds to its Hydra job:
    ``hydra.run.dir=<dir>`` and, on ranks > 0, ``hydra.output_subdir=null`` (only rank 0
    writes the run's files).

    Raises:
        ConfigError: ``-m``, or ``train.workers`` > 1, under a launcher.
    """
    from rlfw.config.preflight import compose_config, hydra_context
    from rlfw.errors import ConfigError

    launched = launcher_env()
    assert launched is not None
    rank, world, local = launched
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError("-m sweeps are not run under torchrun/srun: launch one run per command")
    cfg = compose_config(args)
    if int(cfg.train.workers) > 1:
        raise ConfigError(
            f"train.workers={cfg.train.workers} spawns workers on one machine; under torchrun/srun the "
            "launcher starts them: leave train.workers=1"
        )
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = backend_for(cfg)
    if backend == "nccl":
        torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
    # before Hydra configures logging: straight to stderr, so a stale RANK/WORLD_SIZE is seen at once
    # said only when the others take a while (a join of ranks started together stays quiet)
    launcher_vars = "RANK, WORLD_SIZE" if "RANK" in os.environ else "SLURM_PROCID, SLURM_NTASKS"
    waiting = threading.Timer(JOIN_QUIET_S, lambda: print(
        f"rlfw: rank {rank} of {world}: waiting for the other ranks at {os.environ.get('MASTER_ADDR', 'localhost')}:"
        f"{os.environ['MASTER_PORT']} (up to {JOIN_TIMEOUT_MIN} min; {launcher_vars} in the environment say this "
        "process is one of several: unset them for a plain run)", file=sys.stderr, flush=True))  # fmt: skip
    waiting.daemon = True
    waiting.start()
    try:
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=JOIN_TIMEOUT_MIN))
    finally:
        waiting.cancel()
    try:
        check_same_config(cfg)
    except ConfigError:
        dist.destroy_process_group()
        raise
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    chosen: list[Any] = [None]
    if given:
        chosen[0] = given[-1]
    elif rank == 0:
        from hydra import compose
        from hydra.core.hydra_config import HydraConfig

        with hydra_context():
            full = compose(config_name="config", overrides=list(args), return_hydra_config=True)
        HydraConfig.instance().set_config(full)
        chosen[0] = str(Path(str(OmegaConf.select(full, "hydra.run.dir"))).resolve())
    dist.broadcast_object_list(chosen, src=0)
    extra = [f"hydra.run.dir={chosen[0]}"]
    if rank > 0:
        extra.append("hydra.output_subdir=null")
    return extra


def check_same_config(cfg: DictConfig) -> None:
    """Compare the SHA-256 of this rank's resolved config with every other rank's (one
    all-gather, right after the process group forms); on a mismatch gather the configs and name
    the keys that differ. ``hydra.*`` is not part of ``cfg``, so run directories may differ.

    Raises:
        ConfigError: the ranks were given different configs (every rank raises it).
    """
    from rlfw.errors import ConfigError

    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = repr(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()
    world = dist.get_world_size()
    digests: list[Any] = [None] * world
    dist.all_gather_object(digests, digest)
    if len(set(digests)) == 1:
        return
    configs: list[Any] = [None] * world
    dist.all_gather_object(configs, flat)
    keys = sorted({k for c in configs for k in c if any(c.get(k) != o.get(k) for o in configs)})
    def values(k: str) -> str:
        return " vs ".join(f"rank {r}: {c.get(k, 'missing')}" for r, c in enumerate(configs))

    shown = ", ".join(f"{k} ({values(k)})" for k in keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    raise ConfigError(f"the ranks were started with different configs: {shown}{more}; give every rank the same overrides")


def run_launched(cfg: DictConfig, run_dir: str | Path, multirun: bool = False) -> dict[str, Any]:
    """Train one run as this rank of the launcher's group (:func:`join_launched_group` joined
    it): the semantics of ``train.workers`` (rank 0 writes; gradients averaged; normaliser sums
    added up; per-rank seeds and buffers). Ends by comparing every rank's network digest.

    Returns:
        The last metrics row.

    Raises:
        RuntimeError: the ranks' networks differ at the end.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        result = start_run(cfg, run_dir, multirun=multirun, worker=Worker(rank, world, local))
        row, digest = result.row, result.digest
        digests: list[Any] = [None] * world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"the ranks' networks differ at the end: {digests}")
        if rank == 0:
            log.info("%d ranks finished with equal networks (digest %s)", world, str(digest)[:16])
    except BaseException:
        dist.destroy_process_group()  # no barrier: the peers may be inside another collective
        raise
    _leave_group()
    return row
