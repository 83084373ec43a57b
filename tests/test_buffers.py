"""ReplayBuffer: episode storage, HER relabelling, n-step returns, parallel envs, ring, PER.

Episodes are hand-built (see ``goal_env.py``): every observation encodes ``(episode, step)``,
so each sampled transition, next observation and relabelled goal can be traced back to the
state it came from and checked against a pure-Python reference computed from the episode lists.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rlfw.buffers import BUFFERS, RELABEL, SAMPLERS, STRATEGIES, Batch, ReplayBuffer, store_schemas
from rlfw.buffers.relabel import HerRelabel, NoRelabel, Relabeler
from rlfw.buffers.returns import NStepReturns
from rlfw.buffers.samplers import Sampler, UniformSampler
from rlfw.buffers.storage import EpisodeStorage
from rlfw.config.preflight import compose_config
from rlfw.config.schema import BufferConfig
from rlfw.config.validate import validate
from rlfw.envs import EnvInfo
from rlfw.errors import ConfigError
from rlfw.registry import register

pytestmark = pytest.mark.unit  # no simulator, no subprocess: nox -s unit

try:  # works with and without tests/__init__.py
    from tests.goal_env import (
        FeedLog,
        PointGoalEnv,
        decode,
        feed,
        goal_env_info,
        is_desired_goal,
        make_episode,
        plain_env_info,
    )
except ImportError:  # pragma: no cover - depends on how pytest put tests/ on sys.path
    from goal_env import (  # type: ignore[no-redef]
        FeedLog,
        PointGoalEnv,
        decode,
        feed,
        goal_env_info,
        is_desired_goal,
        make_episode,
        plain_env_info,
    )

GAMMA = 0.9


def make_buffer(
    info: EnvInfo, num_envs: int = 1, gamma: float = GAMMA, seed: int = 0, **cfg: Any
) -> ReplayBuffer:
    cfg.setdefault("capacity", 1000)
    return ReplayBuffer(BufferConfig(**cfg), info, num_envs=num_envs, gamma=gamma, seed=seed)


# ------------------------------------------------------------------------------------------
# pure-Python reference


def reference(
    log: FeedLog, info: EnvInfo, ep_id: int, t: int, goal: np.ndarray | None, n: int, gamma: float
) -> dict[str, Any]:
    """n-step target of transition ``t`` of episode ``ep_id`` for ``goal``, from the lists.

    ``k = min(n, steps stored after t)``, cut after a termination; a relabelled goal (one that
    is not the episode's desired goal) recomputes every reward and termination with the env's
    goal functions on ``achieved_goal_{s+1}``.
    """
    ep = log.episodes[ep_id]
    end = log.end(ep_id)
    relabelled = goal is not None and not is_desired_goal(goal)
    ret, k, done = 0.0, 0, False
    for i in range(n):
        s = t + i
        if s >= end:
            break
        if relabelled:
            assert info.compute_reward is not None and info.compute_terminated is not None
            ag = ep.achieved_goal[s + 1][None]
            r = float(info.compute_reward(ag, goal[None])[0])
            term = bool(info.compute_terminated(ag, goal[None])[0])
        else:
            r = float(ep.reward[s])
            term = ep.terminated and ep_id in log.finished and s == ep.T - 1
        ret += gamma**i * r
        k += 1
        if term:
            done = True
            break
    return {
        "reward": ret,
        "done": float(done),
        "discount": gamma**k,
        "next_obs": ep.obs[t + k],
        "k": k,
    }


def check_batch(
    buf: ReplayBuffer, batch: Batch, log: FeedLog, info: EnvInfo, n: int = 1, gamma: float = GAMMA
) -> list[dict[str, Any]]:
    """Check every sample of ``batch`` against :func:`reference`; returns one record per sample.

    Also checks that ``Batch.index`` names the storage row the sample's observation came from.
    """
    st = buf.storage
    rows, envs = st.split(batch.index)
    abs_idx = st.to_abs(rows, envs)
    out = []
    for i in range(len(batch.index)):
        env = int(envs[i])
        ep_id, t = decode(batch.obs[i])
        where = f"sample {i}: env {env}, episode {ep_id}, t={t}"
        # the index names this very observation row, and it is a real transition
        assert log.rows[env][abs_idx[i]] == (ep_id, t), where
        assert t < log.end(ep_id), f"{where}: not a transition (terminal or current row)"
        ep = log.episodes[ep_id]
        np.testing.assert_array_equal(batch.obs[i], ep.obs[t], err_msg=where)
        np.testing.assert_array_equal(batch.action[i], ep.action[t], err_msg=where)
        goal = None if batch.goal is None else batch.goal[i]
        ref = reference(log, info, ep_id, t, goal, n, gamma)
        np.testing.assert_allclose(
            batch.reward[i], ref["reward"], rtol=1e-5, atol=1e-5, err_msg=where
        )
        assert batch.terminated[i] == ref["done"], where
        np.testing.assert_allclose(batch.discount[i], ref["discount"], rtol=1e-6, err_msg=where)
        np.testing.assert_array_equal(batch.next_obs[i], ref["next_obs"], err_msg=where)
        rec = {"env": env, "ep": ep_id, "t": t, "k": ref["k"], "row": int(rows[i]), "i": i}
        rec["relabelled"] = goal is not None and not is_desired_goal(goal)
        if goal is not None and rec["relabelled"]:
            g_ep, g_t = decode(goal)
            # a relabelled goal is exactly an achieved goal that was fed
            assert g_ep in log.episodes, where
            np.testing.assert_array_equal(
                goal, log.episodes[g_ep].achieved_goal[g_t], err_msg=where
            )
            rec["g_ep"], rec["g_t"] = g_ep, g_t
        elif goal is not None:
            np.testing.assert_array_equal(goal, ep.desired_goal, err_msg=where)
        out.append(rec)
    return out


def all_transitions(log: FeedLog, ring_rows: int | None = None) -> set[tuple[int, int]]:
    if ring_rows is None:
        return {(ep, t) for ep, taken in log.taken.items() for t in range(taken)}
    out: set[tuple[int, int]] = set()
    for e in range(len(log.rows)):
        out |= log.live_transitions(e, ring_rows)
    return out


# ------------------------------------------------------------------------------------------
# storage: each observation once, next_obs / final_obs


@pytest.mark.parametrize("num_envs", [1, 2])
def test_each_observation_stored_once(num_envs: int) -> None:
    info = goal_env_info()
    scripts = [[make_episode(0, 3), make_episode(1, 2, terminated=True), make_episode(2, 6)]]
    if num_envs == 2:
        scripts.append([make_episode(10, 5, terminated=True), make_episode(11, 9)])
    buf = make_buffer(info, num_envs, capacity=100)
    log = feed(buf, scripts, steps=9)  # env 0: 3 + 2 + 4 steps of episode 2 (running)
    st = buf.storage

    expected_rows = {
        0: 1 + 9 + 2,
        1: 1 + 9 + 1,
    }  # reset row + one per step + one per finished episode
    for e in range(num_envs):
        assert len(log.rows[e]) == expected_rows[e]
        assert st.head[e] + 1 == expected_rows[e], "rows = steps + terminal rows (+ the first)"
        for a, (ep_id, t) in enumerate(log.rows[e]):
            np.testing.assert_array_equal(st.obs[a % st.rows, e], log.episodes[ep_id].obs[t])
            np.testing.assert_array_equal(
                st.achieved_goal[a % st.rows, e], log.episodes[ep_id].achieved_goal[t]
            )
            assert st.ep_t[a % st.rows, e] == t
            is_tr = t < log.end(ep_id)
            assert st.is_transition[a % st.rows, e] == is_tr, (e, ep_id, t)
        # no observation is stored twice
        written = st.obs[: len(log.rows[e]), e, 0]
        assert len(np.unique(written)) == len(written)
    assert st.n_transitions == len(buf) == 9 * num_envs == int(st.is_transition.sum())
    # terminal rows: the final observations of the finished episodes, never a transition
    assert st.is_transition[:, 0].sum() == 9
    np.testing.assert_array_equal(st.obs[3, 0], make_episode(0, 3).obs[3])  # final obs of ep 0
    np.testing.assert_array_equal(st.obs[4, 0], make_episode(1, 2).obs[0])  # reset obs of ep 1
    assert not st.is_transition[3, 0] and st.ep_len[3, 0] == 3 and st.ep_len[0, 0] == 3
    assert st.ep_len[4, 0] == 2 and st.terminated[5, 0] and not st.terminated[4, 0]
    assert (st.ep_len[7:12, 0] == -1).all(), "the running episode has no length yet"


def test_next_obs_is_following_obs_and_final_obs_at_episode_end() -> None:
    info = goal_env_info()
    scripts = [
        [
            make_episode(0, 3),
            make_episode(1, 2, terminated=True),
            make_episode(2, 4),
            make_episode(3, 5),
        ],
        [make_episode(10, 1, terminated=True), make_episode(11, 6), make_episode(12, 9)],
    ]
    buf = make_buffer(info, 2, capacity=200)
    log = feed(buf, scripts, steps=12)
    batch = buf.sample(3000)
    recs = check_batch(buf, batch, log, info, n=1)
    seen = {(r["ep"], r["t"]) for r in recs}
    assert seen == all_transitions(log), "every stored transition can be sampled"
    # the last transition of a finished episode bootstraps from its final observation, not the
    # next episode's reset observation, and single steps are discounted by gamma
    for r in recs:
        ep = log.episodes[r["ep"]]
        if r["ep"] in log.finished and r["t"] == ep.T - 1:
            assert decode(batch.next_obs[r["i"]]) == (r["ep"], ep.T)
    np.testing.assert_allclose(batch.discount, GAMMA, rtol=1e-6)
    assert batch.goal is not None and batch.goal.shape == (3000, 1)
    np.testing.assert_array_equal(batch.weight, 1.0)


def test_real_goal_env_same_step_autoreset_through_runner_helpers() -> None:
    """The PointGoalEnv in a same-step-autoreset vector env, fed like the runner does."""
    from rlfw.envs.obs import final_obs, split_obs

    n_envs, max_steps = 2, 4
    venv = gym.vector.SyncVectorEnv(
        [lambda: PointGoalEnv(dim=1, max_steps=max_steps) for _ in range(n_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    info = goal_env_info(max_steps=max_steps)
    buf = make_buffer(info, n_envs, capacity=64)
    raw, _ = venv.reset(seed=0)
    buf.start(split_obs(raw, True))
    step = np.array([[1.0], [0.5]], np.float32)
    for _ in range(10):
        raw, reward, terminated, truncated, infos = venv.step(step)
        nxt = split_obs(raw, True)
        done = np.logical_or(terminated, truncated)
        buf.add(
            step,
            reward,
            terminated,
            truncated,
            nxt,
            final_obs(infos, nxt, done) if done.any() else None,
        )
    venv.close()
    st = buf.storage
    for e, a in enumerate((1.0, 0.5)):
        # positions 0, a, .., 4a (terminal row), then the next episode from 0; 10 steps, 2 ends
        expected = [0, a, 2 * a, 3 * a, 4 * a] * 2 + [0, a, 2 * a]
        assert st.head[e] + 1 == len(expected) == 10 + 2 + 1
        np.testing.assert_array_equal(st.obs[: len(expected), e, 0], expected)
        # every row but the terminal ones (4a) and the current one is a transition
        is_tr = [p != 4 * a for p in expected[:-1]]
        np.testing.assert_array_equal(st.is_transition[: len(expected), e], [*is_tr, False])
    # the env's own reward is stored: reaching 3.0 pays 0 (env 0 at step 3)
    np.testing.assert_array_equal(st.reward[:4, 0], [-1, -1, 0, -1])


# ------------------------------------------------------------------------------------------
# HER


def her_scripts(dim: int = 1) -> list[list[Any]]:
    return [
        [
            make_episode(0, 6, dim=dim),
            make_episode(1, 4, terminated=True, dim=dim),
            make_episode(2, 8, dim=dim),
        ],
        [make_episode(10, 9, dim=dim), make_episode(11, 5, terminated=True, dim=dim)],
    ]


@pytest.mark.parametrize(("replay_k", "frac"), [(4, 0.8), (1, 0.5), (0, 0.0)])
def test_her_relabel_fraction(replay_k: float, frac: float) -> None:
    info = goal_env_info()
    buf = make_buffer(info, 2, relabel="her", strategy="future", replay_k=replay_k, seed=3)
    feed(buf, her_scripts(), steps=14)
    batch = buf.sample(4000)
    assert batch.goal is not None
    relabelled = np.array([not is_desired_goal(g) for g in batch.goal])
    assert abs(relabelled.mean() - frac) < 0.025, relabelled.mean()


@pytest.mark.parametrize("strategy", ["future", "final", "episode"])
def test_her_goal_strategies(strategy: str) -> None:
    dim = 2
    info = goal_env_info(dim=dim)
    buf = make_buffer(info, 2, relabel="her", strategy=strategy, replay_k=4, seed=1)
    # env 0 ends with episode 2 still running (4 steps taken); env 1 ends episode 11 at the last step
    log = feed(buf, her_scripts(dim), steps=14)
    assert log.taken[2] == 4 and 11 in log.finished
    batch = buf.sample(4000)
    recs = check_batch(buf, batch, log, info, n=1)  # rewards of relabelled samples recomputed
    her = [r for r in recs if r["relabelled"]]
    plain = [r for r in recs if not r["relabelled"]]
    assert len(her) > 2500 and len(plain) > 500
    for r in her:
        assert r["g_ep"] == r["ep"], f"goal from another episode: {r}"
        end = log.end(r["ep"])
        if strategy == "future":
            assert r["t"] < r["g_t"] <= end, f"not a future state: {r}"
        elif strategy == "final":
            assert r["g_t"] == end, f"not the episode's last state: {r}"
        else:
            assert 0 <= r["g_t"] <= end, r
    # the strategy's whole range is used, and both reward values show up
    if strategy == "future":
        assert any(r["g_t"] == r["t"] + 1 for r in her), "the next state is a future state"
        assert any(r["g_t"] == log.end(r["ep"]) and r["t"] < log.end(r["ep"]) - 1 for r in her)
    if strategy == "episode":
        assert any(r["g_t"] < r["t"] for r in her), "episode strategy also draws past states"
        assert any(r["g_t"] == 0 for r in her) and any(r["g_t"] == log.end(r["ep"]) for r in her)
    # relabelled rewards are recomputed: 0 where the next state reaches the new goal, else -1
    assert {float(batch.reward[r["i"]]) for r in her} == {0.0, -1.0}
    # ... and only there: the goal is the achieved goal of step t + 1 exactly
    for r in her:
        assert (float(batch.reward[r["i"]]) == 0.0) == (r["g_t"] == r["t"] + 1), r
    # samples that keep their goal keep the stored reward (never 0 or -1 in these episodes)
    assert all(float(batch.reward[r["i"]]) not in (0.0, -1.0) for r in plain)
    # the running episode is relabelled too, with states stored so far only
    assert any(r["ep"] == 2 for r in her)


def test_relabel_none_never_changes_goals() -> None:
    info = goal_env_info()
    buf = make_buffer(info, 2, relabel="none", n_step=2)
    log = feed(buf, her_scripts(), steps=14)
    batch = buf.sample(2000)
    recs = check_batch(buf, batch, log, info, n=2)
    assert not any(r["relabelled"] for r in recs)
    assert batch.goal is not None
    for r in recs:
        np.testing.assert_array_equal(batch.goal[r["i"]], log.episodes[r["ep"]].desired_goal)


# ------------------------------------------------------------------------------------------
# n-step returns


def nstep_scripts() -> list[list[Any]]:
    return [
        [
            make_episode(0, 5, rewards=[1, 2, 3, 4, 5]),  # truncated
            make_episode(1, 4, terminated=True, rewards=[10, 20, 30, 40]),
            make_episode(2, 2, terminated=True, rewards=[100, 200]),  # shorter than n, terminated
            make_episode(3, 2, rewards=[7, 8]),  # shorter than n, truncated
            make_episode(4, 10),  # running: 3 steps taken
        ]
    ]


# (episode, t) -> (return, done, discount, next observation's (episode, t)), by hand, gamma 0.9
NSTEP_EXPECTED = {
    (0, 0): (1 + 0.9 * 2 + 0.81 * 3, 0.0, 0.729, (0, 3)),
    (0, 2): (3 + 0.9 * 4 + 0.81 * 5, 0.0, 0.729, (0, 5)),
    (0, 3): (4 + 0.9 * 5, 0.0, 0.81, (0, 5)),  # truncated: bootstrap from the final obs
    (0, 4): (5.0, 0.0, 0.9, (0, 5)),
    (1, 0): (10 + 0.9 * 20 + 0.81 * 30, 0.0, 0.729, (1, 3)),
    (1, 1): (20 + 0.9 * 30 + 0.81 * 40, 1.0, 0.729, (1, 4)),  # terminates at the window's end
    (1, 2): (30 + 0.9 * 40, 1.0, 0.81, (1, 4)),  # cut at the termination
    (1, 3): (40.0, 1.0, 0.9, (1, 4)),
    (2, 0): (100 + 0.9 * 200, 1.0, 0.81, (2, 2)),
    (2, 1): (200.0, 1.0, 0.9, (2, 2)),
    (3, 0): (7 + 0.9 * 8, 0.0, 0.81, (3, 2)),
    (3, 1): (8.0, 0.0, 0.9, (3, 2)),
    (4, 0): (-4.125 + 0.9 * -4.25 + 0.81 * -4.375, 0.0, 0.729, (4, 3)),
    (4, 1): (-4.25 + 0.9 * -4.375, 0.0, 0.81, (4, 3)),  # running: only stored steps
}


def test_nstep_hand_computed() -> None:
    info = goal_env_info()
    buf = make_buffer(info, 1, n_step=3, seed=5)
    log = feed(buf, nstep_scripts(), steps=5 + 4 + 2 + 2 + 3)
    batch = buf.sample(2000)
    recs = check_batch(buf, batch, log, info, n=3)
    first: dict[tuple[int, int], int] = {}
    for r in recs:
        first.setdefault((r["ep"], r["t"]), r["i"])
    assert set(first) == all_transitions(log)
    for key, (ret, done, disc, nxt) in NSTEP_EXPECTED.items():
        i = first[key]
        assert batch.reward[i] == pytest.approx(ret, rel=1e-6), key
        assert batch.terminated[i] == done, key
        assert batch.discount[i] == pytest.approx(disc, rel=1e-6), key
        assert decode(batch.next_obs[i]) == nxt, key


@pytest.mark.parametrize("num_envs", [1, 2])
def test_nstep_ring_wraparound(num_envs: int) -> None:
    info = goal_env_info()
    R = 7
    scripts = [
        [make_episode(0, 5), make_episode(1, 4, terminated=True), make_episode(2, 6),
         make_episode(3, 4, terminated=True), make_episode(4, 9)],
        [make_episode(10, 8, terminated=True), make_episode(11, 3), make_episode(12, 12)],
    ][:num_envs]  # fmt: skip
    buf = make_buffer(info, num_envs, capacity=R * num_envs, n_step=3, seed=2)
    # env 0: 27 rows, the last 7 (abs 20..26) hold ep 3 from t=2 (in the ring's last physical
    # row, its window wraps to row 0 and ends with the termination) to ep 4 t=3
    log = feed(buf, scripts, steps=22)
    assert buf.storage.rows == R and buf.storage.head.min() > 2 * R, "rows wrapped at least twice"
    batch = buf.sample(3000)
    recs = check_batch(buf, batch, log, info, n=3)
    assert {(r["ep"], r["t"]) for r in recs} == all_transitions(log, R)
    assert any(r["row"] + r["k"] >= R for r in recs), "some n-step window crosses the ring's end"
    assert any(r["k"] == 3 for r in recs) and batch.terminated.any()


@pytest.mark.parametrize("terminate_on_success", [False, True])
def test_her_nstep_recomputes_all_rewards(terminate_on_success: bool) -> None:
    info = goal_env_info(terminate_on_success=terminate_on_success)
    scripts = [
        [make_episode(0, 7), make_episode(1, 5, terminated=True), make_episode(2, 9)],
        [make_episode(10, 4, terminated=True), make_episode(11, 10), make_episode(12, 6)],
    ]
    buf = make_buffer(info, 2, relabel="her", strategy="future", replay_k=4, n_step=3, seed=4)
    log = feed(buf, scripts, steps=16)
    batch = buf.sample(4000)
    recs = check_batch(buf, batch, log, info, n=3)
    her = [r for r in recs if r["relabelled"]]
    # goal = achieved goal two steps ahead: rewards -1, 0, ... -> the second reward is recomputed
    two_ahead = [r for r in her if r["g_t"] == r["t"] + 2]
    assert two_ahead
    for r in two_ahead:
        if terminate_on_success:  # reaching the relabelled goal terminates: cut after 2 steps
            assert batch.terminated[r["i"]] == 1.0 and r["k"] == 2
            assert batch.reward[r["i"]] == pytest.approx(-1.0)
        else:
            assert batch.terminated[r["i"]] == 0.0
            if r["k"] == 3:
                assert batch.reward[r["i"]] == pytest.approx(-1.0 + 0.0 - 0.81)
    if not terminate_on_success:
        assert all(batch.terminated[r["i"]] == 0.0 for r in her), "HER recomputes terminations"


# ------------------------------------------------------------------------------------------
# parallel envs, ring overwrite


def test_two_envs_finishing_at_different_times() -> None:
    info = goal_env_info()
    scripts = [
        [make_episode(i, 2, terminated=bool(i % 2)) for i in range(6)],  # ends every 2 steps
        [make_episode(10, 7), make_episode(11, 5, terminated=True)],
    ]
    buf = make_buffer(info, 2, capacity=100, relabel="her", strategy="future", n_step=3, seed=6)
    log = feed(buf, scripts, steps=12)
    st = buf.storage
    assert list(st.head) == [12 + 6, 12 + 2]
    assert st.n_transitions == 24 == int(st.is_transition.sum())
    for e in range(2):
        for a, (ep_id, t) in enumerate(log.rows[e]):
            np.testing.assert_array_equal(st.obs[a, e], log.episodes[ep_id].obs[t])
    assert (st.ep_len[:18, 0] == 2).all() and st.ep_len[18, 0] == -1
    np.testing.assert_array_equal(st.ep_len[:15, 1], [7] * 8 + [5] * 6 + [-1])
    batch = buf.sample(4000)
    recs = check_batch(buf, batch, log, info, n=3)
    assert {(r["ep"], r["t"]) for r in recs} == all_transitions(log)
    assert {r["env"] for r in recs} == {0, 1}
    for r in recs:
        assert r["ep"] in {ep.ep_id for ep in scripts[r["env"]]} | {900 + 10 * r["env"]}
        if r["relabelled"]:
            assert r["g_ep"] == r["ep"] and r["t"] < r["g_t"] <= log.end(r["ep"])


@pytest.mark.parametrize("sampler", ["uniform", "prioritized", "energy"])
def test_ring_overwrite(sampler: str) -> None:
    info = goal_env_info()
    N, R = 2, 6
    scripts = [
        [make_episode(i, 3, terminated=i % 3 == 0) for i in range(8)],
        [make_episode(20, 10), make_episode(21, 4, terminated=True), make_episode(22, 7)],
    ]
    buf = make_buffer(info, N, capacity=N * R, relabel="her", strategy="episode", n_step=2,
                      sampler=sampler, seed=7)  # fmt: skip
    counts = []

    def after(b: ReplayBuffer, log: FeedLog) -> None:
        st = b.storage
        live = [log.live_transitions(e, R) for e in range(N)]
        assert st.n_transitions == int(st.is_transition.sum()) == sum(map(len, live))
        for e in range(N):
            stored = set()
            for row in np.flatnonzero(st.is_transition[:, e]):
                stored.add(decode(st.obs[row, e]))
            assert stored == live[e]
        counts.append(st.n_transitions)

    log = feed(buf, scripts, steps=20, after_step=after)
    assert max(counts) <= N * R and all(len(log.rows[e]) > 3 * R for e in range(N)), "rows wrapped"
    batch = buf.sample(3000)
    recs = check_batch(buf, batch, log, info, n=2)
    live = all_transitions(log, R)
    assert {(r["ep"], r["t"]) for r in recs} == live
    for r in recs:
        if r["relabelled"]:  # 'episode' goals only from rows still stored
            assert (r["g_ep"], r["g_t"]) in log.live_rows(r["env"], R), r
            assert r["g_ep"] == r["ep"]
    # an episode partly overwritten still relabels with its oldest stored state
    partly = [r for r in recs if r["relabelled"] and r["ep"] == 22]
    assert min(t for ep, t in log.live_rows(1, R) if ep == 22) == 1, "ep 22 lost its first row"
    assert partly and min(r["g_t"] for r in partly) == min(
        t for ep, t in log.live_rows(1, R) if ep == 22
    )


# ------------------------------------------------------------------------------------------
# errors


def test_her_needs_goal_env() -> None:
    with pytest.raises(ValueError, match="goal"):
        make_buffer(plain_env_info(), relabel="her")


@pytest.mark.parametrize("sampler", ["uniform", "prioritized", "energy"])
def test_sample_empty_buffer_raises(sampler: str) -> None:
    buf = make_buffer(goal_env_info(), 2, sampler=sampler)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4)
    buf.start(make_obs_dict([make_episode(0, 3), make_episode(1, 3)]))
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4)


def make_obs_dict(eps: list[Any]) -> dict[str, np.ndarray]:
    return {
        k: np.stack([ep.obs_dict(0)[k] for ep in eps])
        for k in ("observation", "achieved_goal", "desired_goal")
    }


# ------------------------------------------------------------------------------------------
# prioritized replay through the buffer


def per_buffer(capacity: int = 64, num_envs: int = 1, **cfg: Any) -> ReplayBuffer:
    cfg = {"alpha": 0.6, "beta0": 0.4, "beta_final_step": 100, **cfg}
    return make_buffer(plain_env_info(), num_envs, capacity=capacity, sampler="prioritized", **cfg)


def transition_index(buf: ReplayBuffer) -> dict[tuple[int, int], int]:
    """(episode, t) -> flat index of every stored transition."""
    st = buf.storage
    out = {}
    for flat in np.flatnonzero(st.is_transition.reshape(-1)):
        row, env = st.split(np.array([flat]))
        out[decode(st.obs[row[0], env[0]])] = int(flat)
    return out


def test_per_large_td_error_is_sampled_far_more() -> None:
    buf = per_buffer(seed=8)
    log = feed(buf, [[make_episode(0, 20)]], steps=20)
    idx = transition_index(buf)
    assert len(idx) == 20
    batch = buf.sample(100)
    check_batch(buf, batch, log, plain_env_info())
    buf.update_priorities(np.array(list(idx.values())), np.full(20, 0.01))
    buf.update_priorities(np.array([idx[(0, 7)]]), np.array([-100.0]))
    hits = 0
    for _ in range(20):
        batch = buf.sample(100)
        hits += sum(decode(o) == (0, 7) for o in batch.obs)
    p_big = 100.000001**0.6 / (100.000001**0.6 + 19 * 0.010001**0.6)
    assert p_big > 0.9
    assert hits / 2000 > 0.85, hits  # uniform replay: 1/20


@pytest.mark.parametrize(
    ("env_step", "beta"), [(0, 0.4), (25, 0.55), (50, 0.7), (100, 1.0), (400, 1.0)]
)
def test_per_importance_weights_by_hand(env_step: int, beta: float) -> None:
    alpha, eps = 0.6, 1e-6
    buf = per_buffer(seed=9, priority_eps=eps)
    feed(buf, [[make_episode(0, 8)]], steps=8)
    idx = transition_index(buf)
    td = {t: [0.5, -1.0, 2.0, 3.0, 0.25, 5.0, -6.0, 7.0][t] for t in range(8)}
    buf.update_priorities(
        np.array([idx[(0, t)] for t in range(8)]), np.array([td[t] for t in range(8)])
    )
    p = {t: (abs(td[t]) + eps) ** alpha for t in range(8)}
    total = sum(p.values())
    N = 8
    w = {t: (N * p[t] / total) ** -beta for t in range(8)}
    w_max = max(w.values())
    batch = buf.sample(512, env_step=env_step)
    seen = set()
    for o, weight in zip(batch.obs, batch.weight):
        _, t = decode(o)
        seen.add(t)
        assert weight == pytest.approx(w[t] / w_max, rel=1e-5), (t, beta)
    assert seen == set(range(8))
    assert batch.weight.max() == pytest.approx(1.0)  # the smallest priority (t=4) has weight 1
    # beta itself anneals linearly from beta0 to 1 at beta_final_step
    assert buf.sampler.beta(env_step) == pytest.approx(beta)


def test_per_beta_final_step_defaults_to_run_length() -> None:
    cfg = BufferConfig(sampler="prioritized", beta0=0.5, beta_final_step=None, capacity=16)
    buf = ReplayBuffer(cfg, plain_env_info(), num_envs=1, gamma=GAMMA, total_env_steps=1000)
    assert [buf.sampler.beta(s) for s in (0, 500, 1000, 5000)] == pytest.approx(
        [0.5, 0.75, 1.0, 1.0]
    )


def test_per_new_transitions_enter_at_max_priority() -> None:
    alpha, eps = 0.6, 1e-6
    buf = per_buffer(seed=10, priority_eps=eps)
    tree = buf.sampler.sum_tree  # type: ignore[attr-defined]
    mtree = buf.sampler.min_tree  # type: ignore[attr-defined]

    def after(b: ReplayBuffer, log: FeedLog) -> None:
        idx = transition_index(b)
        if log.steps <= 5:  # before any TD error: priority 1
            assert tree.leaves(np.array(list(idx.values()))) == pytest.approx(1.0)
        if log.steps == 5:
            b.update_priorities(
                np.array([idx[(0, t)] for t in range(5)]), np.array([0.1, 3.0, 0.2, 0.5, 0.1])
            )
        if log.steps == 6:  # lower every priority: the max seen so far still counts
            b.update_priorities(np.array(list(idx.values())), np.full(len(idx), 0.05))

    feed(buf, [[make_episode(0, 9)]], steps=9, after_step=after)
    idx = transition_index(buf)
    new = np.array([idx[(0, t)] for t in (6, 7, 8)])
    np.testing.assert_allclose(tree.leaves(new), (3.0 + eps) ** alpha, rtol=1e-12)
    np.testing.assert_allclose(mtree.leaves(new), (3.0 + eps) ** alpha, rtol=1e-12)
    old = np.array([idx[(0, t)] for t in range(6)])
    np.testing.assert_allclose(tree.leaves(old), (0.05 + eps) ** alpha, rtol=1e-12)
    assert tree.root == pytest.approx(6 * (0.05 + eps) ** alpha + 3 * (3.0 + eps) ** alpha)
    # new transitions are now the likely ones
    batch = buf.sample(1000)
    frac_new = np.mean([decode(o)[1] >= 6 for o in batch.obs])
    p_new = 3 * 3.000001**alpha / (3 * 3.000001**alpha + 6 * 0.050001**alpha)
    assert abs(frac_new - p_new) < 0.03 and p_new > 0.8


def test_per_overwritten_transitions_get_zero_priority() -> None:
    R = 8
    buf = per_buffer(capacity=R, seed=11)
    tree, mtree = buf.sampler.sum_tree, buf.sampler.min_tree  # type: ignore[attr-defined]

    def after(b: ReplayBuffer, log: FeedLog) -> None:
        st = b.storage
        # make everything stored now very likely: it will be overwritten later
        if log.steps in (3, 7):
            idx = np.flatnonzero(st.is_transition.reshape(-1))
            b.update_priorities(idx, np.full(len(idx), 1000.0))
        dead = ~st.is_transition.reshape(-1)
        assert (tree.leaves(np.flatnonzero(dead)) == 0.0).all()
        assert np.isinf(mtree.leaves(np.flatnonzero(dead))).all()
        live = np.flatnonzero(~dead)
        assert tree.root == pytest.approx(tree.leaves(live).sum())
        assert mtree.root == pytest.approx(mtree.leaves(live).min())

    scripts = [[make_episode(i, 6, terminated=i % 2 == 1) for i in range(5)]]
    log = feed(buf, scripts, steps=24, after_step=after)
    batch = buf.sample(2000, env_step=50)
    recs = check_batch(buf, batch, log, plain_env_info())
    live = all_transitions(log, R)
    assert {(r["ep"], r["t"]) for r in recs} <= live
    assert np.isfinite(batch.weight).all() and batch.weight.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_minimal_ring_never_samples_non_transitions(sampler: str) -> None:
    """capacity = 2 x num_envs (the smallest allowed, 2 rows per env): a transition that ends an
    episode is overwritten by the next episode's first observation within the same ``add``; it
    must not be sampled (PER: it must not keep a priority)."""
    N = 2
    buf = make_buffer(plain_env_info(), N, capacity=2 * N, sampler=sampler, seed=12)
    scripts = [[make_episode(i, 1) for i in range(6)], [make_episode(20, 30)]]
    bad_steps = []

    def after(b: ReplayBuffer, log: FeedLog) -> None:
        if sampler == "prioritized":
            dead = np.flatnonzero(~b.storage.is_transition.reshape(-1))
            if (b.sampler.sum_tree.leaves(dead) != 0.0).any():  # type: ignore[attr-defined]
                bad_steps.append(log.steps)

    log = feed(buf, scripts, steps=6, after_step=after)
    st = buf.storage
    assert st.n_transitions == int(st.is_transition.sum()) == 1  # env 1's latest step only
    batch = buf.sample(200)
    valid = st.is_transition.reshape(-1)[batch.index]
    assert not bad_steps, f"non-transitions keep a priority after steps {bad_steps}"
    assert valid.all(), f"{(~valid).sum()} of 200 samples are not stored transitions"
    check_batch(buf, batch, log, plain_env_info())


def test_goal_env_functions_are_vectorised() -> None:
    env = PointGoalEnv(dim=2)
    ag = np.array([[0.0, 0.0], [3.0, 3.0], [3.2, 3.0]], np.float32)
    g = np.full((3, 2), 3.0, np.float32)
    r = env.compute_reward(ag, g, {})
    assert r.dtype == np.float32 and r.shape == (3,)
    np.testing.assert_array_equal(r, [-1.0, 0.0, 0.0])
    np.testing.assert_array_equal(env.compute_terminated(ag, g, {}), [False, False, False])
    info = goal_env_info(dim=2, terminate_on_success=True)
    assert info.compute_terminated is not None
    np.testing.assert_array_equal(info.compute_terminated(ag, g), [False, True, True])
    # distinct states are 1 apart: only equal states succeed. Checked on every pair of states of
    # hand-built episodes with the goal function the buffer gets, not on the EPS constant.
    states = np.concatenate([make_episode(i, 6, dim=2).achieved_goal for i in (0, 1)])
    ag_all = np.repeat(states, len(states), axis=0)
    g_all = np.tile(states, (len(states), 1))
    same = (ag_all == g_all).all(axis=1)
    assert same.sum() == len(states) and (~same).any()
    assert info.compute_reward is not None
    np.testing.assert_array_equal(info.compute_reward(ag_all, g_all), np.where(same, 0.0, -1.0))


def test_restart_closes_the_running_episode():
    """A restored buffer whose last episode was cut off (resume): start() ends that episode at
    its last observation, so n-step returns and HER goals never reach into the next one."""
    from rlfw.buffers import ReplayBuffer
    from rlfw.config.schema import BufferConfig

    from .goal_env import decode, goal_env_info, value

    info = goal_env_info(dim=1)
    buf = ReplayBuffer(BufferConfig(relabel="her", replay_k=4, n_step=3, capacity=100), info, 1, gamma=0.5, seed=0)

    def obs(ep, t):
        v = np.array([[float(value(ep, t))]], np.float32)
        return {"observation": v, "achieved_goal": v, "desired_goal": v + 50}

    no = np.zeros(1, bool)
    buf.start(obs(0, 0))
    for t in range(1, 4):  # episode 0: 3 steps, still running when the run stops
        buf.add(np.zeros((1, 1), np.float32), np.ones(1, np.float32), no, no, obs(0, t))
    buf.start(obs(5, 0))  # the resumed run resets its envs
    for t in range(1, 3):
        buf.add(np.zeros((1, 1), np.float32), np.full(1, 7.0, np.float32), no, no, obs(5, t))
    for _ in range(20):
        b = buf.sample(64)
        for o, nxt, g in zip(b.obs, b.next_obs, b.goal):
            ep, _ = decode(o)
            assert decode(nxt)[0] == ep  # bootstraps within its own episode
            gep = round(float(g[0]) - 50) // 100 if float(g[0]) % 100 == 50 else decode(g)[0]
            assert gep == ep  # relabelled goals come from its own episode
        old = np.array([decode(o)[0] == 0 for o in b.obs])
        assert np.all(b.reward[old] < 3.0)  # never includes episode 5's reward of 7


# ------------------------------------------------------------------------------------------
# the parts: a registered sampler, relabelers and n-step returns on their own


class LatestSampler(Sampler):
    """A test sampler: always each env's latest transition, with weight 0.5; logs its calls."""

    def __init__(self, storage: EpisodeStorage, rng: np.random.Generator, **cfg: Any) -> None:
        super().__init__(storage, rng, **cfg)
        self.cfg = cfg
        self.added = 0
        self.updated: list[np.ndarray] = []

    def on_add(self, new: np.ndarray, lost: np.ndarray) -> None:
        self.added += len(new)

    def sample(self, batch_size: int, env_step: int) -> tuple[np.ndarray, np.ndarray]:
        st = self.storage
        rows = (st.head - 1) % st.rows  # the row before each env's current observation
        flat = (rows * st.num_envs + st.env_ids)[st.is_transition[rows, st.env_ids]]
        if len(flat) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return np.resize(flat, batch_size).astype(np.int64), np.full(batch_size, 0.5, np.float32)

    def update(self, index: np.ndarray, td_error: np.ndarray) -> None:
        self.updated.append(np.asarray(td_error))


@pytest.fixture
def latest_sampler():
    """``buffer.sampler=latest`` registered for one test, then removed again."""
    register("buffer.sampler", "latest", None, LatestSampler)
    try:
        yield LatestSampler
    finally:
        SAMPLERS._entries.pop("latest", None)


def test_registered_sampler_is_used_by_the_buffer(latest_sampler: type[LatestSampler]) -> None:
    info = goal_env_info()
    BufferConfig.validate(OmegaConf.structured(BufferConfig(sampler="latest")))  # a known name
    buf = make_buffer(info, 2, sampler="latest", n_step=2, alpha=0.3, seed=1)
    assert type(buf.sampler) is latest_sampler
    assert buf.sampler.cfg["alpha"] == 0.3, "built from the config keys"
    assert buf.nbytes == buf.storage.nbytes, "a sampler without arrays adds no bytes"
    scripts = [[make_episode(0, 5), make_episode(1, 4)], [make_episode(10, 3, terminated=True)]]
    log = feed(buf, scripts, steps=6)  # env 0: episode 1 at step 1; env 1: a phantom at step 3
    assert buf.sampler.added == 12, "on_add sees every new transition"
    batch = buf.sample(8)
    recs = check_batch(buf, batch, log, info, n=2)
    assert {(r["ep"], r["t"]) for r in recs} == {(1, 0), (910, 2)}
    np.testing.assert_array_equal(batch.weight, 0.5)
    buf.update_priorities(batch.index, np.arange(8.0))
    np.testing.assert_array_equal(buf.sampler.updated[-1], np.arange(8.0))


def test_unregistered_sampler_is_rejected() -> None:
    assert "latest" not in SAMPLERS, "the fixture removed its registration"
    with pytest.raises(ConfigError, match=r"unknown buffer\.sampler 'latest'"):
        make_buffer(goal_env_info(), sampler="latest")


def test_registries_hold_the_part_classes() -> None:
    assert SAMPLERS.get("uniform").target is UniformSampler
    assert issubclass(SAMPLERS.get("prioritized").target, Sampler)
    assert RELABEL.get("none").target is NoRelabel and RELABEL.get("her").target is HerRelabel
    assert STRATEGIES.names() == ["episode", "final", "future"]
    buf = make_buffer(goal_env_info(), relabel="her", strategy="final")
    assert type(buf.relabeler) is HerRelabel
    assert buf.relabeler.pick is STRATEGIES.get("final").target
    assert type(make_buffer(goal_env_info()).relabeler) is NoRelabel


def hand_storage(dim: int = 1) -> tuple[EpisodeStorage, FeedLog]:
    """One env: episode 0 (4 steps, terminated, rewards 1..4), then episode 1 running (3 steps)."""
    st = EpisodeStorage(capacity=20, num_envs=1, obs_dim=dim, act_dim=dim, goal_dim=dim)
    scripts = [[make_episode(0, 4, terminated=True, dim=dim, rewards=[1, 2, 3, 4]),
                make_episode(1, 6, dim=dim, rewards=[5, 6, 7, 8, 9, 10])]]  # fmt: skip
    log = feed(st, scripts, steps=7)
    assert log.rows[0] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3)]
    return st, log


