"""Experiment tooling: wandb offline, plots, report, evaluate + video, resume after SIGKILL, sweeps."""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rlfw.callbacks import make_callbacks
from rlfw.plots import RUN_PLOTS, plot_run
from rlfw.report import summarize
from rlfw.training.csvfiles import metric_columns
from rlfw.training.loop import TrainLoop

from .conftest import TINY, run_cli

METRIC_COLUMNS = metric_columns(("actor_loss", "critic_loss", "q_mean"))  # DDPG/TD3's

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def epochs_of(run_dir: Path) -> list[int]:
    with (run_dir / "metrics.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def read_wandb_records(path: Path) -> list:
    """Parse a wandb offline ``.wandb`` file (LevelDB log format of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk = data[pos : pos + length]
        pos += length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    records = []
    for d in out:
        r = pb.Record()
        r.ParseFromString(d)
        records.append(r)
    return records


def test_wandb_offline_run_files_hold_logged_keys(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(["logger=wandb", *TINY])
    TrainLoop(cfg, tmp_path, make_callbacks(cfg, tmp_path, 400)).run()
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    # wandb's service process may still be writing the file when finish() returns: wait for
    # the run's exit record (seen in CI: an early read found no history records yet)
    deadline = time.time() + 60
    records = read_wandb_records(files[0])
    while (
        not any(r.WhichOneof("record_type") == "exit" for r in records) and time.time() < deadline
    ):
        time.sleep(0.5)
        records = read_wandb_records(files[0])
    keys, run = set(), None
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            keys |= {i.key or "/".join(i.nested_key) for i in r.history.item}
        elif kind == "run":
            run = r.run
    assert set(METRIC_COLUMNS) - {"actor_loss"} <= keys  # every metrics.csv column, per epoch
    assert {"cycle/critic_loss", "cycle/q_mean"} <= keys  # losses per update interval
    assert run is not None
    assert run.run_group == "td3-her-gaussian-FetchReach-v4"
    assert run.display_name == "td3-her-gaussian-FetchReach-v4-seed0"
    config_keys = {i.key for i in run.config.update}
    assert {"algo", "buffer", "env", "train"} <= config_keys


def test_run_plots_are_valid_pngs_with_expected_curves(compose, tmp_path):
    cfg = compose(["logger.plots=true", *[t for t in TINY if "plots" not in t]])
    TrainLoop(cfg, tmp_path, make_callbacks(cfg, tmp_path, 400)).run()
    for name in RUN_PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    curves = {p.name: n for p, n in plot_run(tmp_path).items()}
    assert curves == {"returns.png": 2, "success.png": 2, "losses.png": 2, "q_values.png": 1}


def test_report_on_a_small_real_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "algo=ddpg,td3", "seed=0,1", *TINY, "train.epochs=2", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    png, md, text = summarize([sweep])
    assert png.read_bytes()[:8] == PNG_MAGIC
    rows = [ln for ln in text.splitlines() if ln.startswith("| algo=")]
    assert sorted(r.split("|")[1].strip() for r in rows) == ["algo=ddpg", "algo=td3"]
    assert all(r.split("|")[2].strip() == "2" for r in rows)  # two seeds per setting
    assert "eval_success_rate" in md.read_text()
    assert (sweep / "summary_wall.png").read_bytes()[:8] == PNG_MAGIC
    assert "median env steps to 0.9 | median s to 0.9 |" in text.splitlines()[0]


def test_report_medians_count_a_seed_that_never_got_there_as_never():
    from rlfw.report import _median_reach, first_reach

    steps = np.array([1000.0, 2000.0, 3000.0])
    assert first_reach(steps, np.array([0.1, 0.9, 1.0]), 0.9) == 2000.0
    assert np.isnan(first_reach(steps, np.array([0.1, 0.5, 0.8]), 0.9))
    assert _median_reach([float("nan"), 100.0, 300.0]) == "300"
    assert _median_reach([float("nan"), float("nan"), 100.0]) == "-"
    assert _median_reach([200.0, 100.0]) == "150"


@pytest.mark.parametrize("env", ["FetchReach-v4", pytest.param("PandaReach-v3", marks=pytest.mark.slow)])
def test_evaluate_prints_success_and_writes_mp4(compose, tmp_path, env):
    if env.startswith("Fetch") and os.environ.get("MUJOCO_GL") != "osmesa":
        pytest.skip("headless MuJoCo rendering needs libOSMesa (apt-get install libosmesa6)")
    cfg = compose([f"env={env}", *TINY, "train.epochs=1"])
    TrainLoop(cfg, tmp_path).run()
    proc = subprocess.run(
        [sys.executable, "-m", "rlfw.evaluate", f"run_dir={tmp_path}", "episodes=3", "video=true"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 episodes" in proc.stdout and "success rate" in proc.stdout and "return" in proc.stdout
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    assert summary["episodes"] == 3 and 0.0 <= summary["success_rate"] <= 1.0
    video = tmp_path / "videos" / "eval_0.mp4"
    import imageio.v2 as imageio

    frames = [f for f in imageio.get_reader(video)]
    assert len(frames) == summary["video_frames"][0]
    # one frame per observation: the episode's steps + 1 (Fetch: 50 steps; Panda: <= 50)
    assert (len(frames) == 51) if env.startswith("Fetch") else (2 <= len(frames) <= 51)
    assert frames[0].ndim == 3 and frames[0].std() > 1.0  # a real image, not a blank frame


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


@pytest.mark.parametrize("sig", ["SIGTERM", *(pytest.param(s, marks=pytest.mark.slow) for s in ("SIGUSR1", "SIGUSR2"))])
def test_stop_signal_mid_epoch_marks_interrupted_and_resume_completes(tmp_path, sig):
    """What ``timeout`` and SLURM send before they kill: the run ends after its current cycle,
    status.json says interrupted with the resume command, the exit status is 128 + signum, the
    checkpoint is the last finished epoch's, and resume= completes the run."""
    run_dir = tmp_path / "run"
    args = [*TINY, "train.epochs=4", "train.cycles_per_epoch=4", "train.updates_per_cycle=20",
            "eval.episodes=2", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "rlfw", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not (
        (run_dir / "metrics.csv").exists() and epochs_of(run_dir)
    ):
        time.sleep(0.05)
    time.sleep(0.4)  # into the next epoch
    proc.send_signal(getattr(signal, sig))
    err, _ = proc.communicate(timeout=60)
    signum = int(getattr(signal, sig))
    assert proc.returncode == 128 + signum, err[-2000:]
    done_before = epochs_of(run_dir)
    assert 1 <= len(done_before) < 4, "the signal must arrive mid-way"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert status["resume"] == f"python -m rlfw resume={run_dir}"
    assert (
        sig in status["error"] and f"last checkpoint is epoch {len(done_before)}" in status["error"]
    )
    last = err.strip().splitlines()[-1]  # one line saying what happened and how to go on
    assert f"stopped by {sig}" in last and f"resume={run_dir}" in last
    assert "Traceback" not in err
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["counters"]["epoch"] == len(done_before)
    resumed = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_of(run_dir) == [1, 2, 3, 4]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


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


def test_same_seed_same_run(compose, tmp_path):
    """Training and evaluation are reproducible from the seed (eval envs included)."""
    rows = []
    for name in ("a", "b"):
        d = tmp_path / name
        TrainLoop(compose([*TINY, "train.epochs=1"]), d).run()
        with (d / "metrics.csv").open() as f:
            rows.append(next(csv.DictReader(f)))
    for key in ("eval_return", "train_return", "critic_loss", "q_mean"):
        assert rows[0][key] == rows[1][key]


@pytest.mark.slow  # moved out of the default run (about 15 minutes on 2 cores); nox -s slow and CI run it
def test_joblib_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algo=ddpg,td3", *TINY,
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [p for p in sweep.iterdir() if (p / "metrics.csv").exists()]
    assert len(jobs) == 2
    for j in jobs:
        assert epochs_of(j) == [1, 2]


def test_failed_job_does_not_lose_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    # the second job fails at run time (HER on an env without goals, found once it is built)
    proc = run_cli(["-m", "env=gym", "env.id=Hopper-v5", "buffer=uniform,her", *TINY,
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    ok = [p for p in sweep.iterdir() if (p / "metrics.csv").exists() and epochs_of(p) == [1, 2]]
    assert len(ok) == 1 and "uniform" in ok[0].name
    assert json.loads((ok[0] / "status.json").read_text())["status"] == "finished"
    assert "needs a goal env" in proc.stderr + proc.stdout


def test_evaluate_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlfw.evaluate", "episodes=x"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "episodes" in proc.stderr


def test_torch_threads_take_a_fair_share_of_the_cores(monkeypatch):
    from rlfw.training import cores

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv(cores.PARALLEL_JOBS_ENV, raising=False)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cores.torch_threads(0) == 2  # a job alone on 2 cores
    monkeypatch.setenv(cores.PARALLEL_JOBS_ENV, "2")
    assert cores.torch_threads(0) == 1  # two launcher jobs side by side: one core each
    assert cores.torch_threads(3) == 3  # train.torch_threads wins
    monkeypatch.delenv(cores.PARALLEL_JOBS_ENV)
    assert cores.torch_threads(0, workers=2) == 1  # two data-parallel workers
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cores.available_cores() == 1 and cores.torch_threads(0) == 1  # SLURM's allocation
