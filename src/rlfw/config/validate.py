"""Every cross-field and range rule of the config, checked in one place before any simulator.

:func:`validate` raises :class:`rlfw.errors.ConfigError` with one line that names the key and
what is allowed. The registries of the components are the source of the allowed names.
"""

from __future__ import annotations

from typing import Any

from rlfw.errors import ConfigError


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _in_range(cfg: Any, key: str, low: float | None = None, high: float | None = None,
              low_open: bool = False) -> None:  # fmt: skip
    """Check ``low <(=) cfg[key] <= high`` (dotted key)."""
    value = cfg
    for part in key.split("."):
        value = value[part]
    if low is not None:
        ok = value > low if low_open else value >= low
        bound = f"> {low}" if low_open else f">= {low}"
        _require(ok, f"{key}={value} is out of range: it must be {bound}")
    if high is not None:
        _require(value <= high, f"{key}={value} is out of range: it must be <= {high}")


def validate(cfg: Any) -> str:
    """Check a composed config; return the resolved env id.

    Rules: registered names for every group and named option; numeric ranges; batch size not
    larger than the buffer; ``train.steps_per_cycle`` a multiple of ``train.num_envs``; HER
    only on goal env families; an env id that Gymnasium knows (``FetchSlide-v2`` resolves to
    the registered version).

    Raises:
        ConfigError: the first rule broken, as one line naming the key and the allowed values.
    """
    import dataclasses

    from rlfw.algos import ALGOS
    from rlfw.algos.networks import ACTIVATIONS, INITS
    from rlfw.buffers import BUFFERS, RELABEL, SAMPLERS, STRATEGIES
    from rlfw.config.schema import Config
    from rlfw.envs import FAMILIES, resolve_env_id
    from rlfw.noise import NOISES, SCHEDULES

    known = {f.name for f in dataclasses.fields(Config)}
    for key in cfg:
        _require(
            key in known,
            f"unknown key '{key}'; the keys of the root config are: {', '.join(sorted(known))}",
        )
    a, b, n, e, tr = cfg.algo, cfg.buffer, cfg.noise, cfg.env, cfg.train
    ALGOS.check(a.name)
    NOISES.check(n.name)
    BUFFERS.check(b.name)
    RELABEL.check(b.relabel)
    SAMPLERS.check(b.sampler)
    STRATEGIES.check(b.strategy)
    FAMILIES.check(e.family)
    ACTIVATIONS.check(a.activation)
    INITS.check(a.init)
    _require(
        e.vectorization in ("sync", "async"),
        f"unknown env.vectorization '{e.vectorization}'; choose one of: async, sync",
    )
    _require(
        tr.device in ("cpu", "cuda", "auto") or str(tr.device).startswith("cuda:"),
        f"unknown train.device '{tr.device}'; choose one of: auto, cpu, cuda, cuda:N",
    )
    if n.name == "gaussian":
        SCHEDULES.check(n.schedule)
        _in_range(cfg, "noise.sigma", 0.0)
        _in_range(cfg, "noise.decay_steps", 0)
        if n.sigma_final is not None:
            _in_range(cfg, "noise.sigma_final", 0.0)
            if n.schedule == "exponential":
                _require(
                    n.sigma > 0 and n.sigma_final > 0,
                    f"noise.schedule=exponential needs noise.sigma > 0 and noise.sigma_final > 0 "
                    f"(got {n.sigma} and {n.sigma_final})",
                )
    if n.name == "ou":
        _in_range(cfg, "noise.theta", 0.0, low_open=True)
        _in_range(cfg, "noise.dt", 0.0, low_open=True)
        _in_range(cfg, "noise.sigma", 0.0)
    if n.name == "noisynet":
        _require(
            n.resample in ("step", "episode"),
            f"unknown noise.resample '{n.resample}'; choose one of: episode, step",
        )
    _in_range(cfg, "noise.random_eps", 0.0, 1.0)

    _in_range(cfg, "algo.gamma", 0.0, 1.0, low_open=True)
    _in_range(cfg, "algo.tau", 0.0, 1.0, low_open=True)
    _require(a.n_critics in (1, 2), f"algo.n_critics={a.n_critics} is not allowed; choose 1 or 2")
    _in_range(cfg, "algo.policy_delay", 1)
    _in_range(cfg, "algo.target_noise", 0.0)
    _in_range(cfg, "algo.target_noise_clip", 0.0)
    _in_range(cfg, "algo.action_l2", 0.0)
    _in_range(cfg, "algo.preact_l2", 0.0)
    _in_range(cfg, "algo.actor_lr", 0.0, low_open=True)
    _in_range(cfg, "algo.critic_lr", 0.0, low_open=True)
    for key in ("actor_hidden", "critic_hidden"):
        _require(
            len(a[key]) >= 1 and all(int(h) > 0 for h in a[key]),
            f"algo.{key}={list(a[key])} must be a non-empty list of positive layer sizes",
        )

    _in_range(cfg, "buffer.capacity", 1)
    _in_range(cfg, "buffer.replay_k", 0.0)
    _in_range(cfg, "buffer.alpha", 0.0)
    _in_range(cfg, "buffer.beta0", 0.0, 1.0)
    _in_range(cfg, "buffer.priority_eps", 0.0, low_open=True)
    _in_range(cfg, "buffer.n_step", 1)

    for key in ("epochs", "cycles_per_epoch", "steps_per_cycle", "batch_size", "num_envs"):
        _in_range(cfg, f"train.{key}", 1)
    for key in ("updates_per_cycle", "learning_starts", "torch_threads"):
        _in_range(cfg, f"train.{key}", 0)
    _in_range(cfg, "train.checkpoint_every", 1)
    _in_range(cfg, "train.workers", 1)
    _require(
        tr.dist_backend in ("auto", "gloo", "nccl"),
        f"unknown train.dist_backend '{tr.dist_backend}'; choose one of: auto, gloo, nccl",
    )
    _in_range(cfg, "eval.episodes", 0)
    _in_range(cfg, "eval.num_envs", 0)
    _in_range(cfg, "eval.every", 1)
    _require(
        tr.steps_per_cycle % tr.num_envs == 0,
        f"train.steps_per_cycle={tr.steps_per_cycle} must be a multiple of "
        f"train.num_envs={tr.num_envs} (steps are counted over all parallel envs)",
    )
    _require(
        b.capacity >= 2 * tr.num_envs,
        f"buffer.capacity={b.capacity} must be at least 2 x train.num_envs={tr.num_envs}",
    )
    _require(
        tr.batch_size <= b.capacity,
        f"train.batch_size={tr.batch_size} is larger than buffer.capacity={b.capacity}",
    )
    from rlfw.callbacks import LOGGERS

    lg = cfg.logger
    LOGGERS.check(lg.name)
    _require(lg.progress in ("auto", "bar", "lines"), f"unknown logger.progress '{lg.progress}'; choose one of: auto, bar, lines")
    _in_range(cfg, "logger.video_every", 0)
    if lg.name == "wandb":
        _require(
            lg.mode in ("offline", "online", "disabled"),
            f"unknown logger.mode '{lg.mode}'; choose one of: disabled, offline, online",
        )
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("logger=wandb needs the wandb package: pip install 'rlfw[wandb]'") from None

    family = FAMILIES.get(e.family).target
    if b.relabel == "her":
        _require(
            family.goal is not False,
            f"buffer.relabel=her needs a goal env, and env.family '{e.family}' has no goals "
            "(the goal families are: fetch, panda, gym)",
        )
    env_id, _ = resolve_env_id(str(e.id), e.family)
    return env_id
