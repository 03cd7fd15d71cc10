"""The statistics of ``tdimitation analyze`` against their published definitions.

IQM and the probability of improvement are compared with ``rliable.metrics`` (its
functions use only numpy and scipy); the stratified-bootstrap intervals with a plain
bootstrap loop written from the definition.
"""

from __future__ import annotations

import numpy as np
import pytest

from tdimitation.analysis import statistics as st


def _loop_bootstrap(scores: np.ndarray, aggregate, reps: int, seed: int) -> np.ndarray:
    """Percentile interval: per replicate, each task's runs drawn with replacement."""
    rng = np.random.default_rng(seed)
    runs, tasks = scores.shape
    values = []
    for _ in range(reps):
        sample = np.stack([scores[rng.integers(0, runs, runs), t] for t in range(tasks)], 1)
        values.append(aggregate(sample))
    return np.percentile(values, [2.5, 97.5])


def test_iqm_and_improvement_match_rliable():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(3)
    for runs_x, runs_y, tasks in ((8, 8, 1), (7, 5, 3), (3, 10, 2)):
        x = rng.normal(size=(runs_x, tasks))
        y = rng.normal(size=(runs_y, tasks))
        # Ties count half: round some scores onto a coarse grid.
        y[: runs_y // 2] = np.round(y[: runs_y // 2])
        x[: runs_x // 2] = np.round(x[: runs_x // 2])
        assert st.iqm(x) == pytest.approx(metrics.aggregate_iqm(x), abs=1e-12)
        assert st.mean(x) == pytest.approx(metrics.aggregate_mean(x), abs=1e-12)
        assert st.probability_of_improvement(x, y) == pytest.approx(
            metrics.probability_of_improvement(x, y), abs=1e-12
        )
    same = rng.normal(size=(4, 1))
    assert st.probability_of_improvement(same, same) == 0.5


def test_iqm_by_hand():
    # 8 scores: 2 cut from each end, the mean of the middle 4.
    assert st.iqm(np.array([50.0, 10, 1000, 30, 20, 60, 40, 70])) == 45.0
    # 10 scores: int(2.5) = 2 cut from each end.
    assert st.iqm(np.arange(10.0)) == pytest.approx(4.5)
    # Along an axis (curves): each column on its own.
    columns = np.stack([np.arange(8.0), 10 * np.arange(8.0)], axis=1)
    np.testing.assert_allclose(st.iqm(columns, axis=0), [3.5, 35.0])


@pytest.mark.parametrize("aggregate", [st.iqm, st.mean], ids=["iqm", "mean"])
def test_bootstrap_interval_matches_a_plain_loop(aggregate):
    scores = np.array([[12.0, 3.0], [15.0, 9.0], [30.0, 4.0], [21.0, 7.5], [9.0, 1.0]])
    point, (low, high) = st.interval_estimate(scores, aggregate, np.random.default_rng(0), 20_000)
    assert point == pytest.approx(aggregate(scores))
    ref_low, ref_high = _loop_bootstrap(scores, aggregate, 4_000, seed=1)
    spread = scores.max() - scores.min()
    # Sampling tolerance: two independent estimates of the same percentiles.
    assert low == pytest.approx(ref_low, abs=0.03 * spread)
    assert high == pytest.approx(ref_high, abs=0.03 * spread)
    assert low < point < high


def test_bootstrap_is_stratified_and_repeats_per_seed():
    # Task 0 scores 0, task 1 scores 100: a replicate that kept each task's run count has
    # mean 50 exactly; one that mixed runs across tasks would not.
    scores = np.array([[0.0, 100.0]] * 4)
    replicates = st.stratified_bootstrap(scores, st.mean, np.random.default_rng(0), 500)
    np.testing.assert_array_equal(replicates, np.full(500, 50.0))
    varied = np.random.default_rng(5).normal(size=(6, 2))
    first = st.stratified_bootstrap(varied, st.iqm, np.random.default_rng(7), 300)
    again = st.stratified_bootstrap(varied, st.iqm, np.random.default_rng(7), 300)
    np.testing.assert_array_equal(first, again)


def test_curve_bootstrap_redraws_whole_runs():
    # Two runs whose curves cross: a replicate of whole runs has, at every point, the
    # mean of the same drawn runs, so the first and last points move together.
    curves = np.array([[[0.0, 10.0]], [[10.0, 0.0]]])  # [runs, 1 task, 2 points]
    replicates = st.stratified_bootstrap(curves, st.mean, np.random.default_rng(0), 400)
    np.testing.assert_allclose(replicates[:, 0] + replicates[:, 1], 10.0)


def test_improvement_interval_matches_a_plain_loop():
    x = np.array([[5.0], [6.0], [7.0], [3.0], [8.0]])
    y = np.array([[4.0], [6.0], [2.0], [5.0]])
    point, (low, high) = st.improvement_interval(x, y, np.random.default_rng(0), 20_000)
    assert point == pytest.approx(st.probability_of_improvement(x, y))
    rng = np.random.default_rng(1)
    loop = [
        st.probability_of_improvement(x[rng.integers(0, 5, 5)], y[rng.integers(0, 4, 4)])
        for _ in range(4_000)
    ]
    ref_low, ref_high = np.percentile(loop, [2.5, 97.5])
    assert low == pytest.approx(ref_low, abs=0.04)
    assert high == pytest.approx(ref_high, abs=0.04)


# rliable 1.2 hands arch a RandomState, which arch 7.2 deprecates (its own warning).
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_bootstrap_interval_matches_rliable():
    library = pytest.importorskip("rliable.library")
    metrics = pytest.importorskip("rliable.metrics")
    scores = np.random.default_rng(5).normal(size=(9, 2))
    _, ours = st.interval_estimate(scores, st.iqm, np.random.default_rng(0), reps=2000)
    _, theirs = library.get_interval_estimates(
        {"x": scores},
        lambda s: np.array([metrics.aggregate_iqm(s)]),
        reps=2000,
        random_state=np.random.RandomState(0),
    )
    # Different draws of the same bootstrap: the interval ends agree within sampling error.
    spread = scores.std() / np.sqrt(scores.size)
    np.testing.assert_allclose(ours, theirs["x"].ravel(), atol=0.25 * spread)
