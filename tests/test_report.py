"""rlfw.report's statistics: t and bootstrap intervals, IQM, aggregation over tasks, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from rlfw.report import aggregate, iqm, main, mean_interval, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.unit  # hand-made run directories, no simulator


def make_run(root: Path, name: str, overrides: list[str], task: str, values: list[float],
             success: bool = True, status: str | None = "finished") -> Path:
    """A run directory as rlfw writes it: metrics.csv, .hydra/overrides.yaml, .hydra/config.yaml,
    status.json (none when ``status`` is None)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    if status is not None:
        (run / "status.json").write_text(json.dumps({"status": status}))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": {"id": task}, "seed": 0}))
    lines = ["epoch,env_steps,wall_time_s,eval_return,eval_success_rate"]
    for i, v in enumerate(values):
        ret, rate = (-10.0, v) if success else (v, "")
        lines.append(f"{i + 1},{(i + 1) * 100},{(i + 1) * 2.0},{ret},{rate}")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def test_t_interval_uses_the_t_quantile_not_1_96():
    ys = np.array([[0.2, 0.5], [0.4, 0.7], [0.9, 0.6]])  # 3 seeds, 2 points
    mean, lo, hi = mean_interval(ys, "t")
    se = ys.std(0, ddof=1) / math.sqrt(3)
    q = scipy.stats.t.ppf(0.975, 2)
    assert q == pytest.approx(4.3027, abs=1e-4)
    np.testing.assert_allclose(mean, ys.mean(0))
    np.testing.assert_allclose(hi - mean, q * se, rtol=1e-12)
    np.testing.assert_allclose(mean - lo, q * se, rtol=1e-12)
    assert ((hi - mean) / se) == pytest.approx([4.30, 4.30], abs=0.01)  # not 1.96


def test_bootstrap_interval_resamples_seeds():
    ys = np.array([[0.0], [1.0]])  # resampled means are 0, 0.5 or 1 (probabilities 1/4, 1/2, 1/4)
    mean, lo, hi = mean_interval(ys, "bootstrap", reps=2000, seed=0)
    assert (mean[0], lo[0], hi[0]) == (0.5, 0.0, 1.0)
    ys = np.array([[0.3, 0.1], [0.5, 0.2], [0.4, 0.9], [0.6, 0.4]])
    mean, lo, hi = mean_interval(ys, "bootstrap", reps=2000, seed=1)
    _t_mean, t_lo, t_hi = mean_interval(ys, "t")
    assert np.all(lo >= ys.min(0)) and np.all(hi <= ys.max(0))  # a percentile bootstrap cannot leave the data
    assert np.all(lo > t_lo) and np.all(hi < t_hi)  # and is narrower than t for 4 seeds
    assert not np.allclose(lo, t_lo)


def test_summary_table_and_band_use_the_t_interval(tmp_path):
    finals = [0.4, 0.5, 0.6]
    for s, v in enumerate(finals):
        make_run(tmp_path, f"s{s}", ["algo=td3", f"seed={s}"], "FetchReach-v4", [0.0, v])
    _, _md, text = summarize([tmp_path])
    row = next(ln for ln in text.splitlines() if ln.startswith("| algo=td3"))
    lo, hi = (float(x) for x in row.split("|")[6].strip(" []").split(","))
    half = scipy.stats.t.ppf(0.975, 2) * np.std(finals, ddof=1) / math.sqrt(3)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-3)  # [0.252, 0.748]
    assert hi - lo > 2 * 1.96 * 0.1 / math.sqrt(3) + 0.2  # far wider than mean +- 1.96 SE
    assert "final 95% CI (t)" in text.splitlines()[0]


def test_final_has_one_meaning_and_short_or_unfinished_runs_are_warned_about(tmp_path, caplog):
    """'final' is each run's own last evaluation in the main table and the aggregate alike; a
    run shorter than its setting's longest, or one whose status is not finished, is a warning."""
    make_run(tmp_path, "s0", ["algo=td3", "seed=0"], "FetchReach-v4", [0.0, 0.2, 0.4, 0.8])
    short = make_run(tmp_path, "s1", ["algo=td3", "seed=1"], "FetchReach-v4", [0.0, 0.6], status="interrupted")
    (tmp_path / "s1" / "evaluation.json").write_text(json.dumps({"success_rate": 0.55}))
    with caplog.at_level("WARNING", logger="rlfw.report"):
        _, md, text = summarize([tmp_path], reps=200)
    row = next(ln for ln in text.splitlines() if ln.startswith("| algo=td3"))
    assert row.split("|")[4].strip().startswith("0.700 +- 0.100")  # (0.8 + 0.6) / 2, not (0.2 + 0.6) / 2
    assert row.split("|")[-2].strip() == "0.550 (1 of 2)"  # the delivered figure where there is one
    agg_row = next(ln for ln in text.splitlines() if ln.startswith("| FetchReach-v4 |"))
    assert float(agg_row.split("|")[5].split()[0]) == pytest.approx(0.7)  # the aggregate's mean: the same finals
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{short}: status 'interrupted'" in warned
    assert f"{short}: last evaluation at 200 env steps, shorter than the 400" in warned
    assert "Warnings:" in md.read_text() and "each run's own last evaluation" in md.read_text()


