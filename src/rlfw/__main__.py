"""``python -m rlfw [overrides]``: train. Hydra main with config groups algo, buffer, noise, env,
logger (and experiment).

Before Hydra runs any job, :func:`rlfw.config.preflight.preflight` composes and validates every
job of the command line (every job of a ``-m`` sweep), so a bad key or value stops with one
line and exit status 2 before any simulator starts.

``python -m rlfw --help`` prints rlfw's own help (:func:`help_text`: the config groups and their
options, the root keys); ``--hydra-help`` shows Hydra's.

``python -m rlfw resume=<run_dir> [train.epochs=N]`` continues a stopped or killed run from
its last checkpoint, in the same directory (see :func:`resume`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import version as hydra_version
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from rlfw.config.paths import config_dir
from rlfw.config.preflight import preflight
from rlfw.config.schema import register_schemas
from rlfw.errors import ConfigError, TrainingDiverged, TrainingInterrupted, exit_status, fail
from rlfw.training.outputs import run_id

log = logging.getLogger("rlfw")

register_schemas()
hydra_version.setbase("1.3")  # as @hydra.main(version_base="1.3") did when this module was imported
# the per-process part of the default run and sweep directories' names (conf/config.yaml's
# hydra.run.dir and hydra.sweep.dir): runs or sweeps started in the same second never share a
# directory. Cached like Hydra's ${now:}: a sweep's jobs (joblib workers, SLURM jobs) get the
# config with the launching process's resolved value (Hydra copies the resolver cache)
OmegaConf.register_new_resolver("rlfw_run_id", run_id, replace=True, use_cache=True)


def claim_run_dir(run_dir: Path, fresh: bool, key: str = "hydra.run.dir") -> None:
    """Make this process the one writer of ``run_dir`` (:func:`rlfw.training.outputs.acquire_run_lock`,
    held until the process ends or :func:`release_run_dir`); with ``fresh`` also refuse a
    directory that already holds a run (:func:`rlfw.training.outputs.holds_run`).

    Raises:
        ConfigError: one line: another process writes there (its pid), or a fresh run would
            write into an existing run (with the ``resume=`` command that continues it).
    """
    from rlfw.training.outputs import RunDirLocked, acquire_run_lock, holds_run, release_run_lock

    try:
        acquire_run_lock(run_dir)
    except RunDirLocked as err:
        raise ConfigError(f"{key}={run_dir}: {err}") from None
    if fresh and holds_run(run_dir):
        release_run_lock(run_dir)
        raise ConfigError(
            f"{key}={run_dir} already holds a run (metrics.csv, status.json or checkpoints/); continue it with: "
            f"python -m rlfw resume={run_dir} (or choose another {key})"
        )


def release_run_dir(run_dir: Path) -> None:
    """Undo one :func:`claim_run_dir`."""
    from rlfw.training.outputs import release_run_lock

    release_run_lock(run_dir)


def _result(row: dict) -> float:
    value = row.get("eval_success_rate")
    if value is None or value != value:
        value = row.get("eval_return", float("nan"))
    return float(value)


class StopSignal(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP, ...) that ends the whole command: raised by
    :func:`_raise_stop` outside the training loop, and by :func:`train` in a ``-m`` sweep after
    the current job stopped (a ``KeyboardInterrupt``, so Hydra's launchers do not record it as a
    failed job and start the next one, and the training loop marks its run ``interrupted``). :func:`main` prints ``message`` and exits with
    ``128 + signum``."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message or f"stopped by {signal.Signals(signum).name}"


# Signals that end the command like SIGTERM: Ctrl-C and a closed terminal. SIGUSR1/SIGUSR2 are
# left to the training loop and to submitit (rlfw.training.requeue).
COMMAND_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

# Failed jobs of this process's -m sweep (Hydra's basic launcher runs them here): one line each.
_FAILED_JOBS: list[str] = []


def _raise_stop(signum: int, frame: Any) -> None:
    raise StopSignal(signum)


def install_stop_handlers() -> None:
    """Make :data:`COMMAND_STOP_SIGNALS` raise :class:`StopSignal` (main thread only) while no
    training loop runs; the loop and :func:`rlfw.distributed.launch` install their own while
    they run and put these back after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for name in COMMAND_STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, _raise_stop)


