"""python -m rlfw.tune: pruned trials, an objective over seeds, a study continued from Optuna's
own storage (SQLite by default, a journal file as the option), search spaces in Hydra's sweep
syntax, trial numbers from the storage."""

from __future__ import annotations

import json
import sys

import pytest

from .conftest import TINY

pytest.importorskip("optuna")

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from rlfw.plots import read_csv
from rlfw.report import numeric_column
from rlfw.tune import main, split_overrides, tune

PENDULUM = ["env=gym", "env.id=Pendulum-v1", *TINY, "logger.progress=lines"]
SPACE = "algo.tau=interval(0.001,0.05)"


def test_bad_trial_is_pruned_and_a_second_invocation_continues_the_study(tmp_path):
    common = ["tune.n_trials=1", "tune.startup_trials=1", "tune.sampler_seed=0", f"tune.dir={tmp_path}", SPACE]
    # trial 0: 50-step episodes (return about -300); trial 1: 200-step episodes (about -1200),
    # so trial 1's first evaluation is below trial 0's and the median pruner stops it
    first = tune([*common, *PENDULUM, "env.max_episode_steps=50"])
    assert [t.state for t in first.trials] == [TrialState.COMPLETE]
    url = f"sqlite:///{tmp_path / 'study.db'}"  # the default storage: Optuna's own database
    assert [t.state for t in optuna.load_study(study_name="rlfw", storage=url).trials] == [TrialState.COMPLETE]
    second = tune([*common, *PENDULUM, "env.max_episode_steps=200"])
    assert [t.state for t in second.trials] == [TrialState.COMPLETE, TrialState.PRUNED]  # grew by one
    assert len(optuna.load_study(study_name="rlfw", storage=url).trials) == 2
    pruned = tmp_path / "trial_1" / "seed_0"
    status = json.loads((pruned / "status.json").read_text())
    assert status["status"] == "pruned" and "below the median" in status["reason"]
    assert len(read_csv(pruned / "metrics.csv")) == 1  # stopped after epoch 1 of 2
    assert second.trials[1].intermediate_values.keys() == {1}
    assert second.best_trial.number == 0


def test_objective_is_the_mean_over_seeds_of_the_area_under_the_eval_curve(tmp_path):
    study = tune(["tune.n_trials=1", "tune.seeds=[0,1]", "tune.objective=auc", "tune.pruner=none",
                  f"tune.dir={tmp_path}", SPACE, *PENDULUM, "env.max_episode_steps=50"])
    (trial,) = study.trials
    per_seed = []
    for seed in (0, 1):
        path = tmp_path / "trial_0" / f"seed_{seed}" / "metrics.csv"
        values = numeric_column(read_csv(path), "eval_return", path)
        assert len(values) == 2
        per_seed.append(values.mean())
    assert per_seed[0] != per_seed[1]
    assert trial.value == pytest.approx(sum(per_seed) / 2)
    # intermediate values at seed_index x epochs + epoch: seed 0 at 1, 2 and seed 1 at 3, 4
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]


