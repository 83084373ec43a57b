"""Run a federation: in Flower's simulation engine, or as a real server or client process.

- :func:`simulate` (``federated.mode=simulation``, the default): Flower's simulation engine
  (``flwr.simulation.run_simulation``, Ray backend) runs the ServerApp in a thread of this
  process and the clients' ClientApps in one Ray actor. One actor, because each client keeps
  its TrainLoop (envs, replay buffer, optimisers) in the process that built it between rounds and
  Flower's Ray backend hands a node's messages to whichever actor is free; the clients of a
  round therefore train one after the other. For clients that train in parallel, run them as
  processes (deployment mode), on one machine or many.
- :func:`serve` (``federated.mode=server``): a Flower server on ``federated.server_address``
  (gRPC) that waits for ``len(federated.clients)`` clients each round; TLS when
  ``federated.tls.{root_cert,server_cert,server_key}`` are given.
- :func:`connect` (``federated.mode=client``): client ``federated.client_index`` dials
  ``federated.server_address``; TLS when ``federated.tls.root_cert`` is given (the CA to trust).

Server and client use Flower's gRPC "grpc-bidi" transport through ``flwr.server.start_server``
and ``flwr.compat.client.app.start_client``, which Flower 1.41 keeps but marks deprecated in
favour of its SuperLink/SuperNode deployment (``flower-superlink``, ``flower-supernode``,
``flwr run`` with a packaged Flower App); they let a plain ``python -m rlfw.federated``
process be a server or a client, which the SuperLink route does not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rlfw.federated.setup import Plan, build_agent, check_shapes, plan

log = logging.getLogger("rlfw")


def _strategy(p: Plan, run_dir: Path) -> Any:
    from rlfw.federated.server import RLStrategy, round_steps

    dims, info = check_shapes(p)
    agent = build_agent(p.clients[0], info)
    # each client's own schedule (an env family file may set train.*): the largest bounds
    # what any client may report
    steps = max(round_steps(p.fed.epochs_per_round, c.train) for c in p.clients)
    envs = max(int(c.train.num_envs) for c in p.clients)
    return RLStrategy(p.cfg, agent, dims, run_dir, max_steps=steps, max_envs=envs)


def _server_config(p: Plan) -> Any:
    from flwr.server import ServerConfig

    timeout = p.fed.round_timeout_s
    return ServerConfig(
        num_rounds=int(p.fed.rounds), round_timeout=float(timeout) if timeout is not None else None
    )


def simulate(p: Plan, run_dir: str | Path, num_cpus: int | None = None) -> Path:
    """Run ``p`` in Flower's simulation engine; returns the run directory.

    Args:
        p: a checked plan (:func:`rlfw.federated.setup.plan`).
        run_dir: where the server's and the clients' files go.
        num_cpus: CPUs Ray may use (default: all); the one client actor asks for all of them.

    Raises:
        ConfigError: a client's sizes differ from the global model's (before Ray starts).
        RuntimeError: the simulation did not complete every round.
    """
    from flwr.clientapp import ClientApp
    from flwr.server import ServerApp, ServerAppComponents
    from flwr.simulation import run_simulation

    from rlfw.federated.client import ClientFactory, close_clients

    run_dir = Path(run_dir).resolve()
    strategy = _strategy(p, run_dir)
    config = _server_config(p)

    def server_fn(context: Any) -> ServerAppComponents:
        return ServerAppComponents(strategy=strategy, config=config)

    factory = ClientFactory(
        p.clients,
        list(p.fed.clients),
        str(run_dir),
        int(p.fed.epochs_per_round),
        bool(p.fed.keep_client_rounds),
    )
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
    cpus = int(num_cpus or os.cpu_count() or 1)
    backend_config: Any = {
        "client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 0,
            "include_dashboard": False,
            "log_to_driver": True,
        },
    }
    try:
        run_simulation(
            server_app=ServerApp(server_fn=server_fn),
            client_app=ClientApp(client_fn=factory),
            num_supernodes=len(p.clients),
            backend_config=backend_config,
        )
    finally:
        strategy.close()
        close_clients(str(run_dir))
    last = _last_round(run_dir)
    if last < int(p.fed.rounds):
        raise RuntimeError(
            f"the simulation stopped after {last} of {p.fed.rounds} rounds; see the log above"
        )
    return run_dir


def serve(p: Plan, run_dir: str | Path) -> Path:
    """Run the Flower server of ``p`` until ``federated.rounds`` rounds are done.

    Raises:
        ConfigError: a listed client's sizes differ from the global model's (before listening).
    """
    from flwr.server import start_server

    run_dir = Path(run_dir).resolve()
    strategy = _strategy(p, run_dir)
    tls = p.fed.tls
    certificates = None
    if tls.server_cert:
        certificates = (
            Path(tls.root_cert).read_bytes(),
            Path(tls.server_cert).read_bytes(),
            Path(tls.server_key).read_bytes(),
        )
    log.info(
        "federated server on %s (%s), waiting for %d clients: %s",
        p.fed.server_address, "TLS" if certificates else "insecure, no TLS", len(p.fed.clients), ", ".join(p.fed.clients),
    )  # fmt: skip
    try:
        start_server(
            server_address=str(p.fed.server_address),
            config=_server_config(p),
            strategy=strategy,
            certificates=certificates,
        )
    finally:
        strategy.close()
    return run_dir


def connect(p: Plan, run_dir: str | Path) -> Path:
    """Run client ``federated.client_index`` of ``p`` against ``federated.server_address``.

    Raises:
        ConfigError: the server's model has other sizes than this client's task.
    """
    from flwr.compat.client.app import start_client

    from rlfw.federated.client import RLClient

    i = int(p.fed.client_index)
    client = RLClient(
        p.clients[i],
        i,
        p.fed.clients[i],
        run_dir,
        int(p.fed.epochs_per_round),
        bool(p.fed.keep_client_rounds),
    )
    root = Path(p.fed.tls.root_cert).read_bytes() if p.fed.tls.root_cert else None
    log.info(
        "federated client %d (%s) dialling %s (%s)",
        i, p.fed.clients[i], p.fed.server_address, "TLS" if root else "insecure, no TLS",
    )  # fmt: skip
    _wait_for_server(str(p.fed.server_address), float(p.fed.connect_timeout_s))
    try:
        start_client(
            server_address=str(p.fed.server_address),
            client=client.to_client(),
            root_certificates=root,
            insecure=root is None,
            max_wait_time=float(p.fed.connect_timeout_s),
        )
    finally:
        client.close()
    return Path(run_dir)


def _wait_for_server(address: str, timeout_s: float) -> None:
    """Poll ``HOST:PORT`` with TCP connects until it accepts one (Flower's legacy client fails at
    once on a refused connection, so a client started before its server would give up).

    Raises:
        ConnectionError: nothing accepted a connection within ``timeout_s`` seconds.
    """
    import socket
    import time

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"no federated server answered at {address} within {timeout_s:g} s "
                    f"(federated.connect_timeout_s): {err}"
                ) from None
            time.sleep(0.5)


def run(overrides: list[str], run_dir: str | Path) -> Path:
    """Plan and run the federation of a command line's overrides in ``run_dir`` (any mode)."""
    p = plan(overrides)
    mode = p.fed.mode
    if mode == "server":
        return serve(p, run_dir)
    if mode == "client":
        return connect(p, run_dir)
    return simulate(p, run_dir)


def _last_round(run_dir: Path) -> int:
    import csv

    path = run_dir / "federated_metrics.csv"
    if not path.exists():
        return 0
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]["round"]) if rows else 0
