"""Typed schema of the ``federated:`` block of conf/federated.yaml (stored in Hydra's ConfigStore).

conf/federated.yaml starts with ``defaults: [federated_schema, config, _self_]``:
``federated_schema`` (:class:`FederatedConfig`, stored in the ``federated`` package) comes
first, then rlfw's whole root config (conf/config.yaml with its groups), so a misspelt
``federated.*`` key or a wrongly typed value fails at compose time and names the key, like the
training app's groups. (The schema comes before ``config`` because rlfw's typed root
:class:`rlfw.config.schema.Config` accepts no new top-level key once it is in place.)
"""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time.
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from rlfw.config.schema import register_schemas

STRATEGIES = ("fedavg", "fedavgm", "fedmedian", "fedtrimmedavg", "krum")
MODES = ("simulation", "server", "client")
WEIGHTINGS = ("env_steps", "uniform")


@dataclass
class TLSConfig:
    """PEM files for TLS on the gRPC link. All ``None``: plain (insecure) gRPC.

    Server (``federated.mode=server``): ``root_cert`` (the CA that signed the server cert),
    ``server_cert`` and ``server_key``; all three or none. Client (``federated.mode=client``):
    ``root_cert`` only (the CA to trust); a client given a ``root_cert`` connects with TLS.
    """

    root_cert: str | None = None  # CA certificate (PEM)
    server_cert: str | None = None  # the server's certificate (PEM), signed by root_cert
    server_key: str | None = None  # the server's private key (PEM)


@dataclass
class FederatedConfig:
    """One federation: a server and ``len(clients)`` clients, ``rounds`` rounds.

    Each round every client loads the global model, trains ``epochs_per_round`` epochs of the
    usual rlfw loop (``train.cycles_per_epoch`` x ``train.steps_per_cycle`` env steps) on its
    own task and returns its weights; the server aggregates them (``strategy``) into the next
    global model. A client's ``train.epochs`` is set to ``rounds * epochs_per_round``.
    """

    rounds: int = 3
    # Env group options (conf/env/<name>.yaml), one per client; client i trains on clients[i]
    # with seed ``seed + i``. The global model's shapes come from clients[0]; every client's
    # observation, goal and action sizes must match it.
    clients: list[str] = field(default_factory=lambda: ["FetchPush-v4", "FetchSlide-v4"])
    epochs_per_round: int = 1
    # fedavg, fedavgm (server momentum, Hsu et al. 2019), and Flower's robust aggregations of
    # the network weights: fedmedian (coordinate-wise median, Yin et al. 2018), fedtrimmedavg
    # (coordinate-wise mean without the trim_beta fraction at each end), krum (Blanchard et al.
    # 2017: the update closest to its neighbours, tolerating krum_malicious bad clients)
    strategy: str = "fedavg"
    server_lr: float = 1.0  # fedavgm: global <- global - server_lr * momentum_buffer
    server_momentum: float = 0.9  # fedavgm: momentum_buffer <- m * buffer + (global - mean)
    # Weights of the clients' models in the mean: env_steps (env steps collected that round,
    # FedAvg's n_k), uniform (1 each).
    weighting: str = "env_steps"
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut at each end, in [0, 0.5)
    krum_malicious: int = 0  # krum: clients assumed malicious (f in the paper)
    # Every client update is checked before aggregation: the global model's shapes and dtypes,
    # finite values, and (if set) the L2 norm of its change to the global networks at most
    # max_update_norm ...
    # A failing update is dropped with a log line naming the client.
    max_update_norm: float | None = None
    # ... and the norm of that change at most this multiple of the global networks' norm
    # (scale-free; an honest round moves the weights by a fraction of their norm). null: off.
    max_update_ratio: float | None = 10.0
    # Bound on the magnitude of any observation or goal entry a client may have seen: its
    # normaliser statistics (deltas of count, sum, sum of squares) must satisfy
    # |sum| <= count * max_obs_abs and sum^2 / count <= sumsq <= count * max_obs_abs^2, with a
    # count delta in [0, the env steps the round allows]; a client that breaks one is refused.
    max_obs_abs: float = 1.0e6
    # Each round, after aggregation, every client also evaluates the new global model on its
    # task (eval.episodes episodes); the metrics file has both local and global results.
    evaluate_global: bool = True
    # simulation: Flower's simulation engine (Ray) in this process; server / client: one real
    # process each, over gRPC at server_address.
    mode: str = "simulation"
    server_address: str = "127.0.0.1:8080"  # server: the address to listen on; client: to dial
    client_index: int | None = None  # client mode: which entry of ``clients`` this process is
    round_timeout_s: float | None = None  # server: give up on clients slower than this
    connect_timeout_s: float = 60.0  # client: keep retrying the server for this long
    keep_client_rounds: bool = False  # clients also keep federated/round_<k>.pt (weights sent)
    tls: TLSConfig = field(default_factory=TLSConfig)


def register_federated_schemas() -> None:
    """Store rlfw's schemas and ``federated_schema`` (package ``federated``) in Hydra's ConfigStore."""
    register_schemas()
    ConfigStore.instance().store(name="federated_schema", node=FederatedConfig, package="federated")
