"""Signals end rlfw like SIGTERM does (issue 22, items 3, 8, 15): Ctrl-C (SIGINT) and a closed
terminal (SIGHUP) on one run; SIGTERM and kill -9 of the process that spawned
``train.workers=2``; SIGTERM to a ``-m`` sweep. Each starts a tiny run in a subprocess, waits
for status.json ``running`` after the first epoch, sends the signal and checks the exit status,
status.json, the one line and that no worker is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import TINY, epochs_of, run_cli

LONG = [*TINY, "train.epochs=20", "train.cycles_per_epoch=2", "train.updates_per_cycle=5"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, "-m", "rlfw", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_first_epoch(proc: subprocess.Popen[str], run_dir: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = _status(run_dir)
        if st.get("status") == "running" and st.get("epoch", 0) >= 1:
            return
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    raise AssertionError("no first epoch")


def _workers(pid: int) -> list[int]:
    """The worker processes ``pid`` spawned (multiprocessing's ``spawn_main``; from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _check_interrupted(err: str, run_dir: Path, sig: str) -> None:
    status = _status(run_dir)
    assert status.get("status") == "interrupted", (status, err[-3000:])
    assert status["resume"] == f"python -m rlfw resume={run_dir}"
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert f"stopped by {sig}" in last and f"resume={run_dir}" in last, last


@pytest.mark.parametrize("sig", ["SIGINT", "SIGHUP"])
def test_ctrl_c_and_sighup_end_a_run_like_sigterm(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = _start([*LONG, f"hydra.run.dir={run_dir}"], tmp_path)
    _wait_first_epoch(proc, run_dir)
    proc.send_signal(getattr(signal, sig))
    err, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + int(getattr(signal, sig)), err[-3000:]
    _check_interrupted(err, run_dir, sig)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_sigterm_to_the_launching_process_stops_its_workers(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start([*LONG, "train.workers=2", f"hydra.run.dir={run_dir}"], tmp_path)
    _wait_first_epoch(proc, run_dir)
    workers = _workers(proc.pid)
    assert len([w for w in workers if _alive(w)]) >= 2, workers
    proc.send_signal(signal.SIGTERM)
    err, _ = proc.communicate(timeout=90)
    assert proc.returncode == 128 + int(signal.SIGTERM), err[-3000:]
    _check_interrupted(err, run_dir, "SIGTERM")
    assert not [w for w in workers if _alive(w)], "workers left running"


@pytest.mark.slow  # about 45 s on the shared 2-core machine
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_workers_stop_when_their_parent_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start([*LONG, "train.workers=2", f"hydra.run.dir={run_dir}"], tmp_path)
    _wait_first_epoch(proc, run_dir)
    workers = [w for w in _workers(proc.pid) if _alive(w)]
    assert len(workers) >= 2, workers
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "workers still training after their parent died"
    status = _status(run_dir)
    assert status.get("status") == "interrupted", status
    # one SIGTERM per worker: a clean stop after the cycle, not "at once (a second signal)"
    # (PR_SET_PDEATHSIG signalled once per exiting launcher thread)
    assert "at once" not in status.get("error", ""), status


def test_sigterm_stops_a_sweep_before_its_next_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = _start(["-m", *LONG, "seed=0,1", f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=job${hydra.job.num}"],
                  tmp_path)  # fmt: skip
    first = sweep_dir / "job0"
    _wait_first_epoch(proc, first)
    proc.send_signal(signal.SIGTERM)
    err, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + int(signal.SIGTERM), err[-3000:]
    _check_interrupted(err, first, "SIGTERM")
    assert not (sweep_dir / "job1").exists(), "a further job started after the stop signal"


def test_a_second_sigterm_ends_a_run_whose_env_step_blocks(tmp_path):
    """An env whose step blocks never finishes its cycle: the first SIGTERM waits for the cycle
    (as always), a second one ends the run at once, interrupted, with exit status 143 (issue 33)."""
    tests_dir = str(Path(__file__).resolve().parent)
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0",
               PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), tests_dir) if p))  # fmt: skip
    args = ["env=gym", "env.id=BlockingReach-v0", "env.imports=[user_envs]", "buffer=her", *LONG,
            "train.num_envs=2", "+env.kwargs.block_at=150", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "rlfw", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    _wait_first_epoch(proc, run_dir)
    time.sleep(2.0)  # the env blocks in epoch 2 (its 150th step; epochs are 100 steps per env)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None  # the first waits for the cycle, which does not end
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + int(signal.SIGTERM), out[-3000:]
    status = _status(run_dir)
    assert status["status"] == "interrupted" and "at once (a second signal) by SIGTERM" in status["error"]


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
