"""Multi-worker data-parallel training (torch.distributed, gloo on CPU)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from rlfw.algos import ActorCritic
from rlfw.distributed import launch, parameter_digest
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
    fresh = ActorCritic(cfg.algo, info)
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

