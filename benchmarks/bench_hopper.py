"""Sections ``hopper``, ``hopper_compose`` and ``hopper_soft``: Hopper-v4 against SB3's TD3 and the
seed project's compositions (see run.py's docstring)."""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import (
    report,
)

from rlfw.config.preflight import compose_config
from rlfw.training.loop import TrainLoop

HOPPER_EVERY = 10_000
HOPPER_RANDOM = 10_000


def _saturation(act, episodes: int = 5, seed: int = 0) -> float:
    """Fraction of action entries with ``|a| > 0.99`` over ``episodes`` Hopper-v4 episodes of
    the deterministic policy ``act(obs [obs_dim]) -> action [act_dim]``."""
    import gymnasium as gym

    env = gym.make("Hopper-v4")
    sat: list[np.ndarray] = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            a = np.asarray(act(obs), np.float32)
            sat.append(np.abs(a) > 0.99)
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
    env.close()
    return float(np.mean(sat))


def rlfw_hopper(
    seed: int, total: int, extra: list[str] | None = None
) -> tuple[dict[int, float], float, float]:
    """rlfw's Hopper-v4 preset with TD3 (the family's default algorithm was TD3 when these
    comparisons were set up; CrossQ since issue 30), or the ``algo=`` that ``extra`` names.
    Returns ({env steps: eval return}, env steps/s after the random phase, saturated fraction
    of the final policy)."""
    epochs = total // HOPPER_EVERY
    extra = list(extra or [])
    algo = [] if any(o.startswith("algo=") for o in extra) else ["algo=td3"]
    cfg = compose_config(["env=Hopper-v4", *algo, f"seed={seed}", f"train.epochs={epochs}",
                          f"train.cycles_per_epoch={HOPPER_EVERY}", "logger.plots=false", *extra])  # fmt: skip
    run_dir = Path(tempfile.mkdtemp(prefix="rlfw-bench-"))
    runner = TrainLoop(cfg, run_dir)
    runner.run()
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    curve = {int(r["env_steps"]): float(r["eval_return"]) for r in rows}
    first = next(r for r in rows if int(r["env_steps"]) >= HOPPER_RANDOM)
    rate = (int(rows[-1]["env_steps"]) - int(first["env_steps"])) / (
        float(rows[-1]["wall_time_s"]) - float(first["wall_time_s"])
    )
    sat = _saturation(lambda o: runner.agent.act(o[None].astype(np.float32))[0], seed=seed)
    return curve, rate, sat


def sb3_hopper(seed: int, total: int) -> tuple[dict[int, float], float, float]:
    """SB3 TD3 on Hopper-v4 at rlfw's preset settings; returns what :func:`rlfw_hopper` does."""
    import gymnasium as gym
    from stable_baselines3 import TD3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.noise import NormalActionNoise

    env = gym.make("Hopper-v4")
    model = TD3(
        "MlpPolicy", env, learning_rate=1e-3, buffer_size=1_000_000, learning_starts=HOPPER_RANDOM,
        batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1,
        action_noise=NormalActionNoise(np.zeros(3), 0.1 * np.ones(3)), policy_delay=2,
        target_policy_noise=0.2, target_noise_clip=0.5, policy_kwargs={"net_arch": [256, 256, 256]},
        seed=seed, device="cpu", verbose=0,
    )  # fmt: skip
    eval_env = gym.make("Hopper-v4")
    eval_env.reset(seed=seed + 1_000_003)
    curve: dict[int, float] = {}
    marks: dict[int, float] = {}

    class Eval(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == HOPPER_RANDOM:
                marks[HOPPER_RANDOM] = time.perf_counter()
            if self.num_timesteps % HOPPER_EVERY:
                return True
            rets = []
            for _ in range(10):
                obs, _ = eval_env.reset()
                done, ret = False, 0.0
                while not done:
                    action, _ = self.model.predict(obs, deterministic=True)
                    obs, r, term, trunc, _ = eval_env.step(action)
                    ret += float(r)
                    done = term or trunc
                rets.append(ret)
            curve[self.num_timesteps] = float(np.mean(rets))
            marks[self.num_timesteps] = time.perf_counter()
            return True

    model.learn(total_timesteps=total, callback=Eval())
    rate = (total - HOPPER_RANDOM) / (marks[total] - marks[HOPPER_RANDOM])
    sat = _saturation(lambda o: model.predict(o, deterministic=True)[0], seed=seed)
    return curve, rate, sat


def _curve_text(curve: dict[int, float]) -> str:
    return ", ".join(f"{k // 1000}k {v:.0f}" for k, v in sorted(curve.items()))


def bench_hopper(seeds: int, quick: bool) -> None:
    """rlfw's Hopper-v4 preset against SB3 TD3 at equal settings, one after the other."""
    total = 20_000 if quick else 50_000
    for seed in range(seeds):
        for name, fn in (("rlfw", rlfw_hopper), ("SB3 ", sb3_hopper)):
            curve, rate, sat = fn(seed, total)
            report(
                f"hopper {name} seed {seed}: eval return at 10k..{total // 1000}k env steps",
                _curve_text(curve),
            )
            report(f"hopper {name} seed {seed}: env steps/s after the random phase / saturated actions",
                   f"{rate:.1f} / {sat:.2f}")  # fmt: skip


HOPPER_COMPOSITIONS = {
    "per n_step=3": ["buffer=per", "buffer.n_step=3"],
    "noisynet factorised": ["noise=noisynet"],
    "noisynet independent": ["noise=noisynet", "noise.factorised=false"],
    "gaussian 0.2 -> 0.05 over 50k": [
        "noise.sigma=0.2",
        "noise.sigma_final=0.05",
        "noise.decay_steps=50000",
    ],
}


def bench_hopper_compose(quick: bool) -> None:
    """The Hopper seed project's compositions on the preset, seed 0: eval return per 10k steps."""
    total = 20_000 if quick else 50_000
    for name, extra in HOPPER_COMPOSITIONS.items():
        curve, _, sat = rlfw_hopper(0, total, extra)
        report(f"hopper_compose {name}: eval return at 10k..{total // 1000}k / saturated",
               f"{_curve_text(curve)} / {sat:.2f}")  # fmt: skip


def bench_hopper_soft(quick: bool, total: int = 30_000) -> None:
    """The Hopper-v4 preset with sac, tqc and crossq, seed 0: eval return every 10k steps."""
    total = 20_000 if quick else total
    for algo in ("sac", "tqc", "crossq"):
        curve, rate, sat = rlfw_hopper(0, total, [f"algo={algo}"])
        report(f"hopper_soft {algo}: eval return at 10k..{total // 1000}k / env steps/s / saturated",
               f"{_curve_text(curve)} / {rate:.1f} / {sat:.2f}")  # fmt: skip
