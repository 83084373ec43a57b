"""Multi-worker data-parallel training (torch.distributed, gloo on CPU)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlfw.algos import TD3
from rlfw.distributed import free_port, launch, parameter_digest
from rlfw.envs import EnvInfo

from .conftest import TINY, run_cli


def test_two_workers_keep_bitwise_equal_networks_in_one_run_dir(compose, tmp_path):
    cfg = compose(["env=FetchReach-v4", "train.workers=2", *TINY, "train.epochs=1", "train.cycles_per_epoch=3"])
    results = launch(cfg, tmp_path)
    assert [r["rank"] for r in results] == [0, 1]
    assert results[0]["digest"] == results[1]["digest"]  # networks, targets, normalisers
    assert results[0]["row"]["updates"] == 3 * 5  # cycles x train.updates_per_cycle
    # the workers really trained away from the common start
    info = EnvInfo("FetchReach-v4", True, 10, 3, 4, 50)
    torch.manual_seed(cfg.seed)
    fresh = TD3(cfg.algo, info)
    assert parameter_digest(list(fresh.modules().values())) != results[0]["digest"]
    # each worker collected its own steps; metrics count both
    assert results[0]["env_steps"] == results[1]["env_steps"] == 300
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["env_steps"]) for r in rows] == [600]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["checkpoints"]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    # the normaliser counted both workers' observations: 2 workers x (300 steps + 2 resets)
    assert int(ckpt["agent"]["obs_norm"]["count"]) == 2 * (300 + 2)


@pytest.mark.slow  # moved out of the default run (about 15 minutes on 2 cores); nox -s slow and CI run it
def test_sweep_of_multi_worker_runs(tmp_path: Path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "train.workers=2", "seed=0,1", *TINY, "train.epochs=1", "train.cycles_per_epoch=2",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.csv").exists())
    assert len(jobs) == 2


def test_multi_worker_run_resumes_from_its_checkpoint(compose, tmp_path):
    base = ["env=FetchReach-v4", "train.workers=2", *TINY, "train.cycles_per_epoch=2"]
    launch(compose([*base, "train.epochs=1"]), tmp_path)
    results = launch(compose([*base, "train.epochs=2"]), tmp_path, checkpoint=tmp_path / "checkpoints" / "last.pt")
    assert results[0]["digest"] == results[1]["digest"]
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["env_steps"]) for r in rows] == [400, 800]


def test_every_worker_saves_and_reloads_its_own_buffer(compose, tmp_path):
    """With ``train.save_buffer`` each rank writes its buffer file at every checkpoint (rank 1
    used to skip it, so a resumed worker silently started with an empty buffer)."""
    base = ["env=FetchReach-v4", "train.workers=2", "train.save_buffer=true", *TINY, "train.cycles_per_epoch=2"]
    launch(compose([*base, "train.epochs=1"]), tmp_path)
    files = {r: tmp_path / "checkpoints" / name for r, name in ((0, "buffer.pt"), (1, "buffer_rank1.pt"))}
    saved = {r: torch.load(f, weights_only=False) for r, f in files.items()}
    for r in (0, 1):
        assert saved[r]["epoch"] == 1
        assert saved[r]["buffer"]["storage"]["n_transitions"] == 200  # 2 cycles x 100 steps
    # the two workers collected different episodes (their own seeds)
    assert not (saved[0]["buffer"]["storage"]["obs"] == saved[1]["buffer"]["storage"]["obs"]).all()
    launch(compose([*base, "train.epochs=2"]), tmp_path, checkpoint=tmp_path / "checkpoints" / "last.pt")
    for r in (0, 1):
        after = torch.load(files[r], weights_only=False)
        assert after["epoch"] == 2
        # resumed from the saved 200 transitions, then 200 more: nothing was lost
        assert after["buffer"]["storage"]["n_transitions"] == 400



# -------------------------------------------------------------------------------------------
# the standard launchers: torchrun (one machine, and two "nodes" on this machine)

LAUNCHED = [a for a in TINY if not a.startswith("logger.")] + ["logger.plots=false", "train.epochs=2",
                                                               "train.cycles_per_epoch=2"]  # fmt: skip


def _torchrun(launcher_args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher_args, "-m", "rlfw",
                             *LAUNCHED], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def check_launched_run(cwd: Path, outputs: list[str]) -> None:
    """One run directory for both ranks; metrics.csv counts both ranks' steps; equal networks."""
    runs = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["env_steps"]) for r in rows] == [400, 800]  # 2 ranks x 2 cycles x 100 steps
    assert [int(r["updates"]) for r in rows] == [10, 20]  # each rank's updates, averaged gradients
    assert '"status": "finished"' in (run / "status.json").read_text()
    assert (run / "checkpoints" / "last.pt").exists() and (run / ".hydra" / "config.yaml").exists()
    text = "\n".join(outputs)
    assert "2 ranks finished with equal networks" in text, text[-3000:]


