"""Statistics of paired comparisons against references written out here: hand-computed
tests, torchmetrics / scikit-learn metrics on expanded samples, a seeded coverage study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from softlabel.compare.differences import StatsSettings, compare_predictions
from softlabel.compare.example_metrics import PairedMetrics, example_metric
from softlabel.compare.predictions import Predictions
from softlabel.compare.stats import (
    combine_draws,
    example_weights,
    mcnemar_exact,
    percentile_interval,
    seed_counts,
    sign_flip_pvalue,
)


def predictions(probs, target) -> Predictions:
    probs, target = np.asarray(probs, dtype=np.float64), np.asarray(target)
    return Predictions(probs, target, np.arange(len(target)), Path("run/predictions_test.npz"))


def hits(correct: np.ndarray, target: np.ndarray, k: int = 3) -> Predictions:
    """Predictions that are right exactly where ``correct`` is (0.8 on the chosen class)."""
    probs = np.full((len(target), k), 0.2 / (k - 1))
    chosen = np.where(correct, target, (target + 1) % k)
    probs[np.arange(len(target)), chosen] = 0.8
    return predictions(probs, target)


def test_mcnemar_against_a_hand_computed_table() -> None:
    # discordant pairs: 7 only-method-right, 1 only-baseline-right; under the null
    # b ~ Binomial(8, 1/2): p = 2 P(b <= 1) = 2 (1 + 8) / 256
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    # 10 vs 0: 2 / 2^10
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)


def test_mcnemar_of_the_runs_pools_the_seeds_discordant_pairs() -> None:
    # seed 0: both right 80, only method 4, only baseline 1, both wrong 15;
    # seed 1: both right 80, only method 3, only baseline 0, both wrong 17 -> b = 7, c = 1
    pairs = []
    for only_method, only_baseline in ((4, 1), (3, 0)):
        both = 80
        method = np.zeros(100, bool)
        baseline = np.zeros(100, bool)
        method[:both] = baseline[:both] = True
        method[both : both + only_method] = True
        baseline[both + only_method : both + only_method + only_baseline] = True
        target = np.arange(100) % 3
        pairs.append((hits(method, target), hits(baseline, target)))
    result = compare_predictions(pairs, ["acc"], StatsSettings(n_boot=200))["acc"]
    assert result.test == "exact McNemar"
    assert result.p_value == pytest.approx(18 / 256)
    assert result.difference == pytest.approx((0.03 + 0.03) / 2)


def test_sign_flip_over_seeds_by_hand() -> None:
    rng = np.random.default_rng(0)
    # 8 sign vectors of (1, 2, 3): |mean| >= 2 only for all + and all -
    assert sign_flip_pvalue(np.array([1.0, 2.0, 3.0]), rng, 100) == pytest.approx(2 / 8)
    # (1, -1): every sign vector has |mean| >= 0
    assert sign_flip_pvalue(np.array([1.0, -1.0]), rng, 100) == 1.0


def test_identical_methods_give_zero_and_p_one() -> None:
    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(3):
        target = rng.integers(0, 4, 300)
        same = predictions(rng.dirichlet(np.ones(4), 300), target)
        pairs.append((same, same))
    results = compare_predictions(
        pairs, ["acc", "nll", "ece", "acc_top5"], StatsSettings(n_boot=300)
    )
    for name, result in results.items():
        assert result.difference == 0.0, name
        assert result.ci_low <= 0.0 <= result.ci_high, name
        assert result.p_value == 1.0, name


def test_seed_resampling_counts_and_weights() -> None:
    rng = np.random.default_rng(2)
    counts = seed_counts(rng, 50, 3)
    assert counts.shape == (50, 3) and (counts.sum(axis=1) == 3).all()
    weights = example_weights(rng, 40, 7)
    assert weights.shape == (40, 7) and (weights.sum(axis=1) == 7).all()
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.arange(3.0), 1.5)


def test_combine_draws_of_the_seeds_only_is_the_adjusted_seed_bootstrap() -> None:
    observed = np.array([1.0, 2.0, 6.0])  # mean 3, deviations -2, -1, 3
    counts = np.array([[3, 0, 0], [1, 1, 1], [0, 0, 3]])
    scale = np.sqrt(3 / 2) / 3
    expected = 3 + scale * np.array([-6.0, 0.0, 9.0])
    assert combine_draws(observed, None, counts) == pytest.approx(expected)
    # example draws whose noise explains more than the seeds' spread: the seed term is
    # example noise counted twice and is shrunk to nothing
    spread = observed.var(ddof=1)
    noisy = np.random.default_rng(3).normal(size=(4000, 3)) * np.sqrt(1.5 * spread)
    draws = combine_draws(
        observed, observed + noisy, seed_counts(np.random.default_rng(4), 4000, 3)
    )
    assert draws == pytest.approx(3 + noisy.mean(axis=1))
    # noise that explains a third of it: the seed term keeps 2/3 of its variance
    noisy *= np.sqrt(1 / 3 / 1.5)
    counts = seed_counts(np.random.default_rng(4), 4000, 3)
    draws = combine_draws(observed, observed + noisy, counts)
    deviations = noisy - noisy.mean(axis=1, keepdims=True)
    noise = 3 / 2 * deviations.var(axis=0, ddof=1).mean()
    shrink = np.sqrt((spread - noise) / spread)
    seed_term = shrink * np.sqrt(3 / 2) / 3 * counts @ (observed - 3)
    assert draws == pytest.approx(3 + noisy.mean(axis=1) + seed_term)
    assert shrink == pytest.approx(np.sqrt(2 / 3), rel=0.05)


def _expanded(prediction: Predictions, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    repeat = weights.astype(int)
    return np.repeat(prediction.probs, repeat, axis=0), np.repeat(prediction.target, repeat)


@pytest.mark.parametrize("binary", [False, True])
def test_weighted_metrics_match_the_expanded_sample(binary: bool) -> None:
    """Example weights = repeating examples: each metric against torchmetrics / sklearn /
    NumPy on the expanded sample."""
    rng = np.random.default_rng(5)
    n = 120
    if binary:
        target = rng.integers(0, 2, n)
        probs = np.clip(rng.beta(2, 2, n) * 0.6 + 0.4 * target, 0, 1)
        names = ["acc", "logloss", "ece", "auroc"]
    else:
        target = rng.integers(0, 8, n)
        probs = rng.dirichlet(np.ones(8) * 0.5, n)
        names = ["acc", "acc_top5", "nll", "ece"]
    run = predictions(probs, target)
    weights = example_weights(rng, 4, n)
    for name in names:
        form = example_metric(name, run)
        got = form.value(weights)
        for b in range(len(weights)):
            p, y = _expanded(run, weights[b])
            if name == "acc":
                want = np.mean((p > 0.5) == (y == 1)) if binary else np.mean(p.argmax(1) == y)
            elif name == "acc_top5":
                want = np.mean([y[i] in np.argsort(-p[i])[:5] for i in range(len(y))])
            elif name == "nll":
                want = -np.mean(np.log(p[np.arange(len(y)), y]))
            elif name == "logloss":
                want = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
            elif name == "auroc":
                want = roc_auc_score(y, p)
            elif binary:
                want = BinaryCalibrationError(n_bins=15)(torch.tensor(p), torch.tensor(y)).item()
            else:
                reference = MulticlassCalibrationError(num_classes=8, n_bins=15, norm="l1")
                want = reference(torch.tensor(p), torch.tensor(y)).item()
            assert got[b] == pytest.approx(want, abs=1e-6), (name, b)


@pytest.mark.parametrize("binary", [False, True])
def test_permuted_differences_match_swapping_the_predictions(binary: bool) -> None:
    rng = np.random.default_rng(6)
    n = 90
    if binary:
        target = rng.integers(0, 2, n)
        a, b = rng.random(n), rng.random(n)
        names = ["acc", "logloss", "ece", "auroc"]
    else:
        target = rng.integers(0, 5, n)
        a, b = rng.dirichlet(np.ones(5), n), rng.dirichlet(np.ones(5), n)
        names = ["acc", "nll", "ece"]
    method, baseline = predictions(a, target), predictions(b, target)
    pack = PairedMetrics(
        {m: (example_metric(m, method), example_metric(m, baseline)) for m in names}
    )
    swap = rng.random((3, n)) < 0.5
    got = pack.permuted(swap)
    ones = np.ones((1, n))
    for row in range(3):
        mask = swap[row][:, None] if not binary else swap[row]
        first = predictions(np.where(mask, b, a), target)
        second = predictions(np.where(mask, a, b), target)
        for name in names:
            want = (
                example_metric(name, first).value(ones)[0]
                - example_metric(name, second).value(ones)[0]
            )
            assert got[name][row] == pytest.approx(want, abs=1e-9), (name, row)
    deltas = pack.deltas(ones)
    for name in names:
        want = example_metric(name, method).value(ones) - example_metric(name, baseline).value(ones)
        assert deltas[name] == pytest.approx(want)


def test_the_interval_covers_a_known_difference_at_about_the_nominal_rate() -> None:
    """Seeded simulation: 3 seeds x 200 test examples per replicate, a new test set each
    time; example difficulty shared by seeds and methods; the method's accuracy is higher
    by a known amount (Monte Carlo over the same model, 10^6 draws). 200 replicates of a
    95% interval: coverage within [0.91, 0.99] (binomial sd 0.015)."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=1_000_000)
    truth = float(np.mean(1 / (1 + np.exp(-(1.8 + z))) - 1 / (1 + np.exp(-(1.4 + z)))))
    covered = 0
    reps = 200
    for rep in range(reps):
        target = rng.integers(0, 3, 200)
        difficulty = rng.normal(size=200)
        pairs = []
        for _ in range(3):
            p_method = 1 / (1 + np.exp(-(1.8 + difficulty)))
            p_baseline = 1 / (1 + np.exp(-(1.4 + difficulty)))
            pairs.append(
                (
                    hits(rng.random(200) < p_method, target),
                    hits(rng.random(200) < p_baseline, target),
                )
            )
        result = compare_predictions(pairs, ["acc"], StatsSettings(n_boot=500, seed=rep))["acc"]
        covered += result.ci_low <= truth <= result.ci_high
    assert 0.91 <= covered / reps <= 0.99, covered / reps


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="stats.n_boot"):
        StatsSettings(n_boot=0)
    with pytest.raises(ValueError, match="stats.level"):
        StatsSettings(level=95)
    with pytest.raises(ValueError, match="stats.seed"):
        StatsSettings(seed=-1)
    with pytest.raises(ValueError, match="unknown keys"):
        StatsSettings.from_config({"n_boots": 10})
    target = np.array([0, 1, 1])
    one = predictions(np.full((3, 2), 0.5), target)
    other = predictions(np.full((3, 2), 0.5), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="different test sets"):
        compare_predictions([(one, other)], ["acc"])
    with pytest.raises(ValueError, match="no per-example form"):
        compare_predictions([(one, one)], ["auroc"])