def _job_failed(hc: Any, run_dir: Path, line: str) -> float:
    """Record a failed job of a sweep (one line, logged now and listed by :func:`main` at the
    end); the sweep goes on. Returns NaN, the job's result (Optuna records the trial as failed)."""
    overrides = " ".join(hc.overrides.task) if hc.overrides.task else "(no overrides)"
    log.error("%s", line)
    _FAILED_JOBS.append(f"job {hc.job.num} ({overrides}, {run_dir}) failed: {line.removeprefix('error: ')}")
    return float("nan")


def _log_traceback_to_files() -> None:
    """Write the current exception's traceback to the log files only (the job's rlfw.log)."""
    import traceback

    text = traceback.format_exc()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("rlfw", logging.ERROR, __file__, 0, "%s", (text,), None))


def start(cfg: DictConfig, run_dir: Path, *, multirun: bool = False, callbacks: Sequence[Any] = (),
          checkpoint: str | Path | None = None, announce_resume: bool = False) -> dict:  # fmt: skip
    """Start a validated run in the way this process was started: as this rank of a
    torchrun/srun group (:func:`rlfw.distributed.run_launched`), with ``train.workers`` > 1
    processes (:func:`rlfw.distributed.launch`; each worker runs
    :func:`rlfw.training.start.start_run`), else in this process
    (:func:`rlfw.training.start.start_run`). Returns the last metrics row.

    Args:
        checkpoint: ``last.pt`` to continue from (resume, SLURM restart), or None.
        callbacks: the user's callbacks (this process only: :func:`run_job` refuses them with
            workers).
        announce_resume: log the epoch the run resumes from (``resume=``).
    """
    from rlfw.distributed import launch, launched_group_joined, run_launched
    from rlfw.training.start import start_run

    if launched_group_joined():  # one rank of torchrun/srun (main() joined its group)
        return run_launched(cfg, run_dir, multirun)
    if cfg.train.workers > 1:
        return launch(cfg, run_dir, multirun, checkpoint=checkpoint)[0]["row"]  # type: ignore[no-any-return]
    return start_run(cfg, run_dir, multirun=multirun, callbacks=callbacks, checkpoint=checkpoint,
                     announce_resume=announce_resume).row  # fmt: skip


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool = False, callbacks: Sequence[Any] = ()) -> dict:
    """Train one composed job into ``run_dir``; returns its last metrics row.

    The body of the Hydra task :func:`train_job`, also run by :func:`rlfw.api.train`, which
    passes the user's ``callbacks`` (:class:`rlfw.core.Callback`), called after the built-in
    ones. The config is validated here unless this process's preflight already validated it
    (:func:`rlfw.config.preflight.ensure_valid`: a sweeper's trial is checked here). A requeued
    SLURM job continues from its checkpoint (:func:`rlfw.training.requeue.requeued_checkpoint`).

    Raises:
        ConfigError: a rule of :func:`rlfw.config.validate.validate` is broken, or the env does
            not fit the config (HER without goals); user callbacks with ``train.workers`` > 1 or
            under a torchrun/srun launcher (the workers are other processes).
    """
    from rlfw.config.preflight import ensure_valid
    from rlfw.distributed import launched_group_joined
    from rlfw.training.requeue import requeued_checkpoint, restart_count

    tr = cfg.train
    launched = launched_group_joined()
    if callbacks and (tr.workers > 1 or launched):
        raise ConfigError(
            f"rlfw.train(callbacks=...) runs the callbacks in this process; train.workers={tr.workers} "
            "and torchrun/srun train in other processes: use train.workers=1"
        )
    ensure_valid(cfg)
    if launched:
        import torch.distributed as dist

        if dist.get_rank() != 0:  # only rank 0 writes, and holds the run directory's lock
            return start(cfg, run_dir, multirun=multirun)
    claim_run_dir(run_dir, fresh=restart_count() == 0)  # one writer; never into another run
    try:
        ckpt = None if launched else requeued_checkpoint(run_dir)  # a requeued SLURM job continues
        if restart_count() > 0 and not launched:
            if ckpt is None:  # stopped before its first checkpoint: start over, no stale rows
                from rlfw.training.checkpoint import truncate_logs

                truncate_logs(run_dir, 0)
            log.info("SLURM restart %d of this job: %s", restart_count(),
                     f"resuming from {ckpt}" if ckpt else "no checkpoint yet, starting from epoch 0")  # fmt: skip
        return start(cfg, run_dir, multirun=multirun, callbacks=callbacks, checkpoint=ckpt)
    finally:
        release_run_dir(run_dir)


