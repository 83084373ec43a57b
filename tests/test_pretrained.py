"""Pretrained agents (issue 32 item 10): a run added to a collection acts as the run's policy
does, ``rlfw.load_pretrained`` and ``rlfw.evaluate pretrained=`` use it, bad names are one
line. The shipped collection's figures are checked in the slow run
(``test_every_shipped_agent_delivers_its_table_figure``)."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import rlfw
from rlfw.errors import ConfigError
from rlfw.pretrained import AGENTS, add_agent, available, card, load_pretrained

from .conftest import TINY

pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    run = rlfw.train(["env=FetchReach-v4", *TINY, f"hydra.run.dir={root / 'run'}"])
    add_agent(run, {"algo": "td3", "command": "python -m rlfw", "seed": 0}, root=root / "agents")
    return run, root / "agents"


def test_a_pretrained_agent_acts_as_the_run_s_delivered_policy(collection):
    run, agents = collection
    assert available(agents) == ["FetchReach-v4"]
    assert card("FetchReach-v4", agents)["file"] == "FetchReach-v4.safetensors"
    pre = load_pretrained("FetchReach-v4", root=agents)
    own = rlfw.load(run, checkpoint="best")
    venv = gym.make_vec("FetchReach-v4", num_envs=3, vectorization_mode="sync")
    obs, _ = venv.reset(seed=3)
    venv.close()
    np.testing.assert_allclose(pre.act(obs), own.act(obs), atol=1e-5)  # batched
    single = {k: v[0] for k, v in obs.items()}
    action, state = pre.predict(single)  # Stable-Baselines3's signature
    assert state is None and action.shape == (4,)
    np.testing.assert_allclose(action, own.act(single), atol=1e-5)
    with pytest.raises(NotImplementedError):
        pre.predict(single, deterministic=False)
    with pytest.raises(TypeError, match="goal env"):
        pre.act(single["observation"])


def test_bad_pretrained_names_are_one_line(collection, capsys, tmp_path):
    _, agents = collection
    with pytest.raises(ConfigError, match="no pretrained agent for it; the collection has: FetchReach-v4"):
        load_pretrained("Nope-v0", root=agents)
    from rlfw.evaluate import main

    for args, words in ((["pretrained=Nope-v0"], "no pretrained agent"),
                        (["run_dir=x", "pretrained=FetchReach-v4"], "one of them"),
                        (["episodes=2"], "one of them")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and words in err, err


@pytest.mark.skipif(not available(), reason="no shipped agent yet")
def test_rlfw_evaluate_pretrained_from_the_cli(tmp_path):
    env_id = available()[0]
    proc = subprocess.run([sys.executable, "-m", "rlfw.evaluate", f"pretrained={env_id}", "episodes=3",
                           f"out={tmp_path / 'eval'}"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert summary["episodes"] == 3 and summary["pretrained"] == env_id
    assert "3 episodes" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("env_id", available() or ["none"])
def test_every_shipped_agent_delivers_its_table_figure(env_id, tmp_path):
    """The table figure is reproduced at its own episode seed (exactly for success; to 1e-4 for a
    return, whose float sums differ between CPUs), and 200 fresh episodes
    give a figure whose 95% interval overlaps the table's."""
    if env_id == "none":
        pytest.skip("no shipped agent yet")
    from omegaconf import OmegaConf

    from rlfw.evaluate import EvaluateConfig, evaluate

    entry = card(env_id)
    table = entry["delivered"]
    same = evaluate(OmegaConf.structured(EvaluateConfig(pretrained=env_id, episodes=table["episodes"],
                                                        seed=table["seed"], out=str(tmp_path / "same"))))  # fmt: skip
    key, ci = ("success_rate", "success_ci") if table["success_rate"] is not None else ("return_mean", "return_ci")
    # exact for a success rate; a return is a sum of floats over thousands of MuJoCo steps, which
    # differs in its last digits between CPUs (3092.15 here against 3092.24 on the machine that
    # measured it): the same to 1e-4 relative
    assert same[key] == (pytest.approx(table[key], abs=1e-9) if key == "success_rate" else pytest.approx(table[key], rel=1e-4))
    fresh = evaluate(OmegaConf.structured(EvaluateConfig(pretrained=env_id, episodes=200, seed=123_456,
                                                         out=str(tmp_path / "fresh"))))  # fmt: skip
    assert fresh[ci][0] <= table[ci][1] and table[ci][0] <= fresh[ci][1], (fresh[ci], table[ci])
    assert (AGENTS / entry["file"]).stat().st_size < 2_000_000