def test_iqm_on_hand_made_runs(tmp_path):
    # 4 seeds x 2 tasks of one setting: 8 final success rates
    a = [0.0, 0.2, 0.4, 1.0]
    b = [0.1, 0.3, 0.9, 0.6]
    for s in range(4):
        make_run(tmp_path, f"a{s}", ["env=FetchReach-v4", f"seed={s}"], "FetchReach-v4", [0.0, a[s]])
        make_run(tmp_path, f"b{s}", ["env=FetchPush-v4", f"seed={s}"], "FetchPush-v4", [0.0, b[s]])
    # sorted: 0.0 0.1 0.2 0.3 0.4 0.6 0.9 1.0 -> the middle four: 0.2 0.3 0.4 0.6
    hand = (0.2 + 0.3 + 0.4 + 0.6) / 4
    assert iqm(np.array([a, b]).T) == pytest.approx(hand)
    _, _md, text = summarize([tmp_path], reps=500)
    row = next(ln for ln in text.splitlines() if ln.startswith("| FetchPush-v4, FetchReach-v4 | default |"))
    assert row.split("|")[3].strip() == "4"  # runs per task
    iqm_cell = row.split("|")[4].strip()
    assert float(iqm_cell.split()[0]) == pytest.approx(hand, abs=5e-4)
    lo, hi = (float(x) for x in iqm_cell.split(" ", 1)[1].strip("[]").split(","))
    assert 0.0 <= lo < hand < hi <= 1.0
    assert (tmp_path / "aggregate.png").read_bytes()[:8] == PNG_MAGIC


def test_aggregation_over_two_tasks_normalises_returns_per_task(tmp_path):
    # two settings on two dense tasks with returns of different scales
    runs = {("ddpg", "Hopper-v4"): [100.0, 200.0], ("td3", "Hopper-v4"): [300.0, 500.0],
            ("ddpg", "Pendulum-v1"): [-1000.0, -800.0], ("td3", "Pendulum-v1"): [-200.0, -600.0]}
    for (algo, task), finals in runs.items():
        for s, v in enumerate(finals):
            make_run(tmp_path, f"{algo}_{task}_{s}", [f"algo={algo}", f"env={task}", f"seed={s}"],
                     task, [v - 1.0, v], success=False)
    _, _, text = summarize([tmp_path], reps=300)
    rows = {ln.split("|")[2].strip(): ln for ln in text.splitlines() if ln.startswith("| Hopper-v4, Pendulum-v1 |")}
    assert set(rows) == {"algo=ddpg", "algo=td3"}  # one setting each, over both tasks
    # Hopper: min 100, max 500; Pendulum: min -1000, max -200
    norm = {"ddpg": [0.0, 0.25, 0.0, 0.25], "td3": [0.5, 1.0, 1.0, 0.5]}
    for algo, scores in norm.items():
        mean = float(rows[f"algo={algo}"].split("|")[5].split()[0])
        assert mean == pytest.approx(np.mean(scores), abs=5e-4)
    agg = aggregate({"x": {"A": [0.1, 0.9], "B": [0.5, 0.7]}}, {"A": True, "B": True}, reps=200)
    assert agg["x"]["tasks"] == ["A", "B"] and agg["x"]["scores"].shape == (2, 2)


def _one_line_exit_2(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("rlfw.report: error: "), err
    return err


def test_report_errors_are_one_line_exit_2(tmp_path, capsys):
    good = make_run(tmp_path / "sweep", "r0", ["seed=0"], "FetchReach-v4", [0.1, 0.5])
    bad = make_run(tmp_path / "bad_csv", "r0", ["seed=0"], "FetchReach-v4", [0.1, 0.5])
    (bad / "metrics.csv").write_text((bad / "metrics.csv").read_text().replace(",0.5\n", ",abc\n"))
    assert "line 3, column eval_success_rate: 'abc'" in _one_line_exit_2([str(bad.parent)], capsys)
    broken = make_run(tmp_path / "bad_yaml", "r0", ["seed=0"], "FetchReach-v4", [0.1, 0.5])
    (broken / ".hydra" / "overrides.yaml").write_text("- seed=0\n- [unclosed\n")
    assert "overrides.yaml: not valid YAML" in _one_line_exit_2([str(broken.parent)], capsys)
    (broken / ".hydra" / "overrides.yaml").write_text("seed: 0\n")
    assert "expected a list of overrides" in _one_line_exit_2([str(broken.parent)], capsys)
    a_file = tmp_path / "out.txt"
    a_file.write_text("keep me")
    assert "is a file" in _one_line_exit_2([str(good.parent), "--out", str(a_file)], capsys)
    assert a_file.read_text() == "keep me"
    assert "no rlfw runs" in _one_line_exit_2([str(tmp_path / "empty")], capsys)


def test_report_cli_no_run_exits_2_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlfw.report", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"rlfw.report: error: no rlfw runs (metrics.csv with .hydra/) below {tmp_path}"]


def test_report_medians_count_a_seed_that_never_got_there_as_never():
    from rlfw.report import _median_reach, first_reach

    steps = np.array([1000.0, 2000.0, 3000.0])
    assert first_reach(steps, np.array([0.1, 0.9, 1.0]), 0.9) == 2000.0
    assert np.isnan(first_reach(steps, np.array([0.1, 0.5, 0.8]), 0.9))
    assert _median_reach([float("nan"), 100.0, 300.0]) == "300"
    assert _median_reach([float("nan"), float("nan"), 100.0]) == "-"
    assert _median_reach([200.0, 100.0]) == "150"
