"""Exploration: Gaussian decay, Ornstein-Uhlenbeck statistics, random_eps, NoisyLinear."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlfw.algos import TD3
from rlfw.buffers import Batch
from rlfw.config.schema import GaussianNoiseConfig, NoisyNetConfig, OUNoiseConfig, TD3Config
from rlfw.envs import EnvInfo
from rlfw.noise import GaussianNoise, OUNoise
from rlfw.noise.noisynet import NoisyLinear, NoisyNetNoise, f_scale, noisy_layers

pytestmark = pytest.mark.unit  # no simulator, no subprocess: nox -s unit


def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("linear", 0, 0.5),
        ("linear", 500, 0.3),
        ("linear", 1000, 0.1),
        ("linear", 5000, 0.1),
        ("exponential", 0, 0.5),
        ("exponential", 500, 0.5 * (0.1 / 0.5) ** 0.5),
        ("exponential", 1000, 0.1),
        ("exponential", 2000, 0.1),
    ],
)
def test_gaussian_decay_values(schedule, step, expected):
    cfg = GaussianNoiseConfig(sigma=0.5, sigma_final=0.1, decay_steps=1000, schedule=schedule)
    n = GaussianNoise(cfg, 1, 2, rng())
    assert n.sigma(step) == pytest.approx(expected)
    assert n.metrics(step)["noise_sigma"] == pytest.approx(expected)  # the metrics.csv column


def test_gaussian_noise_std_and_clipping():
    n = GaussianNoise(GaussianNoiseConfig(sigma=0.2), 4, 3, rng())
    samples = np.stack([n(np.zeros((4, 3), np.float32), 0) for _ in range(2000)])
    assert samples.std() == pytest.approx(0.2, rel=0.05)
    near_bound = n(np.full((4, 3), 0.99, np.float32), 0)
    assert near_bound.max() <= 1.0


@pytest.mark.parametrize("kind", ["gaussian", "ou"])
def test_action_noise_reads_its_config_once_not_per_step(kind):
    """The per-step call never touches the config node: an OmegaConf access (noise.sigma
    interpolates env.noise_sigma) cost about 7% of FetchPush's env steps per second."""

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"noise config read at step time: {name}")

    cfg = GaussianNoiseConfig(sigma=0.5, sigma_final=0.1, decay_steps=1000) if kind == "gaussian" else OUNoiseConfig()
    n = (GaussianNoise if kind == "gaussian" else OUNoise)(cfg, 2, 3, rng())
    n.cfg = Untouchable()
    out = n(np.zeros((2, 3), np.float32), 500)
    assert out.shape == (2, 3) and n.metrics(500)["noise_sigma"] > 0


def test_random_eps_replaces_that_fraction_of_actions():
    n = GaussianNoise(GaussianNoiseConfig(sigma=0.0, random_eps=0.3), 1000, 2, rng())
    out = n(np.full((1000, 2), 0.5, np.float32), 0)
    replaced = np.any(out != 0.5, axis=1)
    assert replaced.mean() == pytest.approx(0.3, abs=0.05)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_ou_stationary_variance_and_mean_reversion():
    theta, sigma, dt = 0.5, 0.3, 0.05
    n = OUNoise(OUNoiseConfig(theta=theta, sigma=sigma, dt=dt, mu=0.0), 200, 1, rng())
    for _ in range(600):  # burn-in: 600 * dt * theta = 15 time constants
        n.sample()
    xs = np.stack([n.sample().copy() for _ in range(400)])  # [T, N, 1]
    var = xs.var()
    expected = sigma**2 / (2 * theta)
    # 200 envs x 400 correlated steps: the estimate is within 10% at this seed and size
    assert var == pytest.approx(expected, rel=0.1)
    assert abs(xs.mean()) < 0.05
    # mean reversion: from x0 the expectation decays as x0 (1 - theta dt)^k
    m = OUNoise(OUNoiseConfig(theta=theta, sigma=sigma, dt=dt), 5000, 1, rng())
    m.x[:] = 2.0
    for _ in range(20):
        m.sample()
    assert m.x.mean() == pytest.approx(2.0 * (1 - theta * dt) ** 20, abs=0.03)


