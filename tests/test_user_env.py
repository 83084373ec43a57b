"""A user's own environments from the command line: ``env.imports`` and ``module:Env-v0`` ids.

The env module is tests/user_envs.py (it registers ``UserReach-v0``, a goal env, and
``UserDense-v0``, a dense one); the subprocesses find it through PYTHONPATH only (their working
directory is a temp dir), as a user's package would be found.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlfw.config.preflight import preflight
from rlfw.errors import ConfigError

from .conftest import TINY

TESTS = Path(__file__).resolve().parent


def run_module(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` with tests/ added to the PYTHONPATH the test runs with."""
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(TESTS)) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip


def epochs_of(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_env_imports_trained_resumed_and_evaluated_from_the_cli(tmp_path):
    """env.imports=[user_envs]: train one epoch, resume to two, evaluate, each a fresh process
    that knows UserReach-v0 only by importing the module the saved config names."""
    run = tmp_path / "run"
    args = ["env=gym", "env.id=UserReach-v0", "env.imports=[user_envs]", "buffer=her", *TINY]
    trained = run_module("rlfw", [*args, "train.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert epochs_of(run) == [1]
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["env"]["imports"] == ["user_envs"] and saved["env"]["id"] == "UserReach-v0"

    refused = run_module("rlfw", [f"resume={run}", "train.epochs=2"], tmp_path)  # the run dir names user_envs
    assert refused.returncode == 2 and "imports user_envs to make its env" in refused.stderr, refused.stderr[-2000:]
    resumed = run_module("rlfw", [f"resume={run}", "train.epochs=2", "env.imports=[user_envs]"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert epochs_of(run) == [1, 2]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"

    evaluated = run_module("rlfw.evaluate", [f"run_dir={run}", "episodes=3", "imports=[user_envs]"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    summary = json.loads((run / "evaluation.json").read_text())
    assert summary["episodes"] == 3 and summary["checkpoint_epoch"] == 2
    assert summary["success_rate"] is not None  # the goal env reports is_success
    assert -10.0 <= summary["return_mean"] <= 0.0  # 10-step episodes of {-1, 0} rewards


@pytest.mark.slow  # moved out of the default run (about 15 minutes on 2 cores); nox -s slow and CI run it
def test_module_colon_id_trained_and_evaluated_from_the_cli(tmp_path):
    """Gymnasium's module:Env-v0 form: the module is imported, the id keeps its prefix, and
    rlfw.evaluate makes the env from the saved id in a fresh process."""
    run = tmp_path / "run"
    trained = run_module(
        "rlfw", ["env=gym", "env.id=user_envs:UserDense-v0", *TINY, "train.epochs=1", f"hydra.run.dir={run}"], tmp_path
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "training td3 on user_envs:UserDense-v0" in trained.stderr + trained.stdout
    assert epochs_of(run) == [1]
    evaluated = run_module("rlfw.evaluate", [f"run_dir={run}", "episodes=2", "imports=[user_envs]"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    summary = json.loads((run / "evaluation.json").read_text())
    assert summary["episodes"] == 2 and summary["success_rate"] is None  # a dense env
    assert summary["return_mean"] < 0.0  # -distance to the target at every step


# Each case: the env overrides, a fragment of the one error line. All stop at preflight.
BAD_USER_ENVS = [
    (["env.id=UserReach-v0", "env.imports=[no_such_module_xyz]"], "env.imports: cannot import module 'no_such_module_xyz'"),
    (["env.id=no_such_module_xyz:UserDense-v0"], "env.id 'no_such_module_xyz:UserDense-v0': cannot import module"),
    (["env.id=user_envs:NoSuchEnv-v0"], "env.id 'user_envs:NoSuchEnv-v0' is not a registered Gymnasium id after importing user_envs"),
    (["env.id=NoSuchEnv-v0", "env.imports=[user_envs]"], "env.id 'NoSuchEnv-v0' is not a registered Gymnasium id after importing user_envs"),
    (["env.id=UserReach-v0", "env.imports=['my envs']"], "env.imports: 'my envs' is not a Python module name"),
    (["env.id=UserReach-v0", "env.imports=[broken_user_envs]"], "env.imports: importing module 'broken_user_envs' failed: RuntimeError: no licence"),
    (["env.id=UserReach-v0", "env.imports=user_envs"], "invalid value for 'env.imports'"),  # not a list
    (["env.id=EndlessDense-v0", "env.imports=[user_envs]", "buffer=uniform"],
     "env.id 'EndlessDense-v0' has no time limit (it was registered without max_episode_steps)"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_USER_ENVS, ids=[" ".join(a) for a, _ in BAD_USER_ENVS])
def test_bad_user_env_is_one_line_at_preflight(tmp_path, monkeypatch, capsys, args, expected):
    import rlfw.__main__ as cli

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "broken_user_envs.py").write_text("raise RuntimeError('no licence')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.chdir(tmp_path)

    def hydra_started():
        raise AssertionError("preflight let it through: Hydra started")

    monkeypatch.setattr(cli, "train", hydra_started)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["env=gym", *args])
    assert exit_.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rlfw: error: "), lines
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "outputs").exists()


def test_user_env_ids_pass_preflight_once_imported(monkeypatch):
    """Both forms resolve at preflight (the positive side of the table above)."""
    monkeypatch.syspath_prepend(str(TESTS))
    assert preflight(["env=gym", "env.id=UserReach-v0", "env.imports=[user_envs]", "buffer=her"]).jobs == 1
    assert preflight(["env=gym", "env.id=user_envs:UserDense-v0"]).jobs == 1
    with pytest.raises(ConfigError, match="not a Gymnasium-Robotics Fetch task"):
        preflight(["env=fetch", "env.id=user_envs:UserReach-v0"])


def test_a_non_vectorised_compute_reward_is_called_row_by_row():
    """A GoalEnv whose compute_reward returns one scalar for a batch (the norm over the whole
    batch) is detected and called once per row: HER gets each row's own reward (issue 33)."""
    import gymnasium as gym
    import numpy as np

    from rlfw.envs import FAMILIES

    class ScalarReward(gym.Env):
        def compute_reward(self, achieved_goal, desired_goal, info):
            return -float(np.linalg.norm(np.asarray(achieved_goal) - np.asarray(desired_goal)) > 0.1)

    reward, _ = FAMILIES.get("gym").target.goal_functions(ScalarReward())
    ag = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    g = np.zeros((3, 2))
    np.testing.assert_array_equal(reward(ag, g), [0.0, -1.0, -1.0])
    np.testing.assert_array_equal(reward(ag[:1], g[:1]), [0.0])  # from then on per row, batches of one too
    np.testing.assert_array_equal(reward(ag[::-1], g), [-1.0, -1.0, 0.0])


FAULTS = [
    ("nan_obs", "returned a non-finite observation (nan"),
    ("inf_obs", "returned a non-finite observation (inf"),
    ("nan_reward", "returned a non-finite reward (nan"),
    ("nan_goal", "returned a non-finite achieved_goal (nan"),
    ("raise", "raised RuntimeError: the simulator lost its licence in step"),
    ("shape", "raised ValueError"),
]


@pytest.mark.parametrize(("fault", "expected"), FAULTS, ids=[f[0] for f in FAULTS])
def test_a_faulty_env_is_named_as_such(tmp_path, monkeypatch, fault, expected):
    """NaN/inf observations, goals and rewards, an exception in step and a wrongly shaped
    observation end the run with one line that names the env, what it did and the env step,
    never "training diverged"; status.json says failed, without a resume hint (no checkpoint)."""
    from rlfw.config.preflight import compose_config
    from rlfw.errors import EnvFault
    from rlfw.training.loop import TrainLoop

    monkeypatch.syspath_prepend(str(TESTS))
    cfg = compose_config(["env=gym", "env.id=FaultyReach-v0", "env.imports=[user_envs]", "buffer=her", *TINY,
                          f"+env.kwargs.fault={fault}", "+env.kwargs.at_step=25"])  # fmt: skip
    with pytest.raises(EnvFault) as err:
        TrainLoop(cfg, tmp_path).run()
    text = str(err.value)
    assert text.startswith("env FaultyReach-v0 ") and expected in text and "at env step" in text, text
    assert "diverged" not in text and "\n" not in text
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "resume" not in status


def test_a_run_directory_cannot_make_rlfw_run_its_code(tmp_path, monkeypatch):
    """A run dir whose saved config names env.imports=[planted] and holds planted.py: evaluate,
    export, load and resume refuse it in one line unless the user names the module again, and
    the module is never imported (it would write a marker file)."""
    import shutil

    import rlfw
    from rlfw.export import export_policy

    run = tmp_path / "run"
    trained = run_module("rlfw", ["env=gym", "env.id=UserReach-v0", "env.imports=[user_envs]", "buffer=her", *TINY,
                                  "train.epochs=1", f"hydra.run.dir={run}"], tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    marker = tmp_path / "ran"
    (run / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nfrom user_envs import *\n")
    for name in ("last.pt", "best.pt"):  # the planted module named in the saved config
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        state["config"]["env"]["imports"] = ["planted"]
        torch.save(state, run / "checkpoints" / name)
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    cfg["env"]["imports"] = ["planted"]
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))

    evaluated = run_module("rlfw.evaluate", ["run_dir=.", "episodes=1"], run)  # cd <run>: planted.py importable
    assert evaluated.returncode == 2 and "imports planted to make its env" in evaluated.stderr, evaluated.stderr
    assert "imports=[planted]" in evaluated.stderr and len(evaluated.stderr.strip().splitlines()) == 1
    resumed = run_module("rlfw", ["resume=.", "train.epochs=2"], run)
    assert resumed.returncode == 2 and "env.imports=[planted]" in resumed.stderr, resumed.stderr
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run))
    with pytest.raises(ConfigError, match=r"rlfw\.load\(run_dir, imports=\[planted\]\)"):
        rlfw.load(run)
    with pytest.raises(ConfigError, match="imports planted"):
        export_policy(run, "safetensors")
    assert not marker.exists()  # nothing of the run directory ran
    shutil.rmtree(run / "export", ignore_errors=True)
    trusted = run_module("rlfw.evaluate", ["run_dir=.", "episodes=1", "imports=[planted]"], run)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert marker.exists()  # named again by the user: imported


def test_video_of_an_env_that_cannot_render_is_one_line(tmp_path):
    """rlfw.evaluate video=true on UserDense-v0 (no render_mode argument, no render modes): one
    line naming the env, exit status 2 (issue 32, item 7)."""
    run = tmp_path / "run"
    trained = run_module("rlfw", ["env=gym", "env.id=UserDense-v0", "env.imports=[user_envs]", *TINY, "train.epochs=1",
                                  f"hydra.run.dir={run}"], tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    video = run_module("rlfw.evaluate", [f"run_dir={run}", "episodes=1", "video=true", "imports=[user_envs]"], tmp_path)
    assert video.returncode == 2, video.stderr[-2000:]
    assert video.stderr.startswith("rlfw.evaluate: error: UserDense-v0 cannot render") and video.stderr.count("\n") == 1
