"""Cluster sweeps against the real thing (``nox -s cluster``; marked ``cluster``, not in the
default run): a single-node SLURM started for this module (tools/slurm_local.py: Debian's
slurm-wlm and munge as processes of the session), a 4-job sweep through
``hydra/launcher=slurm`` (hydra-submitit-launcher) with one job stopped by SIGTERM mid-run,
requeued and resumed. (Optuna studies: tests/test_tune.py, ``python -m rlfw.tune``.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from slurm_local import LocalSlurm  # noqa: E402

EPOCHS = 8
# FetchReach-v4, 8 epochs of 1000 env steps: long enough to be stopped mid-run, short enough
# for 2 jobs at a time on 2 cores
SMALL = ["env=FetchReach-v4", f"train.epochs={EPOCHS}", "train.cycles_per_epoch=10", "eval.episodes=2",
         "eval.stop_at=null"]  # no early stop: the preset stops when solved


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    yield cluster
    cluster.stop()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())


def _running(env: dict[str, str]) -> dict[str, str]:
    """Running jobs: array id (``<array job>_<task>``) -> raw job id (what listpids takes)."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %A"], env=env, capture_output=True, text=True)
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def _task_pid(job_id: str, env: dict[str, str]) -> int | None:
    """The PID of task 0 of step 0 of raw ``job_id`` (the job's python): scontrol listpids."""
    out = subprocess.run(["scontrol", "listpids", job_id], env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines()[1:]:  # PID JOBID STEPID LOCALID GLOBALID
        f = line.split()
        if len(f) >= 5 and f[2] == "0" and f[3] == "0":
            return int(f[0])
    return None


def test_slurm_sweep_of_four_jobs_with_one_requeued_after_sigterm(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "rlfw", "-m", "hydra/launcher=slurm", "seed=0,1,2,3", *SMALL,
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20",
           f"hydra.sweep.dir={sweep}", f"hydra.launcher.submitit_folder={sweep}/.submitit/%j"]  # fmt: skip
    env = dict(slurm.env, PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # job 1 (array task 1): once it has finished an epoch and is still running, SIGTERM its
        # task, as SLURM does on pre-emption (scontrol listpids: the processes of the job's step)
        target, deadline, stopped_at = None, time.monotonic() + 300, 0
        while time.monotonic() < deadline and proc.poll() is None and target is None:
            dirs = [d for d in _job_dirs(sweep) if d.name.startswith("1_")] if sweep.exists() else []
            if dirs and (dirs[0] / "metrics.csv").exists():
                done = len(_rows(dirs[0] / "metrics.csv"))
                running = [(i, raw) for i, raw in _running(env).items() if i.endswith("_1")]
                pid = _task_pid(running[0][1], env) if running and 1 <= done < EPOCHS - 2 else None
                if pid is not None:
                    os.kill(pid, signal.SIGTERM)
                    target, stopped_at = running[0][0], done
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert target is not None, f"job 1 was never seen running mid-run\n{out[-3000:]}"

    jobs = _job_dirs(sweep)
    assert len(jobs) == 4, jobs
    for job in jobs:
        rows = _rows(job / "metrics.csv")
        # every epoch once, in order: the requeued job's dropped epoch was trained again, not twice
        assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1)), (job, rows)
        assert [int(r["env_steps"]) for r in rows] == [1000 * e for e in range(1, EPOCHS + 1)]
        assert (job / "checkpoints" / "last.pt").exists()
        assert json.loads((job / "status.json").read_text())["status"] == "finished"
    requeued = next(j for j in jobs if j.name.startswith("1_"))
    log = (requeued / "rlfw.log").read_text()
    assert "SIGTERM received: stopping after this cycle" in log, log[-3000:]
    assert "SLURM restart 1 of this job: resuming from" in log, log[-3000:]
    assert stopped_at >= 1
    others = "".join((j / "rlfw.log").read_text() for j in jobs if j != requeued)
    assert "SLURM restart" not in others


