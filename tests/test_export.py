"""checkpoints/best.pt, checkpoint=best|last, and ``python -m rlfw.export`` (ONNX, TorchScript,
safetensors) against ``rlfw.load(run_dir).predict``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlfw
from rlfw.core import Callback
from rlfw.errors import ConfigError
from rlfw.export import export_policy, load_safetensors, main
from rlfw.training.loop import TrainLoop

from .conftest import TINY

# One tiny run per algorithm and task: every algorithm on FetchReach-v4 (goal dict, normalised
# inputs) and on Pendulum-v1 (flat observations, actions in [-2, 2]); crossq on Pendulum with
# normalised observations, so every part of the graph is used (its actor has batch
# renormalisation by default).
SMALL = [*TINY, "train.epochs=1", "train.cycles_per_epoch=1", "eval.episodes=1", "train.updates_per_cycle=10"]
PENDULUM = ["env=gym", "env.id=Pendulum-v1", "buffer=uniform"]
RUNS = {
    "td3": ["algo=td3", "env=FetchReach-v4"],
    "tqc": ["algo=tqc", "env=FetchReach-v4", "algo.n_quantiles=5"],
    "sac": ["algo=sac", *PENDULUM],
    "crossq": ["algo=crossq", *PENDULUM, "algo.actor_batch_norm=true", "algo.normalize=true",
               "algo.bn_warmup_steps=5"],
    "td3-dense": ["algo=td3", *PENDULUM],
    "tqc-dense": ["algo=tqc", *PENDULUM, "algo.n_quantiles=5"],
    "sac-fetch": ["algo=sac", "env=FetchReach-v4"],
    "crossq-fetch": ["algo=crossq", "env=FetchReach-v4", "algo.bn_warmup_steps=5"],
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A factory: the run directory of ``RUNS[algo]``, trained once per module."""
    root = tmp_path_factory.mktemp("export")
    made: dict[str, object] = {}

    def get(algo: str):
        if algo not in made:
            made[algo] = rlfw.train([*SMALL, *RUNS[algo], f"hydra.run.dir={root / algo}"])
        return made[algo]

    return get


def _observations(policy, n: int = 9) -> tuple[object, list[np.ndarray]]:
    """A batch of observations for ``policy.predict`` (env observations and far-out values that
    the normaliser clips) and the same as the export's float32 inputs."""
    rng = np.random.default_rng(0)
    env = gym.make(policy.env_id)
    obs, _ = env.reset(seed=0)
    env.close()
    if policy.info.goal:
        o = np.stack([obs["observation"]] + [obs["observation"] + rng.normal(0, s, obs["observation"].shape)
                                              for s in np.geomspace(0.01, 100, n - 1)])  # fmt: skip
        g = np.stack([obs["desired_goal"]] + [obs["desired_goal"] + rng.normal(0, s, 3) for s in np.geomspace(0.01, 100, n - 1)])
        o, g = o.astype(np.float32), g.astype(np.float32)
        return {"observation": o, "desired_goal": g}, [o, g]
    o = np.stack([obs] + [rng.normal(0, s, obs.shape) for s in np.geomspace(0.1, 100, n - 1)]).astype(np.float32)
    return o, [o]


