"""End to end on the real simulators (a few hundred steps) and through the CLI: single runs, ``-m``
sweeps (basic, joblib, a failed job among good ones) and a report over a real sweep."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlfw.report import summarize
from rlfw.training.csvfiles import EPISODE_COLUMNS, metric_columns
from rlfw.training.loop import TrainLoop

from .conftest import PNG_MAGIC, TINY, epochs_of, run_cli

METRIC_COLUMNS = metric_columns(("actor_loss", "critic_loss", "q_mean"))  # DDPG/TD3's


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


TD3_STATE = ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt", "obs_norm")
# CrossQ (the Hopper family's default): no target networks, the critics' batch statistics inside "critic"
CROSSQ_STATE = ("actor", "critic", "actor_opt", "critic_opt", "obs_norm")


def default_state(env: str) -> tuple[str, ...]:
    """The checkpoint keys of ``env``'s family default algorithm (CrossQ on Hopper, else TD3)."""
    return CROSSQ_STATE if env.startswith("Hopper") else TD3_STATE


def check_run_dir(run_dir: Path, epochs: int, steps_per_epoch: int,
                  agent_keys: tuple[str, ...] = TD3_STATE) -> list[dict[str, str]]:
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert set(METRIC_COLUMNS) <= set(rows[0])
    assert [int(r["env_steps"]) for r in rows] == [steps_per_epoch * (i + 1) for i in range(epochs)]
    for r in rows:
        assert r["eval_return"] != "" and r["critic_loss"] != "" and float(r["wall_time_s"]) > 0
    with (run_dir / "episodes.csv").open() as f:
        assert next(csv.reader(f)) == EPISODE_COLUMNS  # header even when no episode ended
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["counters"]["epoch"] == epochs
    assert ckpt["counters"]["env_steps"] == steps_per_epoch * epochs
    for key in agent_keys:
        assert key in ckpt["agent"]
    assert not (run_dir / "checkpoints" / "last.pt.tmp").exists()
    return rows


@pytest.mark.parametrize("env", ["FetchReach-v4", "PandaReach-v3", "Hopper-v4"])
def test_few_hundred_steps_on_real_envs(compose, tmp_path, env):
    cfg = compose([f"env={env}", *TINY])
    TrainLoop(cfg, tmp_path).run()
    # each family's default algorithm: TD3 on the goal tasks, CrossQ on Hopper (issue 30)
    crossq = env == "Hopper-v4"
    assert cfg.algo.name == ("crossq" if crossq else "td3")
    rows = check_run_dir(tmp_path, 2, 200, default_state(env))
    if crossq:
        ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
        assert "critic_target" not in ckpt["agent"] and rows[-1]["alpha"] != ""
    else:
        assert rows[-1]["eval_success_rate"] != ""
        assert len(read_csv(tmp_path / "episodes.csv")) >= 4  # 50-step episodes, 2 envs
        ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
        assert "goal_norm" in ckpt["agent"]
        assert ckpt["agent"]["obs_norm"]["count"] > 0


@pytest.mark.parametrize("algo", ["ddpg", "td3"])
@pytest.mark.parametrize("noise", ["gaussian", "ou", "noisynet"])
@pytest.mark.parametrize("env", ["PandaReach-v3", "Hopper-v4"])
def test_each_noise_with_each_algo(compose, tmp_path, env, noise, algo):
    cfg = compose([f"env={env}", f"noise={noise}", f"algo={algo}", *TINY])
    TrainLoop(cfg, tmp_path).run()
    rows = check_run_dir(tmp_path, 2, 200)
    assert float(rows[-1]["noise_sigma"]) > 0  # the exploration scale is logged


@pytest.mark.parametrize(
    ("env", "sweep"),
    [
        # her, her+PER, her+n-step, her+PER+n-step, and per+n-step among the 8 jobs
        pytest.param("FetchPush-v4", ["buffer=her,per", "buffer.sampler=uniform,prioritized", "buffer.n_step=1,3"],
                     marks=pytest.mark.slow),
        ("Hopper-v4", ["buffer=per,nstep", "buffer.sampler=prioritized", "buffer.n_step=3"]),
    ],
)
def test_cli_buffer_compositions(tmp_path, env, sweep):
    out = tmp_path / "sweep"
    proc = run_cli(["-m", f"env={env}", *sweep, *TINY, f"hydra.sweep.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(out)
    expected = 1
    for s in sweep:
        expected *= len(s.split("=", 1)[1].split(","))
    assert len(jobs) == expected
    n_steps = []
    for j in jobs:
        check_run_dir(j, 2, 200, default_state(env))
        # the job ran with the n_step its overrides asked for
        asked = [o for o in (j / ".hydra" / "overrides.yaml").read_text().split() if o.startswith("buffer.n_step=")]
        cfg = yaml.safe_load((j / ".hydra" / "config.yaml").read_text())
        assert cfg["buffer"]["n_step"] == int(asked[0].split("=")[1])
        n_steps.append(cfg["buffer"]["n_step"])
    assert n_steps.count(3) == expected // len(sweep[-1].split("=", 1)[1].split(","))


def jobs_of(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "metrics.csv").exists())


def test_cli_two_job_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "algo=ddpg,td3", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(sweep)
    assert len(jobs) == 2
    assert {"ddpg", "td3"} == {j.name.split("_")[1] for j in jobs}
    for j in jobs:
        check_run_dir(j, 2, 200)
        assert (j / ".hydra" / "config.yaml").exists()


@pytest.mark.parametrize(
    ("env", "buffers"),
    [("FetchPush-v4", "uniform,her,per,nstep"), ("Hopper-v4", "uniform,per,nstep")],
)
def test_cli_buffer_presets(tmp_path, env, buffers):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", f"env={env}", f"buffer={buffers}", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(sweep)
    assert len(jobs) == len(buffers.split(","))
    for j in jobs:
        check_run_dir(j, 2, 200, default_state(env))


@pytest.mark.slow  # moved out of the default run (about 15 minutes on 2 cores); nox -s slow and CI run it
def test_cli_noise_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "env=PandaReach-v3", "noise=gaussian,ou,noisynet", *TINY, f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(sweep)
    assert len(jobs) == 3
    import yaml

    used = sorted(yaml.safe_load((j / ".hydra" / "config.yaml").read_text())["noise"]["name"] for j in jobs)
    assert used == ["gaussian", "noisynet", "ou"]  # each job trained with its own noise
    for j in jobs:
        check_run_dir(j, 2, 200)


def test_cli_users_fetchslide_v2_command(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["algo=td3", "buffer=her", "env=FetchSlide-v2", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("env.id 'FetchSlide-v2' is not registered") == 1
    assert "using 'FetchSlide-v4'" in out
    check_run_dir(run_dir, 2, 200)
    lines = [ln for ln in out.splitlines() if "epoch " in ln and "env_steps" in ln]
    assert len(lines) == 2  # one console line per epoch


@pytest.mark.slow  # moved out of the default run (about 15 minutes on 2 cores); nox -s slow and CI run it
def test_two_sweeps_started_together_keep_every_job(tmp_path):
    """Two -m sweeps started in the same second (default hydra.sweep.dir) write directories of
    their own and keep all four jobs (issue 33, class 9: they shared multirun/<date>/<time>)."""

    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, "-m", "rlfw", "-m", "seed=0,1", *TINY, "train.epochs=1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    sweeps = sorted(d for d in (tmp_path / "multirun").glob("*/*") if d.is_dir())
    assert len(sweeps) == 2
    assert [len(jobs_of(d)) for d in sweeps] == [2, 2]


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
