"""SAC, TQC and CrossQ through the whole framework: every algo x buffer x noise composes and
builds, a few hundred steps on the seeds' simulators, two data-parallel workers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlfw.build import build_agent, build_buffer, build_exploration
from rlfw.components import load_components
from rlfw.config.paths import group_options
from rlfw.config.validate import validate
from rlfw.core import EnvInfo
from rlfw.distributed import launch, parameter_digest
from rlfw.errors import ConfigError
from rlfw.registry import registry
from rlfw.training.loop import TrainLoop

from .conftest import TINY

load_components()  # every built-in registers

SOFT = ["sac", "tqc", "crossq"]
GOAL_INFO = EnvInfo("FetchReach-v4", True, obs_dim=10, goal_dim=3, act_dim=4, max_episode_steps=50)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("algo", group_options("algo"))
def test_every_algo_buffer_and_noise_compose_and_build(compose, algo):
    """All algo x buffer preset x noise on a goal env: each either builds an agent that acts and
    a buffer, or (a stochastic policy with NoisyNet) fails with one line naming both keys."""
    built = 0
    for buffer in group_options("buffer"):
        for noise in group_options("noise"):
            cfg = compose(
                [f"algo={algo}", f"buffer={buffer}", f"noise={noise}", "buffer.capacity=1000"]
            )
            assert (cfg.algo.name, cfg.buffer.name, cfg.noise.name) == (algo, buffer, noise)
            if algo in SOFT and noise == "noisynet":
                with pytest.raises(ConfigError) as err:
                    validate(cfg)
                assert f"algo={algo}" in str(err.value) and "noise=noisynet" in str(err.value)
                assert "\n" not in str(err.value)
                continue
            validate(cfg)
            rng = np.random.default_rng(0)
            exploration = build_exploration(cfg, 2, GOAL_INFO.act_dim, rng)
            agent = build_agent(cfg, GOAL_INFO, exploration)
            actions = exploration(
                agent.act(np.zeros((2, 10), np.float32), np.zeros((2, 3), np.float32), True), 0
            )
            assert actions.shape == (2, 4) and np.all(np.abs(actions) <= 1)
            buf = build_buffer(cfg, GOAL_INFO, 2, 1000, 0)
            assert len(buf) == 0  # built empty, with the parts its preset names
            assert type(buf.relabeler).__name__ == {"her": "HerRelabel", "none": "NoRelabel"}[cfg.buffer.relabel]
            assert type(buf.sampler).__name__ == {"uniform": "UniformSampler", "prioritized": "PrioritizedSampler",
                                                  "energy": "EnergySampler"}[cfg.buffer.sampler]  # fmt: skip
            assert buf.returns.n_step == int(cfg.buffer.n_step)
            built += 1
    assert built == len(group_options("buffer")) * (len(group_options("noise")) - (algo in SOFT))


def test_soft_algos_default_to_no_action_noise(compose):
    for algo in SOFT:
        assert compose([f"algo={algo}"]).noise.name == "none"
        assert compose([f"algo={algo}", "noise=gaussian"]).noise.name == "gaussian"  # the CLI wins
    assert compose(["algo=td3"]).noise.name == "gaussian"


def check_soft_run(
    run_dir: Path, algo: str, epochs: int, steps_per_epoch: int
) -> list[dict[str, str]]:
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert [int(r["env_steps"]) for r in rows] == [steps_per_epoch * (i + 1) for i in range(epochs)]
    for r in rows:
        for key in ("critic_loss", "actor_loss", "q_mean", "alpha", "alpha_loss", "entropy"):
            assert r[key] != "" and math.isfinite(float(r[key])), key
        assert 0 < float(r["alpha"]) < 1  # learned down from 0.1 or up: a temperature, not 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    agent = ckpt["agent"]
    for key in (
        "actor",
        "critic",
        "temperature",
        "actor_opt",
        "critic_opt",
        "alpha_opt",
        "obs_norm",
    ):
        assert key in agent, key
    assert ("critic_target" in agent) == (algo != "crossq")  # CrossQ has no target networks
    assert "actor_target" not in agent
    if algo == "crossq":
        assert (
            float(agent["critic"]["input_norm.steps"]) == agent["updates"] > 0
        )  # one train pass per update
    return rows


CASES = {
    "FetchPush-v4 her": ["env=FetchPush-v4"],
    "PandaReach-v3": ["env=PandaReach-v3"],
    "Hopper-v4 per n_step=3": ["env=Hopper-v4", "buffer=per", "buffer.n_step=3"],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("algo", SOFT)
def test_few_hundred_steps_with_each_soft_algo(compose, tmp_path, algo, case):
    cfg = compose([f"algo={algo}", *CASES[case], *TINY])
    runner = TrainLoop(cfg, tmp_path)
    runner.run()
    check_soft_run(tmp_path, algo, 2, 200)
    if "per" in case:
        # the priorities came from the algorithm's own error (PER: p = |td_error| + eps)
        tree = runner.buffer.sampler.sum_tree
        leaves = tree.leaves(np.arange(cfg.buffer.capacity))
        assert len(np.unique(leaves[leaves > 0])) > 10


@pytest.mark.parametrize("algo", SOFT)
def test_two_workers_with_each_soft_algo(compose, tmp_path, algo):
    cfg = compose([f"algo={algo}", "env=FetchReach-v4", "train.workers=2", *TINY, "train.epochs=1",
                   "train.cycles_per_epoch=3"])  # fmt: skip
    results = launch(cfg, tmp_path)
    assert results[0]["digest"] == results[1]["digest"]  # networks, temperature, norm statistics
    torch.manual_seed(cfg.seed)
    fresh = registry("algo").get(algo).target(cfg.algo, GOAL_INFO)
    assert parameter_digest(list(fresh.modules().values())) != results[0]["digest"]
    rows = read_csv(tmp_path / "metrics.csv")
    assert [int(r["env_steps"]) for r in rows] == [600]
    assert rows[0]["alpha"] != "" and rows[0]["entropy"] != ""


def test_soft_run_plots_the_temperature(compose, tmp_path):
    from rlfw.plots import plot_run

    TrainLoop(compose(["algo=sac", "env=FetchReach-v4", *TINY]), tmp_path).run()
    out = plot_run(tmp_path)
    assert out[tmp_path / "entropy.png"] == 2  # alpha and entropy curves
    assert (tmp_path / "entropy.png").stat().st_size > 1000