def _numpy_policy(path):
    """The safetensors export rebuilt from its file alone (safetensors + NumPy, no torch, no rlfw)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="numpy") as f:
        spec = json.loads(f.metadata()["rlfw_policy"])
    t = load_file(str(path))
    acts = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh}

    def act(*inputs):
        parts = []
        for name, x in zip(spec["inputs"], inputs):
            x = x.reshape(len(x), -1)
            n = spec["normalizers"][name]
            if n["enabled"]:
                x = np.clip((x - t[n["mean"]]) / t[n["std"]], -n["clip"], n["clip"])
            parts.append(x)
        h = np.concatenate(parts, axis=-1)
        for layer in spec["layers"]:
            if layer["type"] == "linear":
                h = h @ t[layer["weight"]].T + t[layer["bias"]]
            elif layer["type"] == "activation":
                h = acts[layer["name"]](h)
            elif layer["type"] == "batch_renorm":
                h = t[layer["weight"]] * (h - t[layer["running_mean"]]) / np.sqrt(t[layer["running_var"]] + layer["eps"]) + t[layer["bias"]]
            else:
                h = np.tanh(h)
        a = spec["action"]
        return np.clip((h - t[a["intercept"]]) / t[a["gradient"]], t[a["low"]], t[a["high"]])

    return act, spec


@pytest.mark.parametrize("run", list(RUNS))
def test_exported_policies_equal_predict(runs, run, tmp_path):
    run_dir = runs(run)
    algo = run.split("-")[0]
    policy = rlfw.load(run_dir)
    obs, inputs = _observations(policy)
    want, state = policy.predict(obs)  # Stable-Baselines3's signature: (actions, state)
    assert state is None
    np.testing.assert_array_equal(want, policy.act(obs))
    # the inputs reach the clip and the action bounds (so normalisation and rescaling are tested)
    if policy.info.goal:
        assert policy.agent.obs_norm.enabled and float(policy.agent.obs_norm.count) > 0
    else:
        assert np.abs(want).max() > 1.0  # Pendulum: [-2, 2], not the actor's [-1, 1]
    if algo == "crossq":
        assert any(type(m).__name__ == "BatchRenorm" for m in policy.agent.actor.modules())
        assert policy.agent.obs_norm.enabled

    onnx_path = export_policy(run_dir, "onnx", out=tmp_path / "p.onnx")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == (["observation", "desired_goal"] if policy.info.goal else ["observation"])
    got = sess.run(["action"], dict(zip([i.name for i in sess.get_inputs()], inputs)))[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    one = sess.run(["action"], dict(zip([i.name for i in sess.get_inputs()], [x[:1] for x in inputs])))[0]
    np.testing.assert_allclose(one, want[:1], atol=1e-5, rtol=0)  # another batch size
    single = {k: v[0] for k, v in obs.items()} if isinstance(obs, dict) else obs[0]
    action, _ = policy.predict(single)  # one observation, as env.step takes it
    assert action.shape == policy.action_space.shape
    np.testing.assert_allclose(action, one[0], atol=1e-5, rtol=0)

    ts = torch.jit.load(str(export_policy(run_dir, "torchscript", out=tmp_path / "p.ts")))
    np.testing.assert_allclose(ts(*map(torch.from_numpy, inputs)).numpy(), want, atol=1e-5, rtol=0)

    st = export_policy(run_dir, "safetensors", out=tmp_path / "p.safetensors")
    numpy_act, spec = _numpy_policy(st)
    assert spec["algo"] == algo and spec["env_id"] == policy.env_id
    np.testing.assert_allclose(numpy_act(*inputs), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(load_safetensors(st)(*map(torch.from_numpy, inputs)).numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("algo", ["sac", "tqc"])
def test_predict_samples_the_stochastic_policy(runs, algo):
    policy = rlfw.load(runs(algo))
    obs, _ = _observations(policy, n=3)
    mean = policy.act(obs)
    draws = np.stack([policy.predict(obs, deterministic=False)[0] for _ in range(20)])
    assert draws.shape == (20, *mean.shape)
    assert np.all(draws >= policy.action_space.low) and np.all(draws <= policy.action_space.high)
    assert draws.std(axis=0).min() > 1e-4  # samples, not the mean action again
    np.testing.assert_allclose(policy.act(obs), mean)  # deterministic stays the mean action


def test_export_cli_writes_the_default_file_and_refuses_bad_input(runs, tmp_path):
    run_dir = runs("td3")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "rlfw.export", f"run_dir={run_dir}", "format=torchscript"],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = run_dir / "export" / "policy_last.ts"
    assert path.is_file() and str(path) in proc.stdout
    assert not list(path.parent.glob(".*.tmp"))
    policy = rlfw.load(run_dir)
    obs, inputs = _observations(policy, n=4)
    np.testing.assert_allclose(torch.jit.load(str(path))(*map(torch.from_numpy, inputs)).numpy(),
                               policy.act(obs), atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize(
    "args, words",
    [
        (["format=tflite"], ["format='tflite'", "onnx, safetensors, torchscript"]),
        (["run_dir=/nonexistent/run"], ["run_dir=/nonexistent/run", "does not exist"]),
        (["checkpoint=buffer.pt"], ["buffer.pt", "replay buffer"]),
        (["checkpoint=../last.pt"], ["checkpoint=", "best, last"]),
        (["formt=onnx"], ["formt"]),
    ],
)
def test_export_bad_input_is_one_line(runs, capsys, args, words):
    run_dir = runs("td3")
    buffer = run_dir / "checkpoints" / "buffer.pt"
    torch.save({"epoch": 1, "buffer": {"obs": torch.zeros(3)}}, buffer)
    try:
        argv = [f"run_dir={run_dir}", *args] if not args[0].startswith("run_dir") else args
        with pytest.raises(SystemExit) as exit_:
            main(argv)
    finally:
        buffer.unlink()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlfw.export: error: "), err
    for w in words:
        assert w in err, (w, err)


# ------------------------------------------------------------------------------- best.pt


class _Weights(Callback):
    """Records the actor's weights and whether best.pt exists after each epoch."""

    def __init__(self):
        self.actor: dict[int, dict[str, torch.Tensor]] = {}
        self.best_exists: dict[int, bool] = {}

    def on_epoch(self, loop, row):
        self.actor[loop.epoch] = {k: v.clone() for k, v in loop.agent.actor.state_dict().items()}
        self.best_exists[loop.epoch] = (loop.run_dir / "checkpoints" / "best.pt").exists()


