"""Time the fused KD kernel (forward + backward) for several chunk sizes against one softmax.

python benchmarks/chunks.py --mode kd --threads 2 --n 4096 --k 32000
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_seconds

from softlabel.kernels import fused_soft_target_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mode", choices=["kd", "ls"], default="kd")
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 52, 128, 419, 1024])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student = torch.randn(args.n, args.k, requires_grad=True)
    teacher = torch.randn(args.n, args.k)
    labels = torch.randint(0, args.k, (args.n,))
    floor = median_seconds(lambda: torch.softmax(student.detach(), dim=-1), args.repeat)
    print(f"softmax (forward only): {floor:.3f} s")
    params = (
        {"teacher": teacher, "temperature": 4.0, "alpha": 0.9}
        if args.mode == "kd"
        else {"eps": 0.1}
    )
    print(f"| chunk_rows | {args.mode} fwd+bwd (s) | / softmax |\n|---:|---:|---:|")
    for rows in args.chunks:

        def step(rows: int = rows) -> None:
            student.grad = None
            loss = fused_soft_target_loss(
                student, labels, mode=args.mode, chunk_rows=rows, **params
            )
            loss.sum().backward()

        seconds = median_seconds(step, args.repeat)
        print(f"| {rows} | {seconds:.3f} | {seconds / floor:.2f} |")


if __name__ == "__main__":
    main()
