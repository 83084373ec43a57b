"""``env.grasped_start``: FetchPickAndPlace training episodes that start with the object held
(HER paper, Sec. 4.1); evaluation envs start as the env does."""

from __future__ import annotations

import numpy as np

from rlfw.build import build
from rlfw.envs import FAMILIES
from rlfw.envs.grasp import GraspedStart


def _pick_and_place():
    family = FAMILIES.get("fetch").target
    family.register()
    return family.make("FetchPickAndPlace-v4")


def _gap(env) -> float:
    """Metres between the object and the grip site of an unwrapped Fetch env."""
    base = env.unwrapped
    u = base._utils
    return float(np.linalg.norm(u.get_site_xpos(base.model, base.data, "object0")
                                - u.get_site_xpos(base.model, base.data, "robot0:grip")))  # fmt: skip


def test_grasped_start_holds_the_object_and_lifts_it_with_the_gripper():
    env = GraspedStart(_pick_and_place(), 1.0)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        assert _gap(env) < 0.01  # the object sits between the fingers
        np.testing.assert_allclose(obs["achieved_goal"], env.unwrapped._utils.get_site_xpos(
            env.unwrapped.model, env.unwrapped.data, "object0"), atol=1e-6)  # fmt: skip
        z0 = obs["achieved_goal"][2]
        for _ in range(5):  # up, fingers closed: a held object rises with the gripper
            obs, *_ = env.step(np.array([0.0, 0.0, 1.0, -1.0], dtype=np.float32))
        assert obs["achieved_goal"][2] - z0 > 0.05
    env.close()


def test_without_grasped_start_the_object_starts_on_the_table_away_from_the_gripper():
    env = GraspedStart(_pick_and_place(), 0.0)
    for seed in range(5):
        env.reset(seed=seed)
        assert _gap(env) > 0.05
    env.close()


def test_grasped_start_draws_its_fraction_of_episodes_and_repeats_with_the_seed():
    def held(seed: int) -> list[bool]:
        env = GraspedStart(_pick_and_place(), 0.5)
        env.reset(seed=seed)
        out = [_gap(env) < 0.01]
        for _ in range(39):
            env.reset()
            out.append(_gap(env) < 0.01)
        env.close()
        return out

    a = held(3)
    assert 0.25 < np.mean(a) < 0.75
    assert a == held(3)


def test_only_training_envs_start_grasped(compose):
    cfg = compose(["env=FetchPickAndPlace-v4", "env.grasped_start=0.5", "train.epochs=1"])
    parts = build(cfg)
    try:
        assert all(isinstance(e, GraspedStart) for e in parts.envs.envs)
        assert parts.eval_envs is not None
        assert not any(isinstance(e, GraspedStart) for e in parts.eval_envs.envs)
    finally:
        parts.envs.close()
        parts.eval_envs.close()
        parts.env.ref_env.close()
