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

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from rlfw.training.start import Worker, parameter_digest, start_run  # noqa: F401 - parameter_digest: re-exported

log = logging.getLogger("rlfw")


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


def die_with_parent(parent_pid: int) -> None:
    """Make this process get SIGTERM when ``parent_pid`` (the process that spawned it) dies,
    even by ``kill -9``: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` on Linux (prctl(2)), else a
    watchdog thread that polls ``os.getppid()`` every second. SIGTERM ends the training loop
    after its cycle (status.json ``interrupted``). A parent already gone gets the signal now."""
    import ctypes
    import ctypes.util
    import sys
    import threading

    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent_pid:  # died before the prctl
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rlfw-parent-watchdog", daemon=True).start()


def _failure(err: BaseException) -> dict[str, Any]:
    """A worker's exception as the launcher re-raises it (kind, one-line message, signal)."""
    from rlfw.errors import ConfigError, TrainingDiverged, TrainingInterrupted

    if isinstance(err, TrainingInterrupted):
        return {"kind": "interrupted", "error": str(err), "signum": err.signum}
    if isinstance(err, KeyboardInterrupt):
        return {"kind": "interrupted", "error": "stopped by SIGINT before training", "signum": int(signal.SIGINT)}
    if isinstance(err, ConfigError):
        return {"kind": "config", "error": str(err)}
    if isinstance(err, TrainingDiverged):
        return {"kind": "diverged", "error": str(err)}
    if isinstance(err, OSError):
        return {"kind": "os", "error": str(err)}
    return {"kind": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


# exit codes of a worker that reported its failure (the parent re-raises the reported error)
_EXIT_REPORTED = 3


def _worker(
    rank: int, world: int, cfg_dict: dict, run_dir: str, port: int, multirun: bool, queue: Any,
    checkpoint: str | None = None, parent_pid: int = 0,
) -> None:
    if parent_pid:
        die_with_parent(parent_pid)
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
        result = start_run(cfg, run_dir, multirun=multirun, checkpoint=checkpoint, worker=Worker(rank, world, rank))
        queue.put({"rank": rank, "row": result.row, "digest": result.digest, "env_steps": result.env_steps})
        _leave_group()
    except BaseException as err:  # reported to the parent, which prints it once: no traceback here
        with contextlib.suppress(Exception):
            queue.put({"rank": rank, **_failure(err)})
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()  # no barrier: the peers may be inside a collective
        logging.shutdown()
        os._exit(_EXIT_REPORTED)  # skip multiprocessing's traceback and atexit hooks
    # The result is reported and the group left: end the process without the interpreter's and
    # C++'s static destructors. Tearing those down could abort a worker that had finished
    # ("terminate called without an active exception" from a gloo thread, exit -6: seen in 2 of
    # 5 runs of the two-worker tests here), which the launcher must count as a failure.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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


# seconds the workers get to finish their cycle after a stop signal, and to report after the
# first worker failed, before they are killed
STOP_GRACE_S = 60.0
FAILURE_GRACE_S = 15.0


def launch(
    cfg: DictConfig, run_dir: str | Path, multirun: bool = False, checkpoint: str | Path | None = None
) -> list[dict[str, Any]]:
    """Train ``cfg`` with ``train.workers`` processes; returns each worker's result, by rank.

    With ``checkpoint`` every worker starts from it (``python -m rlfw resume=<run>``).

    Each result has ``row`` (the last metrics row, identical eval figures on every rank),
    ``digest`` (:func:`parameter_digest` of the worker's networks and normalisers) and
    ``env_steps`` (that worker's own).

    The workers stop with this process: SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are
    forwarded to them (they stop after the current cycle; a second signal, or
    :data:`STOP_GRACE_S` seconds, kills them), and a worker whose parent dies (even by
    ``kill -9``) gets SIGTERM (:func:`die_with_parent`). When one worker fails, the others get
    :data:`FAILURE_GRACE_S` seconds to report, then are killed. A ``status.json`` still saying
    ``running`` after the workers are gone is rewritten as ``failed`` or ``interrupted``.

    Raises:
        TrainingInterrupted: a stop signal ended the run (the workers' one line).
        ConfigError: a worker found a config error while building (e.g. HER without goals).
        TrainingDiverged: the divergence guard stopped the workers.
        OSError: a worker could not write the run's files.
        RuntimeError: any other worker failure (its error and traceback are in the message).
    """
    world = int(cfg.train.workers)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    ckpt = str(checkpoint) if checkpoint else None
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, world, cfg_dict, str(run_dir), port, multirun, queue, ckpt, os.getpid()),
            daemon=False,
        )
        for r in range(world)
    ]
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if not received:
            log.warning("%s received: stopping the workers after this cycle", signal.Signals(signum).name)
        received.append(signum)
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL if len(received) > 1 else signum)

    previous = _install(forward)
    results: list[dict[str, Any]] = []
    try:
        for p in procs:
            p.start()
        # read the results while the workers run (a full pipe would block a worker's put
        # forever); a worker that dies without a word is caught by its exit code
        deadline = float("inf")
        while any(p.is_alive() for p in procs):
            while not queue.empty():
                results.append(queue.get())
            failed = any("error" in r for r in results) or any(p.exitcode not in (None, 0) for p in procs)
            if received and deadline == float("inf"):
                deadline = time.monotonic() + STOP_GRACE_S
            elif failed and deadline == float("inf"):
                deadline = time.monotonic() + FAILURE_GRACE_S
            if time.monotonic() > deadline:
                for p in procs:
                    if p.is_alive():
                        p.kill()
            time.sleep(0.05)
        for p in procs:
            p.join()
        while not queue.empty():
            results.append(queue.get())
    finally:
        _restore(previous)
        for p in procs:  # never leave a worker behind (an exception in this loop)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [r for r in results if "error" in r]
    bad_exit = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if not errors and not bad_exit and not received:
        return sorted(results, key=lambda r: r["rank"])
    _mark_ended(Path(run_dir), "interrupted" if received or any(e["kind"] == "interrupted" for e in errors) else "failed",
                errors)  # fmt: skip
    raise _worker_error(errors, received, procs, bad_exit, Path(run_dir))