def train(args: list[str]) -> None:
    """Run the Hydra app (:func:`train_job` for each job) on the command line ``args`` through
    ``hydra.main`` (:func:`rlfw.config.cli.run_hydra_app`), as ``python -m rlfw <args>`` does.
    :func:`main` has parsed and checked ``args`` (``--experimental-rerun`` refused there)."""
    from rlfw.config.cli import run_hydra_app

    run_hydra_app(train_job, args, config_path=str(config_dir()), config_name="config")


def train_job(cfg: DictConfig) -> float:
    """Hydra's task: train one job into Hydra's output dir; returns the final eval success rate
    (or return).

    The return value is what Hydra's sweepers (Optuna) maximise.
    """
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    n_jobs = OmegaConf.select(hc.launcher, "n_jobs") if multirun else None  # type: ignore[arg-type]
    if isinstance(n_jobs, int) and n_jobs != 1:  # joblib: jobs side by side share the cores
        from rlfw.training.cores import PARALLEL_JOBS_ENV

        os.environ[PARALLEL_JOBS_ENV] = str(n_jobs if n_jobs > 0 else os.cpu_count() or 1)
    run_dir = Path(hc.runtime.output_dir)
    try:
        row = run_job(cfg, run_dir, multirun)
    except (ConfigError, TrainingDiverged) as err:
        if multirun:  # the sweep goes on; main() lists the failed jobs at the end
            return _job_failed(hc, run_dir, f"error: {err}")
        log.error("error: %s", err)
        raise SystemExit(exit_status(err)) from None
    except TrainingInterrupted as err:  # a stop signal: status.json says interrupted
        from rlfw.training.requeue import hand_over

        hand_over(err.signum)  # under submitit: requeue this job (exits); else go on
        log.warning("%s", err)
        if multirun:  # no further job starts: out through Hydra's launcher (not an Exception)
            raise StopSignal(err.signum, str(err)) from None
        raise SystemExit(exit_status(err)) from None
    except OSError as err:  # a full disk, an unwritable file: one line, the run marked failed
        if multirun:
            return _job_failed(hc, run_dir, f"error: cannot write the run's files: {err}")
        log.error("error: cannot write the run's files: %s", err)
        raise SystemExit(exit_status(err)) from None
    except Exception as err:  # a bug: the traceback goes to the job's log file, one line here
        if not multirun:
            raise
        _log_traceback_to_files()
        return _job_failed(hc, run_dir, f"error: {type(err).__name__}: {err}")
    return _result(row)


# keys a resume may change besides train.*, eval.* and logger.*: the divergence advice's
# env.imports: naming the modules the saved config imports trusts them (a run directory is data)
RESUME_KEYS = ("algo.actor_lr", "algo.critic_lr", "seed", "env.imports")
# keys whose saved state (per-env exploration state, saved buffer) a change would not fit
# the counters and the per-worker buffers and exploration state are per env and per worker
FIXED_ON_RESUME = ("train.num_envs", "train.workers")
# groups a checkpoint must match its config in (else it belongs to another run)
_MATCH_GROUPS = ("algo", "buffer", "noise", "env")