def bounds(st: EpisodeStorage, t: list[int]) -> tuple[np.ndarray, ...]:
    t_abs = np.array(t, np.int64)
    envs = np.zeros(len(t), np.int64)
    return (t_abs, envs, *st.episode_bounds(t_abs, envs))


def test_relabelers_on_a_hand_built_episode() -> None:
    st, _ = hand_storage()
    info = goal_env_info()
    t, envs, start, end = bounds(st, [0, 2, 3, 5, 7])
    np.testing.assert_array_equal(start, [0, 0, 0, 5, 5])
    np.testing.assert_array_equal(end, [4, 4, 4, 8, 8])  # terminal row 4; current row 8
    desired = st.desired_goal[t % st.rows, envs]

    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    goal, mask = NoRelabel(st, rng, info)(t, envs, start, end, desired.copy())
    assert goal is not None and not mask.any() and mask.shape == (5,)
    np.testing.assert_array_equal(goal, desired)
    assert rng.bit_generator.state == before, "no relabelling draws nothing"

    # replay_k = 0: p = 1 - 1/(1 + 0) = 0, nothing relabelled; huge k: everything
    her0 = HerRelabel(st, np.random.default_rng(0), info, strategy="final", replay_k=0)
    assert her0.future_p == 0.0
    assert not her0(t, envs, start, end, desired.copy())[1].any()
    assert HerRelabel(st, rng, info, replay_k=4).future_p == pytest.approx(0.8)
    expected_range = {"final": (end, end), "future": (t + 1, end), "episode": (start, end)}
    for strategy, (lo, hi) in expected_range.items():
        her = HerRelabel(st, np.random.default_rng(1), info, strategy=strategy, replay_k=1e12)
        seen = []
        for _ in range(200):
            goal, mask = her(t, envs, start, end, desired.copy())
            assert goal is not None and mask.all()
            g = np.array([decode(x) for x in goal])  # (episode, step) of each new goal
            np.testing.assert_array_equal(g[:, 0], [0, 0, 0, 1, 1], err_msg=strategy)
            g_abs = g[:, 1] + np.where(g[:, 0] == 1, 5, 0)  # back to absolute rows
            assert ((lo <= g_abs) & (g_abs <= hi)).all(), (strategy, g_abs)
            seen.append(g_abs)
        seen_all = np.stack(seen)
        np.testing.assert_array_equal(seen_all.min(axis=0), lo, err_msg=strategy)
        np.testing.assert_array_equal(seen_all.max(axis=0), hi, err_msg=strategy)

    with pytest.raises(ValueError, match="goal env"):
        HerRelabel(st, rng, plain_env_info())
    with pytest.raises(ConfigError, match=r"unknown buffer\.strategy 'past'"):
        HerRelabel(st, rng, info, strategy="past")
    assert issubclass(HerRelabel, Relabeler) and issubclass(NoRelabel, Relabeler)