def test_ou_reset_per_env():
    n = OUNoise(OUNoiseConfig(mu=0.25), 3, 2, rng())
    for _ in range(10):
        n.sample()
    before = n.x.copy()
    n.reset(np.array([False, True, False]))
    assert np.all(n.x[1] == 0.25)
    np.testing.assert_array_equal(n.x[[0, 2]], before[[0, 2]])


def test_noisy_linear_factorised_noise_is_outer_product():
    layer = NoisyLinear(5, 3, factorised=True)
    torch.testing.assert_close(layer.eps_w, torch.outer(f_scale(layer.eps_out), f_scale(layer.eps_in)))
    torch.testing.assert_close(layer.eps_b, f_scale(layer.eps_out))
    x = torch.randn(4, 5)
    w = layer.mu_w + layer.sigma_w * layer.eps_w
    torch.testing.assert_close(layer(x), x @ w.t() + layer.mu_b + layer.sigma_b * layer.eps_b)
    assert f_scale(torch.tensor([-4.0, 9.0, 0.0])).tolist() == [-2.0, 3.0, 0.0]


def test_noisy_linear_initial_sigma_matches_paper():
    p = 64
    fac = NoisyLinear(p, 8, factorised=True)
    assert torch.allclose(fac.sigma_w, torch.tensor(0.5 / math.sqrt(p)))
    assert fac.mu_w.abs().max() <= 1 / math.sqrt(p)
    ind = NoisyLinear(p, 8, factorised=False)
    assert torch.allclose(ind.sigma_w, torch.tensor(0.017))
    assert ind.mu_w.abs().max() <= math.sqrt(3 / p)
    assert NoisyLinear(p, 8, factorised=True, sigma0=0.1).sigma_w[0, 0].item() == pytest.approx(0.1 / 8)


def test_noisy_linear_gradients_reach_mu_and_sigma():
    layer = NoisyLinear(4, 2, factorised=False)
    layer(torch.randn(8, 4)).square().sum().backward()
    for p in (layer.mu_w, layer.mu_b, layer.sigma_w, layer.sigma_b):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_noisy_linear_eval_is_deterministic_mean_network():
    layer = NoisyLinear(4, 2)
    layer.noise_enabled = False
    x = torch.randn(3, 4)
    a = layer(x)
    layer.reset_noise()
    torch.testing.assert_close(layer(x), a)
    torch.testing.assert_close(a, x @ layer.mu_w.t() + layer.mu_b)


def test_noisynet_agent_explores_with_noise_and_evaluates_with_means():
    info = EnvInfo("t", False, 3, 0, 2, None)
    noise = NoisyNetNoise(NoisyNetConfig(resample="step", sigma0=2.0), 1, 2, rng())
    agent = TD3(TD3Config(actor_hidden=[16], critic_hidden=[16]), info)
    noise.attach(agent)
    assert len(noisy_layers(agent.actor)) == 2 and len(noisy_layers(agent.actor_target)) == 2
    obs = np.ones((1, 3), np.float32)
    ev1, ev2 = agent.act(obs), agent.act(obs)
    np.testing.assert_array_equal(ev1, ev2)  # evaluation: mean weights
    x1 = agent.act(obs, explore=True)
    x1b = agent.act(obs, explore=True)
    np.testing.assert_array_equal(x1, x1b)  # same exploration sample until resampled
    noise(x1, 0)  # resample=step: a new sample after each step
    x2 = agent.act(obs, explore=True)
    assert not np.array_equal(x1, x2)
    # an update resamples the training noise but keeps the exploration sample
    r = np.random.default_rng(1)
    b = Batch(r.standard_normal((8, 3)).astype(np.float32), r.uniform(-1, 1, (8, 2)).astype(np.float32),
              np.zeros(8, np.float32), r.standard_normal((8, 3)).astype(np.float32), np.zeros(8, np.float32),
              np.full(8, 0.99, np.float32), np.ones(8, np.float32), np.arange(8))  # fmt: skip
    before = [m.sigma_w.detach().clone() for m in noisy_layers(agent.actor)]
    explore_eps = [m.eps_w.clone() for m in noisy_layers(agent.actor)]
    agent.update(b)
    agent.update(b)
    assert not torch.equal(noisy_layers(agent.actor)[0].eps_w, explore_eps[0])  # training noise
    agent.act(obs, explore=True)  # acting restores the exploration sample
    for m, eps in zip(noisy_layers(agent.actor), explore_eps):
        assert torch.equal(m.eps_w, eps)
    after = [m.sigma_w.detach() for m in noisy_layers(agent.actor)]
    assert any(not torch.equal(a, c) for a, c in zip(before, after))  # sigma is learned
    online = noisy_layers(agent.actor)[0].eps_w
    target = noisy_layers(agent.actor_target)[0].eps_w
    assert not torch.equal(online, target)  # independent target noise