def _diff(a: object, b: object, prefix: str) -> str | None:
    """The first dotted key where the plain containers ``a`` and ``b`` differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if f"{prefix}{k}" in RESUME_KEYS:
                continue
            found = _diff(a.get(k), b.get(k), f"{prefix}{k}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


# the files and folders a resume writes or appends to in a run directory
RUN_WRITES = ("metrics.csv", "episodes.csv", "status.json", "versions.json", "evaluation.json", "rlfw.log",
              "checkpoints", ".hydra", "videos", "tensorboard")  # fmt: skip


def refuse_planted_links(path: Path) -> None:
    """Refuse a run directory in which a file rlfw writes is a link: a resume would append to
    or overwrite the link's target outside the run (a run directory from elsewhere is data).

    Raises:
        ConfigError: one line naming the link and its target.
    """
    for p in [*(path / name for name in RUN_WRITES), *(path.iterdir() if path.is_dir() else [])]:
        if p.is_symlink():  # any link at the top: rlfw writes its files and temp files there
            raise ConfigError(f"{p} is a link (to {os.readlink(p)}): rlfw writes only inside the run directory; "
                              "replace the link with the file itself to resume")  # fmt: skip
        if p.name in RUN_WRITES and p.is_file() and p.stat().st_nlink > 1:  # appended to, or rewritten in place
            raise ConfigError(f"{p} is a hard link shared with another file: a resume would change that file too; "
                              "replace it with a copy of its own to resume")  # fmt: skip
    ckpt = path / "checkpoints"
    if ckpt.is_dir():
        for p in ckpt.iterdir():
            if p.is_symlink():
                raise ConfigError(f"{p} is a link (to {os.readlink(p)}): rlfw reads and writes only regular files "
                                  "inside the run directory")  # fmt: skip


def load_run_config(path: Path, state: dict | None) -> DictConfig:
    """A run's saved config: ``.hydra/config.yaml``, else the config inside its checkpoint
    (``hydra.output_subdir=null`` runs, or a damaged YAML file, with a warning).

    Raises:
        ConfigError: one line naming the file when neither can be read.
    """
    from rlfw.core.runfiles import MAX_META_BYTES, load_yaml, plain_config, read_text

    saved = path / ".hydra" / "config.yaml"
    reason = f"{saved} is missing"
    if saved.exists() or saved.is_symlink():
        text = read_text(saved, MAX_META_BYTES)  # refused: a link, a special file, too large (a run dir is data only)
        try:
            loaded = load_yaml(text, saved)
            if isinstance(loaded, dict):
                return plain_config(loaded, saved)
            reason = f"{saved} holds no config mapping (damaged)"
        except ConfigError as err:
            if "aliases" in str(err):  # a YAML bomb is refused, not worked around
                raise
            reason = str(err)
    if state is not None and isinstance(state.get("config"), dict):
        if saved.exists():
            log.warning("%s: using the config saved in the checkpoint", reason)
        return plain_config(state["config"], "the checkpoint's config")
    raise ConfigError(f"resume={path}: {reason} and there is no checkpoint holding the config; not an rlfw run "
                      "that can be resumed")  # fmt: skip


def _typed_root(root: type, base: DictConfig) -> DictConfig:
    """The root schema with the ``Any``-typed groups (algo, noise, logger) given their chosen
    option's schema from the registry, so that an override of one of their keys is type-checked
    (``logger.video_every=abc`` is refused as Hydra's composition would)."""
    from rlfw.registry import registry

    typed = OmegaConf.structured(root)
    for group in ("algo", "noise", "logger"):
        name = OmegaConf.select(base, f"{group}.name")
        reg = registry(group)
        if isinstance(name, str) and name in reg and reg.get(name).schema is not None:
            with open_dict(typed):
                typed[group] = OmegaConf.structured(reg.get(name).schema)
    return typed


def _first(err: BaseException) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)


