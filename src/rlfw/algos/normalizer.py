"""Running mean/std normalisation of observations and goals (HER paper, Appendix A)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class Normalizer(nn.Module):
    """``clip((x - mean) / max(std, eps), -clip, clip)`` with running statistics.

    Statistics are sums in float64 over every vector passed to :meth:`update`; ``mean`` and
    ``std`` (float32 buffers, saved in ``state_dict``) are refreshed after each update. With
    ``enabled=False`` it is the identity and ignores updates.

    Args:
        size: vector length D.
        clip: bound of the normalised values (HER: 5).
        eps: lower bound of the std (HER: 0.01).
        enabled: False for an identity normaliser.

    Shapes: ``forward(x [..., D]) -> [..., D]``; ``update(x [B, D])``.
    """

    count: torch.Tensor
    sum: torch.Tensor
    sumsq: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, size: int, clip: float = 5.0, eps: float = 0.01, enabled: bool = True
    ) -> None:
        super().__init__()
        self.size, self.clip, self.eps, self.enabled = size, float(clip), float(eps), enabled
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("sumsq", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))
        # Multi-worker training: statistics gathered locally wait here until sync() reduces
        # them over the workers, so that every worker keeps identical mean and std.
        self.deferred = False
        self._pending = np.zeros(2 * size + 1, np.float64)  # [count, sum (D), sumsq (D)]

    @torch.no_grad()
    def update(self, x: np.ndarray) -> None:
        """Add the rows of ``x [B, D]`` to the statistics."""
        if not self.enabled or len(x) == 0:
            return
        x64 = np.asarray(x, np.float64).reshape(-1, self.size)
        if self.deferred:
            self._pending[0] += x64.shape[0]
            self._pending[1 : 1 + self.size] += x64.sum(0)
            self._pending[1 + self.size :] += np.square(x64).sum(0)
            return
        self.count += x64.shape[0]
        self.sum += torch.from_numpy(x64.sum(0)).to(self.sum.device)
        self.sumsq += torch.from_numpy(np.square(x64).sum(0)).to(self.sum.device)
        self.recompute()

    @torch.no_grad()
    def sync(self, all_reduce_sum: Any) -> None:
        """Add the pending statistics of all workers: ``all_reduce_sum(tensor)`` sums in place.

        Every worker calls it at the same point; afterwards all hold the same statistics.
        """
        if not self.enabled:
            return
        pending = torch.from_numpy(self._pending.copy())
        all_reduce_sum(pending)
        self._pending[:] = 0.0
        self.count += pending[0].to(self.count.device)
        self.sum += pending[1 : 1 + self.size].to(self.sum.device)
        self.sumsq += pending[1 + self.size :].to(self.sum.device)
        self.recompute()

    @torch.no_grad()
    def recompute(self) -> None:
        """Refresh ``mean`` and ``std`` from the sums (after loading or averaging them)."""
        if self.count <= 0:
            return
        mean = self.sum / self.count
        var = torch.clamp(self.sumsq / self.count - mean.square(), min=self.eps**2)
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return torch.clamp((x - self.mean) / self.std, -self.clip, self.clip)
