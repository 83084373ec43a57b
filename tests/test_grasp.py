"""``env.grasped_start``: FetchPickAndPlace training episodes that start with the object held
(HER paper, Sec. 4.1); ``env.near_object_start``: Fetch and Panda training episodes that start
with the gripper beside the object; evaluation envs start as the env does."""

from __future__ import annotations

import numpy as np
import pytest

from rlfw.build import build
from rlfw.envs import FAMILIES
from rlfw.envs.grasp import NEAR_DISTANCE, GraspedStart, NearObjectStart, ScriptedStart


def _fetch(env_id: str = "FetchPickAndPlace-v4"):
    family = FAMILIES.get("fetch").target
    family.register()
    return family.make(env_id)


def _pick_and_place():
    return _fetch()


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


def _beside(env) -> tuple[float, float]:
    """(horizontal, vertical) metres from the object centre to the grip site."""
    base = env.unwrapped
    u = base._utils
    d = u.get_site_xpos(base.model, base.data, "robot0:grip") - u.get_site_xpos(
        base.model, base.data, "object0"
    )
    return float(np.linalg.norm(d[:2])), float(d[2])


def test_near_object_start_puts_the_gripper_beside_the_unmoved_object_on_every_side():
    env = NearObjectStart(_fetch("FetchPush-v4"), 1.0)
    plain = _fetch("FetchPush-v4")
    sides = []
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        ref, _ = plain.reset(seed=seed)  # the same draw of object and goal, no scripted start
        horizontal, vertical = _beside(env)
        grip, obj = obs["observation"][:3], obs["achieved_goal"]
        if grip[0] > 1.48:  # at the far edge of the arm's reach the gripper may stop short
            continue
        assert abs(horizontal - NEAR_DISTANCE) < 0.015 and abs(vertical) < 0.015
        np.testing.assert_allclose(obj, ref["achieved_goal"], atol=0.005)  # the object did not move
        np.testing.assert_allclose(obs["desired_goal"], ref["desired_goal"])  # nor the goal
        sides.append(np.arctan2(*(grip - obj)[1::-1]))
    assert len(sides) >= 9
    assert np.ptp(np.cos(sides)) > 1.0 and np.ptp(np.sin(sides)) > 1.0  # sides all around
    env.close()
    plain.close()


def test_near_object_start_draws_its_fraction_and_repeats_with_the_seed():
    def near(seed: int) -> list[bool]:
        env = NearObjectStart(_fetch("FetchPush-v4"), 0.5)
        env.reset(seed=seed)
        out = [_beside(env)[0] < 2 * NEAR_DISTANCE]
        for _ in range(39):
            env.reset()
            out.append(_beside(env)[0] < 2 * NEAR_DISTANCE)
        env.close()
        return out

    a = near(4)
    assert 0.25 < np.mean(a) < 0.75
    assert a == near(4)
    off = NearObjectStart(_fetch("FetchPush-v4"), 0.0)  # 0: the env's own starts, gripper away
    for seed in range(6):
        off.reset(seed=seed)
        assert _beside(off)[0] > 2 * NEAR_DISTANCE
    off.close()


def _panda(env_id: str = "PandaPush-v3"):
    family = FAMILIES.get("panda").target
    family.register()
    return family.make(env_id)


