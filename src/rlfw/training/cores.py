"""A fair share of the cores for each job: torch threads from what this process may use.

Two rlfw processes that each take every core for their torch threads slow each other down
(measured on 2 cores: an epoch took 5.6x as long beside a string of short runs). The share is
the cores this process may run on (SLURM's ``SLURM_CPUS_PER_TASK``, else the CPU affinity mask,
else ``os.cpu_count()``) divided by the jobs that run side by side on them (the data-parallel
workers of the run, and the ``n_jobs`` of a parallel Hydra launcher, passed in
``RLFW_PARALLEL_JOBS``).
"""

from __future__ import annotations

import os

PARALLEL_JOBS_ENV = "RLFW_PARALLEL_JOBS"


def available_cores() -> int:
    """Cores this process may use: ``SLURM_CPUS_PER_TASK``, else the affinity mask's size."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_jobs() -> int:
    """Jobs of a parallel launcher sharing this machine (``RLFW_PARALLEL_JOBS``; 1 if unset)."""
    raw = os.environ.get(PARALLEL_JOBS_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def torch_threads(requested: int, workers: int = 1, reserve: int = 0) -> int:
    """``train.torch_threads`` if set (> 0), else ``min(2, cores / (workers x parallel jobs))``
    less ``reserve`` (cores kept for simulator processes that run beside the updates:
    ``train.overlap`` with async envs), at least 1 (more than 2 threads measured no faster for
    256-wide networks here)."""
    if requested > 0:
        return requested
    share = available_cores() // (max(1, workers) * parallel_jobs())
    return max(1, min(2, share - reserve))
