"""Validation of a composed config before any simulator starts.

Each schema checks its own fields (``validate(node)`` on the dataclass of the chosen option,
found through :func:`rlfw.registry.registry`); :func:`cross_rules` holds the few rules that
span groups. Every failure is one :class:`rlfw.errors.ConfigError` line that names the key and
what is allowed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import OmegaConf

from rlfw.core import require
from rlfw.errors import ConfigError
from rlfw.registry import registry

# config groups whose node has a ``name`` that picks a registered option
OPTION_GROUPS = ("algo", "buffer", "noise", "logger")


def _check(schema: Any, node: Any) -> None:
    check = getattr(schema, "validate", None)
    if check is not None:
        check(node)


def held_transitions(capacity: int, num_envs: int, episode_steps: int | None = None) -> int:
    """An upper bound of the transitions the replay storage (:class:`rlfw.buffers.storage.
    EpisodeStorage`) can hold: each env has ``R = ceil(capacity / num_envs)`` rows, its newest
    holds the current observation, and every episode of ``T = episode_steps`` steps keeps one
    more row than it has transitions (its last observation), so at most
    ``R - 1 - floor((R - 1) / (T + 1))`` per env. A batch larger than this is never sampled."""
    rows = -(-int(capacity) // int(num_envs)) - 1
    if episode_steps:
        rows -= rows // (int(episode_steps) + 1)
    return rows * int(num_envs)


def epoch_steps(train: Any) -> int:
    """Env steps of one epoch over all envs and workers: ``cycles_per_epoch x steps_per_cycle x
    workers`` (the ``env_steps`` column of metrics.csv grows by this much an epoch)."""
    return int(train.cycles_per_epoch) * int(train.steps_per_cycle) * int(train.workers)


def resolve_total_steps(cfg: Any) -> None:
    """Set ``train.epochs`` from ``train.total_steps`` when it is given (in place).

    Raises:
        ConfigError: ``train.total_steps`` is not a multiple of an epoch's env steps (the line
            names the two nearest lengths that are).
    """
    tr = cfg.train
    total = tr.get("total_steps")
    if total is None:
        return
    per_epoch = epoch_steps(tr)
    if total % per_epoch:
        below, above = (total // per_epoch) * per_epoch, (total // per_epoch + 1) * per_epoch
        raise ConfigError(
            f"train.total_steps={total} is not a whole number of epochs of {per_epoch} env steps (train.cycles_per_epoch="
            f"{tr.cycles_per_epoch} x train.steps_per_cycle={tr.steps_per_cycle} x train.workers={tr.workers}); "
            + (f"use {below} or {above}" if below else f"use {above}") + ", or change train.cycles_per_epoch"
        )
    tr.epochs = total // per_epoch


def check_run_length(overrides: list[str], cfg: Any) -> None:
    """Refuse ``train.epochs`` and ``train.total_steps`` given together on the command line
    when they name different lengths (call before :func:`validate`, which sets the epochs from
    ``total_steps``).

    Raises:
        ConfigError: one line with both values and the epoch's env steps.
    """
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    tr = cfg.train
    if {"train.epochs", "train.total_steps"} <= keys and tr.total_steps is not None:
        if int(tr.epochs) * epoch_steps(tr) != int(tr.total_steps):
            raise ConfigError(
                f"train.epochs={tr.epochs} and train.total_steps={tr.total_steps} disagree: {tr.epochs} epochs are "
                f"{int(tr.epochs) * epoch_steps(tr)} env steps ({epoch_steps(tr)} an epoch); give one of them"
            )


def cross_rules(cfg: Any) -> None:
    """The rules that span groups: the batch fits the buffer, the buffer holds a transition of
    every env, updates start within the run, HER needs a family with goals.

    Raises:
        ConfigError: the first rule broken.
    """
    b, tr = cfg.buffer, cfg.train
    require(
        b.capacity >= 2 * tr.num_envs,
        f"buffer.capacity={b.capacity} must be at least 2 x train.num_envs={tr.num_envs}",
    )
    require(
        tr.batch_size <= b.capacity,
        f"train.batch_size={tr.batch_size} is larger than buffer.capacity={b.capacity}",
    )
    held = held_transitions(b.capacity, tr.num_envs)
    require(
        tr.batch_size <= held,
        f"train.batch_size={tr.batch_size} is more than the {held} transitions buffer.capacity="
        f"{b.capacity} can hold with train.num_envs={tr.num_envs} (each env's newest row holds its "
        f"current observation): updates start only once the buffer holds a batch, so none would run",
    )
    steps = int(tr.epochs) * int(tr.cycles_per_epoch) * int(tr.steps_per_cycle)
    require(
        tr.updates_per_cycle == 0 or tr.learning_starts < steps,
        f"train.learning_starts={tr.learning_starts} is not below the {steps} env steps the run takes "
        f"(train.epochs={tr.epochs} x train.cycles_per_epoch={tr.cycles_per_epoch} x train.steps_per_cycle="
        f"{tr.steps_per_cycle}): no update would ever run; lower it or train longer",
    )
    family = registry("env.family").get(cfg.env.family).target
    if cfg.algo.get("clip_return", False) and family.goal is False:
        raise ConfigError(
            f"algo.clip_return=true clips critic targets to [-1/(1-gamma), 0], which is right only "
            f"for the {{-1, 0}} rewards of goal envs (fetch, panda); env.family '{cfg.env.family}' has "
            "dense rewards that can be positive: set algo.clip_return=false"
        )
    if b.sampler == "energy":
        require(
            family.goal is not False,
            f"buffer.sampler=energy ranks episodes by how their achieved goal moved, and env.family "
            f"'{cfg.env.family}' has no goals: use buffer.sampler=uniform or prioritized",
        )
    if b.relabel == "her":
        require(
            family.goal is not False,
            f"buffer.relabel=her needs a goal env, and env.family '{cfg.env.family}' has no goals "
            "(the goal families are: "
            + ", ".join(n for n in registry("env.family").names() if registry("env.family").get(n).target.goal is not False)
            + ")",
        )


def validate(cfg: Any) -> str:
    """Check a composed config; return the resolved env id.

    Order: the root keys; each option group's schema (``algo``, ``buffer``, ``noise``,
    ``logger``) and the root sections (``env``, ``train``, ``eval``) check their own fields;
    ``train.total_steps`` sets ``train.epochs`` (:func:`resolve_total_steps`, the one change
    made to ``cfg``); :func:`cross_rules`; each chosen option's ``validate_with(cfg)``, where its schema has one
    (its rules with other groups: ``algo=sac`` refuses ``noise=noisynet``); the env id is resolved (``FetchSlide-v2`` -> the registered version).

    Raises:
        ConfigError: the first rule broken, as one line naming the key and the allowed values.
    """
    from rlfw.config.schema import Config, EnvConfig, EvalConfig, TrainConfig, register_schemas
    from rlfw.envs import env_imports, resolve_env_id

    register_schemas()  # the built-in components' registries
    known = {f.name for f in dataclasses.fields(Config)}
    for key in cfg:
        require(key in known, f"unknown key '{key}'; the keys of the root config are: {', '.join(sorted(known))}")
    Config.validate(cfg)
    schemas = [registry(group).get(str(cfg[group].name)).schema for group in OPTION_GROUPS]
    for group, schema in zip(OPTION_GROUPS, schemas):
        _check(schema, cfg[group])
    env_schema = OmegaConf.get_type(cfg.env)  # the env option's schema: a family's own (Fetch, Panda) or the shared one
    if not (isinstance(env_schema, type) and issubclass(env_schema, EnvConfig)):
        env_schema = EnvConfig
    for schema, key in ((env_schema, "env"), (TrainConfig, "train"), (EvalConfig, "eval")):
        _check(schema, cfg[key])
    resolve_total_steps(cfg)
    cross_rules(cfg)
    for schema in schemas:  # an option's own rules with the other groups
        check_with = getattr(schema, "validate_with", None)
        if check_with is not None:
            check_with(cfg)
    env_id, _ = resolve_env_id(str(cfg.env.id), cfg.env.family, bool(cfg.env.resolve_version), env_imports(cfg))
    family = registry("env.family").get(cfg.env.family).target
    EnvConfig.check_kwargs(env_id, cfg.env.kwargs, family)
    from rlfw.envs import env_wrappers
    from rlfw.envs.wrappers import load_wrappers

    load_wrappers(env_wrappers(cfg))  # each imports, and takes its keyword arguments
    family.check_env(cfg.env, env_id)  # the family's own rules (Fetch: where scripted starts apply)
    steps = cfg.env.max_episode_steps or _registered_steps(env_id)
    require(
        steps is not None,
        f"env.id '{env_id}' has no time limit (it was registered without max_episode_steps): an episode "
        "that never ends would stall training and evaluation; set env.max_episode_steps=<steps>",
    )
    held = held_transitions(cfg.buffer.capacity, cfg.train.num_envs, steps)
    require(
        cfg.train.batch_size <= held,
        f"train.batch_size={cfg.train.batch_size} is more than the {held} transitions buffer.capacity="
        f"{cfg.buffer.capacity} can hold with train.num_envs={cfg.train.num_envs} and episodes of {steps} "
        f"steps (each episode also keeps its last observation): no update would ever run",
    )
    return env_id


def _registered_steps(env_id: str) -> int | None:
    """The TimeLimit Gymnasium registered for ``env_id`` (None if none or unknown)."""
    import gymnasium as gym

    try:  # a module:Env-v0 id: the module registered Env-v0 when the id was resolved
        return gym.spec(env_id.rsplit(":", 1)[-1]).max_episode_steps
    except Exception:
        return None