def test_nstep_returns_on_a_hand_built_episode() -> None:
    st, _ = hand_storage()
    gamma = 0.5
    t, envs, _, end = bounds(st, [0, 1, 2, 3, 5, 6, 7])
    out = NStepReturns(st, 3, gamma)(t, envs, end)
    # episode 0 terminates at its last step (t=3); episode 1 runs (rows 5..8, 3 steps stored)
    np.testing.assert_allclose(out.reward, [1 + 1 + 0.75, 2 + 1.5 + 1, 3 + 2, 4, 5 + 3 + 1.75,
                                            6 + 3.5, 7])  # fmt: skip
    np.testing.assert_array_equal(out.k, [3, 3, 2, 1, 3, 2, 1])
    np.testing.assert_array_equal(out.terminated, [0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(out.discount, gamma ** out.k)
    np.testing.assert_array_equal(out.next_row, [3, 4, 4, 4, 8, 8, 8])
    assert out.reward.dtype == out.terminated.dtype == out.discount.dtype == np.float32
    # n = 1 is the one-step target
    one = NStepReturns(st, 1, gamma)(t, envs, end)
    np.testing.assert_array_equal(one.reward, [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(one.next_row, t + 1)
    np.testing.assert_array_equal(one.terminated, [0, 0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("terminate_on_success", [False, True])
def test_nstep_returns_recompute_relabelled_rewards(terminate_on_success: bool) -> None:
    st, _ = hand_storage()
    info = goal_env_info(terminate_on_success=terminate_on_success)
    gamma = 0.5
    t, envs, _, end = bounds(st, [0, 1, 5, 2])
    # new goals: the achieved goals of rows 2, 2, 8, 4 (reached after 2, -, 3, 2 steps)
    goal = st.achieved_goal[[2, 2, 8, 4], 0].copy()
    relabelled = np.array([True, False, True, True])
    ret = NStepReturns(st, 3, gamma, info.compute_reward, info.compute_terminated)
    out = ret(t, envs, end, goal, relabelled)
    if terminate_on_success:  # reaching the new goal terminates: cut there
        np.testing.assert_allclose(out.reward, [-1 + 0, 2 + 1.5 + 1, -1 - 0.5 + 0, -1 + 0])
        np.testing.assert_array_equal(out.k, [2, 3, 3, 2])
        np.testing.assert_array_equal(out.terminated, [1, 1, 1, 1])
    else:  # the stored termination of row 3 is recomputed too (sample 3: no longer terminal)
        np.testing.assert_allclose(out.reward, [-1 + 0 - 0.25, 2 + 1.5 + 1, -1 - 0.5 + 0, -1 + 0])
        np.testing.assert_array_equal(out.k, [3, 3, 3, 2])
        np.testing.assert_array_equal(out.terminated, [0, 1, 0, 0])
    # sample 1 keeps its goal: stored rewards 2, 3, 4 and the stored termination at row 3
    np.testing.assert_array_equal(out.next_row, t + out.k)  # no wrap: 20 rows
    with pytest.raises(ValueError, match="compute_reward"):
        NStepReturns(st, 3, gamma)(t, envs, end, goal, relabelled)


# ------------------------------------------------------------------------------------------
# a sampler with its own key: one module and one YAML


RECENT_MODULE = Path(__file__).parent / "recent_sampler.py"
RECENT_CONF = Path(__file__).parent / "recent_conf"  # holds buffer/recent.yaml


@pytest.fixture
def recent_sampler() -> Iterator[ModuleType]:
    """Import tests/recent_sampler.py (it registers ``buffer.sampler=recent`` with the key
    ``buffer.recent_window``, and the preset ``buffer=recent``), then remove both again."""
    spec = importlib.util.spec_from_file_location("rlfw_test_recent_sampler", RECENT_MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        SAMPLERS._entries.pop("recent", None)
        BUFFERS._entries.pop("recent", None)
        ConfigStore.instance().repo["buffer"].pop("recent_schema.yaml", None)
        store_schemas()


def test_a_sampler_with_its_own_key_is_one_module_and_one_yaml(recent_sampler: ModuleType) -> None:
    # the module's preset file, found on an extra config search path
    cfg = compose_config(["buffer=recent", f"hydra.searchpath=[file://{RECENT_CONF}]"])
    assert (cfg.buffer.name, cfg.buffer.sampler, cfg.buffer.recent_window) == ("recent", "recent", 50)
    # the key joins every preset: the built-in her with the new sampler, typed and validated
    base = ["buffer=her", "buffer.sampler=recent", "buffer.capacity=1000"]
    cfg = compose_config([*base, "buffer.recent_window=3"])
    validate(cfg)
    assert isinstance(OmegaConf.to_object(cfg.buffer), BufferConfig)
    with pytest.raises(ConfigError, match=r"invalid value for 'buffer\.recent_window'"):
        compose_config([*base, "buffer.recent_window=many"])
    with pytest.raises(ConfigError, match=r"buffer\.recent_window=0 is out of range"):
        validate(compose_config([*base, "buffer.recent_window=0"]))
    # built from the composed node, and sampled: only the 3 newest transitions
    buf = BUFFERS.get(cfg.buffer.name).target(cfg.buffer, goal_env_info(), num_envs=1, gamma=GAMMA)
    assert type(buf.sampler) is recent_sampler.RecentSampler and buf.sampler.window == 3
    feed(buf, [[make_episode(1, 8)]], steps=6)  # transitions t = 0..5 of episode 1
    batch = buf.sample(64)
    assert {decode(o) for o in batch.obs} == {(1, 3), (1, 4), (1, 5)}


def test_a_removed_sampler_takes_its_key_along(compose: Any) -> None:
    assert "recent" not in SAMPLERS and "recent" not in BUFFERS
    with pytest.raises(ConfigError, match=r"unknown key 'buffer\.recent_window'"):
        compose(["buffer.recent_window=3"])


def test_two_parts_declaring_one_key_are_refused() -> None:
    """The buffer's keys are one namespace: a sampler declaring PER's ``alpha`` again (same type)
    would silently share it, so the schema refuses it and names both; a sampler that subclasses
    PER's schema inherits ``alpha`` and is accepted."""
    import dataclasses

    from rlfw.buffers.config import buffer_schema
    from rlfw.buffers.samplers import PrioritizedSamplerConfig, SamplerConfig

    @dataclasses.dataclass
    class ClashConfig(SamplerConfig):
        alpha: float = 0.5

    @dataclasses.dataclass
    class ExtendsPerConfig(PrioritizedSamplerConfig):
        per_extra: int = 1

    try:
        SAMPLERS._entries.pop("clash", None)
        register("buffer.sampler", "clash", ClashConfig, object)
        with pytest.raises(ValueError, match=r"ClashConfig declares buffer\.alpha, which PrioritizedSamplerConfig declares too"):
            buffer_schema(BufferConfig)
        SAMPLERS._entries.pop("clash")
        register("buffer.sampler", "extends_per", ExtendsPerConfig, object)
        assert "per_extra" in {f.name for f in dataclasses.fields(buffer_schema(BufferConfig))}
    finally:
        SAMPLERS._entries.pop("clash", None)
        SAMPLERS._entries.pop("extends_per", None)
    assert buffer_schema(BufferConfig) is BufferConfig


# ------------------------------------------------------------------------------------------
# energy-based prioritisation (Zhao and Tresp 2018)


def _goal_obs(ag: np.ndarray) -> dict[str, np.ndarray]:
    """Observations of 2 envs whose achieved goals are ``ag [2, 3]``."""
    return {"observation": ag.astype(np.float32), "achieved_goal": ag.astype(np.float32),
            "desired_goal": np.ones((2, 3), np.float32)}  # fmt: skip


def _energy_episode(buf: ReplayBuffer, paths: np.ndarray) -> None:
    """One episode per env, ``paths [2, T + 1, 3]`` the achieved goals, truncated after T steps."""
    T = paths.shape[1] - 1
    buf.start(_goal_obs(paths[:, 0]))
    for t in range(T):
        last = t == T - 1
        nxt = _goal_obs(paths[:, t + 1])
        buf.add(np.zeros((2, 3), np.float32), np.full(2, -1.0, np.float32), np.zeros(2, bool),
                np.full(2, last), _goal_obs(np.zeros((2, 3))) if last else nxt, nxt if last else None)  # fmt: skip


def _hand_energy(path: np.ndarray, dt: float, clip: float) -> float:
    """EBP's trajectory energy of one path of achieved goals (unit mass), written out."""
    total, prev_e = 0.0, None
    for t in range(len(path)):
        v = np.zeros(3) if t == 0 else (path[t] - path[t - 1]) / dt
        e = 9.81 * path[t][2] + 0.5 * float(v @ v)
        if prev_e is not None:
            total += min(max(e - prev_e, 0.0), clip)
        prev_e = e
    return total


def test_energy_sampler_replays_episodes_by_their_trajectory_energy() -> None:
    """Env 0's object never moves, env 1's is pushed and lifted: after the episodes end each
    transition's priority is (trajectory energy + energy_eps) / T, and a batch draws env 1's
    episode that much more often."""
    dt, clip, eps, T = 0.04, 0.5, 0.01, 4
    still = np.zeros((T + 1, 3))
    moved = np.array([[0, 0, 0], [0.02, 0, 0], [0.05, 0, 0.01], [0.06, 0, 0.01], [0.06, 0, 0.01]])
    buf = make_buffer(goal_env_info(dim=3), 2, relabel="her", sampler="energy", energy_clip=clip,
                      energy_dt=dt, energy_eps=eps, seed=3)  # fmt: skip
    _energy_episode(buf, np.stack([still, moved]))
    e_moved = _hand_energy(moved, dt, clip)
    assert e_moved > 0.3 and _hand_energy(still, dt, clip) == 0.0
    st, tree = buf.storage, buf.sampler.sum_tree  # type: ignore[attr-defined]
    flat = np.flatnonzero(st.is_transition.reshape(-1))
    env = flat % 2
    np.testing.assert_allclose(tree.leaves(flat[env == 0]), eps / T, rtol=1e-9)
    np.testing.assert_allclose(tree.leaves(flat[env == 1]), (e_moved + eps) / T, rtol=1e-6)
    idx, weight = buf.sampler.sample(4000, 0)
    assert (weight == 1.0).all()
    share_moved = float(np.mean(idx % 2 == 1))
    assert share_moved == pytest.approx((e_moved + eps) / (e_moved + 2 * eps), abs=0.02)
    # a new episode's transitions enter at the mean priority of the stored ones
    mean = tree.root / st.n_transitions
    buf.start(_goal_obs(np.zeros((2, 3))))
    buf.add(np.zeros((2, 3), np.float32), np.full(2, -1.0, np.float32), np.zeros(2, bool),
            np.zeros(2, bool), _goal_obs(np.zeros((2, 3))))  # fmt: skip
    newest = np.flatnonzero(st.is_transition.reshape(-1) & (st.ep_len.reshape(-1) < 0))
    assert len(newest) == 2
    np.testing.assert_allclose(tree.leaves(newest), mean, rtol=1e-9)


def test_energy_sampler_clips_each_transitions_energy_gain() -> None:
    """A jump of 1 m in one step (v = 25 m/s) adds energy_clip, not 312.5."""
    path = np.array([[0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    buf = make_buffer(goal_env_info(dim=3), 2, sampler="energy", energy_clip=0.3, energy_eps=0.01, seed=1)
    _energy_episode(buf, np.stack([path, path]))
    flat = np.flatnonzero(buf.storage.is_transition.reshape(-1))
    np.testing.assert_allclose(buf.sampler.sum_tree.leaves(flat), (0.3 + 0.01) / 2, rtol=1e-9)  # type: ignore[attr-defined]


def test_a_saved_buffer_holds_the_rows_written_not_its_capacity() -> None:
    """A buffer of capacity 2e6 holding a few episodes saves those rows only (issue 33: 188 MB
    for 400 transitions) and loads back to the same storage; a wrapped ring saves every row."""
    import io

    import torch

    from rlfw.training.checkpoint import to_numpy, to_safe

    info = goal_env_info()
    scripts = [[make_episode(0, 3), make_episode(1, 2, terminated=True), make_episode(2, 6)]]
    big = make_buffer(info, 1, capacity=2_000_000)
    feed(big, scripts, steps=9)
    raw = io.BytesIO()
    torch.save(to_safe(big.state_dict()), raw)
    assert raw.tell() < 200_000  # the full arrays would be about 100 MB
    back = make_buffer(info, 1, capacity=2_000_000)
    back.load_state_dict(to_numpy(torch.load(io.BytesIO(raw.getvalue()), weights_only=True)))
    for name in ("obs", "achieved_goal", "desired_goal", "action", "reward", "terminated", "is_transition", "ep_t",
                 "ep_len", "head"):  # fmt: skip
        np.testing.assert_array_equal(getattr(back.storage, name), getattr(big.storage, name), err_msg=name)
    assert len(back) == len(big) == 9
    small = make_buffer(info, 1, capacity=8)  # wraps: every row is saved
    feed(small, scripts, steps=9)
    assert small.storage.state_dict()["obs"].shape[0] == small.storage.rows
