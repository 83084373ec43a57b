"""``train.compile``: the agent's networks through ``torch.compile`` (inductor).

On CUDA the mode is ``reduce-overhead``: the compiled forward and backward are replayed as CUDA
graphs, which removes the per-kernel launch cost that dominates small-MLP updates on a GPU
(LeanRL's measurements for TD3 and SAC). On the CPU the mode is ``default`` (fused elementwise
kernels). Each network is compiled in place (:meth:`torch.nn.Module.compile`), so parameter
names, checkpoints, the target-network updates and the worker exchange are unchanged.

Compilation happens at the first update (tens of seconds on 2 cores). When it fails (no C++
compiler for inductor's CPU kernels, an unsupported op), dynamo falls back to eager execution
with a warning instead of stopping the run.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("rlfw")


def compile_mode(device: torch.device) -> str:
    """``reduce-overhead`` (CUDA graphs) on CUDA, ``default`` elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_networks(agent: Any, device: torch.device) -> list[str]:
    """Compile every network of ``agent.networks()`` in place; returns their names.

    Args:
        agent: an :class:`rlfw.algos.base.OffPolicyAgent` (``networks()``: name -> module).
        device: where the agent trains (chooses the mode, :func:`compile_mode`).
    """
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a failed compile runs eagerly (one warning)
    mode = compile_mode(device)
    names = []
    for name, net in agent.networks().items():
        if any(True for _ in net.parameters()):
            net.compile(mode=mode, dynamic=False)
            names.append(name)
    log.info("torch.compile (%s) of %s", mode, ", ".join(names))
    return names
