"""Actor-critic arithmetic against hand-computed tensors (TD3 target, polyak, delays, losses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rlfw.algos import DDPG, TD3, polyak_update
from rlfw.algos.networks import EnsembleMLP
from rlfw.algos.normalizer import Normalizer
from rlfw.buffers import Batch
from rlfw.config.schema import DDPGConfig, TD3Config
from rlfw.envs import EnvInfo

pytestmark = pytest.mark.unit  # no simulator, no subprocess: nox -s unit

INFO = EnvInfo("t", False, obs_dim=3, goal_dim=0, act_dim=2, max_episode_steps=None)


class ConstActor(nn.Module):
    """pi(s) = a fixed action, whatever the state."""

    def __init__(self, action):
        super().__init__()
        self.action = torch.tensor(action, dtype=torch.float32)

    def forward(self, x):
        return self.action.expand(x.shape[0], -1).clone()


class LinearTwinQ(nn.Module):
    """Q_j(s, a) = c_j + sum(a): lets a test read the action the target used."""

    def __init__(self, consts):
        super().__init__()
        self.c = torch.tensor(consts, dtype=torch.float32)
        self.obs_dim = INFO.obs_dim

    def forward(self, x):
        a = x[:, self.obs_dim :]
        return self.c[:, None] + a.sum(-1)[None, :]


def make_batch(B=4, reward=None, terminated=None, discount=None, weight=None, seed=0):
    r = np.random.default_rng(seed)
    return Batch(
        obs=r.standard_normal((B, 3)).astype(np.float32),
        action=r.uniform(-1, 1, (B, 2)).astype(np.float32),
        reward=np.asarray(reward if reward is not None else r.standard_normal(B), np.float32),
        next_obs=r.standard_normal((B, 3)).astype(np.float32),
        terminated=np.asarray(terminated if terminated is not None else np.zeros(B), np.float32),
        discount=np.asarray(discount if discount is not None else np.full(B, 0.99), np.float32),
        weight=np.asarray(weight if weight is not None else np.ones(B), np.float32),
        index=np.arange(B),
    )


def test_td3_target_min_of_twins_smoothing_and_clipping():
    cfg = TD3Config(target_noise=0.2, target_noise_clip=0.5, gamma=0.9)
    agent = TD3(cfg, INFO, seed=2)  # a seed whose smoothing pushes 0.9 past +1
    agent.actor_target = ConstActor([0.9, -0.3])
    agent.critic_target = LinearTwinQ([1.0, -2.0])  # min over twins: the second
    B = 5
    reward = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    done = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
    discount = torch.tensor([0.9, 0.9, 0.81, 0.729, 0.9])
    next_in = torch.zeros(B, 3)
    y = agent.critic_target_value(next_in, reward, done, discount)
    # reproduce the smoothing noise with the same generator state
    g = torch.Generator().manual_seed(2)
    eps = (torch.randn((B, 2), generator=g) * 0.2).clamp(-0.5, 0.5)
    a_next = (torch.tensor([0.9, -0.3]) + eps).clamp(-1.0, 1.0)
    q_min = torch.minimum(1.0 + a_next.sum(-1), -2.0 + a_next.sum(-1))
    expected = reward + discount * (1 - done) * q_min
    torch.testing.assert_close(y, expected)
    # terminated samples do not bootstrap
    assert y[1] == reward[1] and y[4] == reward[4]
    # the clamp to the action bounds mattered: some smoothed action went past +1 on a
    # bootstrapped sample, and the target without the clamp would differ
    unclamped = torch.tensor([0.9, -0.3]) + eps
    assert (unclamped[[0, 2, 3], 0] > 1.0).any()
    q_unclamped = torch.minimum(1.0 + unclamped.sum(-1), -2.0 + unclamped.sum(-1))
    assert not torch.allclose(y, reward + discount * (1 - done) * q_unclamped)


def test_target_noise_clip_bounds_the_smoothing():
    cfg = TD3Config(target_noise=10.0, target_noise_clip=0.1)
    agent = TD3(cfg, INFO, seed=0)
    agent.actor_target = ConstActor([0.0, 0.0])
    agent.critic_target = LinearTwinQ([0.0, 0.0])
    y = agent.critic_target_value(torch.zeros(1000, 3), torch.zeros(1000), torch.zeros(1000), torch.ones(1000))
    # Q = sum(a), each component clipped to [-0.1, 0.1]; with sigma=10 nearly all sit at +-0.1,
    # so the sums are (almost always) -0.2, 0 or 0.2
    assert y.abs().max() <= 0.2 + 1e-6
    near = torch.isclose(y.abs(), torch.tensor(0.2)) | torch.isclose(y, torch.tensor(0.0), atol=1e-6)
    assert near.float().mean() > 0.95


def test_ddpg_target_has_no_smoothing_and_one_critic():
    agent = DDPG(DDPGConfig(gamma=0.5), INFO)
    assert agent.n_critics == 1 and agent.policy_delay == 1 and agent.target_noise == 0.0
    agent.actor_target = ConstActor([0.25, 0.5])
    agent.critic_target = LinearTwinQ([3.0])
    y = agent.critic_target_value(torch.zeros(2, 3), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]),
                                  torch.tensor([0.5, 0.5]))  # fmt: skip
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.5 * 3.75, 1.0]))


def test_clip_return_bounds_the_target():
    cfg = TD3Config(gamma=0.9, clip_return=True, target_noise=0.0)
    agent = TD3(cfg, INFO)
    agent.actor_target = ConstActor([0.0, 0.0])
    agent.critic_target = LinearTwinQ([-1.0, 50.0])  # min over twins: -1
    reward = torch.tensor([-1.0, 5.0, -20.0])
    y = agent.critic_target_value(torch.zeros(3, 3), reward, torch.zeros(3), torch.full((3,), 0.9))
    # -1 - 0.9 stays; 5 - 0.9 is clipped to 0; -20 - 0.9 to -1/(1-gamma) = -10
    torch.testing.assert_close(y, torch.tensor([-1.9, 0.0, -10.0]))


def test_clip_return_null_is_the_algorithms_choice_on_bounded_rewards():
    """algo.clip_return: null (the default) clips DDPG/TD3 targets where the env family bounds
    rewards to [-1, 0] (Fetch, Panda) and nowhere else; SAC's family never clips; an explicit
    value wins."""
    from dataclasses import replace

    from rlfw.algos.sac import SAC, SACConfig

    bounded = replace(INFO, reward_range=(-1.0, 0.0))
    assert TD3Config().clip_return is None and SACConfig().clip_return is None
    assert TD3(TD3Config(), bounded).clip_return is True
    assert DDPG(DDPGConfig(), bounded).clip_return is True
    assert TD3(TD3Config(), INFO).clip_return is False  # Hopper: no bound
    assert TD3(TD3Config(clip_return=False), bounded).clip_return is False
    assert TD3(TD3Config(clip_return=True), INFO).clip_return is True
    assert SAC(SACConfig(), bounded).clip_return is False


def test_polyak_update_matches_formula():
    target = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    online = [torch.tensor([3.0, -2.0]), torch.tensor([[10.0]])]
    polyak_update(target, online, 0.25)
    torch.testing.assert_close(target[0], torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(target[1], torch.tensor([[2.5]]))


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_policy_delay_and_target_updates():
    agent = TD3(TD3Config(policy_delay=3, tau=0.1), INFO)
    actor0, actor_t0, critic_t0 = params(agent.actor), params(agent.actor_target), params(agent.critic_target)
    batch = make_batch(8)
    for _ in range(2):
        info = agent.update(batch).metrics
        assert "actor_loss" not in info
    assert same(actor0, params(agent.actor)) and same(actor_t0, params(agent.actor_target))
    assert same(critic_t0, params(agent.critic_target))  # targets move with the actor step only
    info = agent.update(batch).metrics
    assert "actor_loss" in info
    assert not same(actor0, params(agent.actor))
    # target = tau * online + (1 - tau) * old target, after the step
    for t, o, t0 in zip(agent.actor_target.parameters(), agent.actor.parameters(), actor_t0):
        torch.testing.assert_close(t, 0.1 * o.detach() + 0.9 * t0)


def test_actor_step_leaves_critic_gradients_untouched():
    """After an update with an actor step, the critic's .grad is exactly the critic loss's."""
    torch.manual_seed(0)
    agent = DDPG(DDPGConfig(), INFO, seed=0)
    torch.manual_seed(0)
    ref = DDPG(DDPGConfig(policy_delay=1000), INFO, seed=0)  # no actor step
    b = make_batch(8)
    info = agent.update(b).metrics
    ref_info = ref.update(b).metrics
    assert "actor_loss" in info and "actor_loss" not in ref_info
    for p, q in zip(agent.critic.parameters(), ref.critic.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_critic_loss_weights_and_bootstrap():
    """With weight 0 on a sample its TD error does not move the critic."""
    torch.manual_seed(0)
    a1 = DDPG(DDPGConfig(), INFO, seed=0)
    torch.manual_seed(0)
    a2 = DDPG(DDPGConfig(), INFO, seed=0)
    b = make_batch(4)
    b_one = Batch(*[x[:1] if isinstance(x, np.ndarray) else x for x in
                    (b.obs, b.action, b.reward, b.next_obs, b.terminated, b.discount, b.weight, b.index)])  # fmt: skip
    w = b.weight.copy()
    w[1:] = 0.0
    b.weight = w
    # loss on 4 samples with weights (1,0,0,0) = 1/4 of the loss on the first sample alone
    i1 = a1.update(b).metrics
    i2 = a2.update(b_one).metrics
    assert i1["critic_loss"] == pytest.approx(i2["critic_loss"] / 4, rel=1e-5)


def test_td_error_is_mean_abs_over_critics():
    agent = TD3(TD3Config(target_noise=0.0), INFO)
    b = make_batch(6)
    with torch.no_grad():
        x = torch.as_tensor(b.obs)
        nx = torch.as_tensor(b.next_obs)
        y = agent.critic_target_value(nx, torch.as_tensor(b.reward), torch.as_tensor(b.terminated),
                                      torch.as_tensor(b.discount))  # fmt: skip
        q = agent.critic(torch.cat([x, torch.as_tensor(b.action)], -1))
    td_error = agent.update(b).td_error
    np.testing.assert_allclose(td_error, (q - y).abs().mean(0).numpy(), rtol=1e-5)


def test_action_l2_penalty_enters_actor_loss():
    torch.manual_seed(0)
    a0 = DDPG(DDPGConfig(action_l2=0.0), INFO, seed=0)
    torch.manual_seed(0)
    a1 = DDPG(DDPGConfig(action_l2=1.0), INFO, seed=0)
    b = make_batch(16)
    l0 = a0.update(b).metrics["actor_loss"]
    l1 = a1.update(b).metrics["actor_loss"]
    # same networks, same batch: the difference is mean(pi(s)^2) of the pre-update actor
    # evaluated after the critic step; it must be positive and < 1 (actions in [-1, 1])
    assert 0.0 < l1 - l0 < 1.0


def test_ensemble_critic_equals_two_separate_mlps():
    ens = EnsembleMLP(2, 5, [7, 6], "relu")
    x = torch.randn(4, 5)
    out = ens(x)
    for e in range(2):
        h = x
        for i, layer in enumerate(ens.layers):
            h = h @ layer.weight[e] + layer.bias[e, 0]
            if i < len(ens.layers) - 1:
                h = torch.relu(h)
        torch.testing.assert_close(out[e], h.squeeze(-1))
    torch.testing.assert_close(ens.first(x), out[0])


@pytest.mark.parametrize("init", ["default", "he_normal", "orthogonal", "xavier_uniform"])
def test_inits(init):
    ens = EnsembleMLP(2, 64, [256], "relu", init)
    w = ens.layers[0].weight[0]  # [in, out]
    if init == "he_normal":
        assert w.std().item() == pytest.approx((2.0 / 64) ** 0.5, rel=0.1)
        assert torch.all(ens.layers[0].bias == 0)
    elif init == "orthogonal":
        wt = w.t()  # [out, in] with out > in: orthogonal columns scaled by gain sqrt(2)
        torch.testing.assert_close(wt.t() @ wt, 2.0 * torch.eye(64), atol=1e-4, rtol=1e-4)
    elif init == "default":
        assert w.abs().max() <= 1 / 8 + 1e-6
    # the two members differ
    assert not torch.equal(ens.layers[0].weight[0], ens.layers[0].weight[1])


def test_normalizer_mean_std_clip():
    n = Normalizer(2, clip=5.0, eps=0.01)
    data = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    n.update(data)
    torch.testing.assert_close(n.mean, torch.tensor([3.0, 10.0]))
    torch.testing.assert_close(n.std, torch.tensor([np.sqrt(8 / 3), 0.01], dtype=torch.float32))
    out = n(torch.tensor([[3.0 + np.sqrt(8 / 3), 10.5]], dtype=torch.float32))
    torch.testing.assert_close(out, torch.tensor([[1.0, 5.0]]))  # the second is clipped
    off = Normalizer(2, enabled=False)
    off.update(data)
    x = torch.tensor([[7.0, -7.0]])
    assert torch.equal(off(x), x)


def test_goal_env_agent_normalises_by_default_and_checkpoints_roundtrip():
    info = EnvInfo("g", True, obs_dim=3, goal_dim=2, act_dim=2, max_episode_steps=5)
    agent = TD3(TD3Config(), info)
    assert agent.obs_norm.enabled and agent.goal_norm is not None and agent.goal_norm.enabled
    plain = TD3(TD3Config(), INFO)
    assert not plain.obs_norm.enabled
    agent.observe(np.random.default_rng(0).standard_normal((10, 3)), np.ones((10, 2)))
    state = agent.state_dict()
    other = TD3(TD3Config(), info)
    other.load_state_dict(state)
    obs, goal = np.ones((2, 3), np.float32), np.zeros((2, 2), np.float32)
    np.testing.assert_array_equal(agent.act(obs, goal), other.act(obs, goal))


def test_preact_l2_enters_actor_loss_as_mean_squared_pre_tanh_output():
    torch.manual_seed(0)
    a0 = TD3(TD3Config(preact_l2=0.0, policy_delay=1), INFO, seed=0)
    torch.manual_seed(0)
    a1 = TD3(TD3Config(preact_l2=2.0, policy_delay=1), INFO, seed=0)
    b = make_batch(16)
    # the actor loss is computed after the critic step, with the (unchanged) actor
    with torch.no_grad():
        u, pi = a0.actor.forward_pre(torch.as_tensor(b.obs))
    torch.testing.assert_close(pi, a0.actor(torch.as_tensor(b.obs)))
    torch.testing.assert_close(pi, torch.tanh(u))
    l0 = a0.update(b).metrics["actor_loss"]
    l1 = a1.update(b).metrics["actor_loss"]
    assert l1 - l0 == pytest.approx(2.0 * float(u.square().mean()), rel=1e-4)


def _corner_then_flip(preact_l2: float) -> tuple[float, float]:
    """TD3 at its default network and learning rates (3x256, lr 1e-3) on one-step
    episodes with reward ``+sum(a)`` (the best action is the +1 corner), then ``-sum(a)`` (the
    best action is -1). Returns the mean action after each phase.

    This is the Hopper-v4 collapse in small: the actor is driven into a corner early, then the
    critic learns that the corner is bad, and the actor must be able to leave it.
    """
    torch.manual_seed(0)
    info = EnvInfo("corner", False, obs_dim=8, goal_dim=0, act_dim=2, max_episode_steps=1)
    agent = TD3(TD3Config(preact_l2=preact_l2), info, seed=0)
    rng = np.random.default_rng(0)
    test_obs = torch.as_tensor(rng.normal(0.0, 3.0, (512, 8)).astype(np.float32))
    means = []
    for sign, updates in ((1.0, 300), (-1.0, 500)):
        for _ in range(updates):
            B = 128
            obs = rng.normal(0.0, 3.0, (B, 8)).astype(np.float32)  # raw, Hopper-like scale
            action = rng.uniform(-1.0, 1.0, (B, 2)).astype(np.float32)
            ones = np.ones(B, np.float32)
            batch = Batch(obs, action, (sign * action.sum(1)).astype(np.float32), obs, ones, ones * 0.99, ones,
                          np.arange(B))  # fmt: skip
            agent.update(batch)
        with torch.no_grad():
            means.append(float(agent.actor(test_obs).mean()))
    return means[0], means[1]


def test_actor_leaves_a_saturated_corner_with_the_default_preact_l2():
    """The cause of the Hopper-v4 collapse (issue 14): without the pre-tanh penalty the actor's
    pre-activations run to |u| ~ 25 in the first phase and tanh's gradient (~1e-20) can never
    bring it back; with the default ``preact_l2`` it follows the flipped reward to -1."""
    first, second = _corner_then_flip(TD3Config().preact_l2)
    assert first > 0.95
    assert second < -0.95
    # the trap is real at these settings: switched off, the actor stays in the +1 corner
    stuck_first, stuck_second = _corner_then_flip(0.0)
    assert stuck_first > 0.95 and stuck_second > 0.95


def test_optimizers_take_the_fused_adam_step_and_it_equals_the_per_tensor_step():
    """Every optimiser of TD3 and DDPG is Adam with the fused step (one kernel per step, cheaper on
    the CPU), and its updates equal those of the per-tensor Adam loop to float32 rounding."""
    from rlfw.algos.base import adam

    for cls, cfg in ((TD3, TD3Config()), (DDPG, DDPGConfig())):
        agent = cls(cfg, INFO)
        for name, opt in agent.optimizers().items():
            assert isinstance(opt, torch.optim.Adam), name
            assert all(g["fused"] for g in opt.param_groups), name
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = adam(nets[0].parameters(), 1e-2, betas=(0.5, 0.999))
    loop = torch.optim.Adam(nets[1].parameters(), lr=1e-2, betas=(0.5, 0.999), foreach=False)
    start = nets[0][0].weight.detach().clone()
    x = torch.randn(32, 5)
    for _ in range(20):
        for net, opt in zip(nets, (fused, loop)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert (nets[0][0].weight - start).abs().max() > 0.05  # the 20 steps moved the weights


def test_act_with_target_acts_with_the_averaged_actor_and_explores_with_the_actor(tmp_path):
    """algo.act_with_target: deterministic actions (evaluation, load, export) come from the
    Polyak-averaged actor_target, exploration from the actor; off, both from the actor."""
    from omegaconf import OmegaConf

    obs = np.zeros((2, INFO.obs_dim), np.float32)
    on = TD3(OmegaConf.structured(TD3Config(act_with_target=True)), INFO)
    on.actor_target = ConstActor([0.25, -0.5])
    np.testing.assert_allclose(on.act(obs, None, explore=False), [[0.25, -0.5]] * 2)
    on.actor = ConstActor([0.75, 0.0])
    np.testing.assert_allclose(on.act(obs, None, explore=True), [[0.75, 0.0]] * 2)
    off = TD3(OmegaConf.structured(TD3Config()), INFO)
    off.actor, off.actor_target = ConstActor([0.1, 0.2]), ConstActor([0.9, 0.9])
    np.testing.assert_allclose(off.act(obs, None, explore=False), [[0.1, 0.2]] * 2)
    assert on.eval_actor is on.actor_target and off.eval_actor is off.actor


def test_an_actor_without_the_network_contract_is_refused_when_the_agent_is_built():
    """A plugin's TD3 whose make_actor returns its own module without forward_pre (a residual
    actor, say) fails at construction with one line naming the method, not at the first update
    with an AttributeError; SAC's actor needs sample()."""
    from rlfw.algos.sac import SAC, SACConfig

    class ResidualActor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(INFO.obs_dim, INFO.act_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.lin(x) + x[:, : INFO.act_dim])

    class ResidualTD3(TD3):
        def make_actor(self) -> nn.Module:
            return ResidualActor()

    class PlainSAC(SAC):
        def make_actor(self) -> nn.Module:
            return ResidualActor()

    with pytest.raises(TypeError, match=r"ResidualTD3.make_actor\(\) returned ResidualActor, which has no forward_pre\(\)"):
        ResidualTD3(TD3Config(), INFO)
    with pytest.raises(TypeError, match=r"PlainSAC.make_actor\(\) returned ResidualActor, which has no sample\(\)"):
        PlainSAC(SACConfig(), INFO)
    assert TD3(TD3Config(), INFO).actor_methods == ("forward_pre",)  # rlfw's own networks pass
