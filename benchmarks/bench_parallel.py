"""Sections ``workers`` and ``joblib``: data-parallel workers and a parallel sweep (see run.py's
docstring)."""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_common import (
    report,
)

from rlfw.config.preflight import compose_config
from rlfw.training.loop import TrainLoop


def bench_workers(quick: bool) -> None:
    """FetchPush-v4 env steps per second (all workers) for 1 and 2 data-parallel workers."""
    from rlfw.distributed import launch

    cycles = 5 if quick else 20
    common = ["env=FetchPush-v4", "train.epochs=1", f"train.cycles_per_epoch={cycles}", "eval.episodes=0",
              "logger.plots=false"]  # fmt: skip
    rates = {}
    for workers in (1, 2):
        cfg = compose_config([*common, f"train.workers={workers}"])
        run_dir = Path(tempfile.mkdtemp(prefix="rlfw-bench-"))
        if workers == 1:
            TrainLoop(cfg, run_dir).run()
        else:
            launch(cfg, run_dir)
        with (run_dir / "metrics.csv").open() as f:
            rates[workers] = float(next(csv.DictReader(f))["steps_per_s"])
        report(f"workers FetchPush-v4 env steps/s (all workers), {workers} worker(s), 40 updates/100 steps each",
               f"{rates[workers]:.1f}")  # fmt: skip
    report("workers speed-up 2 vs 1", f"{rates[2] / rates[1]:.2f}")


def bench_joblib(quick: bool) -> None:
    """Two FetchPush-v4 jobs (seeds 0 and 1) one after the other (Hydra's basic launcher) and
    side by side (``hydra/launcher=joblib hydra.launcher.n_jobs=2``), wall seconds of each
    ``python -m rlfw -m`` command; the fair share gives each parallel job one torch thread."""
    import subprocess

    cycles = 5 if quick else 20
    common = ["-m", "seed=0,1", "env=FetchPush-v4", "train.epochs=1", f"train.cycles_per_epoch={cycles}",
              "eval.episodes=0", "logger.plots=false", "logger.progress=lines"]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    secs = {}
    for name, extra in (("sequential", []), ("joblib n_jobs=2", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])):
        sweep = Path(tempfile.mkdtemp(prefix="rlfw-bench-"))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "rlfw", *common, *extra, f"hydra.sweep.dir={sweep}"],
                              capture_output=True, text=True, env=env)  # fmt: skip
        secs[name] = time.perf_counter() - t0
        done = len(list(sweep.glob("*/metrics.csv")))
        report(f"joblib 2 FetchPush jobs ({cycles * 100} steps each), {name}: wall s / jobs done (rc)",
               f"{secs[name]:.1f} / {done} ({proc.returncode})")  # fmt: skip
    report("joblib parallel:sequential wall time", f"{secs['joblib n_jobs=2'] / secs['sequential']:.2f}")
