"""Compose and check a federation before Flower or any simulator starts.

:func:`plan` turns a ``python -m rlfw.federated`` command line (its overrides) into a
:class:`Plan`: the composed federated config, the validated ``federated`` block and one
composed training config per client. Every check here raises :class:`rlfw.errors.ConfigError`
with one line; :func:`check_shapes` (which builds one env per client to read its sizes) refuses
a client whose observation, goal or action size differs from the global model's.

Client ``i``'s config is rlfw's root config (conf/config.yaml) composed with the same
overrides as the command line, less the ``federated.*`` ones, plus ``env=<clients[i]>``,
``seed=<seed + i>`` and ``train.epochs=<rounds * epochs_per_round>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rlfw.config.paths import group_options
from rlfw.config.preflight import compose_config
from rlfw.config.validate import validate
from rlfw.core.checks import in_range
from rlfw.errors import ConfigError
from rlfw.federated.schema import MODES, STRATEGIES, WEIGHTINGS, register_federated_schemas


def _for_federation(key: str) -> bool:
    """Keys the clients' configs do not take from the command line (the env choice ``env``,
    ``seed``, ``train.epochs``, ``federated.*``, ``hydra.*``); ``env.*`` keys are kept."""
    return key in ("env", "seed", "train.epochs", "train.total_steps", "federated") or key.startswith(
        ("federated.", "hydra.", "hydra/")
    )


def compose_named(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` (rlfw's one composer,
    :func:`rlfw.config.preflight.compose_config`, with the federated schema stored).

    Raises:
        ConfigError: a composition failure, as one line.
    """
    register_federated_schemas()
    return compose_config(list(overrides), config_name)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+")


def client_overrides(overrides: list[str], cfg: DictConfig, index: int) -> list[str]:
    """The overrides that compose client ``index``'s training config (see the module doc)."""
    fed = cfg.federated
    kept = [o for o in overrides if not _for_federation(_key(o))]
    return [
        *kept,
        f"env={fed.clients[index]}",
        f"seed={int(cfg.seed) + index}",
        f"train.epochs={int(fed.rounds) * int(fed.epochs_per_round)}",
        "train.total_steps=null",  # the federation's rounds decide a client's length
    ]


def client_name(index: int, env: str) -> str:
    """``<index>_<env>``: the client's directory under ``<run_dir>/clients`` and its CSV prefix."""
    return f"{index}_{env}"


def validate_federated(fed: Any) -> None:
    """Rules of the ``federated`` block (types are checked by the schema at compose time).

    Raises:
        ConfigError: the first rule broken, naming the key and the allowed values.
    """
    if fed.rounds < 1:
        raise ConfigError(f"federated.rounds must be >= 1, got {fed.rounds}")
    if fed.epochs_per_round < 1:
        raise ConfigError(f"federated.epochs_per_round must be >= 1, got {fed.epochs_per_round}")
    if fed.strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown federated.strategy '{fed.strategy}'; choose one of: {', '.join(STRATEGIES)}"
        )
    if fed.weighting not in WEIGHTINGS:
        raise ConfigError(
            f"unknown federated.weighting '{fed.weighting}'; choose one of: {', '.join(WEIGHTINGS)}"
        )
    if fed.mode not in MODES:
        raise ConfigError(f"unknown federated.mode '{fed.mode}'; choose one of: {', '.join(MODES)}")
    if not fed.clients:
        raise ConfigError(
            "federated.clients is empty; list one env option per client, e.g. [FetchPush-v4,FetchSlide-v4]"
        )
    options = group_options("env")
    for i, env in enumerate(fed.clients):
        if env not in options:
            raise ConfigError(
                f"unknown client env '{env}' in federated.clients[{i}]; choose env options from: {', '.join(options)}"
            )
    for key in ("trim_beta", "server_lr", "server_momentum", "connect_timeout_s", "max_obs_abs"):
        in_range(fed, key, prefix="federated.")  # finite
    for key in ("max_update_norm", "max_update_ratio", "round_timeout_s"):
        in_range(fed, key, optional=True, prefix="federated.")
    if not 0 <= fed.trim_beta < 0.5:
        raise ConfigError(f"federated.trim_beta must be in [0, 0.5), got {fed.trim_beta}")
    if not 0 <= fed.krum_malicious < len(fed.clients):
        raise ConfigError(
            f"federated.krum_malicious must be in [0, {len(fed.clients) - 1}] (fewer than the "
            f"{len(fed.clients)} federated.clients), got {fed.krum_malicious}"
        )
    if fed.round_timeout_s is not None and fed.round_timeout_s <= 0:
        raise ConfigError(f"federated.round_timeout_s must be > 0 seconds (or null: wait for ever), got {fed.round_timeout_s}")
    if fed.connect_timeout_s <= 0:
        raise ConfigError(f"federated.connect_timeout_s must be > 0 seconds, got {fed.connect_timeout_s}")
    if fed.max_obs_abs <= 0:
        raise ConfigError(f"federated.max_obs_abs must be > 0, got {fed.max_obs_abs}")
    if fed.max_update_norm is not None and fed.max_update_norm <= 0:
        raise ConfigError(f"federated.max_update_norm must be > 0 (or null: no bound), got {fed.max_update_norm}")
    if fed.max_update_ratio is not None and fed.max_update_ratio <= 0:
        raise ConfigError(f"federated.max_update_ratio must be > 0 (or null: no bound), got {fed.max_update_ratio}")
    if not 0 <= fed.server_momentum < 1:
        raise ConfigError(f"federated.server_momentum must be in [0, 1), got {fed.server_momentum}")
    if fed.server_lr <= 0:
        raise ConfigError(f"federated.server_lr must be > 0, got {fed.server_lr}")
    if fed.mode == "client":
        if fed.client_index is None or not 0 <= fed.client_index < len(fed.clients):
            raise ConfigError(
                f"federated.mode=client needs federated.client_index in [0, {len(fed.clients) - 1}] "
                f"(the entry of federated.clients this process trains), got {fed.client_index}"
            )
    check_address(str(fed.server_address))
    tls = fed.tls
    server_files = [tls.root_cert, tls.server_cert, tls.server_key]
    if fed.mode == "server" and any(server_files) and not all(server_files):
        raise ConfigError(
            "TLS on the server needs all of federated.tls.root_cert, server_cert and server_key"
        )
    if fed.mode == "simulation" and any(server_files):
        raise ConfigError(
            "federated.tls.* applies to federated.mode=server|client; the simulation runs in one process"
        )
    for key in ("root_cert", "server_cert", "server_key"):
        path = tls[key]
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"federated.tls.{key}: no such file '{path}'")


