"""Federated training with Flower: ``python -m rlfw.federated [overrides]``.

A server and ``len(federated.clients)`` clients; client ``i`` trains the usual rlfw loop
(:class:`rlfw.training.loop.TrainLoop`) on its own task ``federated.clients[i]`` (an env option such as
``FetchPush-v4``) for ``federated.epochs_per_round`` epochs a round; the server aggregates the
actor, critic, their targets (FedAvg by default) and the normalisers' statistics, writes the
global model every round and one metrics row per round. Configuration: conf/federated.yaml
(rlfw's whole config plus the ``federated`` block, :class:`rlfw.federated.schema.FederatedConfig`).

Modules: :mod:`.setup` (compose and check; shape refusal), :mod:`.params` (the exchanged
arrays and their aggregation), :mod:`.client`, :mod:`.server` (strategy, checkpoints, metrics),
:mod:`.app` (simulation, server and client runs), :mod:`.__main__` (the Hydra app).

Needs the ``federated`` extra: ``python -m pip install -c constraints.txt -e '.[federated]'`` (from the checkout).
"""

from __future__ import annotations

from rlfw.federated.schema import FederatedConfig, register_federated_schemas

__all__ = ["FederatedConfig", "register_federated_schemas"]
