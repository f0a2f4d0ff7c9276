"""Time the row operations one kernel chunk is built from, on one (rows, K) chunk.

Shows why the fused kernel takes row maxima with ``amax`` and its row dot as an in-place
multiply and a row sum (docs/performance.md):

    python benchmarks/ops.py --threads 2 --rows 419 --k 32000
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=419)
    parser.add_argument("--k", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(args.rows, args.k, generator=gen)
    b = torch.randn(args.rows, args.k, generator=gen)
    out = torch.empty_like(a)
    ops: dict[str, Callable[[], object]] = {
        "softmax (out=, the unit)": lambda: torch.ops.aten._softmax.out(a, 1, False, out=out),
        "row max: Tensor.max(dim) (value + index)": lambda: a.max(dim=1),
        "row max: argmax": lambda: a.argmax(dim=1),
        "row max: amax": lambda: a.amax(dim=1),
        "row dot: bmm": lambda: torch.bmm(a.unsqueeze(1), b.unsqueeze(2)),
        "row dot: mul (out=) + sum": lambda: torch.mul(a, b, out=out).sum(dim=1),
        "element-wise: add (out=)": lambda: torch.add(a, b, alpha=0.5, out=out),
        "row sum": lambda: a.sum(dim=1),
    }
    print(f"torch {torch.__version__}, {args.threads} threads, chunk ({args.rows}, {args.k}) fp32")
    print("| op | ms | / softmax |\n|---|---:|---:|")
    unit = None
    for name, fn in ops.items():
        ms = 1e3 * median_seconds(fn, args.repeat)
        unit = unit or ms
        print(f"| {name} | {ms:.2f} | {ms / unit:.2f} |")


if __name__ == "__main__":
    main()