def _scripted(loop, values: dict[int, float]):
    """Make ``loop``'s evaluations return ``values[epoch]`` as the success rate."""
    loop.evaluate = lambda episodes: (-1.0, 0.0, values[loop.epoch])


# the ranking itself, on the cheap evaluation's column (eval.confirm_episodes=0); the confirmed
# ranking of the default protocol: tests/test_protocol.py
CHEAP = "eval.confirm_episodes=0"


def test_best_checkpoint_holds_the_best_epoch_and_survives_resume(compose, tmp_path):
    cfg = compose([*TINY, "train.epochs=4", "train.cycles_per_epoch=1", "eval.episodes=1", CHEAP])
    weights = _Weights()
    loop = TrainLoop(cfg, tmp_path, callbacks=[weights])
    # NaN never counts, a tie keeps the earlier epoch
    _scripted(loop, {1: math.nan, 2: 0.5, 3: 0.8, 4: 0.8})
    loop.run()
    assert weights.best_exists == {1: False, 2: True, 3: True, 4: True}
    ckpts = tmp_path / "checkpoints"
    best = torch.load(ckpts / "best.pt", weights_only=True)
    assert best["counters"]["epoch"] == 3
    assert best["best"] == {"metric": "eval_success_rate", "value": 0.8, "epoch": 3}
    for k, v in weights.actor[3].items():
        assert torch.equal(best["agent"]["actor"][k], v), k
    assert any(not torch.equal(weights.actor[4][k], v) for k, v in weights.actor[3].items())  # it trained on
    last = torch.load(ckpts / "last.pt", weights_only=True)
    assert last["best"] == {"metric": "eval_success_rate", "value": 0.8, "epoch": 3}

    # resume: a worse evaluation later does not replace the better best.pt
    resumed = TrainLoop(compose([*TINY, "train.epochs=6", "train.cycles_per_epoch=1", "eval.episodes=1", CHEAP]),
                        tmp_path)
    resumed.load_checkpoint(ckpts / "last.pt")
    _scripted(resumed, {5: 0.6, 6: 0.9})
    resumed.run(epochs=1, close=False)
    assert torch.load(ckpts / "best.pt", weights_only=True)["counters"]["epoch"] == 3
    resumed.run()
    best = torch.load(ckpts / "best.pt", weights_only=True)
    assert best["counters"]["epoch"] == 6 and best["best"]["value"] == 0.9

    # checkpoint=best loads it; checkpoint=last the last epoch
    assert torch.equal(rlfw.load(tmp_path, checkpoint="best").agent.actor.state_dict()["net.0.weight"],
                       best["agent"]["actor"]["net.0.weight"])  # fmt: skip
    assert not torch.equal(rlfw.load(tmp_path, checkpoint="last").agent.actor.state_dict()["net.0.weight"],
                           weights.actor[3]["net.0.weight"])  # fmt: skip


def test_best_checkpoint_of_a_dense_task_ranks_returns(compose, tmp_path):
    cfg = compose([*TINY, *PENDULUM, "train.epochs=2", "train.cycles_per_epoch=1", "eval.episodes=1", CHEAP])
    loop = TrainLoop(cfg, tmp_path)
    loop.evaluate = lambda episodes: ({1: -900.0, 2: -1200.0}[loop.epoch], 0.0, math.nan)
    loop.run()
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"] == {"metric": "eval_return", "value": -900.0, "epoch": 1}


def test_checkpoint_best_without_best_pt(runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs("td3"), run_dir)
    (run_dir / "checkpoints" / "best.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"best\.pt"):
        rlfw.load(run_dir, checkpoint="best")
    with pytest.raises(ConfigError, match="checkpoint="):
        rlfw.load(run_dir, checkpoint="x/last.pt")


def test_resume_reads_rng_states_onto_the_cpu_whatever_the_device(compose, tmp_path):
    """Checkpointer.load reads the file onto the CPU: torch.set_rng_state and Generator.set_state
    take CPU byte tensors, and load_state_dict moves the rest to the modules' device. With the
    loop's device as map_location (a CUDA run) the states would land off the CPU; 'meta' stands
    in for that device here."""
    cfg = compose([*TINY, "train.epochs=1", "train.cycles_per_epoch=1", "eval.episodes=1"])
    TrainLoop(cfg, tmp_path).run()
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    loop = TrainLoop(cfg, tmp_path)
    loop.device = torch.device("meta")
    torch.manual_seed(123)
    loop.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert torch.equal(torch.get_rng_state(), saved["torch_rng"])
    assert torch.equal(loop.agent.generator.get_state(), saved["agent"]["generator"])
    assert torch.equal(loop.agent.actor.state_dict()["net.0.weight"], saved["agent"]["actor"]["net.0.weight"])
    loop.close()
