"""``python -m rlfw resume=<run_dir> [overrides]``: continue a stopped or killed run from its last
checkpoint in the same directory (:func:`resume`), reading the directory as data only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from rlfw.errors import ConfigError
from rlfw.lifecycle import claim_run_dir, job_result, release_run_dir, start

log = logging.getLogger("rlfw")


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
    env = base.get("env")
    keys = set(env) if isinstance(env, dict | DictConfig) else set()
    families = registry("env.family")
    names = list(families.names())
    own = env.get("family") if isinstance(env, dict | DictConfig) else None
    if isinstance(own, str) and own in names:  # the run's own family first: Panda's keys are a subset of Fetch's
        names = [own] + [n for n in names if n != own]
    for name in names:  # a family's own env schema (Fetch's or Panda's scripted starts) when the run has its keys
        schema = families.get(name).schema
        if schema is not None and keys - set(typed.env.keys()) and keys <= {f.name for f in dataclasses.fields(schema)}:
            with open_dict(typed):
                typed.env = OmegaConf.structured(schema)
            break
    return typed


LEGACY_ENV_KEYS = ("grasped_start", "near_object_start")  # in every env before the families owned them


def without_unset_legacy_keys(config: Any) -> Any:
    """A saved config (a dict) without the scripted-start ``env`` keys where they are 0: runs
    saved before the Fetch (both keys) and Panda (``near_object_start``) families owned them (a
    Hopper run, or a Panda run with ``grasped_start``) carry them at their default, and a schema
    without them would refuse the run. A key set to another value is kept."""
    env = config.get("env") if isinstance(config, dict) else None
    if isinstance(env, dict):
        for key in LEGACY_ENV_KEYS:
            if key in env and env[key] in (0, 0.0, None):
                env = {k: v for k, v in env.items() if k != key}
        config = {**config, "env": env}
    return config


# keys added to the schemas after runs were saved without them, with the value that behaves as
# the code before them did: a saved config lacking one is read with that value
ADDED_KEYS = {("algo", "lr_schedule"): "constant", ("algo", "lr_end_factor"): 0.0}


def with_added_keys(config: Any) -> Any:
    """A saved config (a dict) with each of :data:`ADDED_KEYS` it lacks set to its neutral value,
    so a run saved before the key existed resumes (its checkpoint matches its config)."""
    if not isinstance(config, dict):
        return config
    out = dict(config)
    for (group, key), value in ADDED_KEYS.items():
        node = out.get(group)
        if isinstance(node, dict) and key not in node:
            out[group] = {**node, key: value}
    return out


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
    base = OmegaConf.create(without_unset_legacy_keys(OmegaConf.to_container(load_run_config(path, state))))
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
        saved_cfg: dict[str, Any] = with_added_keys(without_unset_legacy_keys(saved)) if isinstance(saved, dict) else {}
        plain = without_unset_legacy_keys(plain)
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
        from rlfw.training.csvfiles import truncate_logs

        truncate_logs(path, 0)
    if cfg.train.workers > 1:
        log.info("resuming %s with %d workers", path, cfg.train.workers)
    elif not found:
        log.info("resuming %s: no checkpoint yet, starting from epoch 0", path)
    return job_result(start(cfg, path, checkpoint=ckpt if found else None, announce_resume=True))
