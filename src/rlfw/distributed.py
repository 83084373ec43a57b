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

Under torchrun or srun the launcher starts the ranks instead (:mod:`rlfw.launched`), with the
same semantics.
"""

from __future__ import annotations

import contextlib
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


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Make this process get one SIGTERM when ``parent_pid`` (the process that spawned it) dies,
    even by ``kill -9``: a daemon thread polls ``os.getppid()`` every ``poll_s`` seconds and
    signals this process once when it changes. SIGTERM ends the training loop after its cycle
    (status.json ``interrupted``). A parent already gone gets the signal now.

    Not ``prctl(PR_SET_PDEATHSIG)``: the kernel sends that signal when the *thread* that forked
    this process exits, and again at each reparenting (prctl(2)). A launcher killed by ``kill -9``
    whose main thread dies before its other threads gave its workers two SIGTERMs, which the loop
    reads as "stop at once": a worker left mid-collective and its peer's run ended ``failed``
    (seen in CI). ``getppid`` only changes once the whole launcher process is gone.
    """
    if os.getppid() != parent_pid:  # died before this call
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
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