_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")


def _install(handler: Any) -> dict[int, Any]:
    """Install ``handler`` for :data:`_FORWARDED` (main thread only); returns the old handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for name in _FORWARDED:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


def _mark_ended(run_dir: Path, status: str, errors: list[dict[str, Any]]) -> None:
    """Rewrite a ``status.json`` that still says ``running`` (rank 0 was killed before it could
    write the end): ``status`` with the first worker error and the resume command."""
    path = run_dir / "status.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if data.get("status") != "running":
        return
    data.update(status=status, error=errors[0]["error"] if errors else "the workers were stopped",
                resume=f"python -m rlfw resume={run_dir}")  # fmt: skip
    tmp = path.with_name("status.json.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, path)


def _worker_error(
    errors: list[dict[str, Any]], received: list[int], procs: list[Any], bad_exit: list[int], run_dir: Path
) -> BaseException:
    """The one error the launcher raises for its workers: rank 0's report first, then the most
    telling kind (a stop signal, a config error, divergence, a file error, anything else)."""
    from rlfw.errors import ConfigError, TrainingDiverged, TrainingInterrupted

    errors = sorted(errors, key=lambda r: r["rank"])
    by_kind: dict[str, dict[str, Any]] = {}
    for e in errors:
        by_kind.setdefault(e["kind"], e)
    if received or "interrupted" in by_kind:
        first = by_kind.get("interrupted")
        signum = received[0] if received else int(first["signum"]) if first else int(signal.SIGTERM)
        message = first["error"] if first else (
            f"stopped by {signal.Signals(signum).name} before training; resume with: python -m rlfw resume={run_dir}"
        )
        return TrainingInterrupted(message, signum)
    if "config" in by_kind:
        return ConfigError(by_kind["config"]["error"])
    if "diverged" in by_kind:
        return TrainingDiverged(by_kind["diverged"]["error"])
    if "os" in by_kind:
        return OSError(by_kind["os"]["error"])
    if "error" in by_kind:
        e = by_kind["error"]
        return RuntimeError(f"worker {e['rank']} failed: {e['error']}\n{e.get('traceback', '')}")
    rank = bad_exit[0]
    return RuntimeError(f"worker {rank} failed: exit code {procs[rank].exitcode}")


# --------------------------------------------------------------------------------------------
# standard launchers: torchrun (any --nnodes/--nproc_per_node/rendezvous) and SLURM's srun


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
