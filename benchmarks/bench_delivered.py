"""Section ``delivered`` (issue 30): the learning table under the evaluation protocol.

Each row is one (task, label) pair: ``python -m rlfw env=<task> seed=<s> <overrides>`` as a user
runs it, timed as a whole process (start-up, training, confirmations and the final evaluation),
then ``python -m rlfw.evaluate run_dir=<run> checkpoint=best episodes=200 seed=<EVAL_SEED>``:
the delivered policy on 200 episodes that neither training nor the run's own evaluations
saw (their streams are hashed from the run's seed; ``EVAL_SEED`` is a plain reset seed far
from them). One CSV row per seed goes to ``docs/results/delivered.csv`` and the run's
metrics.csv to ``docs/results/<task>/delivered_<label>_seed<s>.csv``; ``docs/results/delivered.md``
is rebuilt from the CSV with a plot per row (:func:`write_delivered_md`).

Usage: ``python benchmarks/run.py --only delivered --tasks FetchPush-v4 --seed-list 0,1
--label preset [--overrides "algo=tqc ..."]``. Run one process at a time on a quiet machine:
the wall seconds are the row's.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
CSV = RESULTS / "delivered.csv"
EVAL_SEED = 777_000  # rlfw.evaluate's reset seeds: EVAL_SEED + k for episode k
EPISODES = 200
COLUMNS = ["task", "label", "seed", "overrides", "commit", "delivered_checkpoint", "checkpoint_epoch",
           "episodes", "success_rate", "success_lo", "success_hi", "return_mean", "return_lo", "return_hi",
           "env_steps", "scripted_steps", "wall_s", "stop_reason", "stop_env_steps", "stop_wall_s",
           "run_final_success", "date"]  # fmt: skip


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # the benchmarks' own result files (docs/results/) do not make the code a work in progress:
    # a second seed run in the same checkout would otherwise record "+wip"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)docs/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # fmt: skip
    return out.stdout.strip() + ("+wip" if dirty else "")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def run_seed(task: str, seed: int, label: str, overrides: list[str], keep: Path | None = None,
             keep_runs: Path | None = None) -> dict[str, object]:
    """Train, time and evaluate one seed; returns its CSV row (also appended to :data:`CSV`).
    ``keep_runs``: move the run directory to ``<keep_runs>/<task>_<label>_seed<s>`` instead of
    deleting it (the pretrained agents are exported from such runs)."""
    commit = _commit()  # the code the run starts with (a commit made while it runs is not its)
    run = Path(tempfile.mkdtemp(prefix=f"rlfw-delivered-{task}-{seed}-")) / "run"
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "rlfw", f"env={task}", f"seed={seed}", *overrides, f"hydra.run.dir={run}",
           "logger.progress=lines"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    ev = subprocess.run([sys.executable, "-m", "rlfw.evaluate", f"run_dir={run}", "checkpoint=best",
                         f"episodes={EPISODES}", f"seed={EVAL_SEED}"], env=env, capture_output=True, text=True)  # fmt: skip
    if ev.returncode != 0:
        raise RuntimeError(f"rlfw.evaluate failed: {ev.stderr[-2000:]}")
    summary = json.loads((run / "evaluation.json").read_text())
    status = json.loads((run / "status.json").read_text())
    metrics = _rows(run / "metrics.csv")
    last = metrics[-1]
    stopped = status.get("stop_reason") or ""
    row: dict[str, object] = {
        "task": task, "label": label, "seed": seed, "overrides": " ".join(overrides), "commit": commit,
        "delivered_checkpoint": summary["checkpoint"], "checkpoint_epoch": summary["checkpoint_epoch"],
        "episodes": summary["episodes"],
        "success_rate": summary["success_rate"] if summary["success_rate"] is not None else "",
        "success_lo": summary["success_ci"][0] if summary["success_ci"] else "",
        "success_hi": summary["success_ci"][1] if summary["success_ci"] else "",
        "return_mean": summary["return_mean"], "return_lo": summary["return_ci"][0], "return_hi": summary["return_ci"][1],
        "env_steps": last["env_steps"], "scripted_steps": last.get("scripted_steps", ""), "wall_s": round(wall, 1),
        "stop_reason": stopped, "stop_env_steps": last["env_steps"] if stopped else "",
        "stop_wall_s": round(wall, 1) if stopped else "",
        "run_final_success": (status.get("delivered") or {}).get("success_rate", ""),
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    dest = keep or RESULTS / task
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "metrics.csv", dest / f"delivered_{label}_seed{seed}.csv")
    new = not CSV.exists()
    with CSV.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
    print(f"{task} {label} seed {seed}: delivered {summary['checkpoint']} (epoch {summary['checkpoint_epoch']}) "
          f"success {row['success_rate']} [{row['success_lo']}, {row['success_hi']}] return {row['return_mean']}; "
          f"{row['env_steps']} env steps, {row['wall_s']} s; {stopped or 'ran every epoch'}", flush=True)  # fmt: skip
    if keep_runs is not None:
        keep_runs.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run), str(keep_runs / f"{task}_{label}_seed{seed}"))
    shutil.rmtree(run.parent, ignore_errors=True)
    return row


def bench_delivered(tasks: list[str], seeds: list[int], label: str, overrides: list[str],
                    keep_runs: Path | None = None) -> None:
    """:func:`run_seed` for every task and seed, one after the other, then
    :func:`write_delivered_md`."""
    for task in tasks:
        for seed in seeds:
            run_seed(task, seed, label, overrides, keep_runs=keep_runs)
    write_delivered_md()


def _fmt(x: str, digits: int = 3) -> str:
    try:
        return f"{float(x):.{digits}g}"
    except ValueError:
        return x or "-"


def plot_row(task: str, label: str, seeds: list[str]) -> Path | None:
    """``docs/results/<task>/delivered_<label>.png``: each seed's cheap evaluations (lines) and
    confirmations (dots) against env steps and against the run's wall seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for seed in seeds:
        path = RESULTS / task / f"delivered_{label}_seed{seed}.csv"
        if path.is_file():
            curves.append((seed, _rows(path)))
    if not curves:
        return None
    success = any(r.get("eval_success_rate") for _, rows in curves for r in rows)
    cheap_key, confirm_key = ("eval_success_rate", "confirm_success_rate") if success else ("eval_return", "confirm_return")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for i, (seed, rows) in enumerate(curves):
        color = f"C{i}"
        for ax, x_key, scale in ((axes[0], "env_steps", 1e-3), (axes[1], "wall_time_s", 1.0)):
            xs = [float(r[x_key]) * scale for r in rows if r[cheap_key]]
            ys = [float(r[cheap_key]) for r in rows if r[cheap_key]]
            ax.plot(xs, ys, color=color, alpha=0.5, lw=1, label=f"seed {seed}" if ax is axes[0] else None)
            cx = [float(r[x_key]) * scale for r in rows if r.get(confirm_key)]
            cy = [float(r[confirm_key]) for r in rows if r.get(confirm_key)]
            ax.plot(cx, cy, "o", color=color, ms=3)
    axes[0].set_xlabel("env steps (thousands)")
    axes[1].set_xlabel("training wall seconds (evaluations included)")
    axes[0].set_ylabel("success rate" if success else "return")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{task} {label}: 10-episode evaluations (lines), confirmations (dots)", fontsize=9)
    fig.tight_layout()
    out = RESULTS / task / f"delivered_{label}.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def write_delivered_md() -> Path:
    """``docs/results/delivered.md``: per (task, label), every seed's delivered figure with its
    95% interval, env steps and wall seconds, and the median over seeds."""
    rows = _rows(CSV) if CSV.exists() else []
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["label"]), []).append(r)
    lines = [
        "# Delivered policies (the evaluation protocol of issue 30)",
        "",
        "Generated by `benchmarks/bench_delivered.py` from `delivered.csv`; do not edit. Each seed: "
        "`python -m rlfw env=<task> seed=<s> <overrides>` on the project's 2-core machine, timed as a whole "
        f"process, then `python -m rlfw.evaluate run_dir=<run> checkpoint=best episodes={EPISODES} "
        f"seed={EVAL_SEED}` (episodes no part of the run saw). Success with its 95% Wilson interval "
        "(return with its t interval for Hopper); env steps exclude the scripted-start simulator steps, "
        "given apart.",
        "",
        "| task | label | seeds | delivered (median) | every seed: delivered [95% CI], env steps, wall s | commit |",
        "|---|---|---|---|---|---|",
    ]
    for (task, label), rs in groups.items():
        success = all(r["success_rate"] != "" for r in rs)
        key = "success_rate" if success else "return_mean"
        med = statistics.median(float(r[key]) for r in rs)
        per = []
        for r in rs:
            lo, hi = (r["success_lo"], r["success_hi"]) if success else (r["return_lo"], r["return_hi"])
            scripted = f" (+{int(float(r['scripted_steps'])) // 1000}k scripted)" if r.get("scripted_steps") not in ("", "0", None) else ""
            per.append(f"s{r['seed']}: {_fmt(r[key])} [{_fmt(lo)}, {_fmt(hi)}], {int(float(r['env_steps'])) // 1000}k"
                       f"{scripted}, {_fmt(r['wall_s'], 4)} s")  # fmt: skip
        commits = ", ".join(sorted({r["commit"] for r in rs}))
        plot = plot_row(task, label, [r["seed"] for r in rs])
        name = f"[{label}]({task}/{plot.name})" if plot else label
        lines.append(f"| {task} | {name} | {len(rs)} | {med:.3g} | {'; '.join(per)} | {commits} |")
    lines += ["", "Overrides per label:", ""]
    for (task, label), rs in groups.items():
        lines.append(f"- {task} / {label}: `{rs[0]['overrides'] or '(preset)'}`")
    out = RESULTS / "delivered.md"
    out.write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":  # rebuild the page from the CSV
    print(write_delivered_md())
