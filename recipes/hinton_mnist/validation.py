"""Seed-level differences of the last epoch's validation metrics, raw pixels minus
``channel`` and KD minus hard labels, from the ``results.csv`` of ``recipe``, ``normalize``
and ``adam`` (README.md, "Preprocessing"). The validation predictions are not saved, so
the interval is the seed bootstrap of the per-seed differences (docs/compare.md).

    python recipes/hinton_mnist/validation.py [COMPARE_DIR]   # default: compare
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from softlabel.compare import seed_differences

#: (setting, method, its results.csv, baseline, the baseline's results.csv)
PAIRS = [
    ("recipe", "hard_raw", "hinton_mnist_normalize", "hard", "hinton_mnist"),
    ("recipe", "kd_T20_raw", "hinton_mnist_normalize", "kd_T20", "hinton_mnist"),
    ("recipe", "kd_T20", "hinton_mnist", "hard", "hinton_mnist"),
    ("recipe", "kd_T20_raw", "hinton_mnist_normalize", "hard_raw", "hinton_mnist_normalize"),
    ("adam", "hard_raw", "hinton_mnist_adam", "hard", "hinton_mnist_adam"),
    ("adam", "kd_T20_raw", "hinton_mnist_adam", "kd_T20", "hinton_mnist_adam"),
    ("adam", "teacher_raw", "hinton_mnist_adam", "teacher", "hinton_mnist_adam"),
]
METRICS = ("last/val/acc", "last/val/nll")


def main(root: Path) -> None:
    tables: dict[str, pd.DataFrame] = {}

    def per_seed(name: str, method: str, metric: str) -> pd.Series:
        if name not in tables:
            frame = pd.read_csv(root / name / "results.csv")
            tables[name] = frame[frame.role == "method"].set_index(["method", "seed"])
        return tables[name].loc[method, metric]

    print("| setting | difference | metric | mean | 95% interval (seeds only) | seeds |")
    print("|---|---|---|---|---|---|")
    for setting, method, where, baseline, base_where in PAIRS:
        for metric in METRICS:
            d = (per_seed(where, method, metric) - per_seed(base_where, baseline, metric)).dropna()
            r = seed_differences(d.to_numpy())
            print(
                f"| {setting} | {method} − {baseline} | {metric} | {r.difference:+.4f} | "
                f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {len(d)} |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "compare"))