def test_torchrun_standalone_two_processes_train_one_run(tmp_path):
    proc = _torchrun(["--standalone", "--nproc_per_node=2"], tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    check_launched_run(tmp_path, [out])


def test_torchrun_two_nodes_on_this_machine(tmp_path):
    port = str(free_port())
    static = ["--nnodes=2", "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}"]
    nodes = [_torchrun([*static, f"--node_rank={i}"], tmp_path) for i in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-3000:] for o in outs)
    check_launched_run(tmp_path, outs)


def test_torchrun_refuses_train_workers_in_one_line(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore", RANK="0", WORLD_SIZE="2", LOCAL_RANK="0")
    proc = run_cli_env(["train.workers=2", *LAUNCHED], tmp_path, env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rlfw: error: train.workers=2 spawns workers on one machine; under torchrun/srun the launcher "
        "starts them: leave train.workers=1"
    ]


def run_cli_env(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlfw", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def _rlfw_with_env(tmp_path: Path, extra_env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", **extra_env)
    return subprocess.run([sys.executable, "-m", "rlfw", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_stale_launcher_variables_are_checked_in_one_line(tmp_path):
    """RANK/WORLD_SIZE left over from another job: a value that is not an integer, or a rank
    outside the world, is one line naming the variable (exit 2), before anything starts."""
    bad = _rlfw_with_env(tmp_path, {"RANK": "0", "WORLD_SIZE": "two", "MASTER_ADDR": "127.0.0.1"})
    assert bad.returncode == 2 and "WORLD_SIZE='two' in the environment must be an integer" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    outside = _rlfw_with_env(tmp_path, {"RANK": "3", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"})
    assert outside.returncode == 2 and "RANK=3 is not a rank of WORLD_SIZE=2" in outside.stderr, outside.stderr
    assert not (tmp_path / "run").exists()


def test_a_rank_waiting_for_the_others_says_what_it_waits_for(tmp_path):
    """RANK=0 WORLD_SIZE=2 with nobody else: the process says at once that it waits for the
    other rank, where, for how long, and which variables made it wait."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONWARNINGS="ignore", RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "rlfw", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stderr.readline() if proc.stderr else ""), daemon=True)
    reader.start()
    reader.join(timeout=60)
    proc.kill()
    proc.wait()
    line = lines[0] if lines else ""
    assert "rank 0 of 2: waiting for the other ranks at 127.0.0.1:" in line and "RANK, WORLD_SIZE" in line, line


_WATCHED = """
import os, signal, sys, time
from rlfw.distributed import die_with_parent
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
die_with_parent(int(sys.argv[1]), poll_s=0.05)
time.sleep(0.3)
open(sys.argv[2] + ".early", "w").write(str(len(got)))  # signals while the parent (maybe) lives
deadline = time.time() + 30
while time.time() < deadline and not got:
    time.sleep(0.05)
time.sleep(1.0)  # a second SIGTERM (the old PR_SET_PDEATHSIG double) would land here
open(sys.argv[2], "w").write(str(len(got)))
"""


@pytest.mark.parametrize("parent", ["dies_later", "already_gone"])
def test_a_worker_gets_one_sigterm_when_its_parent_dies(tmp_path, parent):
    """``die_with_parent``: a process whose parent exits after the call gets no SIGTERM while the
    parent lives and exactly one after; one whose given parent is gone before the call (pid 0,
    never the parent of a child of this process, even where this process is pid 1) gets exactly
    one at once."""
    import time

    out = tmp_path / "signals"
    if parent == "already_gone":
        subprocess.run([sys.executable, "-c", _WATCHED, "0", str(out)], timeout=60, check=True)
    else:  # a middle process starts the watched one, waits until it has watched a while, then exits
        early = str(out) + ".early"
        middle = ("import os, subprocess, sys, time\n"
                  f"subprocess.Popen([sys.executable, '-c', {_WATCHED!r}, str(os.getpid()), {str(out)!r}])\n"
                  f"while not os.path.exists({early!r}): time.sleep(0.02)\n"
                  "time.sleep(0.1)\n"
                  "os._exit(0)\n")  # fmt: skip
        subprocess.run([sys.executable, "-c", middle], timeout=60, check=True)
        assert Path(early).read_text() == "0"
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and out.read_text()):
        time.sleep(0.1)
    assert out.read_text() == "1"
