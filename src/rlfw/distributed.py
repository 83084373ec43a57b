"""Multi-worker data-parallel training on torch.distributed (gloo on CPU, nccl on GPUs).

``python -m rlfw train.workers=N ...`` spawns N worker processes inside the one Hydra job (so
``-m`` sweeps of multi-worker runs work with any launcher, and there is one run directory).
As in the HER paper's MPI setup (Andrychowicz et al. 2017, App. A; the seed project
``ddpg-her-per-fetch-slide-mpi``):

- each worker has its own vector env, replay buffer and seed (``seed + 1000 * rank``);
- the networks start from rank 0's weights (broadcast), and after every backward pass the
  gradients are averaged over the workers (one flat all-reduce), so every worker's Adam takes
  the same step and all keep bitwise identical networks;
- observation/goal normaliser statistics gathered by every worker are summed over the workers
  after each cycle's collection;
- eval returns and success are averaged over all workers' eval episodes;
- only rank 0 writes metrics.csv, episodes.csv (its own episodes), checkpoints, plots and wandb.

``train.steps_per_cycle`` is per worker; metrics.csv counts the env steps of all workers.

Under torchrun or srun (:func:`launcher_env`) the launcher starts the ranks instead:
``python -m rlfw`` joins their process group before Hydra runs (:func:`join_launched_group`:
rank 0 picks the run directory and broadcasts it) and trains one run with the same semantics
(:func:`run_launched`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from rlfw.training.context import DistContext

log = logging.getLogger("rlfw")


def parameter_digest(modules: list[torch.nn.Module]) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal digests mean bitwise equal nets."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_for(cfg: DictConfig) -> str:
    """``train.dist_backend``, with auto = nccl when training on CUDA, else gloo."""
    name = str(cfg.train.dist_backend)
    if name != "auto":
        return name
    device = str(cfg.train.device)
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def _worker(
    rank: int, world: int, cfg_dict: dict, run_dir: str, port: int, multirun: bool, queue: Any,
    checkpoint: str | None = None,
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    cfg = OmegaConf.create(cfg_dict)
    assert isinstance(cfg, DictConfig)
    level = logging.INFO if rank == 0 else logging.WARNING
    fmt = f"[%(asctime)s][%(name)s][%(levelname)s][rank {rank}] - %(message)s"
    logging.basicConfig(level=level, format=fmt)
    if rank == 0:
        fh = logging.FileHandler(Path(run_dir) / "rlfw.log")
        fh.setFormatter(logging.Formatter(fmt))
        logging.getLogger().addHandler(fh)
    try:
        backend = backend_for(cfg)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=10))
        from rlfw.build import pick_device
        from rlfw.callbacks import make_callbacks
        from rlfw.training.loop import TrainLoop

        device = pick_device(str(cfg.train.device))
        if device.type == "cuda":
            device = torch.device("cuda", rank % torch.cuda.device_count())
        ctx = DistContext(rank, world, device)
        tr = cfg.train
        total = tr.epochs * tr.cycles_per_epoch * tr.steps_per_cycle
        callbacks = make_callbacks(cfg, Path(run_dir), total, multirun) if rank == 0 else []
        runner = TrainLoop(cfg, run_dir, callbacks, ctx=ctx)
        if checkpoint:
            runner.load_checkpoint(checkpoint)
        row = runner.run()
        digest = parameter_digest(list(runner.agent.modules().values()))
        queue.put({"rank": rank, "row": row, "digest": digest, "env_steps": runner.env_steps})
        _leave_group()
    except BaseException as err:
        queue.put({"rank": rank, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        raise


def _leave_group() -> None:
    """Leave the process group together: a barrier, then ``destroy_process_group``.

    Without the barrier a rank that destroys its gloo pairs while a peer is still inside the
    last collective can make the peer's gloo threads call ``std::terminate`` (seen once in CI:
    "terminate called without an active exception", SIGABRT on rank 1 after both ranks had
    logged their equal digests). A failed barrier (a peer already gone) is not an error here:
    the run's result is decided before this point.
    """
    if not dist.is_initialized():
        return
    try:
        dist.barrier()
    except Exception as err:  # shutting down: the peer may have left already
        log.warning("barrier before leaving the process group failed: %s", err)
    dist.destroy_process_group()


def launch(
    cfg: DictConfig, run_dir: str | Path, multirun: bool = False, checkpoint: str | Path | None = None
) -> list[dict[str, Any]]:
    """Train ``cfg`` with ``train.workers`` processes; returns each worker's result, by rank.

    With ``checkpoint`` every worker starts from it (``python -m rlfw resume=<run>``).

    Each result has ``row`` (the last metrics row, identical eval figures on every rank),
    ``digest`` (:func:`parameter_digest` of the worker's networks and normalisers) and
    ``env_steps`` (that worker's own).

    Raises:
        RuntimeError: if a worker fails (its error and traceback are in the message).
    """
    world = int(cfg.train.workers)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, world, cfg_dict, str(run_dir), port, multirun, queue, str(checkpoint) if checkpoint else None),
            daemon=False,
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    # read the results while the workers run (a full pipe would block a worker's put forever),
    # then join; a worker that dies without a word is caught by its exit code
    results: list[dict[str, Any]] = []
    while len(results) < world and any(p.is_alive() for p in procs):
        if queue.empty():
            time.sleep(0.05)
        else:
            results.append(queue.get())
    while not queue.empty():
        results.append(queue.get())
    for p in procs:
        p.join()
    errors = [r for r in results if "error" in r]
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if errors or failed:
        first = errors[0] if errors else {"rank": failed[0], "error": f"exit code {procs[failed[0]].exitcode}", "traceback": ""}
        raise RuntimeError(f"worker {first['rank']} failed: {first['error']}\n{first.get('traceback', '')}")
    return sorted(results, key=lambda r: r["rank"])


# --------------------------------------------------------------------------------------------
# standard launchers: torchrun (any --nnodes/--nproc_per_node/rendezvous) and SLURM's srun


def launcher_env() -> tuple[int, int, int] | None:
    """``(rank, world, local_rank)`` when a launcher started this process as one of several:
    torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or srun with more than one task
    (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; the sbatch script exports
    ``MASTER_ADDR``/``MASTER_PORT``). None for a plain process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return None


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
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=10))
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


