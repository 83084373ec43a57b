"""The Python API (rlfw.train, rlfw.load, rlfw.Policy) and ``python -m rlfw --help``."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import rlfw
from rlfw.config.preflight import compose_config
from rlfw.errors import ConfigError

REACH = ["env=FetchReach-v4", "train.epochs=1", "train.cycles_per_epoch=2", "eval.episodes=2", "logger.plots=false"]


@pytest.fixture(scope="module")
def reach(tmp_path_factory):
    """(run dir, root logger handlers before, after) of a tiny FetchReach run."""
    run_dir = tmp_path_factory.mktemp("api") / "reach"
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    before = logging.getLogger().handlers[:]
    out = rlfw.train([*REACH, f"hydra.run.dir={run_dir}"])
    # no Hydra state is left in the caller's process (a run's HydraConfig once leaked into
    # later code: a wandb run of the caller was named after this run's env)
    assert not HydraConfig.initialized() and not GlobalHydra.instance().is_initialized()
    return out, before, logging.getLogger().handlers[:]


@pytest.fixture(scope="module")
def reach_policy(reach):
    return rlfw.load(reach[0])


def test_train_writes_the_cli_run_dir(reach):
    run_dir, before, after = reach
    assert run_dir.is_absolute() and run_dir.name == "reach"
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "id: FetchReach-v4" in saved and "epochs: 1" in saved
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "train.epochs=1" in overrides and "hydra" not in overrides
    assert (run_dir / ".hydra" / "hydra.yaml").is_file() and (run_dir / "rlfw.log").is_file()
    assert after == before  # Hydra's logging set-up is undone


def test_load_goal_env_policy(reach_policy):
    p = reach_policy
    assert p.env_id == "FetchReach-v4"
    assert isinstance(p.observation_space, gym.spaces.Dict)
    assert isinstance(p.action_space, gym.spaces.Box) and p.action_space.shape == (4,)
    assert isinstance(rlfw.load, type(rlfw.train)) and isinstance(p, rlfw.Policy)


def test_predict_single_and_batched_goal_dicts(reach_policy):
    p = reach_policy
    env = gym.make(p.env_id)
    obs, _ = env.reset(seed=0)
    a = p.act(obs)
    assert a.shape == (4,) and a.dtype == np.float32
    assert np.all(a >= p.action_space.low) and np.all(a <= p.action_space.high)
    own = p.agent.act(obs["observation"][None].astype(np.float32), obs["desired_goal"][None].astype(np.float32))
    np.testing.assert_allclose(a, own[0], atol=1e-6)  # bounds [-1, 1]: no rescaling
    env.step(a)  # the env takes it
    env.close()
    # Stable-Baselines3's signature: action, state = model.predict(obs, state, episode_start, deterministic)
    action, state = p.predict(obs, state=None, episode_start=np.array([True]), deterministic=True)
    assert state is None and action.shape == (4,)
    np.testing.assert_array_equal(action, a)

    venv = gym.make_vec(p.env_id, num_envs=3, vectorization_mode="sync")
    vobs, _ = venv.reset(seed=1)
    batch = p.act(vobs)
    assert batch.shape == (3, 4)
    assert np.all(batch >= -1.0) and np.all(batch <= 1.0)
    own = p.agent.act(vobs["observation"].astype(np.float32), vobs["desired_goal"].astype(np.float32))
    np.testing.assert_allclose(batch, own, atol=1e-6)
    first = {k: v[0] for k, v in vobs.items()}
    np.testing.assert_allclose(p.act(first), batch[0], atol=1e-6)
    actions, _ = p.predict(vobs)
    np.testing.assert_array_equal(actions, batch)
    venv.step(batch)
    venv.close()


def test_predict_rejects_wrong_inputs(reach_policy):
    p = reach_policy
    env = gym.make(p.env_id)
    obs, _ = env.reset(seed=0)
    env.close()
    with pytest.raises(TypeError, match="goal env"):
        p.act(obs["observation"])
    with pytest.raises(ValueError, match="observation has shape"):
        p.act({**obs, "observation": obs["observation"][:5]})
    with pytest.raises(ValueError, match="2 observations but 3 desired goals"):
        p.act({"observation": np.stack([obs["observation"]] * 2), "desired_goal": np.zeros((3, 3))})
    with pytest.raises(NotImplementedError, match="deterministic"):
        p.act(obs, deterministic=False)  # TD3 with Gaussian action noise


def test_load_missing_checkpoint(reach, tmp_path):
    with pytest.raises(FileNotFoundError):
        rlfw.load(reach[0], checkpoint="nope.pt")
    with pytest.raises(FileNotFoundError):
        rlfw.load(tmp_path)


def test_hopper_policy_takes_an_array(tmp_path):
    run_dir = rlfw.train(["env=Hopper-v4", "train.epochs=1", "train.cycles_per_epoch=300", "train.learning_starts=100",
                          "eval.episodes=1", "logger.plots=false", f"hydra.run.dir={tmp_path / 'hopper'}"])  # fmt: skip
    p = rlfw.load(run_dir)
    assert p.env_id == "Hopper-v4" and isinstance(p.observation_space, gym.spaces.Box)
    env = gym.make("Hopper-v4")
    obs, _ = env.reset(seed=0)
    a = p.act(obs)
    assert a.shape == (3,) and np.all(np.abs(a) <= 1.0)
    np.testing.assert_allclose(a, p.agent.act(obs[None].astype(np.float32))[0], atol=1e-6)
    assert p.act(np.stack([obs, obs])).shape == (2, 3)
    env.step(a)
    env.close()
    with pytest.raises(TypeError, match="array observations"):
        p.act({"observation": obs})


def test_pendulum_actions_come_back_in_the_env_bounds(tmp_path, monkeypatch):
    overrides = ["env=gym", "env.id=Pendulum-v1", "buffer=uniform", "train.epochs=1", "train.cycles_per_epoch=300",
                 "train.learning_starts=100", "eval.episodes=1", "logger.plots=false"]  # fmt: skip
    cfg = compose_config(overrides)  # composes: env=gym with a uniform buffer
    assert cfg.buffer.relabel == "none" and cfg.env.id == "Pendulum-v1"
    monkeypatch.chdir(tmp_path)
    run_dir = rlfw.train(overrides)  # the default run dir, relative to the current directory
    rel = run_dir.relative_to(tmp_path)
    assert rel.parts[0] == "outputs" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", rel.parts[1])
    assert re.fullmatch(r"\d{2}-\d{2}-\d{2}_\d+-[0-9a-f]{4}_td3_uniform_gaussian_gym", rel.parts[2])  # <time>_<pid>-<hex>_...
    p = rlfw.load(run_dir)
    np.testing.assert_allclose(p.action_space.low, [-2.0])
    np.testing.assert_allclose(p.action_space.high, [2.0])
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    a = p.act(obs)
    assert a.shape == (1,) and -2.0 <= a[0] <= 2.0
    np.testing.assert_allclose(a, 2.0 * p.agent.act(obs[None])[0], atol=1e-6)
    env.step(a)
    env.close()
    obs_batch = np.random.default_rng(0).uniform(-1, 1, size=(64, 3)).astype(np.float32) * [1, 1, 8]
    batch = p.act(obs_batch)
    assert batch.shape == (64, 1) and np.all(np.abs(batch) <= 2.0)
    np.testing.assert_allclose(batch, 2.0 * p.agent.act(obs_batch.astype(np.float32)), atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        ["buffer=hr"],
        ["algo.tua=1"],
        ["train.batch_size=big"],
        ["env=hopper", "buffer=her"],
        ["hydra.run.dirr=x"],
        ["-m", "seed=0,1"],
        ["resume=outputs/x"],
    ],
)
def test_bad_overrides_raise_one_line_config_error(tmp_path, monkeypatch, overrides):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        rlfw.train(overrides)
    assert len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # nothing started


def test_train_inside_another_hydra_context_uses_rlfw_conf():
    from hydra import initialize
    from hydra.core.global_hydra import GlobalHydra

    with initialize(version_base="1.3", config_path=None):
        outer = GlobalHydra.instance().hydra
        with pytest.raises(ConfigError, match="unknown buffer 'hr'"):
            rlfw.train(["buffer=hr"])
        assert GlobalHydra.instance().hydra is outer  # put back


def test_import_rlfw_is_light():
    code = "import sys, rlfw; assert 'rlfw.api' not in sys.modules and 'torch' not in sys.modules; print(rlfw.Policy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rlfw.api.Policy" in out.stdout


def test_a_registry_read_lists_every_builtin_option():
    # a fresh interpreter that imports only rlfw.algos: sac/tqc/crossq live in modules it has
    # not imported, and the first read of any registry must still list them
    code = (
        "import sys; from rlfw.algos import ALGOS\n"
        "assert 'rlfw.algos.sac' not in sys.modules and 'rlfw.noise' not in sys.modules\n"
        "print(ALGOS.names(), 'crossq' in ALGOS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['crossq',", "'ddpg',", "'sac',", "'td3',", "'tqc']", "True"]


def test_cli_help_lists_groups_and_options_only():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-m", "rlfw", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for word in ("td3", "her", "none", "FetchPush-v4", "panda_reach_seed", "train.epochs", "eval.episodes",
                 "resume=", "-m", "--hydra-help"):  # fmt: skip
        assert word in text, word
    assert not [line for line in text.splitlines() if "_schema" in line]
    groups = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and len(line.split()) > 1}
    for group in ("algo", "buffer", "noise", "env", "logger", "experiment"):
        assert group in groups, group
    assert "none" in groups["noise"] and "her" in groups["buffer"] and "td3" in groups["algo"]
    assert "Hydra is" not in text  # not Hydra's help



# ------------------------------------------------------------------------- errors (issue 22)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_observations(reach_policy, bad):
    env = gym.make(reach_policy.env_id)
    obs, _ = env.reset(seed=0)
    env.close()
    o = obs["observation"].copy()
    o[2] = bad
    with pytest.raises(ValueError, match=r"observation has NaN or infinite values \(first at index \(2,\)\)"):
        reach_policy.act({**obs, "observation": o})
    g = np.stack([obs["desired_goal"]] * 2)
    g[1, 0] = bad
    with pytest.raises(ValueError, match="desired_goal has NaN or infinite"):
        reach_policy.act({"observation": np.stack([obs["observation"]] * 2), "desired_goal": g})


def test_load_errors_name_the_problem(reach, tmp_path):
    import torch

    run_dir = reach[0]
    with pytest.raises(ValueError, match=r"is a file: rlfw\.load takes a run directory") as err:
        rlfw.load(run_dir / "checkpoints" / "last.pt")
    assert not isinstance(err.value, ConfigError)  # not "truncated or corrupt"
    with pytest.raises(FileNotFoundError, match="no run directory"):
        rlfw.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="not a torch device"):
        rlfw.load(run_dir, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="this host has no CUDA device"):
            rlfw.load(run_dir, device="cuda")
    buffer = run_dir / "checkpoints" / "buffer.pt"
    torch.save({"epoch": 1, "buffer": {"obs": torch.zeros(2)}}, buffer)
    try:
        with pytest.raises(ConfigError, match=r"buffer\.pt: a replay buffer file"):
            rlfw.load(run_dir, checkpoint="buffer.pt")
    finally:
        buffer.unlink()


@pytest.mark.parametrize(
    "args, words",
    [
        (["checkpoint=buffer.pt"], ["buffer.pt", "replay buffer file"]),
        (["episodes=0"], ["episodes=0", ">= 1"]),
        (["seed=-5"], ["seed=-5", ">= 0"]),
        (["video_episodes=-1"], ["video_episodes=-1", ">= 0"]),
        (["checkpoint=best", "run_dir=FILE"], ["is a file, not a run directory"]),
    ],
)
def test_evaluate_bad_input_is_one_line_before_any_env(reach, capsys, monkeypatch, args, words):
    import torch

    from rlfw import evaluate

    run_dir = reach[0]
    monkeypatch.setattr(evaluate, "record_episodes", lambda *a, **k: pytest.fail("an env was started"))
    buffer = run_dir / "checkpoints" / "buffer.pt"
    torch.save({"epoch": 1, "buffer": {"obs": torch.zeros(2)}}, buffer)
    argv = [a.replace("FILE", str(buffer)) for a in args]
    if not any(a.startswith("run_dir=") for a in argv):
        argv.insert(0, f"run_dir={run_dir}")
    try:
        with pytest.raises(SystemExit) as exit_:
            evaluate.main(argv)
    finally:
        buffer.unlink()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlfw.evaluate: error: "), err
    for w in words:
        assert w in err, (w, err)


def test_evaluate_checkpoint_best(reach, capsys):
    from rlfw import evaluate

    run_dir = reach[0]
    assert (run_dir / "checkpoints" / "best.pt").is_file()  # epoch 1 had a finite success rate
    evaluate.main([f"run_dir={run_dir}", "checkpoint=best", "episodes=1"])
    assert "1 episodes (best.pt of epoch 1)" in capsys.readouterr().out
    assert json.loads((run_dir / "evaluation.json").read_text())["checkpoint"] == "best.pt"


def test_evaluate_help_exits_0():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-m", "rlfw.evaluate", "--help"], capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m rlfw.evaluate run_dir=<run>")
    for key in ("checkpoint=last", "episodes=10", "seed=10000", "video=false", "video_episodes=1"):
        assert key in out.stdout, key


def test_train_refuses_a_multirun_mode_in_one_line(tmp_path):
    """rlfw.train runs one job: hydra.mode=MULTIRUN (read from the composed config) is refused
    before any run directory is written."""
    with pytest.raises(ConfigError, match=r"rlfw\.train runs one job"):
        rlfw.train(["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