def check_address(address: str) -> None:
    """Check ``HOST:PORT`` (``[v6]:PORT`` for IPv6) with a port in 1..65535.

    Raises:
        ConfigError: ``federated.server_address must be HOST:PORT with a port in 1..65535``.
    """
    host, sep, port = address.rpartition(":")
    ok = bool(sep) and bool(host.strip("[]")) and port.isdigit() and 1 <= int(port) <= 65535
    if not ok:
        raise ConfigError(
            f"federated.server_address must be HOST:PORT with a port in 1..65535, got '{address}'"
        )


@dataclass
class Plan:
    """A checked federation: the federated config and each client's training config."""

    cfg: DictConfig  # conf/federated.yaml composed with the overrides
    clients: list[DictConfig] = field(default_factory=list)  # per client (conf/config.yaml)
    overrides: list[str] = field(default_factory=list)

    @property
    def fed(self) -> Any:
        return self.cfg.federated

    def names(self) -> list[str]:
        return [client_name(i, env) for i, env in enumerate(self.fed.clients)]


def plan(overrides: list[str]) -> Plan:
    """Compose and validate the federation of a command line (no env is built).

    Raises:
        ConfigError: the federated config or a client's config does not compose or validate.
    """
    cfg = compose_named("federated", overrides)
    validate_federated(cfg.federated)
    indices = range(len(cfg.federated.clients))
    if cfg.federated.mode == "client":
        indices = range(int(cfg.federated.client_index), int(cfg.federated.client_index) + 1)
    clients: list[DictConfig] = []
    for i in range(len(cfg.federated.clients)):
        if i not in indices:
            clients.append(OmegaConf.create({}))
            continue
        ccfg = compose_named("config", client_overrides(overrides, cfg, i))
        try:
            validate(ccfg)
        except ConfigError as err:
            raise ConfigError(
                f"federated.clients[{i}] '{cfg.federated.clients[i]}': {err}"
            ) from None
        clients.append(ccfg)
    return Plan(cfg, clients, list(overrides))


# -------------------------------------------------------------------------------------------
# shapes and the global model


@dataclass(frozen=True)
class Dims:
    """Sizes the global model is built for: observation, goal (0 without goals), action."""

    obs: int
    goal: int
    act: int

    def __str__(self) -> str:
        return f"(obs {self.obs}, goal {self.goal}, action {self.act})"


def env_info(cfg: DictConfig) -> Any:
    """Build the client's env once (:func:`rlfw.build.build_env`), read its EnvInfo, close it."""
    from rlfw.build import build_env

    env = build_env(cfg, log_resolution=False)
    env.ref_env.close()
    return env.info


def dims_of(info: Any) -> Dims:
    return Dims(int(info.obs_dim), int(info.goal_dim) if info.goal else 0, int(info.act_dim))


def shape_mismatch(index: int, env: str, dims: Dims, reference_env: str, reference: Dims) -> str:
    """The one-line refusal of a client whose sizes differ from the global model's."""
    return (
        f"federated.clients[{index}] '{env}' has {dims} but the global model (built for "
        f"federated.clients[0] '{reference_env}') has {reference}; clients of one federation "
        f"must share observation, goal and action sizes: run each shape group as its own federation"
    )


def check_shapes(p: Plan) -> tuple[Dims, Any]:
    """Refuse any client whose sizes differ from ``clients[0]``'s (the global model's).

    Returns:
        (the global model's dims, clients[0]'s EnvInfo).

    Raises:
        ConfigError: :func:`shape_mismatch`'s line for the first client that differs.
    """
    infos = [env_info(c) for c in p.clients]
    ref = dims_of(infos[0])
    for i, info in enumerate(infos[1:], start=1):
        d = dims_of(info)
        if d != ref:
            raise ConfigError(shape_mismatch(i, p.fed.clients[i], d, p.fed.clients[0], ref))
    return ref, infos[0]


def build_agent(cfg: DictConfig, info: Any) -> Any:
    """The agent a :class:`rlfw.training.loop.TrainLoop` with ``cfg`` would build (no envs)."""
    from rlfw.build import build_agent as build
    from rlfw.build import build_exploration, pick_device

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    exploration = build_exploration(cfg, int(cfg.train.num_envs), info.act_dim, rng)
    return build(cfg, info, exploration, pick_device(cfg.train.device), seed=cfg.seed)
