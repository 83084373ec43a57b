"""``python -m rlfw.report <dir> [<dir> ...]``: compare runs (a sweep, or several runs).

Finds every run directory below the given ones (a directory with ``metrics.csv`` and
``.hydra/``), groups runs by their command-line overrides without ``seed`` (so the seeds of one
setting form one group), and writes into the first directory (or ``--out``, a directory):

- ``summary.png``: eval success rate (or eval return, for envs without success) against env
  steps, one curve per group: the mean over seeds with a 95% confidence band (no band for a
  single seed). ``--ci t`` (default): mean +- t_{0.975, n-1} x SE, the Student t interval for
  n seeds (4.30 standard errors for 3 seeds, 2.78 for 5; 1.96 only as n grows large);
  ``--ci bootstrap``: the 2.5th and 97.5th percentiles of the mean over ``--reps`` resamples of
  the seeds with replacement (scipy.stats.bootstrap, percentile method; too narrow for a
  handful of seeds, Agarwal et al. 2021 use it with many runs). Success-rate bands are clipped
  to [0, 1];
- ``summary_wall.png``: the same metric against wall-clock seconds, every seed's curve (runs
  of one setting reach an epoch at different times, so no band is drawn);
- ``summary.md``: a markdown table of the final and best values per group (mean +- std over
  seeds, and the final value's 95% interval), and, for success rates, the median over seeds of
  the env steps and wall seconds at the first evaluation at or above ``--threshold`` (0.9; "-"
  when a seed never got there, the median then counts it as never), and the mean delivered
  figure (``evaluation.json``), also printed. "Final" has one meaning everywhere: each run's own
  last evaluation in metrics.csv. Runs that did not finish (``status.json`` says interrupted,
  failed, pruned or running) or stopped short of their setting's longest run are listed as
  warnings (stderr and summary.md);
- ``aggregate.png`` and an "Aggregate" table in ``summary.md``: per setting (the overrides
  without ``seed``, ``env`` and ``env.id``, so a setting run on several tasks is one setting),
  the interquartile mean (IQM) and the mean of the final normalised scores of all its runs on
  all its tasks, with 95% stratified-bootstrap intervals (runs resampled within each task,
  ``--reps`` times, percentile method), and the performance profile (the fraction of runs with
  a normalised score above tau, averaged over tasks), after Agarwal et al. 2021, "Deep RL at the
  Edge of the Statistical Precipice" (rliable). Scores are normalised per task as rliable
  expects: success rates are used as they are (already in [0, 1]); returns are min-max
  normalised per task over the final returns of every run in the report, (R - min) / (max -
  min), so they compare the reported settings with each other, not with other reports.

Errors (a missing run, a non-numeric metrics.csv cell, an unreadable ``.hydra`` file, ``--out``
naming a file) are one ``rlfw.report: error: ...`` line and exit status 2. The statistics need
scipy and rliable: ``pip install -c constraints.txt -e '.[stats]'``.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rlfw.core.runfiles import MAX_META_BYTES, load_json, load_yaml, read_text
from rlfw.core.stats import (  # noqa: F401 - the statistics over runs: re-exported
    CI_METHODS,
    aggregate,
    interval_estimates,
    iqm,
    mean_interval,
    normalise,
    score_matrix,
)
from rlfw.errors import ConfigError, fail
from rlfw.plots import _figure, _save, read_csv
from rlfw.training.outputs import replace_file

# One definition of "final" for every table of the report.
FINAL_DEFINITION = ("'final' is each run's own last evaluation in metrics.csv (curves are drawn up to the "
                    "shortest run of a setting); 'delivered' is the run's evaluation.json (its best.pt on fresh "
                    "episodes).")
log = logging.getLogger("rlfw.report")
STATS_HINT = "pip install -c constraints.txt -e '.[stats]'"


def find_runs(dirs: list[Path]) -> list[Path]:
    """Run directories below ``dirs`` (those holding metrics.csv and .hydra/), sorted."""
    runs = set()
    for d in dirs:
        for m in Path(d).rglob("metrics.csv"):
            if (m.parent / ".hydra").is_dir():
                runs.add(m.parent)
    return sorted(runs)


def _overrides(run: Path) -> list[str]:
    """The run's ``.hydra/overrides.yaml`` (a list of strings; [] if absent).

    Raises:
        ConfigError: the file is not YAML or not a list of strings.
    """
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    overrides = load_yaml(read_text(path, MAX_META_BYTES), path)  # a regular file, bounded, no aliases
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{path}: expected a list of overrides (key=value strings)")
    return overrides


def unfinished(run: Path) -> str | None:
    """Why a run did not finish normally (``status.json``'s status and its reason or error),
    or None when it finished.

    A run without ``status.json`` (written by every rlfw run from its start) is reported as
    such; an unreadable one too (never raised: the report goes on).
    """
    path = run / "status.json"
    if not path.exists():
        return "no status.json: not known to have finished"
    try:
        data = load_json(read_text(path, MAX_META_BYTES), path)
    except (OSError, ValueError, ConfigError) as err:
        return f"status.json unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    status = data.get("status") if isinstance(data, dict) else None
    if status == "finished":
        return None
    why = data.get("reason") or data.get("error") if isinstance(data, dict) else None
    return f"status {status!r}" + (f" ({str(why).splitlines()[0][:200]})" if why else "")


def delivered_figure(run: Path, metric: str) -> float | None:
    """The run's delivered figure from ``evaluation.json`` (``success_rate`` for
    ``eval_success_rate``, ``return_mean`` otherwise), or None when it has none."""
    path = run / "evaluation.json"
    if not path.exists():
        return None
    try:
        data = load_json(read_text(path, MAX_META_BYTES), path)
        value = float(data["success_rate" if metric == "eval_success_rate" else "return_mean"])  # type: ignore[index]
    except (OSError, ValueError, ConfigError, KeyError, TypeError):
        return None
    return value if math.isfinite(value) else None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def label_of(run: Path, drop: tuple[str, ...] = ()) -> str:
    """The run's overrides without ``seed=``, ``hydra`` settings and the keys in ``drop``
    ('default' if none).

    Raises:
        ConfigError: ``.hydra/overrides.yaml`` is not a YAML list of strings.
    """
    keep = [
        o for o in _overrides(run)
        if not _key(o).startswith(("seed", "hydra")) and _key(o) not in drop
    ]  # fmt: skip
    return " ".join(keep) or "default"


def task_of(run: Path) -> str:
    """The run's ``env.id`` from ``.hydra/config.yaml`` ('unknown' if it has none).

    Raises:
        ConfigError: the file is not YAML.
    """
    path = run / ".hydra" / "config.yaml"
    if not path.exists():
        return "unknown"
    cfg = load_yaml(read_text(path, MAX_META_BYTES), path)  # a regular file, bounded, no aliases
    env = cfg.get("env") if isinstance(cfg, dict) else None
    return str(env.get("id", "unknown")) if isinstance(env, dict) else "unknown"


def numeric_column(rows: list[dict[str, str]], key: str, path: Path) -> np.ndarray:
    """A float column of a CSV read by :func:`rlfw.plots.read_csv`; empty cells are NaN.

    Raises:
        ConfigError: a cell is not a number (naming the file, the line and the column).
    """
    out = np.full(len(rows), math.nan)
    for i, row in enumerate(rows):
        cell = row.get(key)
        if cell in (None, ""):
            continue
        try:
            out[i] = float(cell)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: line {i + 2}, column {key}: {cell!r} is not a number") from None
    return out


def _common_prefix_free(labels: list[str]) -> dict[str, str]:
    """Drop overrides every group shares, so curve names show only what was swept."""
    parts = {lb: lb.split() for lb in labels}
    shared = set.intersection(*(set(p) for p in parts.values())) if parts else set()
    return {lb: " ".join(p for p in parts[lb] if p not in shared) or lb for lb in labels}


def first_reach(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """The first ``x`` where ``y >= threshold`` (NaN if never): env steps or seconds."""
    hit = np.flatnonzero(np.asarray(y) >= threshold)
    return float(x[hit[0]]) if hit.size else math.nan


def _median_reach(values: list[float]) -> str:
    """Median over seeds, a seed that never reached counting as infinitely late."""
    ordered = sorted(math.inf if math.isnan(v) else v for v in values)
    mid = ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    return "-" if math.isinf(mid) else f"{mid:.0f}"


def _aggregate_figure(agg: dict[str, dict[str, Any]], out: Path, reps: int, seed: int) -> Path:
    """aggregate.png: IQM with its interval per setting, and the performance profiles."""
    from rliable import library, plot_utils

    plt, fig, ax = _figure()
    fig.set_size_inches(12, 4.5)
    ax.remove()
    ax_iqm, ax_prof = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = list(agg)
    for i, name in enumerate(names):
        point, lo, hi = agg[name]["iqm"]
        ax_iqm.errorbar([point], [i], xerr=[[point - lo], [hi - point]], fmt="o", color=f"C{i}", capsize=4)
    ax_iqm.set_yticks(range(len(names)), [n[:40] for n in names], fontsize=8)
    ax_iqm.set(xlabel="IQM of normalised final score (95% stratified bootstrap CI)", xlim=(-0.02, 1.02))
    taus = np.linspace(0.0, 1.0, 41)
    np.random.seed(seed)  # noqa: NPY002  (rliable's profile bootstrap draws from numpy's global state)
    profiles, cis = library.create_performance_profile({n: agg[n]["scores"] for n in names}, taus,
                                                       reps=min(reps, 500))  # fmt: skip
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=cis, ax=ax_prof,
        colors={n: f"C{i}" for i, n in enumerate(names)},
        xlabel=r"normalised score $\tau$", ylabel=r"fraction of runs with score $> \tau$",
    )  # fmt: skip
    ax_prof.legend([n[:40] for n in names], loc="best", fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, out / "aggregate.png")


def summarize(
    dirs: list[Path], out: Path | None = None, threshold: float = 0.9, ci: str = "t",
    reps: int = 2000, seed: int = 0,
) -> tuple[Path, Path, str]:  # fmt: skip
    """Write summary.png, summary_wall.png, aggregate.png and summary.md; returns (png, md,
    the markdown text).

    Args:
        dirs: directories to search for runs.
        out: output directory (default: ``dirs[0]``).
        threshold: success rate for the steps/seconds-to columns.
        ci: the curves' interval, ``t`` or ``bootstrap`` (:func:`mean_interval`).
        reps: bootstrap resamples (``--ci bootstrap`` and the aggregate intervals).
        seed: bootstrap seed.

    Raises:
        FileNotFoundError: if no run is found.
        ConfigError: ``out`` is a file, a metrics.csv cell is not a number, a ``.hydra`` file
            is not valid YAML, or ``ci`` is unknown.
        ImportError: scipy or rliable is missing (the ``stats`` extra).
    """
    if ci not in CI_METHODS:
        raise ConfigError(f"--ci {ci}: choose one of: {', '.join(CI_METHODS)}")
    runs = find_runs(dirs)
    if not runs:
        raise FileNotFoundError(f"no rlfw runs (metrics.csv with .hydra/) below {', '.join(map(str, dirs))}")
    out = Path(out or dirs[0])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory to write the report into")
    import rliable  # noqa: F401  (fail before writing anything if the stats extra is missing)
    import scipy  # noqa: F401

    data = {r: read_csv(r / "metrics.csv") for r in runs}
    cols = {r: {k: numeric_column(rows, k, r / "metrics.csv")
                for k in ("env_steps", "wall_time_s", "eval_success_rate", "eval_return")}
            for r, rows in data.items()}  # fmt: skip
    labels = {r: label_of(r) for r in runs}
    tasks = {r: task_of(r) for r in runs}
    settings = {r: label_of(r, drop=("env", "env.id")) for r in runs}
    out.mkdir(parents=True, exist_ok=True)
    use_success = any(np.isfinite(c["eval_success_rate"]).any() for c in cols.values())
    metric = "eval_success_rate" if use_success else "eval_return"
    groups: dict[str, list[Path]] = defaultdict(list)
    for r in runs:
        groups[labels[r]].append(r)
    names = _common_prefix_free(list(groups))

    plt, fig, ax = _figure()
    _, wall_fig, wall_ax = _figure()
    head = f"| setting | seeds | env steps | final {metric} | best {metric} | final 95% CI ({ci}) |"
    rule = "|---|---|---|---|---|---|"
    if use_success:
        head += f" median env steps to {threshold:g} | median s to {threshold:g} |"
        rule += "---|---|"
    head += " delivered (evaluation.json) |"
    rule += "---|"
    lines = [head, rule]
    warnings = [f"{r}: {state}" for r in runs if (state := unfinished(r))]
    for i, (label, members) in enumerate(sorted(groups.items())):
        curves = []
        steps = None
        reach_steps: list[float] = []
        reach_s: list[float] = []
        for j, r in enumerate(members):
            x, y = cols[r]["env_steps"], cols[r][metric]
            ok = np.isfinite(y)
            curves.append((x[ok], y[ok]))
            t = cols[r]["wall_time_s"][ok]
            wall_ax.plot(t, y[ok], color=f"C{i}", lw=1, alpha=0.8,
                         label=f"{names[label]} (n={len(members)})" if j == 0 else None)  # fmt: skip
            reach_steps.append(first_reach(x[ok], y[ok], threshold))
            reach_s.append(first_reach(t, y[ok], threshold))
        n = min(len(c[0]) for c in curves)
        if n == 0:
            continue
        steps = curves[0][0][:n]
        ys = np.stack([c[1][:n] for c in curves])  # [seeds, points]
        mean, lo, hi = mean_interval(ys, ci, reps=reps, seed=seed)
        ax.plot(steps, mean, marker="o", ms=3, label=f"{names[label]} (n={len(members)})")
        if use_success:  # a rate's band stays within [0, 1]
            lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
        if len(members) > 1:
            ax.fill_between(steps, lo, hi, alpha=0.2)
        # "final": each run's own last evaluation (the same value the aggregate uses)
        final = np.array([c[1][-1] for c in curves])
        best = np.array([c[1].max() for c in curves])
        horizon = max(int(c[0][-1]) for c in curves)
        for r, c in zip(members, curves):
            if int(c[0][-1]) < horizon:
                warnings.append(f"{r}: last evaluation at {int(c[0][-1])} env steps, shorter than the "
                                f"{horizon} of its setting's longest run")  # fmt: skip
        band = "-"
        if len(members) > 1:
            _, flo, fhi = mean_interval(final[:, None], ci, reps=reps, seed=seed)
            if use_success:
                flo, fhi = np.clip(flo, 0.0, 1.0), np.clip(fhi, 0.0, 1.0)
            band = f"[{flo[0]:.3f}, {fhi[0]:.3f}]"
        delivered = [d for d in (delivered_figure(r, metric) for r in members) if d is not None]
        line = (
            f"| {names[label]} | {len(members)} | {horizon} | {final.mean():.3f} +- {final.std():.3f} "
            f"| {best.mean():.3f} +- {best.std():.3f} | {band} |"
        )
        if use_success:
            line += f" {_median_reach(reach_steps)} | {_median_reach(reach_s)} |"
        line += (f" {np.mean(delivered):.3f} ({len(delivered)} of {len(members)}) |" if delivered else " - |")
        lines.append(line)
    ax.set(xlabel="env steps", ylabel=metric.replace("_", " "), title=f"{metric} (mean, 95% {ci} CI over seeds)")
    ax.legend(loc="best", fontsize=8)
    png = _save(plt, fig, out / "summary.png")
    wall_ax.set(xlabel="wall-clock seconds", ylabel=metric.replace("_", " "), title=f"{metric} per seed")
    wall_ax.legend(loc="best", fontsize=8)
    _save(plt, wall_fig, out / "summary_wall.png")

    # the aggregate: final normalised score of each run, per setting over its tasks
    finals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    success: dict[str, bool] = {}
    for r in runs:
        task = tasks[r]
        is_rate = bool(np.isfinite(cols[r]["eval_success_rate"]).any())
        success[task] = success.get(task, True) and is_rate
    for r in runs:
        y = cols[r]["eval_success_rate" if success[tasks[r]] else "eval_return"]
        y = y[np.isfinite(y)]
        if y.size:
            finals[settings[r]][tasks[r]].append(float(y[-1]))
    agg = aggregate({s: dict(v) for s, v in finals.items()}, success, reps, seed) if finals else {}
    lines += ["", f"Aggregate ({len({t for v in finals.values() for t in v})} tasks; final eval, "
              "success rates as they are, returns min-max normalised per task over these runs; "
              f"95% stratified bootstrap CI, {reps} resamples):", "",
              "| tasks | setting | runs per task | IQM [95% CI] | mean [95% CI] |", "|---|---|---|---|---|"]  # fmt: skip
    short = _common_prefix_free(list(agg))
    for setting, a in agg.items():
        (q, qlo, qhi), (m, mlo, mhi) = a["iqm"], a["mean"]
        lines.append(f"| {', '.join(a['tasks'])} | {short[setting]} | {a['scores'].shape[0]} "
                     f"| {q:.3f} [{qlo:.3f}, {qhi:.3f}] | {m:.3f} [{mlo:.3f}, {mhi:.3f}] |")  # fmt: skip
    if agg:
        _aggregate_figure(agg, out, reps, seed)
    if warnings:
        lines += ["", "Warnings:", "", *(f"- {w}" for w in warnings)]
        for w in warnings:
            log.warning("warning: %s", w)
    text = "\n".join(lines) + "\n"
    md = out / "summary.md"
    replace_file(md, (f"# rlfw report\n\nRuns: {len(runs)} in {len(groups)} settings, metric {metric}. "
                      f"{FINAL_DEFINITION}\n\n" + text).encode())  # atomic, never through a planted link
    return png, md, text


def main(argv: list[str] | None = None) -> None:
    """Console entry point; errors are one line with exit status 2."""
    p = argparse.ArgumentParser(prog="python -m rlfw.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories")
    p.add_argument("--out", type=Path, default=None, help="directory to write into (default: the first dir)")
    p.add_argument("--threshold", type=float, default=0.9, help="success rate for the steps/seconds-to columns")
    p.add_argument("--ci", choices=CI_METHODS, default="t",
                   help="the curves' 95%% interval over seeds: t (Student t, default) or bootstrap")  # fmt: skip
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps {args.reps}: must be at least 1")
    try:
        png, md, text = summarize(args.dirs, args.out, args.threshold, args.ci, args.reps, args.seed)
    except (FileNotFoundError, ConfigError) as err:
        raise fail("rlfw.report", err, bad_input=(FileNotFoundError,)) from None
    except ImportError as err:
        raise fail("rlfw.report", err, bad_input=(ImportError,),
                   message=f"{err.name or err}: the report's statistics need scipy and rliable: {STATS_HINT}") from None  # fmt: skip
    print(text)
    print(f"wrote {png}, {md} and {md.parent / 'aggregate.png'}")


if __name__ == "__main__":
    main()
