"""SumTree (sum and min) properties, and PrioritizedSampler frequencies against priorities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlfw.buffers.samplers import PrioritizedSampler, SumTree
from rlfw.buffers.storage import EpisodeStorage

pytestmark = pytest.mark.unit  # no simulator, no subprocess: nox -s unit

SETTINGS = settings(deadline=None, max_examples=50, derandomize=True, database=None)

values = st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def batched_updates(draw: st.DrawFn) -> tuple[int, list[list[tuple[int, float]]]]:
    """A tree size and batches of (leaf, value) updates, with repeated leaves in a batch."""
    size = draw(st.integers(1, 70))
    leaf = st.integers(0, size - 1)
    batch = st.lists(st.tuples(leaf, values), max_size=24)
    return size, draw(st.lists(batch, min_size=1, max_size=8))


def apply(tree: SumTree, batches: list[list[tuple[int, float]]], fill: float) -> np.ndarray:
    """Update ``tree`` batch by batch; returns the reference leaves (last write wins)."""
    ref = np.full(tree.size, fill)
    for batch in batches:
        idx = np.array([i for i, _ in batch], np.int64)
        val = np.array([v for _, v in batch], np.float64)
        tree.update(idx, val)
        for i, v in batch:
            ref[i] = v
    return ref


@SETTINGS
@given(batched_updates())
def test_sum_tree_root_is_sum_of_leaves(case: tuple[int, list[list[tuple[int, float]]]]) -> None:
    size, batches = case
    tree = SumTree(size, "sum")
    ref = apply(tree, batches, 0.0)
    np.testing.assert_array_equal(tree.leaves(np.arange(size)), ref)  # last write wins
    assert tree.root == pytest.approx(ref.sum(), rel=1e-12, abs=1e-9)
    # every inner node is the sum of its children; padding leaves stay empty
    P = tree.P
    assert P >= size and (P & (P - 1)) == 0
    assert (tree.tree[P + size : 2 * P] == 0.0).all()
    inner = np.arange(1, P)
    np.testing.assert_allclose(
        tree.tree[inner], tree.tree[2 * inner] + tree.tree[2 * inner + 1], rtol=1e-12, atol=1e-9
    )


@SETTINGS
@given(batched_updates())
def test_min_tree_root_is_min_of_leaves(case: tuple[int, list[list[tuple[int, float]]]]) -> None:
    size, batches = case
    tree = SumTree(size, "min")
    ref = apply(tree, batches, np.inf)
    np.testing.assert_array_equal(tree.leaves(np.arange(size)), ref)
    assert tree.root == ref.min()  # exact: min does not round
    inner = np.arange(1, tree.P)
    np.testing.assert_array_equal(
        tree.tree[inner], np.minimum(tree.tree[2 * inner], tree.tree[2 * inner + 1])
    )


@SETTINGS
@given(
    st.lists(st.integers(0, 20), min_size=1, max_size=70).filter(lambda p: sum(p) > 0),
    st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=40),
)
def test_find_prefix_returns_the_leaf_whose_interval_holds_u(
    prio: list[int], fracs: list[float]
) -> None:
    """Integer priorities keep every sum exact: ``prefix(i) <= u < prefix(i + 1)`` exactly."""
    tree = SumTree(len(prio), "sum")
    tree.update(np.arange(len(prio)), np.array(prio, np.float64))
    total = float(sum(prio))
    assert tree.root == total
    prefix = np.concatenate([[0.0], np.cumsum(prio)])
    # random points, every integer boundary, and the largest float below the total
    u = np.concatenate([np.array(fracs) * total, np.arange(int(total)), [np.nextafter(total, 0.0)]])
    u = u[u < total]
    leaf = tree.find_prefix(u)
    assert ((leaf >= 0) & (leaf < len(prio))).all()
    assert (prefix[leaf] <= u).all() and (u < prefix[leaf + 1]).all()
    assert (np.array(prio)[leaf] > 0).all(), "a leaf with priority 0 has an empty interval"


@SETTINGS
@given(
    st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=1, max_size=70).filter(
        lambda p: sum(p) > 1e-3
    ),
    st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=40),
)
def test_find_prefix_with_float_priorities(prio: list[float], fracs: list[float]) -> None:
    tree = SumTree(len(prio), "sum")
    tree.update(np.arange(len(prio)), np.array(prio))
    total = tree.root
    prefix = np.concatenate([[0.0], np.cumsum(prio)])
    u = np.array(fracs) * total
    leaf = tree.find_prefix(u)
    tol = 1e-9 * total
    assert ((leaf >= 0) & (leaf < len(prio))).all()
    assert (prefix[leaf] - tol <= u).all() and (u < prefix[leaf + 1] + tol).all()


# ------------------------------------------------------------------------------------------
# PrioritizedSampler frequencies

# chi-square critical values at p = 0.001 by degrees of freedom (if scipy is missing)
CHI2_CRIT_001 = {9: 27.877, 11: 31.264}


def chi2_pvalue_below(observed: np.ndarray, expected: np.ndarray, alpha: float = 1e-3) -> bool:
    """True if the chi-square goodness-of-fit test rejects at level ``alpha`` (0.001)."""
    stat = float(((observed - expected) ** 2 / expected).sum())
    try:
        from scipy.stats import chi2
    except ImportError:  # pragma: no cover - scipy is optional
        assert alpha == 1e-3
        return stat > CHI2_CRIT_001[len(observed) - 1]
    return bool(chi2.sf(stat, len(observed) - 1) < alpha)


def filled_sampler(
    n: int, seed: int, alpha: float = 0.6
) -> tuple[EpisodeStorage, PrioritizedSampler]:
    """One env, ``n`` transitions of one running episode, all at priority 1."""
    storage = EpisodeStorage(capacity=2 * n, num_envs=1, obs_dim=1, act_dim=1)
    sampler = PrioritizedSampler(
        storage, np.random.default_rng(seed), alpha=alpha, beta0=0.4, beta_final_step=10
    )
    storage.start({"observation": np.zeros((1, 1), np.float32)})
    for t in range(n):
        new, lost = storage.add(
            np.zeros((1, 1), np.float32), np.zeros(1), np.zeros(1, bool), np.zeros(1, bool),
            {"observation": np.full((1, 1), t + 1, np.float32)},
        )  # fmt: skip
        sampler.on_add(new, lost)
    return storage, sampler


def test_prioritized_sampler_frequencies_follow_priorities() -> None:
    n, alpha = 12, 0.6
    storage, sampler = filled_sampler(n, seed=2024, alpha=alpha)
    idx = np.flatnonzero(storage.is_transition.reshape(-1))
    assert len(idx) == n
    td = np.array([0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 0.3, 0.8, 6.0, 2.5, 1.2])
    sampler.update(idx, td)
    p = (np.abs(td) + sampler.priority_eps) ** alpha
    prob = p / p.sum()
    draws, batch = 24_000, 400
    counts = np.zeros(storage.rows * storage.num_envs)
    for _ in range(draws // batch):
        got, weight = sampler.sample(batch, env_step=0)
        counts += np.bincount(got, minlength=len(counts))
        assert np.isfinite(weight).all() and weight.max() <= 1.0 + 1e-6
    assert counts.sum() == draws
    assert counts[np.setdiff1d(np.arange(len(counts)), idx)].sum() == 0, "only transitions"
    observed, expected = counts[idx], draws * prob
    assert expected.min() >= 5
    assert not chi2_pvalue_below(observed, expected), (observed, expected)
    # the test has power: uniform frequencies, or priorities without the alpha exponent, are rejected
    assert chi2_pvalue_below(observed, np.full(n, draws / n))
    assert chi2_pvalue_below(observed, draws * np.abs(td) / np.abs(td).sum())


def test_prioritized_sampler_initial_priorities_uniform() -> None:
    """Before any TD error every transition has priority 1: frequencies are uniform."""
    n = 10
    storage, sampler = filled_sampler(n, seed=7)
    idx = np.flatnonzero(storage.is_transition.reshape(-1))
    counts = np.zeros(storage.rows)
    for _ in range(50):
        got, weight = sampler.sample(200, env_step=0)
        counts += np.bincount(got, minlength=len(counts))
        np.testing.assert_allclose(weight, 1.0, rtol=1e-6)
    assert not chi2_pvalue_below(counts[idx], np.full(n, counts.sum() / n))