def resume(run_dir: str, overrides: list[str]) -> float:
    """Continue ``run_dir`` from ``checkpoints/last.pt`` with its saved config.

    Only ``train.*``, ``eval.*`` and ``logger.*`` keys, the learning rates ``algo.actor_lr``
    and ``algo.critic_lr``, ``seed`` and ``env.imports`` may be overridden (to extend the run,
    say ``train.epochs=20``; after a divergence, lower learning rates or another seed); a change of
    ``train.num_envs`` does not fit the saved per-env state and is refused. The modules the saved
    config imports to make its env are imported only when ``env.imports`` names them again (a
    run directory is data). A run without a checkpoint restarts from epoch 0 in the same
    directory.

    The directory gets one writer: a second resume (or a run still training there) is refused
    with the holder's pid. Damaged files are repaired where they can be: an unreadable
    ``status.json`` is rebuilt, cut or misfitting CSV rows are dropped and a damaged header is
    rewritten, a ``.hydra/config.yaml`` that is missing or not YAML is replaced by the config in
    ``last.pt``, an unusable buffer file leaves the buffer empty (a warning each). What cannot
    be repaired stops with one line naming the file, before anything is built.

    Raises:
        ConfigError: the directory is not an rlfw run, an override is not allowed or invalid,
            the checkpoint does not fit the config, another process writes there, or a file
            cannot be repaired.
    """
    path = Path(run_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"resume={run_dir}: no such directory")
    bad = [o for o in overrides
           if not (o.split("=", 1)[0].startswith(("train.", "eval.", "logger.")) or o.split("=", 1)[0] in RESUME_KEYS)]  # fmt: skip
    if bad:
        raise ConfigError(f"resume takes only train.*, eval.*, logger.*, {', '.join(RESUME_KEYS)} overrides; "
                          f"got: {' '.join(bad)}")  # fmt: skip
    claim_run_dir(path, fresh=False, key="resume")
    try:
        return _resume_claimed(path, overrides)
    finally:
        release_run_dir(path)


