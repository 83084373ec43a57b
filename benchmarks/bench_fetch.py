"""Sections ``reach``, ``push``, ``soft_speed`` and ``panda``: rlfw against SB3 on Fetch and Panda
tasks (see run.py's docstring)."""

from __future__ import annotations

import csv

from bench_common import (
    EQUAL_FETCH,
    THRESHOLD,
    first_success,
    median,
    report,
    rlfw_run,
    sb3_fetch,
)


def bench_reach(seeds: int, quick: bool) -> None:
    epochs = 5 if quick else 10
    ours_steps, ours_secs, sb3_steps, sb3_secs = [], [], [], []
    for seed in range(seeds):
        d = rlfw_run([*EQUAL_FETCH, f"seed={seed}", f"train.epochs={epochs}"])
        s, t = first_success(d)
        ours_steps.append(s)
        ours_secs.append(t)
        report(
            f"reach rlfw seed {seed}: env steps / seconds to eval success {THRESHOLD}",
            f"{s:.0f} / {t:.1f}",
        )
    for seed in range(seeds):
        s, t, _ = sb3_fetch("FetchReach-v4", 2, seed, epochs * 1000, 50, 40, 1000, 100)
        sb3_steps.append(s)
        sb3_secs.append(t)
        report(
            f"reach SB3  seed {seed}: env steps / seconds to eval success {THRESHOLD}",
            f"{s:.0f} / {t:.1f}",
        )
    # the same without the HER paper's extras that SB3 lacks (normalisation, action L2, return
    # clipping, random actions): separates the algorithmic part of the ratio from the framework
    plain = [
        "algo.normalize=false",
        "algo.action_l2=0",
        "algo.clip_return=false",
        "noise.random_eps=0",
    ]
    plain_steps, plain_secs = [], []
    for seed in range(seeds):
        s, t = first_success(rlfw_run([f"seed={seed}", f"train.epochs={epochs}", *plain]))
        plain_steps.append(s)
        plain_secs.append(t)
        report(
            f"reach rlfw without HER-paper extras seed {seed}: env steps / seconds to {THRESHOLD}",
            f"{s:.0f} / {t:.1f}",
        )
    ms, mt, ss, st = median(ours_steps), median(ours_secs), median(sb3_steps), median(sb3_secs)
    report("reach rlfw without HER-paper extras: median env steps / seconds",
           f"{median(plain_steps):.0f} / {median(plain_secs):.1f}")  # fmt: skip
    report(
        "reach median env steps to 0.9: rlfw / SB3 / ratio SB3:rlfw",
        f"{ms:.0f} / {ss:.0f} / {ss / ms:.2f}",
    )
    report(
        "reach median seconds to 0.9:   rlfw / SB3 / ratio SB3:rlfw",
        f"{mt:.1f} / {st:.1f} / {st / mt:.2f}",
    )


def bench_push(quick: bool) -> None:
    steps = 500 if quick else 2000
    d = rlfw_run([
        "env=FetchPush-v4", *EQUAL_FETCH, "train.epochs=1", f"train.cycles_per_epoch={steps // 50}",
        "train.steps_per_cycle=50", "train.updates_per_cycle=50", "train.num_envs=1",
        "train.learning_starts=0", "train.batch_size=256", "eval.episodes=0",
    ])  # fmt: skip
    with (d / "metrics.csv").open() as f:
        ours = float(next(csv.DictReader(f))["steps_per_s"])
    _, _, theirs = sb3_fetch("FetchPush-v4", 1, 0, steps + 256, 1, 1, None, 256)
    report(
        "push env steps/s at 1 update/step: rlfw / SB3 / ratio rlfw:SB3",
        f"{ours:.1f} / {theirs:.1f} / {ours / theirs:.2f}",
    )


def bench_soft_speed(quick: bool) -> None:
    """Env steps/s of rlfw's SAC and TQC against SB3's SAC and sb3-contrib's TQC at equal
    settings: FetchPush-v4, 1 env, HER future k=4, batch 256, 3x256, one update per env step."""
    steps = 500 if quick else 2000
    equal = ["algo.actor_hidden=[256,256,256]", "algo.critic_hidden=[256,256,256]", "algo.actor_lr=1e-3",
             "algo.critic_lr=1e-3", "algo.alpha_lr=1e-3"]  # fmt: skip
    for algo in ("sac", "tqc"):
        d = rlfw_run([
            "env=FetchPush-v4", f"algo={algo}", *equal, "buffer.n_step=1", "train.epochs=1", f"train.cycles_per_epoch={steps // 50}",
            "train.steps_per_cycle=50", "train.updates_per_cycle=50", "train.num_envs=1",
            "train.learning_starts=0", "train.batch_size=256", "eval.episodes=0",
        ])  # fmt: skip
        with (d / "metrics.csv").open() as f:
            ours = float(next(csv.DictReader(f))["steps_per_s"])
        _, _, theirs = sb3_fetch("FetchPush-v4", 1, 0, steps + 256, 1, 1, None, 256, algo=algo)
        peer = "SB3 SAC" if algo == "sac" else "sb3-contrib TQC"
        report(f"soft_speed {algo} push env steps/s at 1 update/step: rlfw / {peer} / ratio",
               f"{ours:.1f} / {theirs:.1f} / {ours / theirs:.2f}")  # fmt: skip


def bench_panda(seeds: int, quick: bool) -> None:
    epochs = 4 if quick else 10
    table = []
    for noise in ("gaussian", "ou", "noisynet"):
        steps = []
        for seed in range(seeds):
            d = rlfw_run(["env=PandaReach-v3", f"noise={noise}", f"seed={seed}", f"train.epochs={epochs}",
                          "train.cycles_per_epoch=10"])  # fmt: skip
            steps.append(first_success(d)[0])
        table.append((noise, median(steps), steps))
        report(f"panda PandaReach-v3 noise={noise}: median env steps to 0.9 (per seed)",
               f"{median(steps):.0f} ({', '.join(f'{s:.0f}' for s in steps)})")  # fmt: skip
