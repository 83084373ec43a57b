"""``resume=``: a run killed mid-epoch (SIGKILL) or requeued by SLURM continues from its run directory with its agent and buffer; bad overrides are refused."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from rlfw.training.loop import TrainLoop

from .conftest import TINY, epochs_of, run_cli


def test_resume_after_sigkill_mid_epoch(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "train.epochs=4", "train.cycles_per_epoch=4", "train.updates_per_cycle=20",
            "eval.episodes=2", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "rlfw", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline:
        if (run_dir / "metrics.csv").exists() and len(epochs_of(run_dir)) >= 1:
            break
        time.sleep(0.05)
    time.sleep(0.4)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = epochs_of(run_dir)
    assert 1 <= len(done_before) < 4, "the run must be killed mid-way"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    # a half-written checkpoint left by a kill must never be the one loaded
    (run_dir / "checkpoints" / "last.pt.tmp").write_bytes(b"garbage")
    resumed = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_of(run_dir) == [1, 2, 3, 4]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["env_steps"]) == 4 * 4 * 100
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["counters"]["env_steps"] == 1600 and ckpt["counters"]["epoch"] == 4
    with (run_dir / "episodes.csv").open() as f:
        eps = list(csv.DictReader(f))
    ids = [int(e["episode"]) for e in eps]
    assert ids == sorted(set(ids))  # no duplicate episodes from the cut epoch


def test_resume_restores_agent_and_buffer(compose, tmp_path):
    cfg = compose([*TINY, "train.save_buffer=true"])
    r1 = TrainLoop(cfg, tmp_path)
    r1.run(epochs=1, close=False)
    r1.close()
    r2 = TrainLoop(cfg, tmp_path)
    r2.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (r2.epoch, r2.env_steps) == (1, 200)
    assert len(r2.buffer) == len(r1.buffer) > 0
    obs = np.zeros((2, r1.info.obs_dim), np.float32)
    goal = np.zeros((2, r1.info.goal_dim), np.float32)
    np.testing.assert_array_equal(r1.agent.act(obs, goal), r2.agent.act(obs, goal))
    r2.run()
    assert epochs_of(tmp_path) == [1, 2]


def test_resume_rejects_misspelt_and_mistyped_overrides(compose, tmp_path):
    run_dir = tmp_path / "run"
    assert (
        run_cli([*TINY, "train.epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 0
    )
    for bad, expected in (
        ("train.epoch=5", "unknown key 'train.epoch'"),
        ("train.epochs=abc", "train.epochs"),
    ):
        proc = run_cli([f"resume={run_dir}", bad], cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr


def test_a_requeued_slurm_job_resumes_from_its_run_dir_and_hands_its_stop_to_submitit(compose, tmp_path, monkeypatch):
    """Without SLURM: the two halves of the requeue (rlfw.training.requeue). A job restarted by
    SLURM (SLURM_RESTART_COUNT=1) in a run dir with a checkpoint continues from it (every
    epoch once); a first start ignores the old checkpoint (no restart count); and after a
    clean stop the signal goes to a submitit handler when one is installed, to nothing else."""
    from rlfw.__main__ import run_job
    from rlfw.training import requeue

    cfg = compose([*TINY, "train.epochs=2"])
    run_job(cfg, tmp_path)
    assert epochs_of(tmp_path) == [1, 2]
    longer = compose([*TINY, "train.epochs=3"])
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeue.requeued_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.pt"
    run_job(longer, tmp_path)
    assert epochs_of(tmp_path) == [1, 2, 3]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["counters"]["env_steps"] == 600
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert requeue.requeued_checkpoint(tmp_path) is None

    calls: list[int] = []

    class Handler:  # stands in for submitit's SignalHandler
        def checkpoint_and_try_requeue(self, signum, frame):
            calls.append(signum)

    previous = signal.getsignal(signal.SIGUSR2)
    try:
        signal.signal(signal.SIGUSR2, lambda s, f: calls.append(-s))
        requeue.hand_over(int(signal.SIGTERM))  # not submitit's: left alone
        assert calls == []
        Handler.__module__ = "submitit.core.job_environment"
        signal.signal(signal.SIGUSR2, Handler().checkpoint_and_try_requeue)
        requeue.hand_over(int(signal.SIGTERM))
        assert calls == [int(signal.SIGUSR2)]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_saved_run_s_env_is_typed_by_its_own_family_s_schema():
    """Resume types the saved ``env`` with the run's own family's schema: a Panda run with
    ``near_object_start`` (whose keys Fetch's schema also holds) gets Panda's, no Fetch-only
    ``grasped_start`` added; a Fetch run with its starts gets Fetch's; a Hopper run saved with
    the starts at 0 (before the families owned them) loses them and gets the shared schema."""
    from omegaconf import OmegaConf

    from rlfw.config.schema import Config, EnvConfig
    from rlfw.envs.schema import FetchEnvConfig, PandaEnvConfig
    from rlfw.resume import _typed_root, without_unset_legacy_keys

    def typed(env: dict):
        base = OmegaConf.create(without_unset_legacy_keys({"env": env}))
        return _typed_root(Config, base).env

    panda = typed({"family": "panda", "id": "PandaPush-v3", "near_object_start": 0.5})
    assert OmegaConf.get_type(panda) is PandaEnvConfig and "grasped_start" not in panda
    fetch = typed({"family": "fetch", "id": "FetchPush-v4", "near_object_start": 0.5})
    assert OmegaConf.get_type(fetch) is FetchEnvConfig and "grasped_start" in fetch
    hopper = typed({"family": "mujoco", "id": "Hopper-v4", "grasped_start": 0.0, "near_object_start": 0.0})
    assert OmegaConf.get_type(hopper) is EnvConfig and "near_object_start" not in hopper
