"""The evaluation protocol (issue 30): decisions on confirmed figures, and the final evaluation
of what a run delivers.

``CoinGoal-v0`` (tests/user_envs.py) has one-step episodes whose success is a coin of rate ``p``
whatever the action, so every policy's true success rate is known: a 10-episode evaluation of
a true 0.7 reaches 0.9 by luck (probability 0.15 each time), a 100-episode confirmation does
not.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from rlfw.core.stats import describe, episode_summary, t_interval, wilson_interval

TESTS = Path(__file__).resolve().parent

COIN = [
    "env=gym",
    "env.id=CoinGoal-v0",
    "env.imports=[user_envs]",
    "buffer=uniform",
    "train.epochs=30",
    "train.cycles_per_epoch=1",
    "train.steps_per_cycle=4",
    "train.updates_per_cycle=1",
    "train.batch_size=4",
    "train.learning_starts=0",
    "algo.actor_hidden=[8]",
    "algo.critic_hidden=[8]",
    "buffer.capacity=1000",
    "logger.plots=false",
    "eval.episodes=10",
    "eval.num_envs=10",
    "eval.stop_at=0.9",
]


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def value(cell: str) -> float:
    return float(cell) if cell else math.nan


def train_coin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, *extra: str) -> Path:
    import rlfw

    monkeypatch.syspath_prepend(str(TESTS))
    return rlfw.train([*COIN, *extra, f"hydra.run.dir={tmp_path / name}"])


def test_a_lucky_cheap_evaluation_does_not_stop_the_run_but_would_without_confirmation(tmp_path, monkeypatch):
    """p = 0.7: some 10-episode evaluation scores >= 0.9 by luck; its confirmation (100 fresh
    episodes) does not, so the run trains every epoch. The same run deciding on the cheap
    evaluation (eval.confirm_episodes=0) stops at the lucky one."""
    run = train_coin(tmp_path, monkeypatch, "confirmed", "+env.kwargs.p=0.7")
    table = rows(run)
    cheap = [value(r["eval_success_rate"]) for r in table]
    confirmed = [value(r["confirm_success_rate"]) for r in table]
    lucky = [i for i, c in enumerate(cheap) if c >= 0.9]
    assert lucky, "no lucky cheap evaluation: the test shows nothing"
    assert all(math.isfinite(confirmed[i]) for i in lucky)  # each lucky one was confirmed ...
    assert all(c < 0.9 for c in confirmed if math.isfinite(c))  # ... and none held
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and "stop_reason" not in status and len(table) == 30

    cheap_run = train_coin(tmp_path, monkeypatch, "cheap", "+env.kwargs.p=0.7", "eval.confirm_episodes=0")
    stopped = json.loads((cheap_run / "status.json").read_text())
    cheap_rows = rows(cheap_run)
    assert stopped["stop_reason"].startswith("eval_success_rate") and len(cheap_rows) < 30
    assert value(cheap_rows[-1]["eval_success_rate"]) >= 0.9
    # what it delivers is the coin's rate, not the 0.9 it stopped on
    assert json.loads((cheap_run / "evaluation.json").read_text())["success_ci"][1] < 0.9


def test_a_confirmed_figure_stops_the_run_and_best_pt_is_the_confirmed_best(tmp_path, monkeypatch):
    """p = 0.97: the first confirmation reaches 0.9 and stops the run. In the p = 0.7 run,
    confirmations run exactly when the cheap evaluation reaches stop_at or beats the best
    confirmed figure so far, and best.pt holds the epoch of the best confirmed figure."""
    from rlfw.training.checkpoint import safe_load

    good = train_coin(tmp_path, monkeypatch, "good", "+env.kwargs.p=0.97")
    status = json.loads((good / "status.json").read_text())
    assert status["stop_reason"].startswith("confirm_success_rate")
    last = rows(good)[-1]
    assert value(last["confirm_success_rate"]) >= 0.9 and len(rows(good)) < 30

    run = train_coin(tmp_path, monkeypatch, "coin", "+env.kwargs.p=0.7", "eval.stop_at=null", "train.epochs=15")
    best_so_far = -math.inf
    best_epoch = None
    for r in rows(run):
        cheap, confirmed = value(r["eval_success_rate"]), value(r["confirm_success_rate"])
        assert math.isfinite(confirmed) == (cheap > best_so_far), r  # the trigger rule
        if math.isfinite(confirmed) and confirmed > best_so_far:
            best_so_far, best_epoch = confirmed, int(r["epoch"])
    best = safe_load(run / "checkpoints" / "best.pt")
    assert best["best"] == {"metric": "confirm_success_rate", "value": best_so_far, "epoch": best_epoch}
    assert int(best["counters"]["epoch"]) == best_epoch


def test_every_finished_run_ends_with_the_evaluation_of_what_it_delivers(tmp_path, monkeypatch):
    """evaluation.json: best.pt over eval.final_episodes fresh episodes with a Wilson interval
    that holds the true rate; the run's last log line gives it; status.json repeats it."""
    run = train_coin(tmp_path, monkeypatch, "final", "+env.kwargs.p=0.7", "eval.stop_at=null", "train.epochs=3",
                     "eval.final_episodes=400")  # fmt: skip
    summary = json.loads((run / "evaluation.json").read_text())
    assert summary["episodes"] == 400 and summary["checkpoint"] == "best.pt"
    lo, hi = summary["success_ci"]
    assert lo < 0.7 < hi and hi - lo < 0.1
    assert abs(summary["success_rate"] - 0.7) < 0.06
    last = (run / "rlfw.log").read_text().splitlines()[-1].split(" - ", 1)[1]  # the log file's last line
    assert last == f"delivered best.pt (epoch {summary['checkpoint_epoch']}): {describe(summary)}"
    assert last.startswith("delivered best.pt (epoch ") and "over 400 episodes" in last
    assert json.loads((run / "status.json").read_text())["delivered"]["episodes"] == 400

    skipped = train_coin(tmp_path, monkeypatch, "nofinal", "eval.stop_at=null", "train.epochs=1", "eval.final_episodes=0")
    assert not (skipped / "evaluation.json").exists()


