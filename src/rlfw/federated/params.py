"""What a client sends and the server aggregates: the agent's weights as a flat list of arrays.

The list (Flower's ``NDArrays``) follows :func:`layout`: every tensor of the state dicts of the
agent's :meth:`rlfw.core.Agent.networks` (for DDPG/TD3 ``actor``, ``critic``, ``actor_target``
and ``critic_target``; parameters and buffers, in ``state_dict`` order), then ``count``, ``sum``
and ``sumsq`` of each of its :meth:`rlfw.core.Agent.normalizers`. Optimiser states and counters
stay with each client.

Aggregation (:func:`aggregate`), for the clients ``i`` that trained this round from the global
weights ``g`` and return ``x_i`` with weight ``w_i``:

- network entries (``kind == "net"``): the weighted mean ``sum_i w_i x_i / sum_i w_i``
  (FedAvg, McMahan et al. 2017, with ``w_i`` the client's env steps that round);
- normaliser statistics (``kind == "norm"``): ``g + sum_i (x_i - g)``, i.e. the sums over every
  observation that any client has seen, which is the statistic one normaliser fed with all the
  clients' data would hold. (A weighted mean of the sums would shrink the count to that of one
  client.) ``mean`` and ``std`` are recomputed from them by each receiver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rlfw.core import Agent

NORM_STATS = ("count", "sum", "sumsq")


@dataclass(frozen=True)
class Entry:
    """One array of the flat list: ``name`` is ``<module>.<state_dict key>``."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "net" (averaged) or "norm" (summed deltas)

    @property
    def module(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1]


def _tensors(agent: Agent) -> list[tuple[Entry, torch.Tensor]]:
    out: list[tuple[Entry, torch.Tensor]] = []
    for m, module in agent.networks().items():
        for k, t in module.state_dict(keep_vars=True).items():
            out.append((Entry(f"{m}.{k}", tuple(t.shape), "net"), t))
    for m, norm in agent.normalizers().items():
        for k in NORM_STATS:
            t = getattr(norm, k)
            out.append((Entry(f"{m}.{k}", tuple(t.shape), "norm"), t))
    return out


def layout(agent: Agent) -> list[Entry]:
    """The names, shapes and kinds of :func:`get_weights`'s arrays, in order."""
    return [e for e, _ in _tensors(agent)]


def fingerprint(entries: Sequence[Entry]) -> str:
    """A short hash of a layout: two agents exchange weights only if theirs are equal."""
    text = ";".join(f"{e.name}:{'x'.join(map(str, e.shape))}:{e.kind}" for e in entries)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def get_weights(agent: Agent) -> list[np.ndarray]:
    """Copies of the agent's tensors in :func:`layout` order (float32 nets, float64 stats)."""
    return [t.detach().cpu().numpy().copy() for _, t in _tensors(agent)]


@torch.no_grad()
def set_weights(agent: Agent, arrays: Sequence[np.ndarray]) -> None:
    """Load :func:`get_weights`-ordered arrays into the agent; refresh normaliser mean/std.

    Raises:
        ValueError: the number or shapes of the arrays differ from the agent's layout.
    """
    pairs = _tensors(agent)
    if len(pairs) != len(arrays):
        raise ValueError(f"expected {len(pairs)} arrays, got {len(arrays)}")
    for (entry, t), a in zip(pairs, arrays):
        if tuple(np.shape(a)) != entry.shape:
            raise ValueError(f"{entry.name}: shape {tuple(np.shape(a))} != {entry.shape}")
        t.copy_(torch.as_tensor(np.asarray(a), dtype=t.dtype, device=t.device))
    for norm in agent.normalizers().values():
        if float(norm.count) > 0:
            norm.recompute()
        else:
            norm.mean.zero_()
            norm.std.fill_(1.0)


def aggregate(
    kinds: Sequence[str],
    global_arrays: Sequence[np.ndarray],
    client_arrays: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float],
) -> list[np.ndarray]:
    """FedAvg of the network entries and summed deltas of the normaliser statistics.

    Args:
        kinds: ``"net"`` or ``"norm"`` per entry (:attr:`Entry.kind`).
        global_arrays: the global weights the clients started the round from.
        client_arrays: each client's returned weights, same layout.
        weights: each client's weight ``w_i >= 0`` (env steps), not all zero.

    Returns:
        The new global weights, each in its entry's dtype (computed in float64).
    """
    w = np.asarray(weights, np.float64)
    if len(client_arrays) == 0 or w.sum() <= 0:
        raise ValueError("aggregate needs at least one client with a positive weight")
    w = w / w.sum()
    out: list[np.ndarray] = []
    for j, kind in enumerate(kinds):
        g = np.asarray(global_arrays[j], np.float64)
        xs = [np.asarray(c[j], np.float64) for c in client_arrays]
        if kind == "norm":
            new = g + sum(x - g for x in xs)
        else:
            new = sum(wi * x for wi, x in zip(w, xs))
        out.append(np.asarray(new, dtype=np.asarray(global_arrays[j]).dtype))
    return out


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """``sum w v / sum w`` over the finite values (NaN if none)."""
    pairs = [(float(v), float(w)) for v, w in zip(values, weights) if np.isfinite(v) and w > 0]
    if not pairs:
        return float("nan")
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total
