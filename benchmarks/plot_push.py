"""Plot FetchPush-v4 preset-search curves from ``benchmarks/results/push_search.csv``.

``python benchmarks/plot_push.py [--tries a,b] [--out docs/results/FetchPush-v4]`` writes
``push_curves.png``: eval success (10 episodes every 2000 env steps) against wall seconds and
against env steps, one line per (try, seed), with the 0.9 goal and the 15-minute budget, and
``push_curves.md``: per (try, seed), the first env steps and seconds at eval success >= 0.9 and
the median over the seeds of each try.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(path: Path) -> dict[tuple[str, int], list[dict[str, float]]]:
    runs: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    with path.open() as f:
        for r in csv.DictReader(f):
            runs[(r["try"], int(r["seed"]))].append(
                {k: float(r[k]) if r[k] else math.nan for k in ("env_steps", "wall_time_s", "eval_success_rate")}
            )
    return runs


def first(rows: list[dict[str, float]], key: str, threshold: float = 0.9) -> float:
    return next((r[key] for r in rows if r["eval_success_rate"] >= threshold), math.nan)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, default=HERE / "results" / "push_search.csv")
    p.add_argument("--tries", default="", help="comma-separated tries (default: all)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load(args.csv)
    keep = set(args.tries.split(",")) if args.tries else {t for t, _ in runs}
    fig, (a_wall, a_steps) = plt.subplots(1, 2, figsize=(12, 4), dpi=100)
    lines = ["| try | seed | env steps to 0.9 | s to 0.9 | last env steps | last s |", "|---|---|---|---|---|---|"]
    per_try: dict[str, list[float]] = defaultdict(list)
    colours = {key: f"C{i}" for i, key in enumerate(k for k in sorted(runs) if k[0] in keep)}
    for (name, seed), rows in sorted(runs.items()):
        if name not in keep:
            continue
        ok = [r for r in rows if not math.isnan(r["eval_success_rate"])]
        kw = {"color": colours[(name, seed)], "lw": 1, "alpha": 0.85, "label": f"{name} seed {seed}"}
        a_wall.plot([r["wall_time_s"] for r in ok], [r["eval_success_rate"] for r in ok], **kw)
        a_steps.plot([r["env_steps"] for r in ok], [r["eval_success_rate"] for r in ok], **kw)
        steps, secs = first(ok, "env_steps"), first(ok, "wall_time_s")
        per_try[name].append(secs)
        last = ok[-1] if ok else {"env_steps": 0.0, "wall_time_s": 0.0}
        fmt = lambda v: "-" if math.isnan(v) else f"{v:.0f}"  # noqa: E731
        lines.append(f"| {name} | {seed} | {fmt(steps)} | {fmt(secs)} | {last['env_steps']:.0f} | {last['wall_time_s']:.0f} |")
    for ax, xlabel in ((a_wall, "wall-clock seconds"), (a_steps, "env steps")):
        ax.axhline(0.9, color="k", ls=":", lw=1)
        ax.set(xlabel=xlabel, ylabel="eval success rate (10 episodes)", ylim=(-0.02, 1.02))
    a_wall.axvline(900, color="r", ls="--", lw=1, label="15 minutes")
    a_wall.legend(fontsize=7, loc="upper left")
    fig.suptitle("FetchPush-v4 on 2 CPU cores")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "push_curves.png")
    lines += ["", "| try | seeds | median s to 0.9 (a seed that never got there counts as never) |", "|---|---|---|"]
    for name, secs in sorted(per_try.items()):
        ordered = sorted(math.inf if math.isnan(s) else s for s in secs)
        med = statistics.median(ordered)
        lines.append(f"| {name} | {len(secs)} | {'-' if math.isinf(med) else f'{med:.0f}'} |")
    (args.out / "push_curves.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
