"""Public loss calls of an earlier revision and of this checkout, timed call by call.

Two worker processes, one importing ``softlabel`` from a ``git worktree`` of ``--base`` and
one from this checkout, hold the same inputs (seeded) and time one forward + backward of a
call each time they are asked. The parent asks them alternately (base then new, new then
base, ...) ``--rounds`` times per call, so a change of the machine's load reaches both
alike within a fraction of a second: finer than ``side_by_side.py``, whose whole runs
alternate minutes apart. Printed per call: the median and the minimum over the rounds of
each revision and their quotients (new / base: below 1 is faster now). ``torch LS`` is a
control: the same torch call in both processes, so its quotient shows the noise.

    python benchmarks/alternating_calls.py --base 831ca38 --rounds 25
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import ROOT, base_worktree  # noqa: E402

CALLS = {
    "torch LS (control)": "F.cross_entropy(s, y, label_smoothing=0.1)",
    "cross_entropy_loss": "SF.cross_entropy_loss(s, y)",
    "label_smoothing_loss": "SF.label_smoothing_loss(s, y, 0.1)",
    "distillation_loss": "SF.distillation_loss(s, t, y, temperature=4.0, alpha=0.9)",
    "distillation_loss(tvd)": (
        "SF.distillation_loss(s, t, y, temperature=4.0, alpha=0.9, divergence='tvd')"
    ),
    "distillation_loss(jsd)": (
        "SF.distillation_loss(s, t, y, temperature=4.0, alpha=0.9, divergence='jsd')"
    ),
    "label_relaxation_loss": "SF.label_relaxation_loss(s, y)",
}

WORKER = """
import sys, time, torch
import torch.nn.functional as F
import softlabel.functional as SF
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
s = torch.randn({n}, {k}, generator=g).requires_grad_()
t = torch.randn({n}, {k}, generator=g)
y = torch.randint(0, {k}, ({n},), generator=g)
calls = {{{calls}}}
for call in calls.values():  # warm-up
    call().backward()
    s.grad = None
print("ready", flush=True)
for line in sys.stdin:
    call = calls[line.strip()]
    start = time.perf_counter()
    call().backward()
    elapsed = time.perf_counter() - start
    s.grad = None
    print(elapsed, flush=True)
"""


def start_worker(tree: Path, script: str, cwd: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    worker = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=cwd,  # not the repository root: ``softlabel`` comes from ``tree`` only
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if worker.stdout.readline().strip() != "ready":
        raise SystemExit(f"the worker of {tree} failed to start")
    return worker


def ask(worker: subprocess.Popen, name: str) -> float:
    worker.stdin.write(name + "\n")
    worker.stdin.flush()
    return float(worker.stdout.readline())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier revision (a git ref)")
    parser.add_argument("--rounds", type=int, default=25, help="timed calls of each revision")
    parser.add_argument("--n", type=int, default=2048, help="rows")
    parser.add_argument("--k", type=int, default=32000, help="classes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", default=",".join(CALLS), help="comma-separated names")
    args = parser.parse_args(argv)
    names = args.calls.split(",")
    unknown = [name for name in names if name not in CALLS]
    if unknown:
        raise SystemExit(f"--calls: unknown {unknown}; known: {list(CALLS)}")
    calls = ", ".join(f"{name!r}: lambda: {CALLS[name]}" for name in names)
    script = WORKER.format(threads=args.threads, n=args.n, k=args.k, calls=calls)
    times: dict[tuple[str, str], list[float]] = {
        (rev, name): [] for rev in ("base", "new") for name in names
    }
    with base_worktree(args.base) as base_tree, tempfile.TemporaryDirectory() as cwd:
        workers = {
            "base": start_worker(base_tree, script, cwd),
            "new": start_worker(ROOT, script, cwd),
        }
        try:
            for round_index in range(args.rounds):
                order = ("base", "new") if round_index % 2 == 0 else ("new", "base")
                for name in names:
                    for rev in order:
                        times[(rev, name)].append(ask(workers[rev], name))
        finally:
            for worker in workers.values():
                worker.stdin.close()
                worker.wait()
    print(
        f"base {args.base} against this checkout: {args.rounds} alternating calls each, "
        f"logits ({args.n}, {args.k}) fp32, forward + backward, {args.threads} threads"
    )
    print()
    print(
        "| call | base median (s) | new median (s) | new / base | base min (s) | new min (s) "
        "| new / base (min) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        base, new = times[("base", name)], times[("new", name)]
        mb, mn, lb, ln = statistics.median(base), statistics.median(new), min(base), min(new)
        print(
            f"| `{name}` | {mb:.4f} | {mn:.4f} | {mn / mb:.3f} | {lb:.4f} | {ln:.4f} "
            f"| {ln / lb:.3f} |"
        )


if __name__ == "__main__":
    main()
