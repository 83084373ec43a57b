"""rlfw benchmarks against Stable-Baselines3 on this machine (``nox -s bench``).

Sections (``--only a,b``; all by default), each run one after the other in this process:

- ``reach``: FetchReach-v4 with the default config over ``--seeds`` seeds: env steps and wall
  seconds until eval success first reaches 0.9; then SB3's TD3 + HerReplayBuffer at equal
  settings (2 envs, 40 gradient steps per 100 env steps, batch 256, 3x256 MLPs, gamma 0.98,
  tau 0.005, lr 1e-3, Gaussian sigma 0.1, HER future k=4, eval of 10 episodes every 1000 steps).
- ``push``: env steps per second of FetchPush-v4 at one update per env step (1 env, batch 256,
  3x256 MLPs, TD3 + HER), rlfw and SB3.
- ``soft_speed``: env steps per second of rlfw's SAC and TQC against SB3's SAC and
  sb3-contrib's TQC at equal settings (FetchPush-v4, 1 env, HER future k=4, batch 256, 3x256
  MLPs, lr 1e-3, one update per env step).
- ``replay``: PER sample + priority update of a batch of 256 from a full 1M-transition buffer
  (median microseconds); HER sampling throughput against SB3's HerReplayBuffer (ratio); bytes
  per stored FetchPush transition.
- ``panda``: PandaReach-v3, env steps until eval success 0.9 for each noise over ``--seeds``
  seeds (median).
- ``workers``: FetchPush-v4 env steps per second for 1 and 2 data-parallel workers.
- ``joblib``: two FetchPush-v4 jobs one after the other against a ``hydra/launcher=joblib``
  sweep with ``n_jobs=2`` (wall seconds; the parallel sweep must not be slower).
- ``hopper``: Hopper-v4, rlfw's preset against SB3's TD3 at equal settings (TD3, 3x256, lr
  1e-3, batch 256, gamma 0.99, tau 0.005, Gaussian sigma 0.1, 10k random steps, then one update
  per env step): eval return (10 episodes) every 10k env steps to 50k per seed, env steps per
  second after the random phase (evaluations included, the same for both), and the fraction of
  action entries at the bounds (|a| > 0.99) of the final deterministic policy.
- ``hopper_compose``: the Hopper seed project's compositions on the preset (PER with n-step 3,
  NoisyNet factorised and independent, decaying Gaussian noise): eval return every 10k steps.

- ``hopper_soft``: the Hopper-v4 preset with sac, tqc and crossq (seed 0, 30k steps): eval
  return every 10k steps, env steps/s after the random phase, saturated action fraction.
- ``learning``: FetchPush-v4 with the Fetch preset of td3, sac, tqc and crossq for the same
  budget (``--learning-budget`` env steps, 40k by default): eval success after every
  5000-step epoch and the wall seconds, per seed (``--seeds``); curves in
  ``benchmarks/results/learning_push.csv``.
- ``learning_tasks`` (not in the default list; hours): the family preset of FetchPush-v4,
  FetchPickAndPlace-v4, FetchSlide-v4, PandaPush-v3 and Hopper-v4 over ``--seeds`` seeds at the
  budgets of ``LEARNING_TASKS``; curves and tables to ``docs/results/`` (``--tasks a,b``).
- ``push_search`` (not in the default list): the FetchPush preset search of issue 13, each try
  of ``PUSH_TRIES`` for ``--budget-s`` wall seconds (``--tries a,b``, ``--search-seeds N``);
  curves appended to ``benchmarks/results/push_search.csv``.
- ``peer_push`` (not in the default list): the peer of the learning table, sb3-contrib TQC + HER
  with rl-zoo's FetchPush settings (2x256 and batch 256 instead of 3x512 and 2048) on
  FetchPush-v4 for ``--budget-s`` wall seconds, seed ``--first-seed``; curve appended to
  ``benchmarks/results/peer_push.csv``; ``--peer-config sb3_contrib_tqc_zoo_near`` gives it
  rlfw's near-object starts too, ``sb3_contrib_tqc_zoo_rlfw_schedule`` the preset's scripted
  starts and rlfw's 20 updates per 100 env steps; ``--tasks FetchPickAndPlace-v4`` another
  task. Then its final model's delivered success on 200 fresh episodes (reset seed 777000,
  Wilson interval), appended to ``benchmarks/results/peer_delivered.csv``.

- ``delivered`` (not in the default list): the learning table under the evaluation protocol
  (issue 30): each task of ``--tasks`` and seed of ``--seed-list`` trained as a user runs it
  (``--overrides`` added, rows named ``--label``), timed as a whole process, its ``best.pt``
  evaluated on 200 fresh episodes; rows in ``docs/results/delivered.csv`` and ``delivered.md``.

Usage: ``python benchmarks/run.py [--only reach,push] [--seeds 3] [--quick]``.

Each section is a function in one of the ``bench_*.py`` modules next to this file (one module
per family of sections); :data:`SECTIONS` maps its name to it, and this file only parses the
arguments and runs the chosen sections in the table's order. A new section is a function and
one row of :data:`SECTIONS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import bench_delivered
import bench_fetch
import bench_hopper
import bench_learning
import bench_parallel
import bench_replay
import torch
from bench_common import RESULTS

Section = Callable[[argparse.Namespace], None]


def _push_search(a: argparse.Namespace) -> None:
    tries = a.tries.split(",") if a.tries else None
    for seed in range(a.first_seed, a.first_seed + a.search_seeds):
        bench_learning.bench_push_search(a.quick, a.budget_s, tries, seed)


# name -> the section, run in this order (the module docstring says what each measures)
SECTIONS: dict[str, Section] = {
    "reach": lambda a: bench_fetch.bench_reach(a.seeds, a.quick),
    "push": lambda a: bench_fetch.bench_push(a.quick),
    "soft_speed": lambda a: bench_fetch.bench_soft_speed(a.quick),
    "replay": lambda a: bench_replay.bench_replay(a.quick),
    "panda": lambda a: bench_fetch.bench_panda(a.seeds, a.quick),
    "workers": lambda a: bench_parallel.bench_workers(a.quick),
    "joblib": lambda a: bench_parallel.bench_joblib(a.quick),
    "hopper": lambda a: bench_hopper.bench_hopper(a.seeds, a.quick),
    "hopper_compose": lambda a: bench_hopper.bench_hopper_compose(a.quick),
    "hopper_soft": lambda a: bench_hopper.bench_hopper_soft(a.quick),
    "learning": lambda a: bench_learning.bench_learning(a.seeds, a.quick, a.learning_budget),
    "learning_tasks": lambda a: bench_learning.bench_learning_tasks(
        a.seeds, a.quick, a.tasks.split(",") if a.tasks else None
    ),
    "push_search": _push_search,
    "peer_push": lambda a: bench_learning.bench_peer_push(
        a.quick, a.budget_s, a.first_seed, task=a.tasks.split(",")[0] if a.tasks else "FetchPush-v4",
        config=a.peer_config,
    ),
    "delivered": lambda a: bench_delivered.bench_delivered(
        a.tasks.split(","), [int(s) for s in a.seed_list.split(",")], a.label, a.overrides.split(),
        Path(a.keep_runs) if a.keep_runs else None,
    ),
}
DEFAULT = "reach,push,soft_speed,replay,panda,workers,hopper,hopper_compose,learning"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", default=DEFAULT, help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    p.add_argument("--learning-budget", type=int, default=40_000, help="env steps per learning run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=900.0, help="wall seconds per push_search try and per peer_push run")
    p.add_argument("--tasks", default="", help="learning_tasks, delivered: comma-separated task names; peer_push: its "
                   "first entry only (default FetchPush-v4)")
    p.add_argument("--tries", default="", help="push_search: comma-separated names of PUSH_TRIES")
    p.add_argument("--search-seeds", type=int, default=1, help="push_search: seeds per try")
    p.add_argument("--first-seed", type=int, default=0, help="push_search: the first seed; peer_push: the seed")
    p.add_argument("--peer-config", default="sb3_contrib_tqc_zoo",
                   help="peer_push: one of bench_learning.PEER_CONFIGS (sb3_contrib_tqc_zoo, sb3_contrib_tqc_zoo_near, "
                        "sb3_contrib_tqc_zoo_rlfw_schedule)")
    p.add_argument("--seed-list", default="0", help="delivered: comma-separated seeds")
    p.add_argument("--label", default="preset", help="delivered: the row's label")
    p.add_argument("--overrides", default="", help="delivered: extra overrides, space-separated")
    p.add_argument("--keep-runs", default="", help="delivered: keep each run directory under this folder")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    only = set(args.only.split(","))
    unknown = sorted(only - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from: {', '.join(SECTIONS)}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(
        f"rlfw benchmarks on {os.cpu_count()} cores, torch {torch.__version__}, {args}", flush=True
    )
    for name, section in SECTIONS.items():
        if name in only:
            section(args)
    print("\n| benchmark | value |\n|---|---|")
    for name, value in RESULTS:
        if not name.startswith("_"):
            print(f"| {name} | {value} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
