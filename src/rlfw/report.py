"""``python -m rlfw.report <dir> [<dir> ...]``: compare runs (a sweep, or several runs).

Finds every run directory below the given ones (a directory with ``metrics.csv`` and
``.hydra/``), groups runs by their command-line overrides without ``seed`` (so the seeds of one
setting form one group), and writes into the first directory (or ``--out``):

- ``summary.png``: eval success rate (or eval return, for envs without success) against env
  steps, one curve per group: the mean over seeds with a 95% confidence band
  (mean +- 1.96 standard errors; no band for a single seed);
- ``summary.md``: a markdown table of the final and best values per group (mean +- std over
  seeds), also printed.
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


def summarize(dirs: list[Path], out: Path | None = None) -> tuple[Path, Path, str]:
    """Write summary.png and summary.md; returns (png, md, the markdown text).

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
    lines = ["| setting | seeds | env steps | final " + metric + " | best " + metric + " |",
             "|---|---|---|---|---|"]  # fmt: skip
    for label, members in sorted(groups.items()):
        curves = []
        steps = None
        for r in members:
            rows = data[r]
            x, y = column(rows, "env_steps"), column(rows, metric)
            ok = np.isfinite(y)
            curves.append((x[ok], y[ok]))
        n = min(len(c[0]) for c in curves)
        if n == 0:
            continue
        steps = curves[0][0][:n]
        ys = np.stack([c[1][:n] for c in curves])  # [seeds, points]
        mean = ys.mean(0)
        ax.plot(steps, mean, marker="o", ms=3, label=f"{names[label]} (n={len(members)})")
        if len(members) > 1:
            se = ys.std(0, ddof=1) / math.sqrt(len(members))
            ax.fill_between(steps, mean - 1.96 * se, mean + 1.96 * se, alpha=0.2)
        final, best = ys[:, -1], ys.max(1)
        lines.append(
            f"| {names[label]} | {len(members)} | {int(steps[-1])} | {final.mean():.3f} +- {final.std():.3f} "
            f"| {best.mean():.3f} +- {best.std():.3f} |"
        )
    ax.set(xlabel="env steps", ylabel=metric.replace("_", " "), title=f"{metric} (mean, 95% CI over seeds)")
    ax.legend(loc="best", fontsize=8)
    png = _save(plt, fig, out / "summary.png")
    text = "\n".join(lines) + "\n"
    md = out / "summary.md"
    md.write_text(f"# rlfw report\n\nRuns: {len(runs)} in {len(groups)} settings, metric {metric}.\n\n" + text)
    return png, md, text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rlfw.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: the first dir)")
    args = p.parse_args(argv)
    try:
        png, md, text = summarize(args.dirs, args.out)
    except FileNotFoundError as err:
        raise SystemExit(f"rlfw.report: error: {err}") from None
    print(text)
    print(f"wrote {png} and {md}")


if __name__ == "__main__":
    main()
