"""``python -m rlfw.report <dir> [<dir> ...]``: compare runs (a sweep, or several runs).

Finds every run directory below the given ones (a directory with ``metrics.csv`` and
``.hydra/``), groups runs by their command-line overrides without ``seed`` (so the seeds of one
setting form one group), and writes into the first directory (or ``--out``):

- ``summary.png``: eval success rate (or eval return, for envs without success) against env
  steps, one curve per group: the mean over seeds with a 95% confidence band
  (mean +- 1.96 standard errors, clipped to [0, 1] for success rates; no band for a single
  seed);
- ``summary_wall.png``: the same metric against wall-clock seconds, every seed's curve (runs
  of one setting reach an epoch at different times, so no band is drawn);
- ``summary.md``: a markdown table of the final and best values per group (mean +- std over
  seeds), and, for success rates, the median over seeds of the env steps and wall seconds at
  the first evaluation at or above ``--threshold`` (0.9; "-" when a seed never got there, the
  median then counts it as never), also printed.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from rlfw.plots import _figure, _save, column, read_csv


def find_runs(dirs: list[Path]) -> list[Path]:
    """Run directories below ``dirs`` (those holding metrics.csv and .hydra/), sorted."""
    runs = set()
    for d in dirs:
        for m in Path(d).rglob("metrics.csv"):
            if (m.parent / ".hydra").is_dir():
                runs.add(m.parent)
    return sorted(runs)


def label_of(run: Path) -> str:
    """The run's overrides without ``seed=`` and ``hydra`` settings ('default' if none)."""
    path = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(path.read_text()) if path.exists() else []
    keep = [
        o for o in overrides or []
        if not o.split("=", 1)[0].lstrip("+~").startswith(("seed", "hydra"))
    ]  # fmt: skip
    return " ".join(keep) or "default"


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


def summarize(dirs: list[Path], out: Path | None = None, threshold: float = 0.9) -> tuple[Path, Path, str]:
    """Write summary.png, summary_wall.png and summary.md; returns (png, md, the markdown text).

    Raises:
        FileNotFoundError: if no run is found.
    """
    runs = find_runs(dirs)
    if not runs:
        raise FileNotFoundError(f"no rlfw runs (metrics.csv with .hydra/) below {', '.join(map(str, dirs))}")
    out = Path(out or dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    data = {r: read_csv(r / "metrics.csv") for r in runs}
    use_success = any(np.isfinite(column(rows, "eval_success_rate")).any() for rows in data.values())
    metric = "eval_success_rate" if use_success else "eval_return"
    groups: dict[str, list[Path]] = defaultdict(list)
    for r in runs:
        groups[label_of(r)].append(r)
    names = _common_prefix_free(list(groups))

    plt, fig, ax = _figure()
    _, wall_fig, wall_ax = _figure()
    head = "| setting | seeds | env steps | final " + metric + " | best " + metric + " |"
    rule = "|---|---|---|---|---|"
    if use_success:
        head += f" median env steps to {threshold:g} | median s to {threshold:g} |"
        rule += "---|---|"
    lines = [head, rule]
    for i, (label, members) in enumerate(sorted(groups.items())):
        curves = []
        steps = None
        reach_steps: list[float] = []
        reach_s: list[float] = []
        for j, r in enumerate(members):
            rows = data[r]
            x, y = column(rows, "env_steps"), column(rows, metric)
            ok = np.isfinite(y)
            curves.append((x[ok], y[ok]))
            t = column(rows, "wall_time_s")[ok]
            wall_ax.plot(t, y[ok], color=f"C{i}", lw=1, alpha=0.8,
                         label=f"{names[label]} (n={len(members)})" if j == 0 else None)  # fmt: skip
            reach_steps.append(first_reach(x[ok], y[ok], threshold))
            reach_s.append(first_reach(t, y[ok], threshold))
        n = min(len(c[0]) for c in curves)
        if n == 0:
            continue
        steps = curves[0][0][:n]
        ys = np.stack([c[1][:n] for c in curves])  # [seeds, points]
        mean = ys.mean(0)
        ax.plot(steps, mean, marker="o", ms=3, label=f"{names[label]} (n={len(members)})")
        if len(members) > 1:
            se = ys.std(0, ddof=1) / math.sqrt(len(members))
            lo, hi = mean - 1.96 * se, mean + 1.96 * se
            if use_success:  # a rate's band stays within [0, 1]
                lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
            ax.fill_between(steps, lo, hi, alpha=0.2)
        final, best = ys[:, -1], ys.max(1)
        line = (
            f"| {names[label]} | {len(members)} | {int(steps[-1])} | {final.mean():.3f} +- {final.std():.3f} "
            f"| {best.mean():.3f} +- {best.std():.3f} |"
        )
        if use_success:
            line += f" {_median_reach(reach_steps)} | {_median_reach(reach_s)} |"
        lines.append(line)
    ax.set(xlabel="env steps", ylabel=metric.replace("_", " "), title=f"{metric} (mean, 95% CI over seeds)")
    ax.legend(loc="best", fontsize=8)
    png = _save(plt, fig, out / "summary.png")
    wall_ax.set(xlabel="wall-clock seconds", ylabel=metric.replace("_", " "), title=f"{metric} per seed")
    wall_ax.legend(loc="best", fontsize=8)
    _save(plt, wall_fig, out / "summary_wall.png")
    text = "\n".join(lines) + "\n"
    md = out / "summary.md"
    md.write_text(f"# rlfw report\n\nRuns: {len(runs)} in {len(groups)} settings, metric {metric}.\n\n" + text)
    return png, md, text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rlfw.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: the first dir)")
    p.add_argument("--threshold", type=float, default=0.9, help="success rate for the steps/seconds-to columns")
    args = p.parse_args(argv)
    try:
        png, md, text = summarize(args.dirs, args.out, args.threshold)
    except FileNotFoundError as err:
        raise SystemExit(f"rlfw.report: error: {err}") from None
    print(text)
    print(f"wrote {png} and {md}")


if __name__ == "__main__":
    main()
