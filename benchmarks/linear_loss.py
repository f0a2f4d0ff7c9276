"""Benchmark of the fused linear-head loss against the losses of materialized logits.

Per group (LS: label smoothing, KD: distillation with a teacher head), forward + backward of
hidden (N, H) through a head W (V, H) (+ the teacher's head for KD), three variants:

- ``linear``: ``LinearSoftTargetLoss(source)(hidden, W, target, ...)``, no (N, V) logits;
- (a) ``materialized + softlabel``: ``SoftTargetLoss(source)(F.linear(hidden, W), target, t)``,
  the fused soft-target loss on the logits;
- (b) ``materialized + torch``: ``F.cross_entropy(F.linear(hidden, W), y, label_smoothing=eps)``,
  or ``F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True, reduction="batchmean")
  * T^2 * alpha + (1 - alpha) * F.cross_entropy(s, y)``.

The teacher's logits of (a) and (b) are made under ``torch.no_grad()``. Each variant runs in a
fresh subprocess: the first call (warm-up) gives the peak extra memory (CPU: peak resident size
VmHWM minus the resident size VmRSS once the inputs exist; CUDA: ``max_memory_allocated``
minus the memory allocated then), then the median of ``--repeat`` timed calls. The gradients
of hidden and W are part of every variant's peak. Ratios are to (a) and (b) of the same run.

    python benchmarks/linear_loss.py --threads 2 --shapes 8192,1024,32000 --repeat 3
    python benchmarks/linear_loss.py --quick
    python benchmarks/linear_loss.py --sweep 128 256 512 1024 --shapes 2048,1024,32000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from _timing import median_seconds

from softlabel import LinearSoftTargetLoss, SoftTargetLoss
from softlabel.targets import Teacher, UniformPrior

EPS, TEMPERATURE, ALPHA = 0.1, 4.0, 0.9
VARIANTS = ("linear", "materialized + softlabel", "materialized + torch")
QUICK_SHAPES = "64,32,1000"


def make_inputs(n: int, h: int, v: int, device: str, dtype: torch.dtype, bias: bool):
    """hidden (N, H) and head W (V, H) (leaves that require grad), labels, the teacher's head."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    x = {
        "hidden": rand(n, h).requires_grad_(),
        "weight": rand(v, h, scale=h**-0.5).requires_grad_(),
        "bias": rand(v, scale=0.1).requires_grad_() if bias else None,
        "teacher_hidden": rand(n, h),
        "teacher_weight": rand(v, h, scale=2 * h**-0.5),
        "teacher_bias": rand(v, scale=0.1) if bias else None,
        "target": torch.randint(0, v, (n,), generator=gen).to(device),
    }
    return x


