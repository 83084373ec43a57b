"""``algo.lr_schedule``: every optimiser's learning rate follows the schedule over the run's env
steps (:func:`rlfw.algos.base.lr_factor`, :meth:`rlfw.algos.base.OffPolicyAgent.set_progress`),
a resumed agent continues it, and an agent that cannot anneal is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlfw.algos.base import lr_factor
from rlfw.build import build_agent, build_exploration
from rlfw.core import EnvInfo
from rlfw.errors import ConfigError
from rlfw.training.loop import TrainLoop

from .conftest import TINY, epochs_of, run_cli

GOAL_INFO = EnvInfo("FetchReach-v4", True, obs_dim=10, goal_dim=3, act_dim=4, max_episode_steps=50)


def _agent(compose, overrides):
    cfg = compose(["env=FetchReach-v4", *overrides])
    exploration = build_exploration(cfg, 2, GOAL_INFO.act_dim, np.random.default_rng(0))
    return build_agent(cfg, GOAL_INFO, exploration)


def _rates(agent) -> dict[str, list[float]]:
    return {k: [g["lr"] for g in opt.param_groups] for k, opt in agent.optimizers().items()}


def test_lr_factor_follows_each_schedule():
    assert lr_factor("constant", 0.7) == 1.0
    assert [lr_factor("linear", p) for p in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    assert lr_factor("linear", 0.5, end_factor=0.1) == pytest.approx(0.55)
    assert lr_factor("cosine", 0.0, 0.1) == pytest.approx(1.0)
    assert lr_factor("cosine", 0.5, 0.1) == pytest.approx(0.55)
    assert lr_factor("cosine", 1.0, 0.1) == pytest.approx(0.1)
    # past the run's planned length (a resumed run given more epochs) it stays at the end
    assert lr_factor("linear", 1.5, 0.2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"algo\.lr_schedule"):
        lr_factor("step", 0.5)


@pytest.mark.parametrize("algo", ["td3", "sac", "crossq"])
def test_set_progress_anneals_every_optimiser_from_its_own_initial_rate(compose, algo):
    """The actor's, critics' and (soft algorithms) the temperature's rates each go to their own
    initial rate times the factor, and again from the initial rate at a later progress."""
    extra = ["algo.alpha_lr=2e-3"] if algo != "td3" else []
    agent = _agent(compose, [f"algo={algo}", "algo.actor_lr=4e-4", "algo.critic_lr=1e-3", *extra,
                             "algo.lr_schedule=linear", "algo.lr_end_factor=0.5"])  # fmt: skip
    before = _rates(agent)
    assert agent.set_progress(0.5) == pytest.approx(0.75)
    after = _rates(agent)
    assert after.keys() == before.keys() and (algo == "td3" or "alpha_opt" in after)
    for k in before:
        assert after[k] == pytest.approx([r * 0.75 for r in before[k]]), k
    agent.set_progress(1.0)
    for k in before:
        assert _rates(agent)[k] == pytest.approx([r * 0.5 for r in before[k]]), k


def test_a_restored_agent_continues_the_schedule_from_the_initial_rates(compose):
    """The initial rate travels in the optimisers' checkpoint: an agent restored from one
    annealed to half goes on from the configured rate, not from the halved one."""
    overrides = ["algo=sac", "algo.actor_lr=1e-3", "algo.lr_schedule=linear"]
    agent = _agent(compose, overrides)
    agent.set_progress(0.5)
    state = agent.state_dict()
    fresh = _agent(compose, overrides)
    fresh.load_state_dict(state)
    assert fresh.actor_opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    fresh.set_progress(0.75)
    assert fresh.actor_opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def _lr_at_updates(loop: TrainLoop) -> list[float]:
    seen: list[float] = []
    update = loop.agent.update

    def spy(batch):
        seen.append(loop.agent.actor_opt.param_groups[0]["lr"])
        return update(batch)

    loop.agent.update = spy  # type: ignore[method-assign]
    return seen


def test_the_loop_anneals_the_rates_over_the_runs_env_steps(compose, tmp_path):
    """TINY's 400 env steps in 4 cycles of 100: each cycle's updates run at the rate of its last
    env step (SB3's order), 0.75, 0.5, 0.25 and 0 of it (linear to 0)."""
    cfg = compose([*TINY, "algo.actor_lr=1e-3", "algo.lr_schedule=linear"])
    loop = TrainLoop(cfg, tmp_path)
    seen = _lr_at_updates(loop)
    loop.run()
    assert seen == pytest.approx([7.5e-4] * 5 + [5e-4] * 5 + [2.5e-4] * 5 + [0.0] * 5)


def test_a_rate_changed_on_resume_is_the_schedule_s_new_start(compose, tmp_path):
    """The divergence advice (resume with a lower algo.actor_lr) holds under a schedule: the
    resumed epoch anneals the new rate, not the one the checkpoint started from."""
    base = [*TINY, "algo.lr_schedule=linear"]
    first = TrainLoop(compose([*base, "algo.actor_lr=1e-3"]), tmp_path)
    first.run(epochs=1, close=False)
    first.close()
    second = TrainLoop(compose([*base, "algo.actor_lr=5e-4"]), tmp_path)
    second.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    seen = _lr_at_updates(second)
    second.run()
    assert seen == pytest.approx([1.25e-4] * 5 + [0.0] * 5)


def test_a_run_saved_before_the_schedule_keys_resumes(tmp_path):
    """A run directory written before algo.lr_schedule existed (checkpoint and .hydra config
    without the keys) resumes as a constant-rate run instead of being refused as another run's."""
    run_dir = tmp_path / "run"
    assert run_cli([*TINY, "train.epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 0
    for ckpt in (run_dir / "checkpoints").glob("*.pt"):
        state = torch.load(ckpt, weights_only=True)
        for key in ("lr_schedule", "lr_end_factor"):
            del state["config"]["algo"][key]
        torch.save(state, ckpt)
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    for key in ("lr_schedule", "lr_end_factor"):
        del saved.algo[key]
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    proc = run_cli([f"resume={run_dir}", "train.epochs=2"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert epochs_of(run_dir) == [1, 2]


def test_the_constant_schedule_leaves_the_rates_alone(compose, tmp_path):
    cfg = compose([*TINY, "algo.actor_lr=1e-3"])
    loop = TrainLoop(cfg, tmp_path)
    seen = _lr_at_updates(loop)
    loop.run()
    assert seen == [1e-3] * 20
    assert "initial_lr" not in loop.agent.actor_opt.param_groups[0]


def test_an_agent_without_set_progress_is_refused_at_the_config_check(compose, monkeypatch):
    """An algorithm from another package whose agent cannot anneal its rates is refused by the
    config check (before any simulator starts), naming the key and the way out."""
    import rlfw.registry as registry_mod
    from rlfw.algos.config import AlgoConfig

    class Plain:
        pass

    real = registry_mod.registry

    class Entry:
        target = Plain

        def get(self, name):
            return self

    monkeypatch.setattr(registry_mod, "registry", lambda group: Entry() if group == "algo" else real(group))
    cfg = compose(["env=FetchReach-v4", "algo.lr_schedule=cosine"])
    with pytest.raises(ConfigError) as err:
        AlgoConfig.validate(cfg.algo)
    text = str(err.value)
    assert "algo.lr_schedule=cosine needs an agent with set_progress" in text and "Plain (algo=td3)" in text
    assert "\n" not in text
    AlgoConfig.validate(compose(["env=FetchReach-v4"]).algo)  # constant: no agent asked
