"""Shared fixtures: composing configs without running Hydra, tiny schedules."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

from rlfw.config.preflight import compose_config

# A schedule of a few hundred env steps with updates, for end-to-end tests.
TINY = [
    "train.epochs=2",
    "train.cycles_per_epoch=2",
    "train.steps_per_cycle=100",
    "train.updates_per_cycle=5",
    "train.batch_size=32",
    "train.learning_starts=0",
    "eval.episodes=2",
    "algo.actor_hidden=[32,32]",
    "algo.critic_hidden=[32,32]",
    "buffer.capacity=5000",
    "logger.plots=false",
    "eval.stop_at=null",  # run every epoch (the FetchReach-v4 preset stops when solved)
    # the evaluation protocol at a test's size (the defaults are 100 episodes each)
    "eval.confirm_episodes=4",
    "eval.final_episodes=4",
]


@pytest.fixture
def compose():
    """``compose(["algo=ddpg", ...]) -> DictConfig`` through Hydra's Compose API."""
    return compose_config


def run_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m rlfw <args>`` in a subprocess."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", "rlfw", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file


def epochs_of(run_dir: Path) -> list[int]:
    """The epochs of ``run_dir``'s metrics.csv rows, in order."""
    with (run_dir / "metrics.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]
