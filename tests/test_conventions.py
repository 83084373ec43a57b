"""Conventions users bring from Stable-Baselines3 / rl-zoo (issue 32): ``train.total_steps``,
numbered checkpoints (``train.keep_checkpoints``), ``env.kwargs.<key>=`` without Hydra's ``+``,
``env.wrappers``, and unknown ids that name the user's module and ``env.imports``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import rlfw
from rlfw.config.preflight import compose_config, free_form_overrides, preflight
from rlfw.errors import ConfigError
from rlfw.plots import read_csv

from .conftest import TINY

HERE = Path(__file__).parent
NO_EPOCHS = [a for a in TINY if not a.startswith("train.epochs=")]
COIN = ["env=gym", "env.id=CoinGoal-v0", "env.imports=[user_envs]", "buffer=her", *TINY]


@pytest.fixture(autouse=True)
def _user_envs_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def test_total_steps_sets_the_run_length_in_env_steps(tmp_path):
    run = rlfw.train(["env=gym", "env.id=Pendulum-v1", *NO_EPOCHS, "train.total_steps=600",
                      f"hydra.run.dir={tmp_path / 'run'}"])  # fmt: skip
    rows = read_csv(run / "metrics.csv")
    assert [int(r["env_steps"]) for r in rows] == [200, 400, 600]  # 3 epochs of 2 x 100 env steps
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_the_default_run_with_total_steps_ends_at_that_many_env_steps(tmp_path):
    """``python -m rlfw train.total_steps=4000`` (issue 32's check): the default preset would stop
    at its first confirmed 1.0 (1,000 env steps); given the total steps it trains them all."""
    import subprocess

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlfw", "train.total_steps=4000", "eval.confirm_episodes=10",
                           "eval.final_episodes=10", "logger.plots=false", f"hydra.run.dir={run}"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [int(r["env_steps"]) for r in read_csv(run / "metrics.csv")][-1] == 4000


def test_total_steps_refusals_are_one_line():
    with pytest.raises(ConfigError, match=r"train\.total_steps=650 is not a whole number of epochs of 200 env steps.*use 600 or 800"):
        preflight(["env=gym", "env.id=Pendulum-v1", *NO_EPOCHS, "train.total_steps=650"])
    with pytest.raises(ConfigError, match=r"train.epochs=5 and train.total_steps=600 disagree: 5 epochs are 1000 env steps"):
        preflight(["env=gym", "env.id=Pendulum-v1", *NO_EPOCHS, "train.epochs=5", "train.total_steps=600"])
    assert preflight(["env=gym", "env.id=Pendulum-v1", *NO_EPOCHS, "train.epochs=3", "train.total_steps=600"]).jobs == 1
    with pytest.raises(ConfigError, match=r"train\.total_steps=0 is out of range"):
        preflight(["env=gym", "env.id=Pendulum-v1", "train.total_steps=0"])


def test_keep_checkpoints_keeps_the_last_n_epochs_and_they_load(tmp_path):
    run = rlfw.train(["env=gym", "env.id=Pendulum-v1", *TINY, "train.epochs=4", "train.keep_checkpoints=2",
                      f"hydra.run.dir={tmp_path / 'run'}"])  # fmt: skip
    names = sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))
    assert names == ["epoch_3.pt", "epoch_4.pt"]
    third = rlfw.load(run, checkpoint="epoch_3.pt")
    last = rlfw.load(run)
    obs = np.zeros(3, dtype=np.float32)
    assert not np.array_equal(third.act(obs), last.act(obs))  # an earlier policy, not last.pt again
    from rlfw.training.checkpoint import safe_load

    assert safe_load(run / "checkpoints" / "epoch_3.pt")["counters"]["epoch"] == 3
    plain = rlfw.train(["env=gym", "env.id=Pendulum-v1", *TINY, f"hydra.run.dir={tmp_path / 'plain'}"])
    assert not list((plain / "checkpoints").glob("epoch_*.pt"))  # 0 (the default): none kept


def test_env_kwargs_without_plus_and_wrappers_reach_the_env(tmp_path):
    assert free_form_overrides(["env.kwargs.p=1.0", "+env.kwargs.q=2", "seed=1"]) == ["++env.kwargs.p=1.0", "+env.kwargs.q=2", "seed=1"]
    assert free_form_overrides(["train.total_steps=4000"]) == ["train.total_steps=4000", "eval.stop_at=null"]
    assert free_form_overrides(["train.total_steps=4000", "eval.stop_at=0.5"]) == ["train.total_steps=4000", "eval.stop_at=0.5"]
    never = rlfw.train([*COIN, "env.kwargs.p=0.0", f"hydra.run.dir={tmp_path / 'never'}"])
    assert json.loads((never / "evaluation.json").read_text())["success_rate"] == 0.0  # the constructor got p=0
    wrapped = rlfw.train([*COIN, "env.kwargs.p=0.0", "env.wrappers=[user_envs:AlwaysSucceeds]",
                          f"hydra.run.dir={tmp_path / 'wrapped'}"])  # fmt: skip
    assert json.loads((wrapped / "evaluation.json").read_text())["success_rate"] == 1.0  # the wrapper's is_success
    half = rlfw.train([*COIN, "env.kwargs.p=0.0", "env.wrappers=[{user_envs.AlwaysSucceeds: {value: 0.0}}]",
                       f"hydra.run.dir={tmp_path / 'kw'}"])  # fmt: skip
    assert json.loads((half / "evaluation.json").read_text())["success_rate"] == 0.0  # its kwargs reached it


@pytest.mark.parametrize(("args", "expected"), [
    (["env.kwargs.nope=1"], "env.kwargs.nope: CoinGoal-v0's constructor takes no such argument"),
    (["env.wrappers=[no_such_module:W]"], "env.wrappers[0]: cannot import module 'no_such_module'"),
    (["env.wrappers=[user_envs:NoSuchWrapper]"], "env.wrappers[0]: module 'user_envs' has no 'NoSuchWrapper'"),
    (["env.wrappers=[{user_envs.AlwaysSucceeds: {valu: 1}}]"], "env.wrappers[0]: user_envs:AlwaysSucceeds does not take ['valu']"),
    (["env.wrappers=[notapath]"], "env.wrappers[0]: 'notapath' is not a wrapper's import path"),
])  # fmt: skip
def test_bad_env_options_are_one_line_at_preflight(args, expected):
    with pytest.raises(ConfigError) as err:
        preflight(free_form_overrides([*COIN, *args]))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_unknown_ids_name_the_user_s_module_ids_and_env_imports():
    with pytest.raises(ConfigError) as err:
        preflight(["env=gym", "env.id=user_envs:UserReech-v0"])
    line = str(err.value)
    assert "the modules register: UserReach-v0" in line and "Hopper" not in line, line
    with pytest.raises(ConfigError) as err:
        preflight(["env=gym", "env.id=MyOwnEnv-v0"])
    assert "env.imports=[my_pkg.envs]" in str(err.value) and "my_pkg.envs:MyOwnEnv-v0" in str(err.value)


def test_a_saved_wrapper_is_code_and_needs_trust(tmp_path):
    """A run directory whose config names a wrapper's module is data: rlfw.load refuses to
    import it unless the user names the module again (issue 33 class 1)."""
    run = rlfw.train(["env=gym", "env.id=Pendulum-v1", *TINY, "env.wrappers=[user_envs:AlwaysSucceeds]",
                      f"hydra.run.dir={tmp_path / 'run'}"])  # only the wrapper names user_envs
    assert compose_config(["env=gym", "env.id=Pendulum-v1", "env.wrappers=[user_envs:AlwaysSucceeds]"]).env.imports == []
    with pytest.raises(ConfigError, match="imports user_envs"):
        rlfw.load(run)
    made = sys.modules["user_envs"].AlwaysSucceeds.made
    policy = rlfw.load(run, imports=["user_envs"])
    assert policy.env_id == "Pendulum-v1" and sys.modules["user_envs"].AlwaysSucceeds.made > made