def _one_line_exit_2(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("rlfw: error: "), err
    return err


def test_tune_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert "unknown tune.objective 'best'" in _one_line_exit_2(["tune.objective=best", SPACE], capsys)
    assert "tune.seedz" in _one_line_exit_2(["tune.seedz=[0]", SPACE], capsys)
    assert "algo.tua" in _one_line_exit_2([f"tune.dir={tmp_path}", "algo.tua=interval(0.1,0.2)"], capsys)
    assert not (tmp_path / "trial_0").exists()  # refused before any run started
    assert "algo.tau=range(5,1,1) holds no value" in _one_line_exit_2(["algo.tau=range(5,1)"], capsys)
    assert "algo.tau=interval(0.1,0.05) needs low < high" in _one_line_exit_2(["algo.tau=interval(0.1,0.05)"], capsys)
    err = _one_line_exit_2([f"tune.storage={tmp_path / 'study.json'}", SPACE], capsys)
    assert "sqlite:///" in err and "journal:" in err  # the JSON study file is gone; the two forms named
    monkeypatch.setitem(sys.modules, "optuna", None)  # the tune extra not installed
    err = _one_line_exit_2([SPACE], capsys)
    assert "pip install -c constraints.txt -e '.[tune]'" in err


def test_search_spaces_in_hydra_sweep_syntax_become_optuna_distributions():
    space, fixed = split_overrides(["algo.tau=interval(0.001,0.05)", "algo.actor_lr=tag(log,interval(1e-4,3e-3))",
                                    "buffer.replay_k=choice(2,4,8)", "train.batch_size=range(64,257,64)",
                                    "train.epochs=range(1,4)", "algo.n_step=interval(1,5)", "env=FetchPush-v4"])
    assert fixed == ["env=FetchPush-v4"]
    assert space["algo.tau"] == FloatDistribution(0.001, 0.05)
    assert space["algo.actor_lr"] == FloatDistribution(1e-4, 3e-3, log=True)
    assert space["buffer.replay_k"] == CategoricalDistribution([2, 4, 8])
    assert space["train.batch_size"] == IntDistribution(64, 256, step=64)  # the end excluded, as in Hydra
    assert space["train.epochs"] == IntDistribution(1, 3)
    assert space["algo.n_step"] == FloatDistribution(1.0, 5.0)  # Hydra's interval is a float one; range for ints


def test_optuna_4_study_in_sqlite_continues_and_two_processes_never_share_a_trial_number(tmp_path):
    """A 2-trial study with tune.storage=sqlite:///<file> continues to 4 trials on a second call
    (issue 32); two rlfw.tune processes started together on one study get different trial
    numbers from the storage and different directories (issue 33 class 5)."""
    import subprocess

    assert int(optuna.__version__.split(".")[0]) >= 4
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    args = ["tune.n_trials=2", "tune.pruner=none", f"tune.storage={url}", f"tune.dir={tmp_path}", SPACE,
            *PENDULUM, "env.max_episode_steps=50", "train.epochs=1"]
    assert len(tune(args).trials) == 2
    assert [t.number for t in tune(args).trials] == [0, 1, 2, 3]
    procs = [subprocess.Popen([sys.executable, "-m", "rlfw.tune", *[a.replace("n_trials=2", "n_trials=1") for a in args]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert not any("alembic" in err or "A new study created" in err for _, err in outs)  # quiet logs
    trials = optuna.load_study(study_name="rlfw", storage=url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4, 5]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    dirs = {t.user_attrs["run_dir_seed_0"] for t in trials}
    assert dirs == {str((tmp_path / f"trial_{n}" / "seed_0").resolve()) for n in range(6)}


def test_a_study_in_a_journal_file_continues(tmp_path):
    journal = tmp_path / "nfs" / "study.log"
    args = ["tune.n_trials=1", "tune.pruner=none", f"tune.storage=journal:{journal}", f"tune.dir={tmp_path}", SPACE,
            *PENDULUM, "env.max_episode_steps=50", "train.epochs=1"]
    tune(args)
    assert journal.is_file()
    assert [t.state for t in tune(args).trials] == [TrialState.COMPLETE] * 2


def test_trials_never_share_a_directory(tmp_path):
    """A trial directory locked by another process (a second rlfw.tune on the same tune.dir),
    or holding a dead trial's files, is not used: the trial goes to trial_<n>.<k> (issue 33)."""
    import subprocess
    import sys
    import time

    from rlfw.training.rundir import holds_run, release_run_lock
    from rlfw.tune import claim_trial_dir

    held = tmp_path / "trial_0" / "seed_0"
    code = ("import sys, time; from rlfw.training.rundir import acquire_run_lock; "
            f"acquire_run_lock({str(held)!r}); print('held', flush=True); time.sleep(60)")  # fmt: skip
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        first = claim_trial_dir(tmp_path, 0, 0)
        assert first == (tmp_path / "trial_0.1" / "seed_0").resolve()
        (first / "metrics.csv").write_text("epoch\n1\n")  # this trial dies, leaving its files
        release_run_lock(first)
        assert holds_run(first)
        second = claim_trial_dir(tmp_path, 0, 0)
        assert second == (tmp_path / "trial_0.2" / "seed_0").resolve()
        release_run_lock(second)
    finally:
        other.kill()
        other.wait()
    time.sleep(0.1)
    again = claim_trial_dir(tmp_path, 0, 0)  # the other process ended: its lock went with it
    assert again == held.resolve()
    release_run_lock(again)
