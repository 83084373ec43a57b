"""Sections ``learning``, ``push_search``, ``learning_tasks`` and ``peer_push``: learning curves of
the presets and of the peer (see run.py's docstring)."""

from __future__ import annotations

import csv
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import (
    first_success,
    report,
    rlfw_run,
    sb3_success_rate,
)

LEARNING_ALGOS = ("td3", "sac", "tqc", "crossq")


def bench_learning(seeds: int, quick: bool, budget: int) -> None:
    """FetchPush-v4 with each algorithm's Fetch preset (``env=FetchPush-v4 algo=<a>``) for the
    same env-step budget: eval success (10 episodes) after every 5000-step epoch, with the
    wall seconds, per seed; the curves go to ``benchmarks/results/learning_push.csv``."""
    budget = 10_000 if quick else budget
    epochs = max(1, budget // 5000)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    rows: list[dict[str, object]] = []
    for algo in LEARNING_ALGOS:
        for seed in range(seeds):
            d = rlfw_run(
                ["env=FetchPush-v4", f"algo={algo}", f"seed={seed}", f"train.epochs={epochs}"]
            )
            with (d / "metrics.csv").open() as f:
                metrics = list(csv.DictReader(f))
            for m in metrics:
                rows.append({"algo": algo, "seed": seed, "env_steps": m["env_steps"], "wall_time_s": m["wall_time_s"],
                             "eval_success_rate": m["eval_success_rate"], "train_success_rate": m["train_success_rate"]})  # fmt: skip
            curve = " ".join(f"{float(m['eval_success_rate']):.1f}" for m in metrics)
            last = metrics[-1]
            report(f"learning push {algo} seed {seed}: eval success per 5k steps",
                   f"{curve} (at {last['env_steps']} steps, {float(last['wall_time_s']):.0f} s)")  # fmt: skip
    with (out / "learning_push.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# FetchPush preset search (issue 13): each try is the Fetch preset plus these overrides (the
# preset of the commit that ran it: td3_nstep3 and sac_nstep3 ran on the old 3x256 / n_step 1 /
# sigma 0.1 / 40-update preset, td3_nstep3_2x256_s02 made it the preset, preset_utd02 halved
# the updates, which the preset has since; "preset" is whatever conf/env/fetch.yaml says), trained
# for a wall-clock budget (SIGTERM at the end: the run stops after its cycle, status
# interrupted, its finished epochs in metrics.csv). Epochs of 2000 env steps, 10 eval episodes.
SMALL_NETS = ["algo.actor_hidden=[256,256]", "algo.critic_hidden=[256,256]"]
PUSH_TRIES: dict[str, list[str]] = {
    "preset": [],
    "td3_nstep3": ["buffer.n_step=3"],
    "sac_nstep3": ["algo=sac", "buffer.n_step=3", "algo.actor_lr=1e-3", "algo.critic_lr=1e-3",
                   "algo.alpha_lr=1e-3"],
    "tqc_nstep3": ["algo=tqc", "buffer.n_step=3", "algo.actor_lr=1e-3", "algo.critic_lr=1e-3",
                   "algo.alpha_lr=1e-3"],
    "crossq_nstep3": ["algo=crossq", "buffer.n_step=3"],
    "td3_nstep3_utd08": ["buffer.n_step=3", "train.updates_per_cycle=80"],
    # 2x256 networks: about half the update's FLOPs, so more env steps in the same wall time
    "td3_nstep3_2x256_s02": ["buffer.n_step=3", *SMALL_NETS, "noise.sigma=0.2"],
    "ddpg_nstep3_2x256_her_paper": ["algo=ddpg", "algo.tau=0.05", "noise.sigma=0.2", "buffer.n_step=3", *SMALL_NETS],
    "sac_nstep3_2x256": ["algo=sac", "buffer.n_step=3", *SMALL_NETS, "algo.actor_lr=1e-3", "algo.critic_lr=1e-3",
                         "algo.alpha_lr=1e-3"],
    "td3_nstep3_2x256_s02_utd02": ["buffer.n_step=3", *SMALL_NETS, "noise.sigma=0.2", "train.updates_per_cycle=20"],
    # on td3_nstep3_2x256_s02 (the preset between two commits of issue 13): half the updates
    # per env step; the preset since
    "preset_utd02": ["train.updates_per_cycle=20"],
}


def bench_push_search(quick: bool, budget_s: float, tries: list[str] | None = None, seed: int = 0) -> None:
    """Each try of :data:`PUSH_TRIES` on FetchPush-v4 for ``budget_s`` wall seconds (seed
    ``seed``): eval success after every 2000 env steps. Appends the curves to
    ``benchmarks/results/push_search.csv`` (try, seed, env_steps, wall_time_s, eval and train
    success) and reports the first env steps and seconds at eval success >= 0.9."""
    import signal
    import subprocess

    budget_s = 60.0 if quick else budget_s
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / "push_search.csv"
    fields = ["try", "overrides", "seed", "env_steps", "wall_time_s", "eval_success_rate", "train_success_rate"]
    new = not path.exists()
    for name in tries or list(PUSH_TRIES):
        overrides = PUSH_TRIES[name]
        run_dir = Path(tempfile.mkdtemp(prefix=f"rlfw-push-{name}-"))
        cmd = [sys.executable, "-m", "rlfw", "env=FetchPush-v4", *overrides, f"seed={seed}",
               "train.epochs=1000", "train.cycles_per_epoch=20", f"hydra.run.dir={run_dir}"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=600)
        with (run_dir / "metrics.csv").open() as f:
            metrics = list(csv.DictReader(f))
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            if new:
                w.writeheader()
                new = False
            for m in metrics:
                w.writerow({"try": name, "overrides": " ".join(overrides), "seed": seed,
                            "env_steps": m["env_steps"], "wall_time_s": m["wall_time_s"],
                            "eval_success_rate": m["eval_success_rate"],
                            "train_success_rate": m["train_success_rate"]})  # fmt: skip
        steps, secs = first_success(run_dir)
        curve = " ".join(f"{float(m['eval_success_rate']):.1f}" for m in metrics if m["eval_success_rate"])
        last = metrics[-1] if metrics else {"env_steps": "0", "wall_time_s": "0"}
        report(f"push_search {name} seed {seed}: steps, s to 0.9 | eval success per 2k steps",
               f"{steps:.0f}, {secs:.0f} | {curve} (to {last['env_steps']} steps, "
               f"{float(last['wall_time_s']):.0f} s)")  # fmt: skip


# The learning table (issue 13): each task's family preset, 3 seeds, a budget that fits a 2-core
# machine (a 15-35 minute run per seed), against the published reference at its own budget.
FETCH_PRESET = ("td3 + HER (future, k=4) + n-step 3, 2x256, Gaussian sigma 0.2, random_eps 0.3, "
                "20 updates per 100 env steps, 2 envs")
LEARNING_TASKS: dict[str, dict[str, object]] = {
    # epochs of 5000 env steps (Fetch, Panda) or 10000 (Hopper); budgets chosen so that one seed
    # takes about 9-10 minutes on the 2-core machine and the whole table fits one session
    # FetchPush-v4: the preset's own length (60 epochs, eval.stop_at 0.9), at most 15 minutes
    "FetchPush-v4": {
        "budget_s": 900, "target": 0.9, "overrides": [],
        "preset": FETCH_PRESET + "; half of the training episodes start with the gripper beside the object "
                  "(env.near_object_start 0.5); 60 epochs (300k env steps), stops at eval success 0.9 (eval.stop_at)",
        "budget": "15 min of wall time per seed (SIGTERM), within the preset's 300k env steps",
        "reference": "DDPG+HER with 19 MPI workers, 50 epochs = 4.75M steps: success about 1.0 (Plappert et al. "
                     "2018, arXiv:1802.09464, Fig. 3, read off the figure); rl-zoo: TQC+HER, 1M steps, batch 2048, 3x512",
    },
    # FetchPickAndPlace-v4: the preset's length when this row was measured (150 epochs, no stop;
    # 230 epochs and a stop at a confirmed 0.93 since issue 30), half the training episodes start
    # with the object held, at most the 45 minutes of issue 19's target
    "FetchPickAndPlace-v4": {
        "budget_s": 2700, "target": 0.9, "overrides": ["train.epochs=150", "eval.stop_at=null"],
        "preset": FETCH_PRESET + "; half of the training episodes start with the object held (env.grasped_start 0.5); 150 epochs (750k env steps)",
        "budget": "45 min of wall time per seed (SIGTERM), within the preset's 750k env steps",
        "reference": "DDPG+HER, 19 workers, 4.75M steps: success about 0.9 (Plappert et al. 2018, Fig. 3, read off)",
    },
    # FetchSlide-v4: the preset's own length (250 epochs), at most the 60 minutes of issue 19's target
    "FetchSlide-v4": {
        "budget_s": 3600, "target": 0.6, "overrides": [],
        "preset": FETCH_PRESET + "; 250 epochs (1.25M env steps)",
        "budget": "60 min of wall time per seed (SIGTERM), within the preset's 1.25M env steps",
        "reference": "DDPG+HER, 19 workers, 4.75M steps: success about 0.7 (Plappert et al. 2018, Fig. 3, read off)",
    },
    "PandaPush-v3": {
        "epochs": 30, "target": 0.9, "overrides": [], "preset": FETCH_PRESET.replace("2 envs", "2 envs (the Fetch settings)"),
        "reference": "DDPG/TD3/SAC/TQC+HER, 1M steps (Gallouedec et al. 2021, panda-gym, Fig. 4)",
    },
    "Hopper-v4": {
        # 300k env steps (issue 19's target), the first 10k uniformly random; TD3, the family's
        # default when this row was measured (CrossQ since issue 30: docs/results/delivered.md)
        "epochs": 30, "target": 3000, "overrides": ["algo=td3"],
        "preset": "td3, 10k random steps, then one update per env step, batch 256, 2x256, sigma 0.1, preact_l2 1e-3; "
                  "30 epochs (300k env steps), stops at eval return 3000 (eval.stop_at)",
        "budget": "the preset's 300k env steps at most (30 epochs), stopped at eval return 3000",
        "reference": "TD3, 1M steps: max average return 3564 +- 115 (Fujimoto et al. 2018, Table 1, Hopper-v1)",
    },
}


def bench_learning_tasks(seeds: int, quick: bool, tasks: list[str] | None = None,
                         out_root: Path | None = None) -> None:  # fmt: skip
    """Each task of :data:`LEARNING_TASKS` with its family preset over ``seeds`` seeds, one
    after the other (``python -m rlfw env=<task> seed=<s>``, each stopped by SIGTERM after the
    task's ``budget_s`` wall seconds where it has one; finished epochs are kept); then
    :func:`write_task_row`."""
    import signal
    import subprocess

    for task in tasks or list(LEARNING_TASKS):
        spec = LEARNING_TASKS[task]
        sweep = Path(tempfile.mkdtemp(prefix=f"rlfw-learning-{task}-"))
        budget_s = spec.get("budget_s")
        t0 = time.time()
        failed = None
        for seed in range(seeds):
            cmd = [sys.executable, "-m", "rlfw", f"env={task}", f"seed={seed}", *spec["overrides"],  # type: ignore[misc]
                   f"hydra.run.dir={sweep / f'seed{seed}'}"]  # fmt: skip
            if "epochs" in spec or quick:
                cmd.append(f"train.epochs={2 if quick else spec['epochs']}")
            if quick:
                cmd += ["train.cycles_per_epoch=2", "eval.episodes=2"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                _, err = proc.communicate(timeout=None if quick or budget_s is None else float(budget_s))  # type: ignore[arg-type]
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=600)
            else:
                if proc.returncode != 0:
                    failed = (err or "").strip().splitlines()[-1:]
                    break
        if failed is not None:
            report(f"learning_tasks {task}", f"failed: {failed}")
            continue
        write_task_row(task, sweep, seeds, time.time() - t0, quick=quick, out_root=out_root)
    write_learning_md(out_root or _results_root(quick))


def _results_root(quick: bool) -> Path:
    """``docs/results`` (``--quick``: a temporary directory, the committed results untouched)."""
    return Path(tempfile.mkdtemp(prefix="rlfw-results-")) if quick else Path(__file__).resolve().parents[1] / "docs" / "results"


def write_task_row(task: str, sweep: Path, seeds: int, wall: float, quick: bool = False,
                   out_root: Path | None = None, commit: str | None = None) -> dict[str, str]:  # fmt: skip
    """rlfw.report's curves (eval success or return against env steps with a 95% band, and
    against wall seconds) and table of the runs below ``sweep`` to ``<out_root>/<task>/``, and
    the task's row (with the command, the commit and the date) to ``<task>/row.json``.
    ``docs/results/learning.md`` is rebuilt from every task's row by :func:`write_learning_md`,
    so running some tasks keeps the others' rows."""
    import json
    import shutil
    import subprocess

    from rlfw.report import summarize

    spec = LEARNING_TASKS[task]
    out_root = out_root or _results_root(quick)
    if commit is None:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or "unknown"  # fmt: skip
    dest = out_root / task
    dest.mkdir(parents=True, exist_ok=True)
    # the medians to the task's own target where it is a success rate (FetchSlide: 0.6), else 0.9
    target = spec.get("target")
    threshold = float(target) if target is not None and float(target) <= 1.0 else 0.9  # type: ignore[arg-type]
    _, _, text = summarize([sweep], dest, threshold=threshold)
    shutil.rmtree(dest / "runs", ignore_errors=True)
    (dest / "aggregate.png").unlink(missing_ok=True)  # a profile over tasks: nothing to compare within one
    head, line = [ln for ln in text.splitlines() if ln.startswith("| ")][:2]
    names = [c.strip() for c in head.strip("|").split("|")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    pairs = list(zip(names[2:], cells[2:]))
    if spec.get("budget_s"):
        # runs that stop when solved end at different env steps: the common-step columns
        # (final, best) describe only the shortest run, so the medians to the target and the
        # per-seed figures carry the result
        pairs = [(n, c) for n, c in pairs if n.startswith("median")]
        budget = str(spec.get("budget", f"{float(spec['budget_s']) / 60:.0f} min of wall time per seed"))  # type: ignore[arg-type]
    elif spec.get("budget"):
        # a preset that stops at its target (Hopper: eval.stop_at): as above, and summarize
        # gives no medians for a return, so they come from each run's first evaluation at it
        pairs = [(n, c) for n, c in pairs if n.startswith("median")] or _medians_to(sweep, float(target))  # type: ignore[arg-type]
        budget = str(spec["budget"])
    else:
        budget = f"{cells[2]} env steps"
    result = "; ".join(f"{n} {c}" for n, c in pairs)
    row = {
        "task": task, "preset": spec["preset"], "seeds": f"{cells[1]} (0..{seeds - 1})",
        "budget": budget, "result": f"{result}; per seed: {_per_seed(sweep, spec.get('target'))}",  # type: ignore[arg-type]
        "reference": spec["reference"], "curves": f"{task}/summary.png",
        "status": f"measured {time.strftime('%Y-%m-%d')}, commit {commit}, {wall:.0f} s for all seeds"
                  + (" (--quick)" if quick else ""),
        "command": f"python benchmarks/run.py --only learning_tasks --tasks {task} --seeds {seeds}",
    }  # fmt: skip
    (dest / "row.json").write_text(json.dumps(row, indent=1) + "\n")
    report(f"learning_tasks {task} ({seeds} seeds)", row["result"])
    return row  # type: ignore[return-value]


def _eval_curves(sweep: Path) -> list[tuple[Path, np.ndarray, np.ndarray, np.ndarray]]:
    """(run, env steps, wall seconds, metric) of each run below ``sweep`` at its evaluations
    (each ``[evaluations]``): eval success rate on goal tasks, else eval return."""
    from rlfw.plots import column, read_csv
    from rlfw.report import find_runs

    out = []
    for run in find_runs([sweep]):
        rows = read_csv(run / "metrics.csv")
        success = column(rows, "eval_success_rate")
        metric = success if np.isfinite(success).any() else column(rows, "eval_return")
        ok = np.isfinite(metric)
        out.append((run, column(rows, "env_steps")[ok], column(rows, "wall_time_s")[ok], metric[ok]))
    return out


def _medians_to(sweep: Path, target: float) -> list[tuple[str, str]]:
    """[("median env steps to <target>", ...), ("median s to <target>", ...)] over the runs below
    ``sweep``: the median of each run's first evaluation at ``target`` or above (``-`` when a run
    never got there, as rlfw.report does)."""
    from rlfw.report import first_reach

    curves = _eval_curves(sweep)
    steps = [first_reach(x, y, target) for _, x, _, y in curves]
    secs = [first_reach(t, y, target) for _, _, t, y in curves]

    def median(v: list[float]) -> str:
        return "-" if not v or np.isnan(v).any() else f"{float(np.median(v)):.0f}"

    return [(f"median env steps to {target:g}", median(steps)), (f"median s to {target:g}", median(secs))]


def _per_seed(sweep: Path, target: float | None = None) -> str:
    """'seed 0: final 0.4, best 0.6 at 120000 steps / 512 s; 0.9 not reached, mean of the last 10
    evaluations 0.45 (...), ...' from each run's metrics.csv (the first evaluation at ``target``
    or above, where given)."""
    import yaml

    parts = []
    for run, x, t, y in _eval_curves(sweep):
        if not y.size:
            continue
        best = int(np.argmax(y))
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), run.name)
        hit = np.flatnonzero(y >= target) if target is not None else np.array([], int)
        reached = (f"; {target:g} first at {x[hit[0]]:.0f} steps / {t[hit[0]]:.0f} s" if hit.size
                   else f"; {target:g} not reached" if target is not None else "")  # fmt: skip
        # one 10-episode evaluation is noisy: the mean of the last ten says where the policy holds
        parts.append(f"seed {seed}: final {y[-1]:.4g}, best {y[best]:.4g} at {x[best]:.0f} steps / {t[best]:.0f} s"
                     f"{reached}, mean of the last {min(10, y.size)} evaluations {np.mean(y[-10:]):.4g}"
                     f" ({x[-1]:.0f} steps, {t[-1]:.0f} s in all)")  # fmt: skip
    return "; ".join(parts) or "n/a"


def write_learning_md(out_root: Path) -> Path:
    """Rebuild ``learning.md`` from every ``<task>/row.json`` below ``out_root`` (tasks of
    :data:`LEARNING_TASKS` without one are listed as still to run)."""
    import json

    lines = [
        "# Learning results", "",
        f"Measured on a 2-core CPU machine (no GPU), torch {torch.__version__}, with nothing else running. Each "
        "row is the task's family preset (`python -m rlfw env=<task>`); curves against env steps "
        "(`<task>/summary.png`, mean with a 95% band over seeds) and against wall seconds "
        "(`<task>/summary_wall.png`, each seed). Made by `python benchmarks/run.py --only learning_tasks "
        "--seeds 3` (`nox -s bench -- --only learning_tasks --seeds 3`, `--tasks a,b` for some).", "",
        "| task | preset | seeds | budget | result | published reference (its budget) | status |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for task, spec in LEARNING_TASKS.items():
        path = out_root / task / "row.json"
        if path.is_file():
            r = json.loads(path.read_text())
            lines.append(f"| [{task}]({r['curves']}) | {r['preset']} | {r['seeds']} | {r['budget']} | {r['result']} "
                         f"| {r['reference']} | {r['status']} |")  # fmt: skip
        else:
            budget = (f"{int(spec['epochs']) * (10000 if task.startswith('Hopper') else 5000)} env steps"  # type: ignore[call-overload]
                      if "epochs" in spec else f"{float(spec['budget_s']) / 60:.0f} min")  # type: ignore[arg-type]  # fmt: skip
            lines.append(f"| {task} | {spec['preset']} | - | {budget} | not run yet | {spec['reference']} "
                         "| to do |")  # fmt: skip
    # one page per thing: the other pages are linked, not copied in (issue 30: two pages that
    # repeated each other disagreed on a median)
    lines += ["", "These rows give the first single 10-episode evaluation at the target, which overstates what "
              "a run delivers (issue 30). The current table, the delivered `best.pt` of each run on 200 fresh "
              "episodes under the evaluation protocol: [delivered.md](delivered.md). Below: how to rerun these rows, "
              "the levers tried in issue 19 and per-task notes."]  # fmt: skip
    path = out_root / "learning.md"
    old = path.read_text() if path.is_file() else ""
    notes = old[old.index(NOTES_MARK):] if NOTES_MARK in old else NOTES_MARK + "\n"  # the hand-written notes stay
    path.write_text("\n".join(lines) + "\n\n" + notes)
    return path


# learning.md: the table above this line is rebuilt, the notes below it are kept (one page, issue 30)
NOTES_MARK = ("<!-- notes: everything below this line is kept when benchmarks/run.py --only learning_tasks "
              "rebuilds the table above -->")


# The peer of the learning table (issue 19): the best peer configuration that runs on this
# machine, for the same wall budget as rlfw's preset. rl-zoo's FetchPush entry for sb3-contrib's
# TQC (hyperparams/tqc.yml: HER future k=4, gamma 0.95, tau 0.05, lr 1e-3, automatic entropy,
# TimeFeatureWrapper, one gradient step per env step) except its 3x512 networks and batch 2048,
# which on 2 cores run at a few env steps per second; here 2x256 and batch 256, as rlfw's preset.
PEER_CONFIGS: dict[str, dict[str, object]] = {
    "sb3_contrib_tqc_zoo": {
        "gamma": 0.95, "tau": 0.05, "learning_rate": 1e-3, "batch_size": 256, "net_arch": [256, 256],
        "n_envs": 2, "train_freq": 1, "gradient_steps": 1, "learning_starts": 1000,
    },
    # the same with rlfw's near-object starts (rlfw.envs.grasp.NearObjectStart, half of the
    # training episodes; evaluation as the env does): the FetchPush-v4 preset's lever given to the peer
    "sb3_contrib_tqc_zoo_near": {
        "gamma": 0.95, "tau": 0.05, "learning_rate": 1e-3, "batch_size": 256, "net_arch": [256, 256],
        "n_envs": 2, "train_freq": 1, "gradient_steps": 1, "learning_starts": 1000, "near_object_start": 0.5,
    },
    # rl-zoo's TQC settings with what makes rlfw's presets fast on this machine (issue 30): the
    # scripted starts of the task's preset (FetchPush: near-object 0.5; FetchPickAndPlace:
    # grasped 0.5) and rlfw's update ratio, 20 gradient steps per 100 env steps (2 every 5
    # vector steps of 2 envs) instead of one per vector step
    "sb3_contrib_tqc_zoo_rlfw_schedule": {
        "gamma": 0.95, "tau": 0.05, "learning_rate": 1e-3, "batch_size": 256, "net_arch": [256, 256],
        "n_envs": 2, "train_freq": 5, "gradient_steps": 2, "learning_starts": 1000, "near_object_start": 0.5,
        "grasped_start": 0.5,
    },
}

# The peer's delivered figure (issue 30's protocol): its final model, deterministic, over
# DELIVERED_EPISODES episodes, the first reset seeded with DELIVERED_SEED and the rest following
# from it (rlfw.evaluate seeds episode k with 777000 + k: fresh episodes on both sides, not the
# same ones)
DELIVERED_EPISODES = 200
DELIVERED_SEED = 777000


def bench_peer_push(quick: bool, budget_s: float, seed: int = 0, task: str = "FetchPush-v4",
                    config: str = "sb3_contrib_tqc_zoo") -> None:  # fmt: skip
    """sb3-contrib TQC + HER (:data:`PEER_CONFIGS`) on ``task`` for ``budget_s`` wall seconds:
    eval success (10 deterministic episodes) after every 5000 env steps, evaluation time
    included in the wall clock as in rlfw's runs. Appends the curve to
    ``benchmarks/results/peer_push.csv`` (config, seed, env_steps, wall_time_s,
    eval_success_rate) and reports the first env steps and seconds at eval success >= 0.9.

    Then what the peer delivers under issue 30's protocol: its final model (SB3 keeps no
    confirmed best) over :data:`DELIVERED_EPISODES` fresh deterministic episodes from reset seed
    :data:`DELIVERED_SEED`, with the 95% Wilson interval, appended to
    ``benchmarks/results/peer_delivered.csv`` (config, task, seed, budget_s, env_steps,
    wall_time_s, episodes, success_rate, ci_low, ci_high).

    A config's scripted starts (``near_object_start``, ``grasped_start``:
    :class:`rlfw.envs.grasp.ScriptedStart`) apply where rlfw's presets use them (grasped on
    PickAndPlace, near on Push), training envs only."""
    import gymnasium as gym
    import gymnasium_robotics
    from sb3_contrib import TQC
    from sb3_contrib.common.wrappers import TimeFeatureWrapper
    from stable_baselines3 import HerReplayBuffer
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    budget_s = 60.0 if quick else budget_s
    c = PEER_CONFIGS[config]
    gym.register_envs(gymnasium_robotics)
    # as rlfw's presets: grasped starts on PickAndPlace, near-object starts on Push
    grasped = float(c.get("grasped_start", 0.0)) if "PickAndPlace" in task else 0.0  # type: ignore[arg-type]
    near = float(c.get("near_object_start", 0.0)) if "Push" in task else 0.0  # type: ignore[arg-type]

    def wrap(env: gym.Env) -> gym.Env:
        if grasped > 0.0 or near > 0.0:
            from rlfw.envs.grasp import ScriptedStart

            env = ScriptedStart(env, grasped=grasped, near=near)
        return TimeFeatureWrapper(env)

    venv = make_vec_env(task, n_envs=int(c["n_envs"]), seed=seed, wrapper_class=wrap)  # type: ignore[call-overload]
    model = TQC("MultiInputPolicy", venv, replay_buffer_class=HerReplayBuffer,
                replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"},
                learning_rate=c["learning_rate"], buffer_size=1_000_000, learning_starts=c["learning_starts"],
                batch_size=c["batch_size"], tau=c["tau"], gamma=c["gamma"], train_freq=c["train_freq"],
                gradient_steps=c["gradient_steps"], ent_coef="auto", top_quantiles_to_drop_per_net=2,
                policy_kwargs={"net_arch": c["net_arch"], "n_critics": 2, "n_quantiles": 25},
                seed=seed, device="cpu", verbose=0)  # fmt: skip
    eval_env = TimeFeatureWrapper(gym.make(task))
    eval_env.reset(seed=seed + 1_000_003)
    curve: list[tuple[int, float, float]] = []

    class Eval(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.perf_counter()
            self.next = 5000

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += 5000
                curve.append((self.num_timesteps, time.perf_counter() - self.t0, sb3_success_rate(self.model, eval_env)))
            return time.perf_counter() - self.t0 < budget_s

    t_start = time.perf_counter()
    model.learn(total_timesteps=10_000_000, callback=Eval())
    steps, wall = int(model.num_timesteps), time.perf_counter() - t_start  # training only, as rlfw's rows
    out = (Path(tempfile.mkdtemp(prefix="rlfw-peer-")) if quick else Path(__file__).parent / "results") / "peer_push.csv"
    new = not out.exists()
    with out.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["config", "task", "seed", "env_steps", "wall_time_s", "eval_success_rate"])
        for steps, secs, succ in curve:
            w.writerow([config, task, seed, steps, f"{secs:.1f}", succ])
    hit = next(((s, t) for s, t, v in curve if v >= 0.9), (math.nan, math.nan))
    last = curve[-1] if curve else (0, 0.0, math.nan)
    report(f"peer_push {config} {task} seed {seed}: steps, s to 0.9 | eval success per 5k steps",
           f"{hit[0]:.0f}, {hit[1]:.0f} | {' '.join(f'{v:.1f}' for _, _, v in curve)} "
           f"(to {last[0]} steps, {last[1]:.0f} s)")  # fmt: skip

    from rlfw.core.stats import wilson_interval

    episodes = 20 if quick else DELIVERED_EPISODES
    final_env = TimeFeatureWrapper(gym.make(task))
    final_env.reset(seed=DELIVERED_SEED)
    rate = sb3_success_rate(model, final_env, episodes)
    low, high = wilson_interval(rate * episodes, episodes)
    out = out.with_name("peer_delivered.csv")
    new = not out.exists()
    with out.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["config", "task", "seed", "budget_s", "env_steps", "wall_time_s", "episodes",
                        "success_rate", "ci_low", "ci_high"])  # fmt: skip
        w.writerow([config, task, seed, budget_s, steps, f"{wall:.1f}", episodes, rate, f"{low:.3f}", f"{high:.3f}"])
    report(f"peer_push {config} {task} seed {seed}: delivered (final model, {episodes} episodes from reset "
           f"seed {DELIVERED_SEED})", f"{rate:.3f} [{low:.3f}, {high:.3f}] after {steps} env steps, {wall:.0f} s")
