"""Range rules for every numeric key, checked at preflight: negative, zero, non-finite and
absurdly large values stop with one line naming the key, before any simulator starts."""

from __future__ import annotations

import dataclasses

import pytest

from rlfw.config.preflight import preflight
from rlfw.errors import ConfigError

from .conftest import run_cli

# (overrides, words of the one line)
BAD = [
    (["seed=-1"], "seed=-1 is out of range: seeds must be integers in [0, 2**32)"),
    (["seed=4294967296"], "seed=4294967296 is out of range"),
    (["seed=1e20"], "invalid value for 'seed'"),
    (["buffer.capacity=1000000000000"], "buffer.capacity=1000000000000 needs at least 20.0 TiB"),
    (["buffer.capacity=1e12"], "invalid value for 'buffer.capacity'"),
    (["+env.kwargs.foo=1"], "env.kwargs.foo: FetchReach-v4's constructor takes no such argument"),
    (["env=gym", "env.id=Pendulum-v1", "+env.kwargs.gravity=9"], "env.kwargs.gravity: Pendulum-v1's constructor"),
    (["algo.max_grad_norm=-1"], "algo.max_grad_norm=-1.0 is out of range: it must be > 0.0"),
    (["algo.max_grad_norm=0"], "algo.max_grad_norm=0.0 is out of range"),
    (["algo.lr_schedule=step"], "unknown algo.lr_schedule 'step'; choose one of: constant, cosine, linear"),
    (["algo.lr_end_factor=2"], "algo.lr_end_factor=2.0 is out of range: it must be <= 1.0"),
    (["algo.norm_clip=-5"], "algo.norm_clip=-5.0 is out of range"),
    (["algo.norm_eps=-1"], "algo.norm_eps=-1.0 is out of range"),
    (["algo.actor_lr=inf"], "algo.actor_lr=inf must be a finite number"),
    (["algo.critic_lr=-inf"], "algo.critic_lr=-inf must be a finite number"),
    (["algo.tau=nan"], "algo.tau=nan must be a finite number"),
    (["algo.target_noise=inf"], "algo.target_noise=inf must be a finite number"),
    (["algo.actor_hidden=[100000000]"], "algo.actor_hidden=[100000000] must be a non-empty list of layer sizes in [1, 65536]"),
    (["algo=sac", "algo.target_entropy=nan"], "algo.target_entropy=nan must be a finite number"),
    (["algo=sac", "algo.alpha_lr=inf"], "algo.alpha_lr=inf must be a finite number"),
    (["algo=sac", "algo.n_critics=1000000"], "algo.n_critics=1000000 is out of range: it must be <= 100"),
    (["algo=tqc", "algo.n_quantiles=100000"], "algo.n_quantiles=100000 is out of range"),
    (["algo=crossq", "algo.adam_beta1=1.0"], "algo.adam_beta1=1.0 is out of range: it must be < 1.0"),
    (["algo=crossq", "algo.bn_eps=nan"], "algo.bn_eps=nan must be a finite number"),
    (["noise=ou", "noise.dt=1e30"], "noise.dt=1e+30 is out of range: noise.theta * noise.dt must be <= 1"),
    (["noise=ou", "noise.sigma=inf"], "noise.sigma=inf must be a finite number"),
    (["noise.sigma=nan"], "noise.sigma=nan must be a finite number"),
    (["noise.sigma_final=inf"], "noise.sigma_final=inf must be a finite number"),
    (["noise=noisynet", "noise.sigma0=-1"], "noise.sigma0=-1.0 is out of range"),
    (["noise.random_eps=nan"], "noise.random_eps=nan must be a finite number"),
    (["buffer.capacity=256", "train.batch_size=256"], "train.batch_size=256 is more than the 254 transitions"),
    (["buffer.capacity=256", "train.batch_size=252"], "episodes of 50 steps"),
    (["buffer=per", "buffer.beta_final_step=-5"], "buffer.beta_final_step=-5 is out of range"),
    (["buffer.replay_k=inf"], "buffer.replay_k=inf must be a finite number"),
    (["buffer.n_step=6000", "buffer.capacity=5000"], "buffer.n_step=6000 must be <= buffer.capacity=5000"),
    (["env.noise_sigma=-0.1"], "noise.sigma=-0.1 is out of range"),  # noise.sigma is ${env.noise_sigma}
    (["train.num_envs=100000", "train.steps_per_cycle=100000"], "train.num_envs=100000 is out of range"),
    (["eval.num_envs=100000"], "eval.num_envs=100000 is out of range"),
    (["eval.stop_at=nan"], "eval.stop_at=nan must be a finite number"),
    (["hydra.run.dir="], "hydra.run.dir is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_out_of_range_values_are_one_line_at_preflight(args, expected):
    with pytest.raises(ConfigError) as err:
        preflight(args)
    text = str(err.value)
    assert expected in text, text
    assert "\n" not in text


@pytest.mark.parametrize(
    "args",
    [
        ["seed=4294967295"],
        ["seed=0"],
        ["+env.kwargs.reward_type=dense"],
        ["env=gym", "env.id=Pendulum-v1", "+env.kwargs.g=9.0"],
        ["algo.max_grad_norm=10"],
        ["buffer.capacity=256", "train.batch_size=240"],
        ["noise=ou", "noise.dt=1"],
        ["algo=sac", "algo.target_entropy=-2.5"],
    ],
)
def test_values_in_range_pass(args):
    assert preflight(args).jobs == 1


def test_every_numeric_key_refuses_nan_and_inf(compose):
    """The whole class: every float key of every group's schema (with the option that has it)
    refuses NaN and infinity in :func:`rlfw.config.validate.validate`, naming the key."""
    from rlfw.algos import ALGOS
    from rlfw.buffers.config import BufferConfig
    from rlfw.config.schema import EnvConfig, EvalConfig, TrainConfig
    from rlfw.config.validate import validate
    from rlfw.noise import NOISES

    groups = [("algo", n, ALGOS.get(n).schema) for n in ALGOS.names()]
    groups += [("noise", n, NOISES.get(n).schema) for n in NOISES.names()]
    groups += [("buffer", None, BufferConfig), ("env", None, EnvConfig), ("train", None, TrainConfig),
               ("eval", None, EvalConfig)]  # fmt: skip
    checked = []
    for group, option, schema in groups:
        base = compose([f"{group}={option}"] if option else [])
        for f in dataclasses.fields(schema):
            if "float" not in str(f.type):
                continue
            for value in (float("nan"), float("inf")):
                cfg = base.copy()
                cfg[group][f.name] = value
                if group == "env" and f.name == "noise_sigma":  # what noise.sigma reads
                    cfg.noise.sigma = value
                with pytest.raises(ConfigError, match="must be a finite number"):
                    validate(cfg)
            checked.append(f"{group}.{f.name}")
    assert len(checked) >= 40 and "algo.norm_eps" in checked and "noise.dt" in checked


def test_cli_seed_out_of_range_is_one_line_exit_2_and_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["seed=-1", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rlfw: error: seed=-1 is out of range"), lines
    assert not run_dir.exists()


def test_cli_empty_run_dir_writes_nothing_into_the_working_directory(tmp_path):
    proc = run_cli(["hydra.run.dir="], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "rlfw: error: hydra.run.dir is empty" in proc.stderr
    assert list(tmp_path.iterdir()) == []
