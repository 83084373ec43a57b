"""Where this process stands among data-parallel workers, and the collectives the loop needs.

:class:`LocalContext` is the single-process twin that does nothing, so the training loop has no
``if distributed`` branches; :class:`DistContext` runs the collectives on torch.distributed
(gloo on CPU, nccl on GPUs). As in the HER paper's MPI setup (Andrychowicz et al. 2017, App. A):
rank 0's weights are broadcast at the start, gradients are averaged after every backward pass
(one flat all-reduce), normaliser sums are added up after each cycle, eval figures are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LocalContext:
    """One process: rank 0 of 1; every collective is the identity."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def attach(self, agent: Any) -> None:
        """Prepare ``agent`` for training here (nothing for one process)."""

    def all_reduce_sum(self, t: torch.Tensor) -> None:
        """Sum ``t`` over the workers in place (identity for one process)."""

    def sync_normalizers(self, agent: Any) -> None:
        """Add up the normaliser statistics gathered since the last call (nothing to do)."""


@dataclass
class DistContext(LocalContext):
    """This process's place among ``world`` torch.distributed workers."""

    def attach(self, agent: Any) -> None:
        """Broadcast rank 0's modules; average gradients; defer normaliser updates to
        :meth:`sync_normalizers` so all workers keep identical statistics."""
        self.broadcast_modules(list(agent.modules().values()))
        agent.grad_sync = self.average_grads
        for norm in agent.normalizers().values():
            norm.deferred = True

    def all_reduce_sum(self, t: torch.Tensor) -> None:
        """Sum ``t`` over the workers in place."""
        import torch.distributed as dist

        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            moved = t.to(self.device)
            dist.all_reduce(moved)
            t.copy_(moved.cpu())
        else:
            dist.all_reduce(t)

    def sync_normalizers(self, agent: Any) -> None:
        """Sum every worker's pending normaliser statistics (all workers call it together)."""
        for norm in agent.normalizers().values():
            norm.sync(self.all_reduce_sum)

    def average_grads(self, grads: list[torch.Tensor]) -> None:
        """Replace each gradient by its mean over the workers (one all-reduce of a flat copy)."""
        import torch.distributed as dist

        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def broadcast_modules(self, modules: list[torch.nn.Module]) -> None:
        """Copy rank 0's parameters and buffers to every worker."""
        import torch.distributed as dist

        for m in modules:
            for t in m.state_dict().values():
                dist.broadcast(t, 0)