def run_launched(cfg: DictConfig, run_dir: str | Path, multirun: bool = False) -> dict[str, Any]:
    """Train one run as this rank of the launcher's group (:func:`join_launched_group` joined
    it): the semantics of ``train.workers`` (rank 0 writes; gradients averaged; normaliser sums
    added up; per-rank seeds and buffers). Ends by comparing every rank's network digest.

    Returns:
        The last metrics row.

    Raises:
        RuntimeError: the ranks' networks differ at the end.
    """
    from rlfw.build import pick_device
    from rlfw.callbacks import make_callbacks
    from rlfw.training.loop import TrainLoop

    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(str(cfg.train.device))
    if device.type == "cuda":
        device = torch.device("cuda", local % torch.cuda.device_count())
    tr = cfg.train
    total = tr.epochs * tr.cycles_per_epoch * tr.steps_per_cycle
    callbacks = make_callbacks(cfg, Path(run_dir), total, multirun) if rank == 0 else []
    loop = TrainLoop(cfg, run_dir, callbacks, ctx=DistContext(rank, world, device))
    try:
        row = loop.run()
        digest = parameter_digest(list(loop.agent.modules().values()))
        digests: list[Any] = [None] * world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"the ranks' networks differ at the end: {digests}")
        if rank == 0:
            log.info("%d ranks finished with equal networks (digest %s)", world, digest[:16])
    except BaseException:
        dist.destroy_process_group()  # no barrier: the peers may be inside another collective
        raise
    _leave_group()
    return row