def _resume_claimed(path: Path, overrides: list[str]) -> float:
    from omegaconf.errors import OmegaConfBaseException

    from rlfw.config.preflight import translate
    from rlfw.config.schema import Config
    from rlfw.config.validate import check_run_length, validate
    from rlfw.training.checkpoint import check_policy_state, has_checkpoint, load_latest

    refuse_planted_links(path)
    ckpt = path / "checkpoints" / "last.pt"  # previous.pt if last.pt is lost (load_latest)
    found = has_checkpoint(ckpt.parent)
    best = ckpt.parent / "best.pt"
    if not found and (best.exists() or best.is_symlink()):
        raise ConfigError(
            f"{path} holds checkpoints/best.pt but neither last.pt nor previous.pt: a resume would start from "
            "epoch 0 and overwrite it; copy best.pt to last.pt to continue from it, or start a new run"
        )
    # ConfigError: both unreadable, or not rlfw checkpoints (check_policy_state)
    state, used = load_latest(ckpt.parent, check=check_policy_state) if found else (None, None)
    base = load_run_config(path, state)
    from rlfw.envs import check_trusted

    given = OmegaConf.from_dotlist([o for o in overrides if o.split("=", 1)[0] == "env.imports"])
    trusted = [str(m) for m in (OmegaConf.select(given, "env.imports") or [])]
    check_trusted(base.get("env") or {}, trusted, f"resume={path}", "env.imports=[{modules}] on the resume command line")
    try:  # typed and in struct mode, so a misspelt or mistyped override fails in one line
        cfg = OmegaConf.merge(_typed_root(Config, base), base)
        assert isinstance(cfg, DictConfig)
        OmegaConf.set_struct(cfg, True)
        keys = {o.split("=", 1)[0] for o in overrides}
        if "train.epochs" in keys and "train.total_steps" not in keys:  # the new length is in epochs
            overrides = [*overrides, "train.total_steps=null"]
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        assert isinstance(cfg, DictConfig)
        check_run_length(overrides, cfg)
        validate(cfg)
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"resume={path}: {translate(err)}") from None
    assert isinstance(plain, dict)
    if state is not None:
        saved = state.get("config")
        saved_cfg: dict[str, Any] = saved if isinstance(saved, dict) else {}
        for group in _MATCH_GROUPS:
            key = _diff(saved_cfg.get(group), plain.get(group), f"{group}.")
            if key is not None:
                raise ConfigError(
                    f"{used} does not fit the run's config: {key} is {OmegaConf.select(OmegaConf.create(saved_cfg), key)} "
                    f"in the checkpoint and {OmegaConf.select(cfg, key)} in {path / '.hydra' / 'config.yaml'}; "
                    "resume needs the config the checkpoint was written with"
                )
        for key in FIXED_ON_RESUME:
            before = OmegaConf.select(OmegaConf.create(saved_cfg), key)
            if before is not None and before != OmegaConf.select(cfg, key):
                raise ConfigError(
                    f"{key}={OmegaConf.select(cfg, key)} does not fit the saved run ({key}={before}: the exploration "
                    "state and the saved buffer are per env); resume with the saved value or start a new run"
                )
    status_file = path / "status.json"
    status: dict = {}
    if status_file.exists():
        try:
            from rlfw.core.runfiles import load_json, read_text

            loaded = load_json(read_text(status_file, 1 << 20), status_file)  # ConfigError (a ValueError)
            status = loaded if isinstance(loaded, dict) else {}
            if not status:
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            log.warning("%s is unreadable (%s): it is rebuilt when the run starts", status_file, _first(err))
            status = {}
    done = status.get("epoch", 0) if isinstance(status.get("epoch", 0), int) else 0
    if status.get("status") == "finished" and done >= cfg.train.epochs:
        print(f"rlfw: {path} already finished {done} epochs; nothing to do")
        return float("nan")
    handler = logging.FileHandler(path / "rlfw.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger().addHandler(handler)
    if not found:  # killed before its first checkpoint: start over in the same dir
        from rlfw.training.checkpoint import truncate_logs

        truncate_logs(path, 0)
    if cfg.train.workers > 1:
        log.info("resuming %s with %d workers", path, cfg.train.workers)
    elif not found:
        log.info("resuming %s: no checkpoint yet, starting from epoch 0", path)
    return _result(start(cfg, path, checkpoint=ckpt if found else None, announce_resume=True))


GROUPS = ("algo", "buffer", "noise", "env", "logger", "experiment")


def _keys(prefix: str, schema: type) -> str:
    import dataclasses

    return ", ".join(f"{prefix}{f.name}" for f in dataclasses.fields(schema))


def help_text() -> str:
    """rlfw's ``--help``: usage, each config group with its options (the YAML files in
    ``conf/<group>/``), the root keys, sweeps, resume and where Hydra's own help is."""
    import textwrap

    from rlfw.config.paths import group_options
    from rlfw.config.schema import EvalConfig, TrainConfig

    def wrap(text: str, indent: str, hang: int = 2) -> str:
        return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent + " " * hang,
                             break_on_hyphens=False)  # fmt: skip

    width = max(len(g) for g in GROUPS)
    groups = []
    for group in GROUPS:
        options = [o for o in group_options(group) if not o.endswith("_schema")]
        groups.append(wrap(f"{group:<{width}}  {', '.join(options)}", "  ", width + 2))
    keys = [
        wrap("seed", "  "),
        wrap(_keys("train.", TrainConfig), "  "),
        wrap(_keys("eval.", EvalConfig), "  "),
    ]
    return "\n".join(
        [
            "usage: python -m rlfw [group=option ...] [key=value ...]",
            "       python -m rlfw -m [key=a,b,c ...]          (a sweep: one job per combination)",
            "       python -m rlfw resume=<run_dir> [train.epochs=N ...]",
            "",
            "Train an off-policy agent; the run directory is outputs/<date>/<time>_<pid>-<hex>_<algo>_<buffer>_<noise>_<env>",
            "(hydra.run.dir=<dir> picks another). Default: algo=td3 buffer=her noise=gaussian logger=csv",
            "env=FetchReach-v4.",
            "",
            "Config groups (group=option):",
            *groups,
            "",
            "Each chosen option has its keys (algo.gamma=0.95, buffer.n_step=3, env.id=..., logger.plots=false);",
            "python -m rlfw --cfg job [overrides] prints the composed config with all of them. Root keys:",
            *keys,
            "",
            "Examples:",
            "  python -m rlfw algo=ddpg buffer=her buffer.sampler=prioritized env=FetchPush-v4",
            "  python -m rlfw env=Hopper-v4 buffer=per buffer.n_step=3 noise=noisynet",
            "  python -m rlfw env=gym env.id=Pendulum-v1 train.epochs=5",
            "  python -m rlfw -m algo=ddpg,td3 seed=0,1,2          (6 jobs into multirun/<date>/<time>/)",
            "  python -m rlfw resume=outputs/<run> train.epochs=20   (continue or extend a run)",
            "",
            "Evaluate a run: python -m rlfw.evaluate run_dir=<run_dir> episodes=N [video=true].",
            "Hydra's own help (launchers, sweepers, its flags): python -m rlfw --hydra-help",
        ]
    )