def make_step(group: str, variant: str, x: dict, chunk_rows: int | None):
    """A closure running forward + backward of one variant."""
    source = UniformPrior(EPS) if group == "LS" else Teacher(TEMPERATURE, ALPHA)
    linear = LinearSoftTargetLoss(source, chunk_rows=chunk_rows)
    materialized = SoftTargetLoss(source)
    teacher = {k: x[k] for k in ("teacher_hidden", "teacher_weight", "teacher_bias")}
    y = x["target"]

    def teacher_logits():
        with torch.no_grad():
            return F.linear(x["teacher_hidden"], x["teacher_weight"], x["teacher_bias"])

    def loss():
        if variant == "linear":
            extra = teacher if group == "KD" else {}
            return linear(x["hidden"], x["weight"], y, x["bias"], **extra)
        s = F.linear(x["hidden"], x["weight"], x["bias"])
        if variant == "materialized + softlabel":
            return materialized(s, y, teacher_logits() if group == "KD" else None)
        if group == "LS":
            return F.cross_entropy(s, y, label_smoothing=EPS)
        t = teacher_logits()
        kl = F.kl_div(
            F.log_softmax(s / TEMPERATURE, dim=-1),
            F.log_softmax(t / TEMPERATURE, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return kl * (TEMPERATURE**2 * ALPHA) + (1.0 - ALPHA) * F.cross_entropy(s, y)

    def step() -> None:
        for key in ("hidden", "weight", "bias"):
            if x[key] is not None:
                x[key].grad = None
        loss().backward()

    return step


def _status_kib(field: str) -> int | None:
    """A ``Vm*`` field of /proc/self/status in KiB (None where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current resident size (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_child(args: argparse.Namespace) -> None:
    """One variant in this fresh process: peak extra memory of the first call, then timing."""
    if args.memory_limit_gib:
        limit = int(args.memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(args.threads)
    n, h, v = (int(d) for d in args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    x = make_inputs(n, h, v, args.device, dtype, args.bias)
    step = make_step(args.group, args.variant, x, args.chunk_rows)
    start = time.perf_counter()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        _reset_peak_rss()
        base_kib = _status_kib("VmRSS")
        step()
        peak_kib = _status_kib("VmHWM")
        if base_kib is None or peak_kib is None:
            base_kib, peak_kib = 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mib = max(0, peak_kib - base_kib) / 1024
    first_s = time.perf_counter() - start
    seconds = (
        median_seconds(step, args.repeat, lambda: _sync(args.device)) if args.repeat else first_s
    )
    print(json.dumps({"time_s": seconds, "first_s": first_s, "peak_mib": peak_mib}))


def measure(group: str, variant: str, shape: str, args: argparse.Namespace, chunk_rows=None):
    """Time and peak memory of one variant (in a subprocess unless ``--in-process``)."""
    if args.in_process:  # timing only, in this process (smoke test)
        n, h, v = (int(d) for d in shape.split(","))
        x = make_inputs(n, h, v, args.device, getattr(torch, args.dtype), args.bias)
        step = make_step(group, variant, x, chunk_rows)
        seconds = median_seconds(step, args.repeat, lambda: _sync(args.device))
        return {"time_s": seconds, "first_s": None, "peak_mib": None}
    cmd = [sys.executable, __file__, "--child", "--group", group, "--variant", variant]
    cmd += ["--shape", shape, "--threads", str(args.threads), "--device", args.device]
    cmd += ["--dtype", args.dtype, "--repeat", str(args.repeat)]
    cmd += ["--memory-limit-gib", str(args.memory_limit_gib)]
    if chunk_rows is not None:
        cmd += ["--chunk-rows", str(chunk_rows)]
    if args.bias:
        cmd.append("--bias")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {group}: {variant}: failed ({reason})", file=sys.stderr, flush=True)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {shape} {group}: {variant} (chunk_rows={chunk_rows}): {result}", file=sys.stderr)
    return result


def _ratio(a: dict | None, b: dict | None, key: str) -> str:
    if a is None or b is None or a[key] is None or not b[key]:
        return "-"
    return f"{a[key] / b[key]:.2f}"


def _mib(result: dict | None) -> str:
    return "-" if result is None or result["peak_mib"] is None else f"{result['peak_mib']:.0f}"


def format_table(shape: str, results: dict) -> str:
    n, h, v = shape.split(",")
    lines = [
        f"#### (N, H, V) = ({n}, {h}, {v})",
        "",
        "| variant | time (s) | peak extra (MiB) | time / (a) | time / (b) | peak / (a) | peak / (b) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group, rows in results.items():
        a, b = rows.get("materialized + softlabel"), rows.get("materialized + torch")
        for variant, r in rows.items():
            label = {"materialized + softlabel": "(a) ", "materialized + torch": "(b) "}
            name = f"{group}: {label.get(variant, '')}{variant}"
            if r is None:
                lines.append(f"| {name} | failed | - | - | - | - | - |")
                continue
            lines.append(
                f"| {name} | {r['time_s']:.3f} | {_mib(r)} | {_ratio(r, a, 'time_s')} "
                f"| {_ratio(r, b, 'time_s')} | {_ratio(r, a, 'peak_mib')} | "
                f"{_ratio(r, b, 'peak_mib')} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["8192,1024,32000", "4096,2048,128256"],
        help="N,H,V triples",
    )
    parser.add_argument("--groups", default="LS,KD", help="comma-separated: LS, KD")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (inputs)")
    parser.add_argument("--bias", action="store_true", help="heads with a bias")
    parser.add_argument(
        "--sweep", type=int, nargs="*", default=None, help="time the linear loss per chunk_rows"
    )
    parser.add_argument("--memory-limit-gib", type=float, default=0.0, help="RLIMIT_AS per run")
    parser.add_argument("--quick", action="store_true", help=f"shape {QUICK_SHAPES}, 1 repeat")
    parser.add_argument(
        "--in-process", action="store_true", help="time in this process, no memory figures"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--group", default="LS", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="linear", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default=QUICK_SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-rows", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.repeat = [QUICK_SHAPES], 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    print(
        f"torch {torch.__version__}, device {args.device}, threads {args.threads}, "
        f"{args.dtype}, forward+backward, median of {args.repeat} after 1 warm-up; "
        f"eps={EPS}, T={TEMPERATURE}, alpha={ALPHA}, bias={args.bias}"
    )
    groups = args.groups.split(",")
    torch.set_num_threads(args.threads)
    for shape in args.shapes:
        if args.sweep is not None:
            print(f"\n#### chunk_rows, (N, H, V) = ({shape})\n")
            print("| chunk_rows | " + " | ".join(f"{g} time (s) | {g} peak (MiB)" for g in groups))
            print("|---:|" + "---:|---:|" * len(groups))
            for rows in args.sweep or [None]:
                cells = []
                for group in groups:
                    r = measure(group, "linear", shape, args, rows)
                    cells += ["-", "-"] if r is None else [f"{r['time_s']:.3f}", _mib(r)]
                print(f"| {rows or 'default'} | " + " | ".join(cells) + " |", flush=True)
            continue
        results = {
            group: {
                variant: measure(group, variant, shape, args)
                for variant in args.variants.split(",")
            }
            for group in groups
        }
        print()
        print(format_table(shape, results), flush=True)


if __name__ == "__main__":
    main()
