"""Statistics of paired comparisons: resampling draws, percentile intervals, exact tests.

Generic NumPy/SciPy pieces; :mod:`softlabel.compare.differences` applies them to runs.

- Bootstrap (Efron and Tibshirani 1993): a statistic recomputed on ``n_boot`` resamples;
  the ``level`` percentile interval is its ``(1 - level)/2`` and ``(1 + level)/2`` quantiles.
- Resampling seeds and test examples together: seeds are drawn with replacement, and each
  test example gets a multinomial weight ``w_i`` (how often it was drawn, sum ``N``). When
  every seed was tested on the same examples the weights are shared by all seeds (a crossed
  design: Owen 2007, "The pigeonhole bootstrap"); otherwise each seed gets its own.
- Exact McNemar test (McNemar 1947): of the ``b + c`` discordant pairs (``b``: only the
  method right, ``c``: only the baseline right), ``b ~ Binomial(b + c, 1/2)`` under the null;
  two-sided ``p = binomtest(b, b + c, 0.5)`` (``p = 1`` without discordant pairs).
- Sign-flip test over seeds: the per-seed differences ``d_s`` with random signs; exact (all
  ``2^S`` sign vectors) up to 16 seeds. ``p = #{|mean(e d)| >= |mean(d)|} / 2^S``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
from scipy.stats import binomtest

__all__ = [
    "combine_draws",
    "example_weights",
    "mcnemar_exact",
    "percentile_interval",
    "permutation_pvalue",
    "seed_counts",
    "sign_flip_pvalue",
    "weight_chunks",
]

#: Cells (draws x examples) of one block of weights: bounds the memory of a resampling.
BLOCK_CELLS = 1 << 21
_EXACT_SIGN_FLIP_SEEDS = 16


def seed_counts(rng: np.random.Generator, n_boot: int, n_seeds: int) -> np.ndarray:
    """``(n_boot, n_seeds)``: how often each seed is drawn in each resample (sum ``n_seeds``)."""
    draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    return _counts(draws, n_seeds)


def example_weights(rng: np.random.Generator, n_draws: int, n_examples: int) -> np.ndarray:
    """``(n_draws, n_examples)`` float64 multinomial weights: each row is how often each
    example is drawn when ``n_examples`` are drawn with replacement."""
    draws = rng.integers(0, n_examples, size=(n_draws, n_examples))
    return _counts(draws, n_examples).astype(np.float64)


def weight_chunks(n_boot: int, n_examples: int) -> Iterator[int]:
    """Sizes of the blocks of draws that keep one block under :data:`BLOCK_CELLS` cells."""
    step = max(1, BLOCK_CELLS // max(n_examples, 1))
    for start in range(0, n_boot, step):
        yield min(step, n_boot - start)


def _counts(draws: np.ndarray, size: int) -> np.ndarray:
    rows = draws.shape[0]
    offsets = np.arange(rows, dtype=np.int64)[:, None] * size
    flat = np.bincount((draws + offsets).ravel(), minlength=rows * size)
    return flat.reshape(rows, size)


def combine_draws(
    observed: np.ndarray, example_draws: np.ndarray | None, seed_draws: np.ndarray
) -> np.ndarray:
    """Bootstrap draws of the mean over seeds of a per-seed difference (module docstring).

    ``observed`` (S,): the difference of each seed on its whole test set, mean ``D``;
    ``example_draws`` (B, S): the same differences on B example resamples (``None``: the
    seeds only); ``seed_draws`` (B, S): :func:`seed_counts`. Each draw is

        T_b = D + (mean_s x_bs - D) + c sqrt(S/(S-1)) sum_s n_bs (d_s - D) / S

    The spread of the observed ``d_s`` over seeds, ``v = var(d_s)`` (ddof 1), already holds
    the example noise of each ``d_s``, which the example resamples measure:
    ``e = S/(S-1) mean_s var_b(x_bs - mean_s' x_bs')``. The seed term is shrunk by
    ``c = sqrt(max(v - e, 0) / v)`` so that this noise is not counted twice (the two-stage
    bootstrap's excess variance; Davison and Hinkley 1997, section 3.8). Without example
    draws ``c = 1`` and the example term is 0. ``sqrt(S/(S-1))`` makes the seed term's
    variance ``v/S`` (Davison and Hinkley's adjusted residuals). One seed: the example term only.
    """
    observed = np.asarray(observed, dtype=np.float64)
    n_seeds = observed.size
    mean = float(observed.mean())
    draws = np.full(seed_draws.shape[0], mean)
    if example_draws is not None:
        draws += example_draws.mean(axis=1) - mean
    if n_seeds < 2:
        return draws
    spread = float(observed.var(ddof=1))
    shrink = 1.0
    if example_draws is not None:
        deviations = example_draws - example_draws.mean(axis=1, keepdims=True)
        noise = n_seeds / (n_seeds - 1) * float(deviations.var(axis=0, ddof=1).mean())
        shrink = math.sqrt(max(spread - noise, 0.0) / spread) if spread > 0 else 0.0
    scale = shrink * math.sqrt(n_seeds / (n_seeds - 1)) / n_seeds
    return draws + scale * (seed_draws @ (observed - mean))


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap ``values``."""
    _check_level(level)
    low, high = np.quantile(
        np.asarray(values, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2]
    )
    return float(low), float(high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (see above)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(binomtest(int(b), int(b + c), 0.5).pvalue)


def permutation_pvalue(observed: float, permuted: np.ndarray) -> float:
    """Two-sided Monte Carlo p-value ``(1 + #{|T*| >= |T|}) / (1 + n)`` (Phipson and Smyth
    2010), with a relative tolerance of 1e-9 on the comparison."""
    permuted = np.abs(np.asarray(permuted, dtype=np.float64))
    threshold = abs(observed) * (1 - 1e-9) - 1e-15
    return float((1 + np.count_nonzero(permuted >= threshold)) / (1 + permuted.size))


def sign_flip_pvalue(differences: np.ndarray, rng: np.random.Generator, n_draws: int) -> float:
    """Two-sided sign-flip p-value of the mean of ``differences`` (see above): exact for up
    to 16 values, else from ``n_draws`` random sign vectors."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        raise ValueError("differences is empty")
    if d.size <= _EXACT_SIGN_FLIP_SEEDS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        means = np.abs(signs @ d) / d.size
        threshold = abs(d.mean()) * (1 - 1e-9) - 1e-15
        return float(np.count_nonzero(means >= threshold) / len(signs))
    signs = rng.choice((1.0, -1.0), size=(n_draws, d.size))
    return permutation_pvalue(float(d.mean()), signs @ d / d.size)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
