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
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as err:
        queue.put({"rank": rank, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        raise


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
