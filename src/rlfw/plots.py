"""PNG plots of one run (next to metrics.csv) and of several runs (``python -m rlfw.report``)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlfw.errors import ConfigError

RUN_PLOTS = ("returns.png", "success.png", "losses.png", "q_values.png")


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a run's CSV file as dicts (an empty list if the file is missing).

    Raises:
        ConfigError: a link, not a regular file, too large or not text
            (:func:`rlfw.core.runfiles.read_text`).
    """
    import io

    from rlfw.core.runfiles import read_text

    if not path.exists() and not path.is_symlink():
        return []
    try:
        return list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    except csv.Error as err:  # a field past the csv module's limit, a NUL byte: not rlfw's CSV
        raise ConfigError(f"{path}: not a CSV rlfw wrote ({err})") from None


def column(rows: Sequence[dict[str, str]], key: str) -> np.ndarray:
    """A float column; empty cells and missing keys are NaN."""
    return np.array([float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows])


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    if len(x) == 0:
        return x
    c = np.cumsum(np.insert(np.nan_to_num(x), 0, 0.0))
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(0, n - window)
    return (c[n] - c[lo]) / (n - lo)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    return plt, fig, ax


def plot_run(run_dir: str | Path) -> dict[Path, int]:
    """Write the run's PNGs from metrics.csv and episodes.csv; returns {path: number of curves}.

    - ``returns.png``: return per training episode, raw and smoothed (moving average),
    - ``success.png``: train and eval success rate per epoch (eval return if no success),
    - ``losses.png``: actor and critic loss per epoch,
    - ``q_values.png``: mean Q(s, a) per epoch,
    - ``entropy.png`` (when metrics.csv has an ``alpha`` column: SAC, TQC, CrossQ): the entropy
      temperature (log scale) and the policy entropy estimate per epoch.
    """
    run_dir = Path(run_dir)
    metrics = read_csv(run_dir / "metrics.csv")
    episodes = read_csv(run_dir / "episodes.csv")
    out: dict[Path, int] = {}
    epoch = column(metrics, "epoch")

    plt, fig, ax = _figure()
    ret = column(episodes, "return")
    if len(ret):
        x = np.arange(1, len(ret) + 1)
        ax.plot(x, ret, alpha=0.3, lw=0.8, label="return")
        ax.plot(x, smooth(ret, max(1, len(ret) // 20)), lw=2, label="smoothed")
    ax.set(xlabel="training episode", ylabel="return", title="Return per episode")
    ax.legend(loc="best")
    out[_save(plt, fig, run_dir / "returns.png")] = len(ax.lines)

    plt, fig, ax = _figure()
    train_s, eval_s = column(metrics, "train_success_rate"), column(metrics, "eval_success_rate")
    if np.isfinite(eval_s).any() or np.isfinite(train_s).any():
        ax.plot(epoch, train_s, marker="o", label="train")
        ax.plot(epoch, eval_s, marker="o", label="eval")
        ax.set(ylabel="success rate", ylim=(-0.05, 1.05), title="Success rate per epoch")
    else:
        ax.plot(epoch, column(metrics, "train_return"), marker="o", label="train return")
        ax.plot(epoch, column(metrics, "eval_return"), marker="o", label="eval return")
        ax.set(ylabel="return", title="Return per epoch")
    ax.set(xlabel="epoch")
    ax.legend(loc="best")
    out[_save(plt, fig, run_dir / "success.png")] = len(ax.lines)

    plt, fig, ax = _figure()
    ax.plot(epoch, column(metrics, "actor_loss"), marker="o", label="actor loss")
    ax.plot(epoch, column(metrics, "critic_loss"), marker="o", label="critic loss")
    ax.set(xlabel="epoch", ylabel="loss", title="Losses (mean per epoch)")
    ax.legend(loc="best")
    out[_save(plt, fig, run_dir / "losses.png")] = len(ax.lines)

    plt, fig, ax = _figure()
    ax.plot(epoch, column(metrics, "q_mean"), marker="o", label="mean Q(s, a)")
    ax.set(xlabel="epoch", ylabel="Q", title="Q values (mean per epoch)")
    ax.legend(loc="best")
    out[_save(plt, fig, run_dir / "q_values.png")] = len(ax.lines)

    if metrics and "alpha" in metrics[0]:  # entropy-regularised algorithms (sac, tqc, crossq)
        plt, fig, ax = _figure()
        ax.plot(epoch, column(metrics, "alpha"), marker="o", color="C0", label="alpha")
        ax.set(
            xlabel="epoch",
            ylabel="alpha",
            yscale="log",
            title="Entropy temperature and policy entropy",
        )
        ax2 = ax.twinx()
        ax2.plot(epoch, column(metrics, "entropy"), marker="s", color="C1", label="entropy (nats)")
        ax2.set(ylabel="entropy (nats)")
        fig.legend(loc="upper right")
        out[_save(plt, fig, run_dir / "entropy.png")] = len(ax.lines) + len(ax2.lines)
    return out


def _save(plt, fig, path: Path) -> Path:
    """Save atomically (a temp file renamed over ``path``) and close the figure. The temp file
    is created fresh (:func:`rlfw.core.runfiles.create_fresh`) and the rename replaces a link
    planted at ``path``: nothing is written through a link."""
    import os

    from rlfw.core.runfiles import create_fresh

    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        with os.fdopen(create_fresh(tmp), "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    os.replace(tmp, path)
    return path
