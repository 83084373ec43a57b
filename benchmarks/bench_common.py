"""What the benchmark sections share: the results table, rlfw and SB3 runs of a Fetch task."""

from __future__ import annotations

import csv
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlfw.config.preflight import compose_config
from rlfw.training.loop import TrainLoop

THRESHOLD = 0.9
# SB3's side of the Fetch comparisons: 3x256 networks, one-step returns, Gaussian sigma 0.1
# and 40 updates per 100 env steps (rlfw's Fetch preset since issue 13 uses 2x256, n-step 3,
# sigma 0.2 and 20 updates; pinned back here so the settings stay equal)
EQUAL_FETCH = ["algo.actor_hidden=[256,256,256]", "algo.critic_hidden=[256,256,256]", "env.noise_sigma=0.1",
               "buffer.n_step=1", "train.updates_per_cycle=40"]  # fmt: skip
RESULTS: list[tuple[str, str]] = []


def report(name: str, value: str) -> None:
    RESULTS.append((name, value))
    print(f"{name:<70} {value}", flush=True)


def first_success(run_dir: Path) -> tuple[float, float]:
    """(env steps, wall seconds) at the first epoch whose eval success >= THRESHOLD, or NaN."""
    with (run_dir / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row["eval_success_rate"] and float(row["eval_success_rate"]) >= THRESHOLD:
                return float(row["env_steps"]), float(row["wall_time_s"])
    return math.nan, math.nan


def rlfw_run(overrides: list[str]) -> Path:
    cfg = compose_config(overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="rlfw-bench-"))
    TrainLoop(cfg, run_dir).run()
    return run_dir


def median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


# --------------------------------------------------------------------------------------------
# SB3 side


def sb3_success_rate(model: Any, eval_env: Any, episodes: int = 10) -> float:
    """Mean ``is_success`` of ``episodes`` deterministic episodes of an SB3 ``model``."""
    succ = []
    for _ in range(episodes):
        obs, _ = eval_env.reset()
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, term, trunc, info = eval_env.step(action)
            done = term or trunc
        succ.append(float(info.get("is_success", 0.0)))
    return float(np.mean(succ))


def sb3_fetch(env_id: str, n_envs: int, seed: int, total: int, train_every: int, grad_steps: int,
              eval_every: int | None, learning_starts: int, algo: str = "td3") -> tuple[float, float, float]:  # fmt: skip
    """SB3 TD3 (or SB3 SAC, sb3-contrib TQC) + HER. Returns (steps to success, seconds to
    success, env steps per second)."""
    import gymnasium as gym
    import gymnasium_robotics
    from stable_baselines3 import SAC, TD3, HerReplayBuffer
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise

    gym.register_envs(gymnasium_robotics)
    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    common: dict = dict(
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"},
        learning_rate=1e-3,
        buffer_size=1_000_000,
        learning_starts=learning_starts,
        batch_size=256,
        tau=0.005,
        gamma=0.98,
        train_freq=(train_every, "step"),
        gradient_steps=grad_steps,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    if algo == "td3":
        model = TD3(
            "MultiInputPolicy",
            venv,
            action_noise=NormalActionNoise(np.zeros(4), 0.1 * np.ones(4)),
            policy_delay=2,
            target_policy_noise=0.2,
            target_noise_clip=0.5,
            policy_kwargs={"net_arch": [256, 256, 256]},
            **common,
        )
    elif algo == "sac":
        model = SAC("MultiInputPolicy", venv, policy_kwargs={"net_arch": [256, 256, 256]}, **common)
    else:
        from sb3_contrib import TQC

        model = TQC("MultiInputPolicy", venv, top_quantiles_to_drop_per_net=2,
                    policy_kwargs={"net_arch": [256, 256, 256], "n_critics": 2, "n_quantiles": 25}, **common)  # fmt: skip
    eval_env = gym.make(env_id)
    eval_env.reset(seed=seed + 1_000_003)

    class Eval(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.perf_counter()
            self.hit: tuple[float, float] = (math.nan, math.nan)
            self.next = eval_every or 0

        def _on_step(self) -> bool:
            if not eval_every or self.num_timesteps < self.next:
                return True
            self.next += eval_every
            if sb3_success_rate(self.model, eval_env) >= THRESHOLD:
                self.hit = (float(self.num_timesteps), time.perf_counter() - self.t0)
                return False
            return True

    cb = Eval()
    t0 = time.perf_counter()
    model.learn(total_timesteps=total, callback=cb)
    dt = time.perf_counter() - t0
    return cb.hit[0], cb.hit[1], model.num_timesteps / dt


# --------------------------------------------------------------------------------------------
# sections
