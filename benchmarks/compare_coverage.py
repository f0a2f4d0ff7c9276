"""Coverage of softlabel-compare's paired intervals on simulated runs with a known difference.

Each replicate draws a new test set of ``--examples`` examples (3 classes; an example
difficulty z_i ~ N(0, 1) shared by all runs) and, per seed, the correctness of a baseline
and a method: P(right) = sigmoid(1.4 + z_i + u) for the baseline and sigmoid(1.4 + effect +
z_i + u') for the method (effect 0.4 or 0), with seed effects u, u' ~ N(0, seed_sd^2) drawn
per run. The true difference E[sigmoid(1.4 + effect + z + u') - sigmoid(1.4 + z + u)] is
computed by Monte Carlo (10^6 draws). Reported per setting: how often the 95% interval of
accuracy covers it, its mean width, how often it excludes 0, how often McNemar's p < 0.05
(a test of these runs: it conditions on the seeds' trained models), and the coverage of
the interval from the seeds alone (the per-seed accuracy differences, as for runs without
saved predictions).

    python benchmarks/compare_coverage.py --replicates 400
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from softlabel.compare.differences import StatsSettings, compare_predictions, seed_differences
from softlabel.compare.predictions import Predictions


def hits(correct: np.ndarray, target: np.ndarray, k: int = 3) -> Predictions:
    probs = np.full((len(target), k), 0.1)
    probs[np.arange(len(target)), np.where(correct, target, (target + 1) % k)] = 0.8
    return Predictions(probs, target, np.arange(len(target)), Path("simulated"))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=400)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    print(
        "| effect (logit) | seed sd (logit) | seeds | true difference | coverage of 95% "
        "interval | mean width | interval excludes 0 | McNemar p < 0.05 | coverage, seeds only |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for effect, seed_sd, n_seeds in [
        (e, sd, s) for e in (0.4, 0.0) for sd in (0.0, 0.2) for s in (3, 5, 10)
    ]:
        mc = np.random.default_rng(9)
        z, u, v = (mc.normal(size=1_000_000) for _ in range(3))
        truth = float(
            np.mean(sigmoid(1.4 + effect + z + seed_sd * u) - sigmoid(1.4 + z + seed_sd * v))
        )
        rng = np.random.default_rng(123)
        covered, width, excluded, rejected, seeds_only = 0, 0.0, 0, 0, 0
        for rep in range(args.replicates):
            target = rng.integers(0, 3, args.examples)
            z = rng.normal(size=args.examples)
            pairs = []
            for _ in range(n_seeds):
                p_method = sigmoid(1.4 + effect + z + rng.normal(0, seed_sd))
                p_baseline = sigmoid(1.4 + z + rng.normal(0, seed_sd))
                method = hits(rng.random(args.examples) < p_method, target)
                baseline = hits(rng.random(args.examples) < p_baseline, target)
                pairs.append((method, baseline))
            settings = StatsSettings(n_boot=args.n_boot, seed=rep)
            result = compare_predictions(pairs, ["acc"], settings)["acc"]
            covered += result.ci_low <= truth <= result.ci_high
            width += result.ci_high - result.ci_low
            excluded += result.ci_low > 0 or result.ci_high < 0
            rejected += result.p_value < 0.05
            per_seed = [
                float(
                    np.mean(m.probs.argmax(1) == m.target) - np.mean(b.probs.argmax(1) == b.target)
                )
                for m, b in pairs
            ]
            coarse = seed_differences(per_seed, settings)
            seeds_only += coarse.ci_low <= truth <= coarse.ci_high
        n = args.replicates
        print(
            f"| {effect} | {seed_sd} | {n_seeds} | {truth:.4f} | {covered / n:.3f} | "
            f"{width / n:.4f} | {excluded / n:.3f} | {rejected / n:.3f} | {seeds_only / n:.3f} |"
        )


if __name__ == "__main__":
    main()
