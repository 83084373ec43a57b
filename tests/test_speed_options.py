"""The loop's speed options work (their speed is measured by ``nox -s bench``, not here):
``train.overlap`` (updates run while async envs step), ``train.compile`` (torch.compile of the
networks; on this CPU-only machine it must run), ``train.autocast``, the torch threads' share of
the cores, and the collector's one normaliser update per collect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlfw.algos.networks import EnsembleLinear
from rlfw.training.collector import Collector
from rlfw.training.loop import TrainLoop

from .conftest import TINY


def _update_times(loop: TrainLoop) -> list[int]:
    """Wrap the agent's update to record the collector's env steps at each call."""
    seen: list[int] = []
    update = loop.agent.update

    def spy(batch):
        seen.append(loop.collector.env_steps)
        return update(batch)

    loop.agent.update = spy  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_overlap_spreads_each_cycles_updates_over_its_steps(compose, tmp_path, vectorization):
    """With train.overlap the 5 updates of a 50-vector-step cycle run at steps 10, 20, .., 50 of
    it (while the envs step, for async envs), not all after the cycle; the count is the same."""
    cfg = compose([*TINY, "train.overlap=true", f"env.vectorization={vectorization}", "train.epochs=1"])
    loop = TrainLoop(cfg, tmp_path)
    seen = _update_times(loop)
    loop.run()
    # a vector step is 2 env steps; the shares fall due at vector steps 10, 20, .., 50 of a cycle
    # and run while that step is under way (its 2 env steps not counted yet); in the first cycle
    # only once the buffer holds a batch of 32
    assert [s for s in seen if s > 100] == [118, 138, 158, 178, 198]
    assert [s for s in seen if s <= 100] == [s for s in (18, 38, 58, 78, 98) if s >= 32]
    assert loop.agent.updates == len(seen)


def test_without_overlap_updates_run_after_the_cycle(compose, tmp_path):
    cfg = compose([*TINY, "train.epochs=1"])
    loop = TrainLoop(cfg, tmp_path)
    seen = _update_times(loop)
    loop.run()
    assert seen == [100] * 5 + [200] * 5


def test_overlap_runs_the_callback_between_step_async_and_step_wait(compose, tmp_path):
    """The collector calls ``during`` after ``step_async`` and before ``step_wait``."""
    import gymnasium as gym

    order: list[str] = []

    class Spy(gym.vector.VectorEnv):
        def __init__(self, inner):
            self.inner, self.num_envs = inner, inner.num_envs
            self.single_observation_space = inner.single_observation_space
            self.single_action_space = inner.single_action_space
            self.observation_space, self.action_space = inner.observation_space, inner.action_space

        def reset(self, **kw):
            return self.inner.reset(**kw)

        def step_async(self, actions):
            order.append("async")
            self.inner.step_async(actions)

        def step_wait(self, **kw):
            order.append("wait")
            return self.inner.step_wait(**kw)

    cfg = compose([*TINY, "env.vectorization=async", "train.epochs=1"])
    loop = TrainLoop(cfg, tmp_path)
    envs = Spy(loop.parts.envs)
    c = Collector(envs, loop.agent, loop.exploration, loop.buffer, loop.info.goal, loop.info.act_dim, 0,
                  np.random.default_rng(0), 0)  # fmt: skip
    c.collect(6, 0, during=lambda i: order.append(f"during {i}"))
    assert order == ["async", "during 0", "wait", "async", "during 1", "wait", "async", "during 2", "wait"]
    loop.close()


def test_overlap_with_async_envs_leaves_a_core_to_the_simulators(monkeypatch):
    from rlfw.training import cores

    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    monkeypatch.delenv(cores.PARALLEL_JOBS_ENV, raising=False)
    assert cores.torch_threads(0) == 2
    assert cores.torch_threads(0, reserve=1) == 1
    assert cores.torch_threads(3, reserve=1) == 3  # the key wins


def test_compile_runs_on_the_cpu_and_keeps_checkpoint_keys(compose, tmp_path):
    """train.compile=true trains on a CPU-only machine (inductor, or eager after a failed
    compile) and its checkpoint has the same keys as an uncompiled run's."""
    plain = TrainLoop(compose([*TINY, "train.epochs=1"]), tmp_path / "plain")
    plain.run()
    cfg = compose([*TINY, "train.epochs=1", "train.compile=true", "train.updates_per_cycle=3"])
    loop = TrainLoop(cfg, tmp_path / "compiled")
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in loop.agent.networks().values())
    row = loop.run()
    assert loop.agent.updates == 6 and np.isfinite(row["critic_loss"])
    a = torch.load(tmp_path / "plain" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "compiled" / "checkpoints" / "last.pt", weights_only=False)
    assert set(a["agent"]["actor"]) == set(b["agent"]["actor"])


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_autocast_bfloat16_runs_the_updates_matmuls_in_bfloat16(compose, tmp_path, algo):
    """train.autocast=bfloat16: the critic's linear layers compute in bfloat16 during updates
    (and in float32 without it), while weights, gradients and acting stay float32."""
    seen: dict[str, set[torch.dtype]] = {}
    for mode in ("none", "bfloat16"):
        cfg = compose([*TINY, f"algo={algo}", "train.epochs=1", f"train.autocast={mode}"])
        loop = TrainLoop(cfg, tmp_path / mode)
        dtypes: set[torch.dtype] = set()
        for m in loop.agent.networks()["critic"].modules():
            if isinstance(m, (torch.nn.Linear, EnsembleLinear)):
                m.register_forward_hook(lambda _m, _i, out, seen=dtypes: seen.add(out.dtype))
        row = loop.run()
        assert loop.agent.updates > 0 and np.isfinite(row["critic_loss"])
        assert all(p.dtype == torch.float32 for p in loop.agent.networks()["critic"].parameters())
        action = loop.agent.act(np.zeros((1, loop.info.obs_dim), np.float32),
                                np.zeros((1, loop.info.goal_dim), np.float32) if loop.info.goal else None)
        assert action.dtype == np.float32
        seen[mode] = dtypes
    assert seen["none"] == {torch.float32}
    assert torch.bfloat16 in seen["bfloat16"]


def test_autocast_refuses_an_unknown_dtype(compose):
    from rlfw.config.preflight import ensure_valid
    from rlfw.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.autocast.*bfloat16"):
        ensure_valid(compose([*TINY, "train.autocast=float16"]))


def test_collect_updates_the_normalisers_once_with_every_observation_it_saw(compose, tmp_path):
    """One ``observe`` call per collect (HER's code: once per stored batch), holding the reset
    observations and every vector step's next observations; the actions within the call use the
    statistics from before it."""
    cfg = compose([*TINY, "train.epochs=1"])
    loop = TrainLoop(cfg, tmp_path)
    calls: list[tuple[int, int]] = []
    observe = loop.agent.observe

    def spy(obs, goals=None):
        calls.append((len(obs), 0 if goals is None else len(goals)))
        observe(obs, goals)

    loop.agent.observe = spy  # type: ignore[method-assign]
    n = loop.collector.num_envs
    count0 = float(loop.agent.obs_norm.count)
    loop.collector.collect(20, 0)
    assert calls == [(n + 20, 2 * (n + 20))]  # resets + 20 env steps; desired and achieved goals
    assert float(loop.agent.obs_norm.count) - count0 == n + 20
    mean = loop.agent.obs_norm.mean.clone()
    loop.collector.collect(10, 0)
    assert calls[1:] == [(10, 20)]
    assert not torch.equal(loop.agent.obs_norm.mean, mean)
    loop.close()


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