def check_hydra(argv: list[str] | argparse.Namespace) -> DictConfig | None:
    """Check what Hydra itself would stop on, so it stops as one line before any job starts:
    an override Hydra's grammar cannot parse (non-ASCII outside quotes), the rlfw config under
    ``--cfg``/``--resolve`` (Hydra prints it without :func:`preflight`), an unknown
    ``hydra/launcher`` or ``hydra/sweeper`` option or one whose plugin is not installed, and a
    run (or sweep) directory that does not resolve (unknown interpolation, missing environment
    variable) or cannot be created (``/proc/nope``: probed with a temporary directory in its
    nearest existing ancestor, removed at once).

    Returns:
        The first job's config with its ``hydra`` node (None for ``--help``, ``--info``, ...).

    Raises:
        ConfigError: one line naming the override or key.
    """
    import importlib.util
    import tempfile

    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from rlfw.config.cli import parse_command_line
    from rlfw.config.preflight import expand_jobs, hydra_context, translate

    args = parse_command_line(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return None
    parser = OverridesParser.create()
    for o in args.overrides:
        try:
            parser.parse_overrides([o])
        except OverrideParseException as err:
            hint = ""
            if not o.isascii():
                key, _, value = o.partition("=")
                hint = f"; Hydra takes non-ASCII characters only in quotes: '{key}=\"{value}\"'"
            raise ConfigError(f"cannot parse the override {o}: {str(err).splitlines()[0]}{hint}") from None
    multirun = bool(args.multirun)
    try:
        job = expand_jobs(list(args.overrides), multirun)[0]
    except Exception:  # a sweep only the sweeper understands: compose the fixed overrides
        job = [o for o in args.overrides if "," not in o and "(" not in o]
    with hydra_context():
        try:
            full = compose(config_name=args.config_name or "config", overrides=job, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            import re

            missing = re.search(r"In 'hydra/(launcher|sweeper)/(\w+)': Could not load '(hydra/[\w/]+)'", str(err))
            if missing:  # the option's file is rlfw's, its defaults come with the plugin
                group, choice, base = missing.groups()
                raise ConfigError(
                    f"hydra/{group}={choice} needs a Hydra plugin that is not installed (it provides {base}); "
                    f"install the plugin (see README, Sweeps and clusters) or choose another hydra/{group}"
                ) from None
            raise ConfigError(translate(err)) from None
        if args.cfg:  # printing the config: nothing is run or written
            return full
        if multirun:
            for group in ("launcher", "sweeper"):
                target = str(OmegaConf.select(full, f"hydra.{group}._target_", default="") or "")
                module = target.rsplit(".", 1)[0]
                try:
                    found = bool(module) and importlib.util.find_spec(module) is not None
                except (ImportError, ValueError):
                    found = False
                if module and not found:
                    choice = OmegaConf.select(full, f"hydra.runtime.choices.hydra/{group}", default="?")
                    raise ConfigError(
                        f"hydra/{group}={choice} needs a Hydra plugin that is not installed (no module {module}); "
                        f"install the plugin (see README, Sweeps and clusters) or choose another hydra/{group}"
                    )
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        HydraConfig.instance().set_config(full)  # for ${hydra:...} in the directory pattern
        try:
            directory = str(OmegaConf.select(full, key, throw_on_resolution_failure=True))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key} does not resolve: {str(err).splitlines()[0]}") from None
    probe = Path(directory).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:  # the nearest existing ancestor must take a new directory (os.access says yes to root)
        Path(tempfile.mkdtemp(prefix=".rlfw-probe-", dir=probe)).rmdir()
    except OSError as err:
        raise ConfigError(f"{key}={directory}: cannot create a directory in {probe}: {err.strerror}") from None
    return full


def _stopped(err: TrainingInterrupted | KeyboardInterrupt) -> SystemExit:
    """One line (``rlfw: stopped by ...``) and exit status ``128 + signum``
    (:func:`rlfw.errors.exit_status`)."""
    message = err.message if isinstance(err, StopSignal) else str(err) if isinstance(err, TrainingInterrupted) else ""
    print(f"rlfw: {message or 'stopped by SIGINT'}", file=sys.stderr)
    return SystemExit(exit_status(err))


def _claim_given_run_dir(args: argparse.Namespace) -> None:
    """Before Hydra writes ``.hydra/`` into it: claim a ``hydra.run.dir`` given on the command
    line (:func:`claim_run_dir`), so a second writer or a fresh run into an existing run stops
    here with one line. Not for ``-m`` sweeps, informational flags or launcher ranks > 0."""
    from rlfw.distributed import launcher_env
    from rlfw.training.requeue import restart_count

    if args.multirun or args.cfg or args.info or args.hydra_help or args.shell_completion:
        return
    launched = launcher_env()
    if launched is not None and launched[0] != 0:
        return
    given = [a.lstrip("+").split("=", 1)[1] for a in args.overrides if a.lstrip("+").startswith("hydra.run.dir=")]
    if given and given[-1] and "${" not in given[-1]:
        claim_run_dir(Path(given[-1]).expanduser().resolve(), fresh=restart_count() == 0)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: help, resume, or preflight then Hydra.

    Ctrl-C (SIGINT), SIGTERM and SIGHUP end the command with one line and exit status
    ``128 + signum``: during training after the current cycle (status.json ``interrupted`` with
    the resume command), before it at once. A ``-m`` sweep stops at the job the signal reached;
    its failed jobs are listed one line each at the end, and the exit status is then 1.
    """
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    install_stop_handlers()
    _FAILED_JOBS.clear()
    resume_args = [a for a in args if a.startswith("resume=")]
    try:
        if resume_args:
            resume(resume_args[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")])
            return
        from rlfw.config.cli import parse_command_line
        from rlfw.config.preflight import free_form_overrides

        args = free_form_overrides(args)
        command_line = parse_command_line(args)  # the one parse of the command line here
        preflight(command_line)
        check_hydra(command_line)
        _claim_given_run_dir(command_line)
        from rlfw.distributed import join_launched_group, launcher_env

        if launcher_env() is not None:  # torchrun/srun: one run over every rank
            args = [*args, *join_launched_group(args)]
        train(args)
    except (ConfigError, TrainingDiverged) as err:
        raise fail("rlfw", err) from None
    except (TrainingInterrupted, KeyboardInterrupt) as err:  # StopSignal; SIGINT where no handler of ours was installed
        raise _stopped(err) from None
    except OSError as err:
        raise fail("rlfw", err, message=f"cannot write the run's files: {err}") from None
    if _FAILED_JOBS:
        for line in _FAILED_JOBS:
            print(f"rlfw: error: {line}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
