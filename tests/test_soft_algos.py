"""SAC, TQC and CrossQ against hand-computed tensors: soft targets, the temperature, the tanh
log-probability, truncated quantile targets, the quantile Huber loss, batch renormalisation,
CrossQ's joint forward pass, acting, checkpoints and the prioritised-replay signal."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rlfw.algos.crossq import BatchRenorm, CrossQ, CrossQConfig, RenormEnsembleCritic
from rlfw.algos.sac import SAC, SACConfig, SquashedGaussianActor, Temperature, squashed_log_prob
from rlfw.algos.tqc import TQC, TQCConfig, quantile_huber_loss
from rlfw.core import Batch, EnvInfo

pytestmark = pytest.mark.unit  # no simulator, no subprocess: nox -s unit

INFO = EnvInfo("t", False, obs_dim=3, goal_dim=0, act_dim=2, max_episode_steps=None)
OBS, ACT = INFO.obs_dim, INFO.act_dim

ALGOS = {"sac": (SAC, SACConfig), "tqc": (TQC, TQCConfig), "crossq": (CrossQ, CrossQConfig)}


def make_agent(name, seed=0, **kw):
    """A tiny agent of ``name`` with an OmegaConf node of its schema."""
    cls, schema = ALGOS[name]
    kw.setdefault("actor_hidden", [8])
    kw.setdefault("critic_hidden", [8])
    if name == "tqc":
        kw.setdefault("n_quantiles", 5)
        kw.setdefault("top_quantiles_to_drop_per_net", 2)
    torch.manual_seed(seed)
    return cls(OmegaConf.structured(schema(**kw)), INFO, seed=seed)


def make_batch(B=4, reward=None, terminated=None, discount=None, weight=None, seed=0):
    r = np.random.default_rng(seed)
    return Batch(
        obs=r.standard_normal((B, OBS)).astype(np.float32),
        action=r.uniform(-1, 1, (B, ACT)).astype(np.float32),
        reward=np.asarray(reward if reward is not None else r.standard_normal(B), np.float32),
        next_obs=r.standard_normal((B, OBS)).astype(np.float32),
        terminated=np.asarray(terminated if terminated is not None else np.zeros(B), np.float32),
        discount=np.asarray(discount if discount is not None else np.full(B, 0.99), np.float32),
        weight=np.asarray(weight if weight is not None else np.ones(B), np.float32),
        index=np.arange(B),
    )


class StubActor:
    """``sample`` returns a fixed action and fixed per-sample log-probabilities."""

    def __init__(self, action, logp):
        self.action = torch.tensor(action, dtype=torch.float32)
        self.logp = torch.tensor(logp, dtype=torch.float32)

    def sample(self, x, generator=None):
        b = x.shape[0]
        a = self.action.expand(b, -1).clone()
        return a, self.logp[:b].clone(), torch.atanh(a)


class StubTwinQ(nn.Module):
    """``Q_0 = 1 + sum(s) + sum(a)``, ``Q_1 = -sum(s) + sum(a)``: the smaller twin depends on s."""

    def forward(self, x):
        s, a = x[:, :OBS].sum(-1), x[:, OBS:].sum(-1)
        return torch.stack([1.0 + s + a, -s + a])


class StubQuantiles(nn.Module):
    """Returns fixed quantiles ``[N, B, M]`` whatever the input."""

    def __init__(self, z):
        super().__init__()
        self.z = torch.tensor(z, dtype=torch.float32)

    def forward(self, x):
        assert x.shape[0] == self.z.shape[1]
        return self.z.clone()


def naive_logp64(u, mu, log_std):
    """Gaussian log-density minus log(1 - tanh(u)^2), summed over actions, in float64 NumPy."""
    u, mu, log_std = (np.asarray(t, np.float64) for t in (u, mu, log_std))
    std = np.exp(log_std)
    gauss = -0.5 * ((u - mu) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    return (gauss - np.log(1.0 - np.tanh(u) ** 2)).sum(-1)


def gen_copy(g):
    out = torch.Generator()
    out.set_state(g.get_state())
    return out


# -------------------------------------------------------------------------------------------
# 1. SAC's soft target


def test_sac_soft_target_with_entropy_term_stub_networks():
    agent = make_agent("sac", gamma=0.99)
    logp = [-1.0, 0.5, 2.0, -3.0]
    agent.actor = StubActor([0.5, -0.25], logp)
    agent.critic_target = StubTwinQ()
    next_in = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    reward = torch.tensor([1.0, 0.0, -1.0, 0.5])
    term = torch.tensor([0.0, 1.0, 0.0, 0.0])
    disc = torch.tensor([0.99, 0.99, 0.9801, 0.5])
    alpha = torch.tensor(0.2)
    y = agent.soft_target(next_in, reward, term, disc, alpha)
    # s sums [2, -1, 0.5, -3], a sum 0.25:
    # Q0 = [3.25, 0.25, 1.75, -1.75], Q1 = [-1.75, 1.25, -0.25, 3.25]
    q_min = torch.tensor([-1.75, 0.25, -0.25, -1.75])
    expected = reward + disc * (1 - term) * (q_min - 0.2 * torch.tensor(logp))
    torch.testing.assert_close(y, expected)
    # literal: 1 + 0.99 * (-1.75 + 0.2) = -0.5345; terminated -> 0; -1 + 0.9801 * (-0.25 - 0.4)
    torch.testing.assert_close(
        y, torch.tensor([-0.5345, 0.0, -1.637065, 0.5 + 0.5 * (-1.75 + 0.6)])
    )
    # the entropy term mattered
    assert not torch.allclose(y, reward + disc * (1 - term) * q_min)


def test_sac_soft_target_samples_the_policy_with_the_agent_generator():
    agent = make_agent("sac", seed=3, gamma=0.9)
    agent.critic_target = StubTwinQ()
    B = 5
    g = torch.Generator().manual_seed(11)
    next_in = torch.randn(B, OBS, generator=g)
    reward = torch.randn(B, generator=g)
    term = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    disc = torch.full((B,), 0.9)
    alpha = torch.tensor(0.3)
    replay = gen_copy(agent.generator)
    y = agent.soft_target(next_in, reward, term, disc, alpha)
    with torch.no_grad():
        mu, log_std = agent.actor(next_in)
    eps = torch.randn((B, ACT), generator=replay)
    u = mu + log_std.exp() * eps
    a = torch.tanh(u)
    logp = torch.as_tensor(naive_logp64(u, mu, log_std), dtype=torch.float32)
    s = next_in.sum(-1)
    q_min = torch.minimum(1.0 + s + a.sum(-1), -s + a.sum(-1))
    expected = reward + disc * (1 - term) * (q_min - 0.3 * logp)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_sac_soft_bootstrap_is_the_plain_soft_target():
    agent = make_agent("sac", gamma=0.9)
    reward = torch.tensor([-1.0, 5.0, -20.0, 0.0])
    bootstrap = torch.tensor([0.9, 0.9, 0.9, 0.0])
    q_next = torch.tensor([-1.0, -1.0, -1.0, 7.0])
    cost = torch.tensor([-0.2, -0.5, 0.3, -1.0])  # alpha log pi(a'|s')
    # r + b (q - cost), nothing clipped (the 5.0 reward's target stays above 0)
    torch.testing.assert_close(
        agent.soft_bootstrap(reward, bootstrap, q_next, cost),
        torch.tensor([-1.72, 4.55, -21.17, 0.0]),
    )


SELF_LOOPS = [  # (reward, alpha log pi): the fixed points of issue 19, (r - gamma c) / (1 - gamma)
    (-0.5, 1.5, -98.5),
    (0.0, -0.5, 24.5),
]


@pytest.mark.parametrize("algo", ["sac", "tqc", "crossq"])
@pytest.mark.parametrize("env", ["FetchPush-v4", "PandaPush-v3"])
@pytest.mark.parametrize(("reward", "cost", "soft_value"), SELF_LOOPS)
def test_soft_targets_of_the_goal_family_presets_reach_the_soft_value(compose, algo, env, reward, cost, soft_value):
    """One state with a self-loop (gamma 0.98, the sparse families' preset): iterating the
    composed preset's soft target must converge to the soft value. With HER's clip_return on
    soft algorithms (the family files before issue 19) it converged to -51.47 and 0.49."""
    cfg = compose([f"algo={algo}", f"env={env}"])
    assert cfg.algo.gamma == 0.98
    cls = ALGOS[algo][0]
    agent = cls(cfg.algo, INFO)
    q = torch.zeros(1)
    r, c, b = torch.tensor([reward]), torch.tensor([cost]), torch.tensor([cfg.algo.gamma])
    for _ in range(3000):
        q = agent.soft_bootstrap(r, b, q, c)
    assert abs(float(q) - soft_value) < 1e-3


@pytest.mark.parametrize("algo", ["sac", "tqc", "crossq"])
def test_soft_algorithms_refuse_clip_return(compose, algo):
    from rlfw.config.validate import validate
    from rlfw.errors import ConfigError

    with pytest.raises(ConfigError, match=r"algo.clip_return=true is for ddpg and td3"):
        validate(compose([f"algo={algo}", "env=FetchPush-v4", "algo.clip_return=true"]))
    with pytest.raises(ConfigError, match="clip_return"):
        make_agent(algo, clip_return=True)



# -------------------------------------------------------------------------------------------
# 2. the temperature


def record_samples(agent):
    """Wrap ``agent.actor.sample``; returns the list of ``(x, a, logp)`` of each call."""
    calls = []
    orig = agent.actor.sample

    def sample(x, generator=None):
        out = orig(x, generator)
        calls.append((x.detach().clone(), out[0].detach().clone(), out[1].detach().clone()))
        return out

    agent.actor.sample = sample
    return calls


@pytest.mark.parametrize("target_entropy, direction", [(-100.0, -1.0), (100.0, 1.0)])
def test_alpha_loss_and_direction(target_entropy, direction):
    agent = make_agent("sac", alpha=0.5, alpha_lr=0.01, target_entropy=target_entropy)
    assert agent.target_entropy == target_entropy
    calls = record_samples(agent)
    b = make_batch(8)
    out = agent.update(b).metrics
    assert len(calls) == 2  # target sample at s', actor-step sample at s
    torch.testing.assert_close(calls[-1][0], torch.as_tensor(b.obs))
    logp = calls[-1][2].double()
    expected = -(math.log(0.5) * (logp + target_entropy)).mean()
    assert out["alpha_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert out["alpha"] == pytest.approx(0.5)  # the temperature used in this update
    # entropy -mean(logp) is far above -100 (alpha must fall), far below +100 (alpha must rise);
    # Adam's first step moves log_alpha by lr * sign(-grad) = lr * direction
    new = float(agent.temperature.log_alpha.detach())
    assert new == pytest.approx(math.log(0.5) + direction * 0.01, abs=1e-6)
    assert (float(agent.temperature().detach()) - 0.5) * direction > 0


def test_default_target_entropy_is_minus_act_dim():
    assert make_agent("sac").target_entropy == -float(ACT)


def test_fixed_alpha_never_changes():
    agent = make_agent("sac", alpha=0.3, autotune_alpha=False)
    assert not agent.temperature.log_alpha.requires_grad
    for i in range(3):
        out = agent.update(make_batch(8, seed=i)).metrics
        assert "alpha_loss" not in out and "actor_loss" in out
        assert out["alpha"] == pytest.approx(0.3)
    assert float(agent.temperature.log_alpha.detach()) == float(torch.tensor(math.log(0.3)))
    assert float(agent.temperature().detach()) == pytest.approx(0.3, rel=1e-6)


def test_temperature_is_exp_log_alpha():
    t = Temperature(0.25)
    assert float(t.log_alpha.detach()) == pytest.approx(math.log(0.25))
    assert float(t().detach()) == pytest.approx(0.25)


# -------------------------------------------------------------------------------------------
# 3. the tanh log-probability


def test_squashed_log_prob_matches_naive_float64_for_moderate_u():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(6, 3, generator=g, dtype=torch.float64) * 1.5
    mu = torch.randn(6, 3, generator=g, dtype=torch.float64)
    log_std = torch.rand(6, 3, generator=g, dtype=torch.float64) * 2 - 1.5
    expected = naive_logp64(u, mu, log_std)
    np.testing.assert_allclose(squashed_log_prob(u, mu, log_std).numpy(), expected, rtol=1e-10)
    got32 = squashed_log_prob(u.float(), mu.float(), log_std.float())
    assert got32.shape == (6,) and got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_squashed_log_prob_is_finite_for_saturated_u():
    u = torch.tensor([[30.0, -30.0]], requires_grad=True)
    mu = torch.tensor([[29.0, -29.0]])
    log_std = torch.zeros(1, 2)
    # the naive form in float32: tanh(30)^2 rounds to 1, log(0) = -inf
    naive = (
        torch.distributions.Normal(mu, 1.0).log_prob(u.detach())
        - torch.log(1 - torch.tanh(u.detach()) ** 2)
    ).sum(-1)
    assert not torch.isfinite(naive).all()
    got = squashed_log_prob(u, mu, log_std)
    # exact: log(1 - tanh(u)^2) = 2 log 2 - 2|u| - 2 log1p(exp(-2|u|));
    # Gaussian term per action: -0.5 - log sqrt(2 pi)
    jac = 2 * math.log(2) - 60.0 - 2 * math.log1p(math.exp(-60.0))
    expected = 2 * (-0.5 - 0.5 * math.log(2 * math.pi) - jac)
    assert torch.isfinite(got).all()
    assert float(got.detach()) == pytest.approx(expected, rel=1e-6)
    got.sum().backward()
    assert torch.isfinite(u.grad).all()


def test_squashed_log_prob_matches_torch_tanh_transformed_normal():
    from torch.distributions import Normal, TanhTransform, TransformedDistribution

    g = torch.Generator().manual_seed(1)
    mu = torch.randn(5, 2, generator=g, dtype=torch.float64)
    log_std = torch.rand(5, 2, generator=g, dtype=torch.float64) - 0.5
    u = (torch.rand(5, 2, generator=g, dtype=torch.float64) * 4 - 2).clamp(-2, 2)
    dist = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()])
    expected = dist.log_prob(torch.tanh(u)).sum(-1)
    torch.testing.assert_close(squashed_log_prob(u, mu, log_std), expected, rtol=1e-8, atol=1e-8)


def test_actor_sample_log_prob_and_log_std_clamp():
    torch.manual_seed(0)
    actor = SquashedGaussianActor(OBS, ACT, [8], "relu", "default")
    with torch.no_grad():
        actor.net.net[-1].bias[ACT:] = 50.0  # log std far above LOG_STD_MAX = 2
    x = torch.randn(4, OBS)
    mu, log_std = actor(x)
    assert torch.all(log_std == 2.0)
    g = torch.Generator().manual_seed(5)
    a, logp, mu2 = actor.sample(x, gen_copy(g))
    eps = torch.randn((4, ACT), generator=g)
    u = mu + math.exp(2.0) * eps  # sigma = exp(LOG_STD_MAX)
    torch.testing.assert_close(a, torch.tanh(u))
    torch.testing.assert_close(mu2, mu)
    np.testing.assert_allclose(
        logp.detach().numpy(), naive_logp64(u.detach(), mu.detach(), log_std.detach()), rtol=1e-4
    )


# -------------------------------------------------------------------------------------------
# 4. TQC's truncated quantile target


Z = [  # [N=2, B=2, M=3]
    [[1.0, 2.0, 3.0], [-1.0, 5.0, 0.0]],
    [[10.0, 20.0, 30.0], [4.0, -2.0, 7.0]],
]
# pooled and sorted: b0 [1, 2, 3, 10, 20, 30], b1 [-2, -1, 0, 4, 5, 7]; keep (M - d) N
KEPT = {
    0: [[1.0, 2.0, 3.0, 10.0, 20.0, 30.0], [-2.0, -1.0, 0.0, 4.0, 5.0, 7.0]],
    1: [[1.0, 2.0, 3.0, 10.0], [-2.0, -1.0, 0.0, 4.0]],  # per-net truncation: [1, 2, 10, 20]
    2: [[1.0, 2.0], [-2.0, -1.0]],
}


@pytest.mark.parametrize("drop", [0, 1, 2])
def test_tqc_quantile_target_truncates_pooled_atoms(drop):
    agent = make_agent(
        "tqc", n_critics=2, n_quantiles=3, top_quantiles_to_drop_per_net=drop, gamma=0.9
    )
    logp = [-1.5, 2.0]
    agent.actor = StubActor([0.1, 0.2], logp)
    agent.critic_target = StubQuantiles(Z)
    reward = torch.tensor([1.0, -1.0])
    term = torch.tensor([0.0, 0.0])
    disc = torch.tensor([0.9, 0.5])
    y = agent.quantile_target(torch.zeros(2, OBS), reward, term, disc, torch.tensor(0.2))
    kept = torch.tensor(KEPT[drop])
    assert y.shape == (2, (3 - drop) * 2)
    expected = reward[:, None] + disc[:, None] * (kept - 0.2 * torch.tensor(logp)[:, None])
    torch.testing.assert_close(y, expected)
    assert torch.all(y[:, 1:] >= y[:, :-1])
    if drop == 1:  # literal: 1 + 0.9 (z + 0.3); -1 + 0.5 (z - 0.4)
        torch.testing.assert_close(
            y, torch.tensor([[2.17, 3.07, 3.97, 10.27], [-2.2, -1.7, -1.2, 0.8]])
        )


def test_tqc_quantile_target_terminal():
    agent = make_agent(
        "tqc",
        n_critics=2,
        n_quantiles=3,
        top_quantiles_to_drop_per_net=1,
        gamma=0.9,
    )
    agent.actor = StubActor([0.0, 0.0], [-1.0, -1.0])
    agent.critic_target = StubQuantiles(Z)
    reward = torch.tensor([-1.0, -1.0])
    y = agent.quantile_target(
        torch.zeros(2, OBS),
        reward,
        torch.tensor([0.0, 1.0]),
        torch.tensor([0.9, 0.9]),
        torch.tensor(0.5),
    )
    # b0: -1 + 0.9 ([1, 2, 3, 10] + 0.5), every atom above 0 kept (no clip); b1: terminal
    torch.testing.assert_close(
        y, torch.tensor([[0.35, 1.25, 2.15, 8.45], [-1.0, -1.0, -1.0, -1.0]])
    )



# -------------------------------------------------------------------------------------------
# 5. the quantile Huber loss


def test_quantile_huber_loss_literal():
    theta = torch.tensor([[[0.0, 0.5]]])  # [N=1, B=1, M=2]: tau = [0.25, 0.75]
    y = torch.tensor([[0.5, -2.0, 3.0]])  # [B=1, K=3]
    # m=1 (theta 0, tau .25): u = 0.5 -> .25 * .125; u = -2 -> .75 * 1.5; u = 3 -> .25 * 2.5
    # m=2 (theta .5, tau .75): u = 0 -> 0; u = -2.5 -> .25 * 2.0; u = 2.5 -> .75 * 2.0
    total = 0.25 * 0.125 + 0.75 * 1.5 + 0.25 * 2.5 + 0.0 + 0.25 * 2.0 + 0.75 * 2.0
    out = quantile_huber_loss(theta, y)
    assert out.shape == (1, 1)
    assert float(out) == pytest.approx(total / 6)  # 3.78125 / 6
    assert float(out) == pytest.approx(0.6302083333)


def test_quantile_huber_loss_matches_scalar_loops():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 2
    y = torch.randn(3, 5, generator=g, dtype=torch.float64) * 2
    out = quantile_huber_loss(theta, y)
    N, B, M = theta.shape
    K = y.shape[1]
    expected = np.zeros((N, B))
    for n in range(N):
        for b in range(B):
            acc = 0.0
            for m in range(M):
                tau = (2 * (m + 1) - 1) / (2 * M)
                for k in range(K):
                    u = float(y[b, k] - theta[n, b, m])
                    h = 0.5 * u * u if abs(u) <= 1 else abs(u) - 0.5
                    acc += abs(tau - (1.0 if u < 0 else 0.0)) * h
            expected[n, b] = acc / (M * K)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    # the targets carry no gradient, the quantiles do
    theta.requires_grad_(True)
    y.requires_grad_(True)
    quantile_huber_loss(theta, y).sum().backward()
    assert y.grad is None and theta.grad is not None


# -------------------------------------------------------------------------------------------
# 6. CrossQ's joint forward pass


def plain_bn(x, w, b, eps):
    """Batch norm over axis -2, biased variance (NumPy float64)."""
    mean = x.mean(-2, keepdims=True)
    var = x.var(-2, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def test_crossq_one_joint_forward_pass_and_its_statistics():
    mom, eps = 0.1, 1e-3
    agent = make_agent(
        "crossq", policy_delay=2, bn_momentum=mom, bn_eps=eps, bn_warmup_steps=1000, alpha=0.2
    )
    B = 6
    batch = make_batch(B, terminated=[0, 0, 1, 0, 0, 0], seed=4)
    before = copy.deepcopy(agent.critic)  # pre-update weights and statistics
    calls = []
    agent.critic.register_forward_pre_hook(
        lambda mod, args: calls.append((args[0].detach().clone(), mod.training))
    )
    replay = gen_copy(agent.generator)
    result = agent.update(batch)  # update 1: critic step only (policy_delay 2)
    info = result.metrics
    assert "actor_loss" not in info
    assert len(calls) == 1
    x, training = calls[0]
    assert training and not agent.critic.training
    assert x.shape == (2 * B, OBS + ACT)
    # next action a' ~ pi(.|s'), replayed from the agent's generator by hand
    next_in = torch.as_tensor(batch.next_obs)
    with torch.no_grad():
        mu, log_std = agent.actor(next_in)  # the actor has not moved (no actor step)
    eps_n = torch.randn((B, ACT), generator=replay)
    u = mu + log_std.exp() * eps_n
    next_a = torch.tanh(u)
    sa = np.concatenate([batch.obs, batch.action], 1)
    sa_next = np.concatenate([batch.next_obs, next_a.numpy()], 1)
    np.testing.assert_array_equal(x[:B].numpy(), sa)
    np.testing.assert_allclose(x[B:].numpy(), sa_next, rtol=1e-6, atol=1e-6)

    # input norm statistics: those of the 2B-row joint batch (same for every member)
    joint = np.concatenate([sa, sa_next], 0).astype(np.float64)
    E = agent.n_critics
    exp_mean = mom * joint.mean(0)
    exp_var = 1.0 + mom * (joint.var(0, ddof=1) - 1.0)
    inorm = agent.critic.input_norm
    for e in range(E):
        np.testing.assert_allclose(inorm.running_mean[e, 0].numpy(), exp_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(inorm.running_var[e, 0].numpy(), exp_var, rtol=1e-5, atol=1e-6)
    assert not np.allclose(inorm.running_mean[0, 0].numpy(), mom * sa.mean(0), atol=1e-4)
    assert float(inorm.steps) == 1.0

    # the hidden norm sees the (pre-update) first layer on the normalised joint batch
    w_in = before.input_norm.weight.detach().double().numpy()
    b_in = before.input_norm.bias.detach().double().numpy()
    h0 = plain_bn(np.broadcast_to(joint, (E, *joint.shape)), w_in, b_in, eps)
    W = before.layers[0].weight.detach().double().numpy()
    bias = before.layers[0].bias.detach().double().numpy()
    h1 = np.maximum(h0 @ W + bias, 0.0)  # [E, 2B, H]
    hnorm = agent.critic.norms[0]
    np.testing.assert_allclose(
        hnorm.running_mean.numpy(), mom * h1.mean(1, keepdims=True), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        hnorm.running_var.numpy(),
        1 + mom * (h1.var(1, ddof=1, keepdims=True) - 1),
        rtol=1e-4,
        atol=1e-6,
    )

    # the target uses Q(s', a') of the same joint pass (train-mode batch statistics)
    with torch.no_grad():
        q_all = before.train()(torch.as_tensor(joint, dtype=torch.float32))  # [E, 2B]
    logp = torch.as_tensor(naive_logp64(u, mu, log_std), dtype=torch.float32)
    y = torch.as_tensor(batch.reward) + torch.as_tensor(batch.discount) * (
        1 - torch.as_tensor(batch.terminated)
    ) * (q_all[:, B:].min(0).values - 0.2 * logp)
    td = (q_all[:, :B] - y).abs().mean(0)
    np.testing.assert_allclose(result.td_error, td.numpy(), rtol=1e-4, atol=1e-5)

    # update 2 (actor step): one train-mode pass of 2B rows; the actor's B-row pass is in eval
    # mode and leaves the statistics alone
    calls.clear()
    m1, v1 = inorm.running_mean.clone(), inorm.running_var.clone()
    info = agent.update(make_batch(B, seed=5)).metrics
    assert "actor_loss" in info
    train_calls = [c for c in calls if c[1]]
    eval_calls = [c for c in calls if not c[1]]
    assert len(train_calls) == 1 and train_calls[0][0].shape == (2 * B, OBS + ACT)
    assert len(eval_calls) == 1 and eval_calls[0][0].shape == (B, OBS + ACT)
    j2 = train_calls[0][0].double()
    torch.testing.assert_close(
        inorm.running_mean.double(),
        m1.double() + mom * (j2.mean(0) - m1.double()),
        rtol=1e-5,
        atol=1e-6,
    )
    torch.testing.assert_close(
        inorm.running_var.double(),
        v1.double() + mom * (j2.var(0, unbiased=True) - v1.double()),
        rtol=1e-5,
        atol=1e-6,
    )
    assert float(inorm.steps) == 2.0


def test_crossq_has_no_target_networks():
    agent = make_agent("crossq")
    assert agent.critic_target is None
    assert "critic_target" not in agent.networks()
    assert isinstance(agent.critic, RenormEnsembleCritic)
    assert agent.critic_opt.param_groups[0]["betas"] == (0.5, 0.999)


# -------------------------------------------------------------------------------------------
# 7. batch renormalisation


def renorm_expected(x, w, b, rm, rv, eps, r_max, d_max):
    """Ioffe 2017 in NumPy float64, statistics over axis -2; also returns raw r, d."""
    mean = x.mean(-2, keepdims=True)
    sb = np.sqrt(x.var(-2, keepdims=True) + eps)
    s = np.sqrt(rv + eps)
    r_raw, d_raw = sb / s, (mean - rm) / s
    r, d = np.clip(r_raw, 1 / r_max, r_max), np.clip(d_raw, -d_max, d_max)
    return ((x - mean) / sb * r + d) * w + b, r_raw, d_raw


SHAPES = {"flat": (None, (7, 3)), "ensemble": (2, (2, 7, 3))}


def set_params(layer, g):
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))


@pytest.mark.parametrize("kind", list(SHAPES))
def test_batch_renorm_warmup_is_batch_norm_and_running_stats(kind):
    ens, shape = SHAPES[kind]
    layer = BatchRenorm(3, ens, momentum=0.1, eps=1e-3, warmup_steps=2).train()
    g = torch.Generator().manual_seed(0)
    set_params(layer, g)
    w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    rm, rv = np.zeros(w.shape), np.ones(w.shape)
    seen = []
    for step in range(2):  # both passes inside the warmup
        x = torch.randn(shape, generator=g) * 3 + 1
        xn = x.double().numpy()
        seen.append(xn)
        out = layer(x)
        np.testing.assert_allclose(
            out.detach().numpy(), plain_bn(xn, w, b, 1e-3), rtol=1e-5, atol=1e-5
        )
        rm = rm + 0.1 * (xn.mean(-2, keepdims=True) - rm)
        rv = rv + 0.1 * (xn.var(-2, ddof=1, keepdims=True) - rv)
        np.testing.assert_allclose(layer.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.running_var.numpy(), rv, rtol=1e-5, atol=1e-6)
        assert float(layer.steps) == step + 1
    assert layer.running_mean.shape == w.shape  # [1, F] or [E, 1, F]
    # the biased batch variance (divided by n = 7, not 6) would give a different running_var
    rv_biased = np.ones(w.shape)
    for xn in seen:
        rv_biased = rv_biased + 0.1 * (xn.var(-2, keepdims=True) - rv_biased)
    assert not np.allclose(layer.running_var.numpy(), rv_biased, rtol=1e-3)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_batch_renorm_corrections_after_warmup(kind):
    ens, shape = SHAPES[kind]
    r_max, d_max, eps = 2.0, 1.0, 1e-3
    layer = BatchRenorm(3, ens, momentum=0.2, eps=eps, r_max=r_max, d_max=d_max, warmup_steps=0)
    layer.train()
    g = torch.Generator().manual_seed(1)
    set_params(layer, g)
    # per feature batch scales ~[0.5, 2, 6] and offsets [0, 1, -3]
    x = torch.randn(shape, generator=g) * torch.tensor([0.5, 2.0, 6.0]) + torch.tensor(
        [0.0, 1.0, -3.0]
    )
    rm = torch.tensor([0.1, -4.0, -3.0]).expand_as(layer.running_mean).clone()
    rv = torch.tensor([1.0, 1.0, 4.0]).expand_as(layer.running_var).clone()
    layer.running_mean.copy_(rm)
    layer.running_var.copy_(rv)
    xn = x.double().numpy().copy()
    w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    expected, r_raw, d_raw = renorm_expected(
        xn, w, b, rm.double().numpy(), rv.double().numpy(), eps, r_max, d_max
    )
    # the chosen statistics make both clips bite somewhere and leave some entries unclipped
    assert (r_raw < 1 / r_max).any() or (r_raw > r_max).any()
    assert (np.abs(d_raw) > d_max).any() and (np.abs(d_raw) < d_max).any()
    xg = x.clone().requires_grad_(True)
    out = layer(xg)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out.detach().numpy(), plain_bn(xn, w, b, eps), atol=1e-3)
    # running statistics: momentum steps towards the batch's mean and unbiased variance
    np.testing.assert_allclose(
        layer.running_mean.numpy(),
        rm.numpy() + 0.2 * (xn.mean(-2, keepdims=True) - rm.numpy()),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        layer.running_var.numpy(),
        rv.numpy() + 0.2 * (xn.var(-2, ddof=1, keepdims=True) - rv.numpy()),
        rtol=1e-5,
        atol=1e-5,
    )
    # r and d carry no gradient: the gradient is that of (x - mu_B) / sigma_B * const
    c = torch.randn(shape, generator=g, dtype=torch.float64)
    (out * c).sum().backward()
    x64 = x.double().requires_grad_(True)
    r = torch.as_tensor(np.clip(r_raw, 1 / r_max, r_max))
    d = torch.as_tensor(np.clip(d_raw, -d_max, d_max))
    mean = x64.mean(-2, keepdim=True)
    sb = (x64.var(-2, keepdim=True, unbiased=False) + eps).sqrt()
    ref = ((x64 - mean) / sb * r + d) * torch.as_tensor(w) + torch.as_tensor(b)
    (ref * c).sum().backward()
    torch.testing.assert_close(xg.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_batch_renorm_unclipped_equals_running_stat_normalisation(kind):
    """With r, d unclipped, x^ = (x - running_mean) / sigma exactly (Ioffe 2017's point)."""
    ens, shape = SHAPES[kind]
    layer = BatchRenorm(3, ens, eps=1e-3, r_max=1e6, d_max=1e6, warmup_steps=0).train()
    g = torch.Generator().manual_seed(2)
    set_params(layer, g)
    layer.running_mean.fill_(0.7)
    layer.running_var.fill_(2.5)
    x = torch.randn(shape, generator=g, dtype=torch.float32) * 2
    out = layer(x).detach().double()
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    torch.testing.assert_close(
        out, (x.double() - 0.7) / math.sqrt(2.5 + 1e-3) * w + b, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("kind", list(SHAPES))
def test_batch_renorm_eval_uses_and_keeps_running_stats(kind):
    ens, shape = SHAPES[kind]
    layer = BatchRenorm(3, ens, eps=1e-3, warmup_steps=0)
    g = torch.Generator().manual_seed(3)
    set_params(layer, g)
    rm = torch.randn(layer.running_mean.shape, generator=g)
    rv = torch.rand(layer.running_var.shape, generator=g) + 0.5
    layer.running_mean.copy_(rm)
    layer.running_var.copy_(rv)
    layer.eval()
    x = torch.randn(shape, generator=g)
    out = layer(x)
    expected = (x.double() - rm.double()) / (
        rv.double() + 1e-3
    ).sqrt() * layer.weight.double() + layer.bias.double()
    torch.testing.assert_close(out.detach().double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer.running_mean, rm) and torch.equal(layer.running_var, rv)
    assert float(layer.steps) == 0.0
    # one row is enough in eval mode, and rows are independent
    torch.testing.assert_close(layer(x[..., :1, :]), out[..., :1, :])


# -------------------------------------------------------------------------------------------
# 8. SAC acting


def test_sac_act_mean_and_samples():
    agent = make_agent("sac", seed=1)
    obs = np.random.default_rng(0).standard_normal((5, OBS)).astype(np.float32)
    a1 = agent.act(obs, explore=False)
    a2 = agent.act(obs, explore=False)
    assert a1.shape == (5, ACT) and a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)
    # tanh(mu) by hand through the actor's linear layers
    h = torch.as_tensor(obs)
    lin = [m for m in agent.actor.net.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        h = torch.relu(h @ lin[0].weight.T + lin[0].bias)
        out = h @ lin[1].weight.T + lin[1].bias
    np.testing.assert_allclose(a1, torch.tanh(out[:, :ACT]).numpy(), rtol=1e-6, atol=1e-6)
    # exploring: samples of the policy with the agent's generator
    replay = gen_copy(agent.generator)
    s1 = agent.act(obs, explore=True)
    s2 = agent.act(obs, explore=True)
    assert not np.allclose(s1, s2)
    assert not np.allclose(s1, a1)
    for s in (s1, s2):
        assert s.shape == (5, ACT) and np.all(np.abs(s) < 1.0)
    std = out[:, ACT:].clamp(-20, 2).exp()
    u = out[:, :ACT] + std * torch.randn((5, ACT), generator=replay)
    np.testing.assert_allclose(s1, torch.tanh(u).numpy(), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------
# 9. checkpoints


def opt_states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert sa["state"][k].keys() == sb["state"][k].keys()
        for kk, v in sa["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][k][kk]))


@pytest.mark.parametrize("name", list(ALGOS))
def test_checkpoint_round_trip(name):
    kw = {"policy_delay": 1} if name == "crossq" else {}
    if name == "crossq":
        kw.update(actor_batch_norm=True, bn_warmup_steps=1)
    agent = make_agent(name, seed=0, **kw)
    for i in range(3):
        agent.update(make_batch(8, seed=i))
    obs = np.random.default_rng(9).standard_normal((4, OBS)).astype(np.float32)
    other = make_agent(name, seed=1, **kw)
    assert not np.allclose(other.act(obs), agent.act(obs))  # different weights before loading
    # through bytes, as a checkpoint file is written and read (torch.load(weights_only=True)):
    # an in-memory state_dict shares the live Adam state tensors with the source agent
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.act(obs, explore=False), agent.act(obs, explore=False))
    assert other.updates == agent.updates == 3
    for k in agent.optimizers():
        assert state[k]["state"], k  # the optimisers have stepped
        opt_states_equal(agent.optimizers()[k], other.optimizers()[k])
    assert set(other.state_dict()) == set(state)
    if name == "crossq":
        layers = [m for m in agent.critic.modules() if isinstance(m, BatchRenorm)]
        layers += [m for m in agent.actor.modules() if isinstance(m, BatchRenorm)]
        layers2 = [m for m in other.critic.modules() if isinstance(m, BatchRenorm)]
        layers2 += [m for m in other.actor.modules() if isinstance(m, BatchRenorm)]
        assert len(layers) == len(layers2) > 2
        for la, lb in zip(layers, layers2):
            assert float(la.steps) > 0 and not torch.all(la.running_mean == 0)
            for name_ in ("running_mean", "running_var", "steps"):
                assert torch.equal(getattr(la, name_), getattr(lb, name_))
    # the generator is restored: the same samples, and the same next update
    np.testing.assert_array_equal(other.act(obs, explore=True), agent.act(obs, explore=True))
    b = make_batch(8, seed=42)
    assert other.update(b).metrics == agent.update(b).metrics
    np.testing.assert_array_equal(other.act(obs), agent.act(obs))


# -------------------------------------------------------------------------------------------
# 10. the prioritised-replay signal


@pytest.mark.parametrize("name", list(ALGOS))
def test_td_error_shape_finite_nonnegative(name):
    agent = make_agent(name)
    assert not hasattr(agent, "td_error")  # the signal is returned, not left on the agent
    B = 7
    td = agent.update(make_batch(B, seed=3)).td_error
    assert isinstance(td, np.ndarray) and td.shape == (B,) and td.dtype == np.float32
    assert np.all(np.isfinite(td)) and np.all(td >= 0) and np.any(td > 0)


def test_tqc_td_error_is_per_sample_quantile_loss_mean_over_critics():
    agent = make_agent("tqc", n_critics=3, n_quantiles=4, top_quantiles_to_drop_per_net=1)
    b = make_batch(6, seed=1)
    t = torch.as_tensor
    state = agent.generator.get_state()
    y = agent.quantile_target(
        t(b.next_obs), t(b.reward), t(b.terminated), t(b.discount), agent.temperature().detach()
    )
    agent.generator.set_state(state)
    assert y.shape == (6, (4 - 1) * 3)
    with torch.no_grad():
        theta = agent.critic(torch.cat([t(b.obs), t(b.action)], -1))  # [N, B, M]
    assert theta.shape == (3, 6, 4)
    result = agent.update(b)
    info = result.metrics
    expected = quantile_huber_loss(theta, y).mean(0)
    np.testing.assert_allclose(result.td_error, expected.numpy(), rtol=1e-5, atol=1e-7)
    # L_Z = sum_n mean_B (weight = 1), the critics' mean, not the sum over quantiles
    assert info["critic_loss"] == pytest.approx(
        float(quantile_huber_loss(theta, y).mean(1).sum()), rel=1e-5
    )


def test_sac_td_error_is_mean_abs_over_critics():
    agent = make_agent("sac")
    b = make_batch(6, seed=2)
    t = torch.as_tensor
    state = agent.generator.get_state()
    y = agent.soft_target(
        t(b.next_obs), t(b.reward), t(b.terminated), t(b.discount), agent.temperature().detach()
    )
    agent.generator.set_state(state)
    with torch.no_grad():
        q = agent.critic(torch.cat([t(b.obs), t(b.action)], -1))
    td_error = agent.update(b).td_error
    np.testing.assert_allclose(td_error, (q - y).abs().mean(0).numpy(), rtol=1e-5, atol=1e-7)


def test_crossq_defaults_follow_the_reference_code(compose):
    """The reference code (bn_mode='brn_actor') and sb3-contrib: batch renormalisation in the
    actor too, Adam beta1 0.5 for actor and critics, Adam's default 0.9 for the temperature."""
    from rlfw.algos.crossq import renorm_layers

    cfg = compose(["algo=crossq"])
    assert cfg.algo.actor_batch_norm is True
    agent = CrossQ(cfg.algo, INFO)
    assert len(renorm_layers(agent.actor)) == len(cfg.algo.actor_hidden) + 1  # input and hidden
    assert agent.actor_opt.param_groups[0]["betas"] == (0.5, 0.999)
    assert agent.critic_opt.param_groups[0]["betas"] == (0.5, 0.999)
    assert agent.alpha_opt.param_groups[0]["betas"] == (0.9, 0.999)