def test_noisynet_episode_resampling():
    info = EnvInfo("t", False, 3, 0, 2, None)
    noise = NoisyNetNoise(NoisyNetConfig(resample="episode", sigma0=2.0), 2, 2, rng())
    agent = TD3(TD3Config(actor_hidden=[16]), info)
    noise.attach(agent)
    obs = np.ones((2, 3), np.float32)
    a = agent.act(obs, explore=True)
    noise(a, 0)
    noise.reset(np.array([False, False]))
    np.testing.assert_array_equal(agent.act(obs, explore=True), a)
    noise.reset(np.array([True, False]))
    assert not np.array_equal(agent.act(obs, explore=True), a)


def test_noisy_critic_option():
    info = EnvInfo("t", False, 3, 0, 2, None)
    noise = NoisyNetNoise(NoisyNetConfig(noisy_critic=True), 1, 2, rng())
    agent = TD3(TD3Config(critic_hidden=[16]), info)
    noise.attach(agent)
    assert len(noisy_layers(agent.critic)) == 2 * 2  # two critics x two layers
    out = agent.critic(torch.zeros(5, 5))
    assert out.shape == (2, 5)


def test_noisynet_checkpoint_keys_are_those_of_the_layer_factory_layout():
    """NoisyNet swaps its layers in after the agent is built; the agent's state keeps the keys
    the noisy layers had when the algorithms built them (old noisynet checkpoints load)."""
    info = EnvInfo("t", False, 3, 0, 2, None)
    noise = NoisyNetNoise(NoisyNetConfig(noisy_critic=True), 1, 2, rng())
    agent = TD3(TD3Config(actor_hidden=[16], critic_hidden=[16]), info)
    noise.attach(agent)
    state = agent.state_dict()
    for net in ("actor", "actor_target"):
        assert set(state[net]) >= {"net.0.mu_w", "net.0.sigma_w", "net.0.eps_w", "net.2.mu_b"}
        assert not any(k.endswith(".weight") for k in state[net])
    for net in ("critic", "critic_target"):
        assert {"members.0.net.0.mu_w", "members.1.net.2.sigma_b"} <= set(state[net])
    # the optimisers train the noisy parameters (sigma included), the targets are copies
    assert {id(p) for g in agent.actor_opt.param_groups for p in g["params"]} == {id(p) for p in agent.actor.parameters()}
    assert any(p is noisy_layers(agent.actor)[0].sigma_w for p in agent._actor_params)
    torch.testing.assert_close(noisy_layers(agent.actor_target)[0].mu_w, noisy_layers(agent.actor)[0].mu_w)
    other = TD3(TD3Config(actor_hidden=[16], critic_hidden=[16]), info)
    NoisyNetNoise(NoisyNetConfig(noisy_critic=True), 1, 2, rng()).attach(other)
    other.load_state_dict(state)  # raises on any key mismatch


def test_exploration_metric_names_declare_metrics_keys():
    info = EnvInfo("t", False, 3, 0, 2, None)
    for noise in (GaussianNoise(GaussianNoiseConfig(), 1, 2, rng()), OUNoise(OUNoiseConfig(), 1, 2, rng())):
        assert set(noise.metrics(0)) == set(noise.metric_names) == {"noise_sigma"}
        assert not noise.parameter_noise
    nn_noise = NoisyNetNoise(NoisyNetConfig(), 1, 2, rng())
    nn_noise.attach(TD3(TD3Config(actor_hidden=[16], critic_hidden=[16]), info))
    assert nn_noise.parameter_noise and set(nn_noise.metrics(0)) == set(nn_noise.metric_names)