def test_panda_near_object_start_places_the_arm_beside_the_unmoved_object_on_every_side():
    """panda-gym: the arm is placed by inverse kinematics (no simulator step), so the object
    and goal are exactly the plain env's for the same reset seed."""
    env = NearObjectStart(_panda(), 1.0)
    plain = _panda()
    sides = []
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        ref, _ = plain.reset(seed=seed)
        ee, obj = obs["observation"][:3], obs["achieved_goal"]
        assert abs(np.linalg.norm((ee - obj)[:2]) - NEAR_DISTANCE) < 0.025 and abs(ee[2] - obj[2]) < 0.01
        np.testing.assert_array_equal(obj, ref["achieved_goal"])  # the object did not move
        np.testing.assert_array_equal(obs["desired_goal"], ref["desired_goal"])  # nor the goal
        assert np.linalg.norm((ref["observation"][:3] - ref["achieved_goal"])[:2]) > 2 * NEAR_DISTANCE or \
            ref["observation"][2] - ref["achieved_goal"][2] > 0.1  # the env's own start: gripper up and away
        sides.append(np.arctan2(*(ee - obj)[1::-1]))
        obs, *_ = env.step(np.zeros(3, dtype=np.float32))  # the placed arm holds still
        assert np.linalg.norm(obs["observation"][:3] - ee) < 0.01
    assert np.ptp(np.cos(sides)) > 1.0 and np.ptp(np.sin(sides)) > 1.0  # sides all around
    assert env.scripted_steps == 0  # placed, not driven: no simulator steps to report
    env.close()
    plain.close()


def test_panda_near_object_start_draws_its_fraction_and_repeats_with_the_seed():
    def near(seed: int) -> list[bool]:
        env = NearObjectStart(_panda(), 0.5)
        out = []
        for i in range(30):
            obs, _ = env.reset(seed=seed) if i == 0 else env.reset()
            out.append(bool(np.linalg.norm((obs["observation"][:3] - obs["achieved_goal"])[:2]) < 0.09
                            and abs(obs["observation"][2] - obs["achieved_goal"][2]) < 0.01))  # fmt: skip
        env.close()
        return out

    a = near(5)
    assert 0.2 < np.mean(a) < 0.8
    assert a == near(5)


@pytest.mark.parametrize("task, key, attr", [("FetchPickAndPlace-v4", "grasped_start", "grasped"),
                                              ("FetchPush-v4", "near_object_start", "near"),
                                              ("PandaPush-v3", "near_object_start", "near")])  # fmt: skip
def test_only_training_envs_get_the_scripted_start(compose, task, key, attr):
    cfg = compose([f"env={task}", f"env.{key}=0.5", "train.epochs=1"])
    parts = build(cfg)
    try:
        assert all(isinstance(e, ScriptedStart) and getattr(e, attr) == 0.5 for e in parts.envs.envs)
        assert parts.eval_envs is not None
        assert not any(isinstance(e, ScriptedStart) for e in parts.eval_envs.envs)
    finally:
        parts.envs.close()
        parts.eval_envs.close()
        parts.env.ref_env.close()


def test_grasped_and_near_object_starts_stack_as_exclusive_draws_and_count_their_steps():
    """FetchPickAndPlace with grasped 0.4 and near 0.4: each episode starts one way (held,
    beside the object, or the env's own), in about those fractions; the wrapper counts the
    simulator steps of exactly the scripted starts; a sum over 1 is refused."""
    env = ScriptedStart(_pick_and_place(), grasped=0.4, near=0.4)
    env.reset(seed=3)
    kinds = []
    for _ in range(60):
        before = env.scripted_steps
        env.reset()
        horizontal, vertical = _beside(env)
        held = _gap(env) < 0.01
        near = abs(horizontal - NEAR_DISTANCE) < 0.015 and abs(vertical) < 0.015
        assert not (held and near)
        if env.scripted_steps == before:  # the env's own start: the gripper away from the object
            assert not held and not near
            kinds.append("own")
        else:
            kinds.append("held" if held else "near" if near else "short")  # short: the far edge
    env.close()
    counts = {k: kinds.count(k) for k in ("held", "near", "own", "short")}
    assert 12 < counts["held"] < 36 and 12 < counts["near"] < 36 and 3 < counts["own"] < 24, counts
    assert counts["short"] <= 4, counts
    with pytest.raises(ValueError, match="sum <= 1"):
        ScriptedStart(_pick_and_place(), grasped=0.6, near=0.5)
