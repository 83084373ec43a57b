"""Section ``replay``: PER and HER sampling speed, bytes per stored transition (see run.py's
docstring)."""

from __future__ import annotations

import statistics
import time

import numpy as np
from bench_common import (
    RESULTS,
    report,
)


def bench_replay(quick: bool) -> None:
    import gymnasium as gym
    import gymnasium_robotics

    from rlfw.buffers import ReplayBuffer
    from rlfw.config.schema import BufferConfig
    from rlfw.envs import FAMILIES, read_env_info

    gym.register_envs(gymnasium_robotics)
    env = FAMILIES.get("fetch").target.make("FetchPush-v4")
    info = read_env_info("fetch", env, "FetchPush-v4")
    n = 200_000 if quick else 1_000_000
    cfg = BufferConfig(capacity=n, relabel="her", sampler="prioritized")
    buf = ReplayBuffer(cfg, info, num_envs=2, gamma=0.98, total_env_steps=n, seed=0)
    r = np.random.default_rng(0)
    T = 50

    def obs_batch() -> dict[str, np.ndarray]:
        return {"observation": r.standard_normal((2, 25), dtype=np.float32),
                "achieved_goal": r.standard_normal((2, 3), dtype=np.float32),
                "desired_goal": r.standard_normal((2, 3), dtype=np.float32)}  # fmt: skip

    buf.start(obs_batch())
    # enough vector steps to wrap the ring: the buffer is full (each 50-step episode also
    # keeps its final observation in a row of its own, so it holds n * 50/51 transitions)
    for t in range(1, n // 2 + 2 * T):
        trunc = np.full(2, t % T == 0)
        nxt = obs_batch()
        buf.add(r.uniform(-1, 1, (2, 4)).astype(np.float32), -np.ones(2, np.float32), np.zeros(2, bool), trunc,
                nxt, nxt if trunc.any() else None)  # fmt: skip
    nbytes_data = 4 * (25 + 3 + 3 + 4 + 1)  # obs, achieved goal, desired goal, action, reward
    report("replay FetchPush transitions stored", f"{len(buf)}")
    per_t = buf.storage.nbytes / len(buf)
    report("replay bytes per transition (storage) / raw float32 data / ratio",
           f"{per_t:.1f} / {nbytes_data} / {per_t / nbytes_data:.2f}")  # fmt: skip
    report("replay bytes per transition incl. PER trees", f"{buf.nbytes / len(buf):.1f}")
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        idx, _w = buf.sampler.sample(256, n // 2)
        buf.update_priorities(idx, r.random(256))
        times.append(time.perf_counter() - t0)
    report("replay PER sample + priority update, batch 256, full buffer (median us)",
           f"{1e6 * statistics.median(times):.0f}")  # fmt: skip
    # HER sampling throughput: rlfw vs SB3 HerReplayBuffer at equal settings
    uni = ReplayBuffer(BufferConfig(capacity=n, relabel="her", replay_k=4), info, 1, 0.98, seed=0)
    from stable_baselines3 import HerReplayBuffer

    sb3 = HerReplayBuffer(n, env.observation_space, env.action_space, env=_DummyVec(env), n_envs=1,
                          n_sampled_goal=4, goal_selection_strategy="future", device="cpu")  # fmt: skip
    uni.start({k: v[:1] for k, v in obs_batch().items()})
    eps = (n // 2) // T
    for _ep in range(eps):
        for s in range(T):
            o = obs_batch()
            nxt = {k: v[:1] for k, v in o.items()}
            a = r.uniform(-1, 1, (1, 4)).astype(np.float32)
            trunc = np.array([s == T - 1])
            uni.add(
                a, -np.ones(1, np.float32), np.zeros(1, bool), trunc, nxt, nxt if trunc[0] else None
            )
            sb3.add(nxt, nxt, a, np.array([-1.0]), trunc, [{"TimeLimit.truncated": bool(trunc[0])}])
    for name, fn in (("rlfw", lambda: uni.sample(256)), ("SB3", lambda: sb3.sample(256))):
        fn()
        t0 = time.perf_counter()
        k = 200
        for _ in range(k):
            fn()
        rate = k * 256 / (time.perf_counter() - t0)
        report(f"replay HER sampling throughput {name} (transitions/s)", f"{rate:.0f}")
        RESULTS.append((f"_her_{name}", str(rate)))
    rates = {k: float(v) for k, v in RESULTS if k.startswith("_her_")}
    report("replay HER sampling ratio rlfw:SB3", f"{rates['_her_rlfw'] / rates['_her_SB3']:.2f}")


class _DummyVec:
    """The part of a VecEnv SB3's HerReplayBuffer uses (compute_reward through env_method)."""

    def __init__(self, env) -> None:
        self.env = env

    def env_method(self, name, *args, indices=None, **kwargs):
        return [getattr(self.env.unwrapped, name)(*args, **kwargs)]