def test_wilson_and_t_intervals_match_their_formulas():
    """Wilson: 9/10 is [0.596, 0.982] (the issue's figure); 0/n and n/n stay in [0, 1]. t: the
    interval scipy gives for the same data."""
    import numpy as np
    import scipy.stats

    lo, hi = wilson_interval(9, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.596, 0.982)
    assert wilson_interval(0, 100)[0] == 0.0 and wilson_interval(100, 100)[1] == 1.0
    x = np.array([3.0, 5.0, 4.0, 8.0, 6.0])
    ref = scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    assert np.allclose(t_interval(x), ref)
    s = episode_summary(x, [1.0, 0.0, 1.0, 1.0, math.nan])
    assert s["success_rate"] == 0.75 and s["episodes"] == 5 and s["success_ci"] == list(wilson_interval(3, 4))
    assert describe(episode_summary(x, [math.nan] * 5)).startswith("return 5.2 [")
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_the_protocol_keys_are_range_checked(compose):
    from rlfw.config.validate import validate
    from rlfw.errors import ConfigError

    assert compose([]).eval.confirm_episodes == 100 and compose([]).eval.final_episodes == 100
    for key in ("confirm_episodes", "final_episodes"):
        with pytest.raises(ConfigError, match=f"eval.{key}=-1 is out of range"):
            validate(compose([f"eval.{key}=-1"]))


def test_the_default_run_delivers_a_confirmed_fetch_reach_policy(tmp_path):
    """``python -m rlfw`` (TD3 + HER on FetchReach-v4) stops on a confirmed success rate and
    ends with evaluation.json over >= 100 episodes; its last line gives the figure and interval.
    Also the default test run's one learning check: the default run solves its task."""
    from .conftest import run_cli

    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    summary = json.loads((run / "evaluation.json").read_text())
    assert summary["episodes"] >= 100 and summary["checkpoint"] == "best.pt"
    assert summary["success_rate"] >= 0.95, summary
    status = json.loads((run / "status.json").read_text())
    assert status["stop_reason"].startswith("confirm_success_rate")
    last = (run / "rlfw.log").read_text().splitlines()[-1].split(" - ", 1)[1]
    lo, hi = summary["success_ci"]
    assert last == (f"delivered best.pt (epoch {summary['checkpoint_epoch']}): success "
                    f"{summary['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] over {summary['episodes']} episodes")


def test_tuning_scores_a_run_by_what_it_delivers():
    """tune.objective=final: the trial's value is the final evaluation of the delivered
    checkpoint (loop.delivered), not the last cheap evaluation; without one, the last evaluation."""
    from types import SimpleNamespace

    from rlfw.tune import OptunaReport

    report = OptunaReport(SimpleNamespace(number=0), "auto", 0)
    goal_loop = SimpleNamespace(info=SimpleNamespace(goal=True), delivered={"success_rate": 0.83, "return_mean": -9.0})
    report.on_end(goal_loop)
    assert report.delivered == 0.83
    dense = OptunaReport(SimpleNamespace(number=0), "auto", 0)
    dense.on_end(SimpleNamespace(info=SimpleNamespace(goal=False), delivered={"success_rate": None, "return_mean": 3100.0}))
    assert dense.delivered == 3100.0
    none = OptunaReport(SimpleNamespace(number=0), "auto", 0)
    none.on_end(SimpleNamespace(info=SimpleNamespace(goal=True), delivered=None))
    assert none.delivered is None
