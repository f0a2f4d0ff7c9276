"""Benchmark of the fused linear-head loss against the losses of materialized logits.

Per group (LS: label smoothing, KD: distillation with a teacher head, TopK: distillation from
a top-k teacher reference, ``TopKLogits`` of k = ``--k`` ids plus the tail), forward +
backward of hidden (N, H) through a head W (V, H) (+ the teacher's head for KD), three
variants:

- ``linear``: ``LinearSoftTargetLoss(source)(hidden, W, target, ...)``, no (N, V) logits
  (for TopK: ``teacher_logits=`` the top-k reference);
- (a) ``materialized + softlabel``: ``SoftTargetLoss(source)(F.linear(hidden, W), target, t)``,
  the fused soft-target loss on the logits (t: the teacher's logits, or the top-k reference);
- (b) ``materialized + torch``: ``F.cross_entropy(F.linear(hidden, W), y, label_smoothing=eps)``,
  or ``F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True, reduction="batchmean")
  * T^2 * alpha + (1 - alpha) * F.cross_entropy(s, y)``; for TopK the same KL on the k + 1
  buckets (the kept logits and a masked log-sum-exp of the others) written in PyTorch.

The teacher's logits of (a) and (b) are made under ``torch.no_grad()``. Time: median of
``--repeat`` rounds after one warm-up round, all variants in this process on the same inputs,
interleaved (each round runs every variant once, the order rotated by one per round), so that
a change of the machine's load reaches every variant alike. Peak extra memory: one call per
variant in a fresh subprocess (CPU: peak resident size VmHWM minus the resident size VmRSS
once the inputs exist; CUDA: ``max_memory_allocated`` minus the memory allocated then). The
gradients of hidden and W are part of every variant's peak. Ratios are to (a) and (b) of the
same run. ``--sweep`` times the linear loss alone for several ``chunk_rows``.

    python benchmarks/linear_loss.py --threads 2 --shapes 8192,1024,32000 --repeat 3
    python benchmarks/linear_loss.py --quick --no-memory
    python benchmarks/linear_loss.py --shapes 4096,2048,128256 --no-time   # memory only
    python benchmarks/linear_loss.py --sweep 128 256 512 1024 --shapes 2048,1024,32000
    python benchmarks/linear_loss.py --groups TopK --shapes 8192,1024,32000 --k 32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from softlabel import LinearSoftTargetLoss, SoftTargetLoss
from softlabel.targets import Teacher, TopKLogits, UniformPrior

EPS, TEMPERATURE, ALPHA = 0.1, 4.0, 0.9
VARIANTS = ("linear", "materialized + softlabel", "materialized + torch")
QUICK_SHAPES = "64,32,1000"


def make_inputs(
    n: int, h: int, v: int, device: str, dtype: torch.dtype, bias: bool, k: int = 0
) -> dict:
    """hidden (N, H) and head W (V, H) (leaves that require grad), labels, the teacher's head,
    and with ``k`` the teacher's top-k reference (made 1024 rows at a time, so that no (N, V)
    array precedes the measurements)."""
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
    if k:
        with torch.no_grad():
            parts = [
                TopKLogits.from_logits(
                    F.linear(rows, x["teacher_weight"], x["teacher_bias"]).float(), k
                )
                for rows in x["teacher_hidden"].split(1024)
            ]
        x["topk"] = TopKLogits(*(torch.cat(fields) for fields in zip(*parts)))
    return x


def topk_torch_loss(s: torch.Tensor, y: torch.Tensor, reference: TopKLogits) -> torch.Tensor:
    """The top-k bucket KD of ``topk_distillation_loss`` written in plain PyTorch."""
    index, logprob, tail = reference
    kept = s.gather(1, index)
    rest = torch.logsumexp(s.scatter(1, index, -math.inf), dim=1, keepdim=True)
    student = torch.cat([kept, rest], dim=1)
    teacher = torch.cat([logprob, tail[:, None]], dim=1).to(s.dtype)
    kl = F.kl_div(
        F.log_softmax(student / TEMPERATURE, dim=-1),
        F.log_softmax(teacher / TEMPERATURE, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return kl * (TEMPERATURE**2 * ALPHA) + (1.0 - ALPHA) * F.cross_entropy(s, y)


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
            if group == "TopK":
                extra = {"teacher_logits": x["topk"]}
            return linear(x["hidden"], x["weight"], y, x["bias"], **extra)
        s = F.linear(x["hidden"], x["weight"], x["bias"])
        if variant == "materialized + softlabel":
            reference = {"KD": teacher_logits, "TopK": lambda: x["topk"]}.get(group)
            return materialized(s, y, None if reference is None else reference())
        if group == "LS":
            return F.cross_entropy(s, y, label_smoothing=EPS)
        if group == "TopK":
            return topk_torch_loss(s, y, x["topk"])
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


def _limit_memory(args: argparse.Namespace) -> None:
    """Address-space limit (``--memory-limit-gib``): a run beyond it fails with an error
    instead of taking the shared machine's memory."""
    if args.memory_limit_gib:
        limit = int(args.memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_child(args: argparse.Namespace) -> None:
    """Peak extra memory of one call of one variant, in this fresh process."""
    n, h, v = (int(d) for d in args.shape.split(","))
    k = args.k if args.group == "TopK" else 0
    x = make_inputs(n, h, v, args.device, getattr(torch, args.dtype), args.bias, k)
    step = make_step(args.group, args.variant, x, args.chunk_rows)
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
    print(json.dumps({"peak_mib": peak_mib}))


def peak_memory_mib(group, variant, shape, args, chunk_rows=None) -> float | None:
    """Peak extra memory (MiB) of one forward + backward in a fresh subprocess (NaN when the
    run failed, e.g. beyond ``--memory-limit-gib``)."""
    cmd = [sys.executable, __file__, "--child", "--group", group, "--variant", variant]
    cmd += ["--shape", shape, "--threads", str(args.threads), "--device", args.device]
    cmd += ["--dtype", args.dtype, "--memory-limit-gib", str(args.memory_limit_gib)]
    cmd += ["--k", str(args.k)]
    if chunk_rows is not None:
        cmd += ["--chunk-rows", str(chunk_rows)]
    if args.bias:
        cmd.append("--bias")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {shape} {group}: {variant}: memory run failed ({reason})", file=sys.stderr)
        return math.nan
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]
    print(
        f"  {shape} {group}: {variant} (chunk_rows={chunk_rows}): {peak:.0f} MiB", file=sys.stderr
    )
    return peak


def time_interleaved(steps: dict, args: argparse.Namespace) -> dict[str, float | None]:
    """Median seconds per step over ``args.repeat`` rounds after ``args.warmup``; each round
    runs every step once, in an order rotated by one per round, so that a change of the
    machine's load during the run reaches every variant alike. A step that fails (e.g. out of
    memory) gets NaN."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    failed: set[str] = set()
    names = list(steps)
    for round_index in range(args.warmup + args.repeat):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if name in failed:
                continue
            _sync(args.device)
            start = time.perf_counter()
            try:
                steps[name]()
            except (RuntimeError, MemoryError) as error:
                print(f"  {name}: failed ({error})", file=sys.stderr)
                failed.add(name)
                continue
            _sync(args.device)
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
        last = {"-".join(str(k) for k in n): round(t[-1], 3) for n, t in times.items() if t}
        print(f"  round {round_index}: {last}", file=sys.stderr, flush=True)
    return {n: math.nan if n in failed else statistics.median(t) for n, t in times.items()}


def measure_shape(shape: str, groups, variants, args, chunk_rows=(None,)) -> dict:
    """{(group, variant, chunk_rows): {"time_s", "peak_mib"}} for one shape."""
    n, h, v = (int(d) for d in shape.split(","))
    keys = [(g, var, rows) for g in groups for var in variants for rows in chunk_rows]
    peaks = {}
    for key in keys:
        peaks[key] = (
            None if args.no_memory else peak_memory_mib(key[0], key[1], shape, args, key[2])
        )
    if args.no_time:
        seconds: dict = dict.fromkeys(keys)
    else:
        k = args.k if "TopK" in groups else 0
        x = make_inputs(n, h, v, args.device, getattr(torch, args.dtype), args.bias, k)
        steps = {key: make_step(key[0], key[1], x, key[2]) for key in keys}
        seconds = time_interleaved(steps, args)
    return {key: {"time_s": seconds[key], "peak_mib": peaks[key]} for key in keys}


def _ratio(a: dict | None, b: dict | None, key: str) -> str:
    if a is None or b is None or a[key] is None or b[key] is None:
        return "-"
    if math.isnan(a[key]) or math.isnan(b[key]) or not b[key]:
        return "-"
    return f"{a[key] / b[key]:.2f}"


def _cell(value: float | None, fmt: str) -> str:
    """A figure; "-" when not measured (None), "failed" when its run failed (NaN)."""
    if value is None:
        return "-"
    return "failed" if math.isnan(value) else format(value, fmt)


def format_table(shape: str, results: dict) -> str:
    """Markdown table: absolute numbers and ratios to (a) and (b) of the same run."""
    n, h, v = shape.split(",")
    lines = [
        f"#### (N, H, V) = ({n}, {h}, {v})",
        "",
        "| variant | time (s) | peak extra (MiB) | time / (a) | time / (b) | peak / (a) | "
        "peak / (b) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    label = {"materialized + softlabel": "(a) ", "materialized + torch": "(b) "}
    for (group, variant, _), r in results.items():
        a = results.get((group, "materialized + softlabel", None))
        b = results.get((group, "materialized + torch", None))
        lines.append(
            f"| {group}: {label.get(variant, '')}{variant} | {_cell(r['time_s'], '.3f')} | "
            f"{_cell(r['peak_mib'], '.0f')} | "
            f"{_ratio(r, a, 'time_s')} | {_ratio(r, b, 'time_s')} | "
            f"{_ratio(r, a, 'peak_mib')} | {_ratio(r, b, 'peak_mib')} |"
        )
    return "\n".join(lines)


def format_sweep(shape: str, results: dict, groups: list[str]) -> str:
    """Markdown table of the linear loss per chunk_rows."""
    lines = [
        f"#### chunk_rows at (N, H, V) = ({shape})",
        "",
        "| chunk_rows | " + " | ".join(f"{g} time (s) | {g} peak (MiB)" for g in groups) + " |",
        "|---:|" + "---:|---:|" * len(groups),
    ]
    for rows in dict.fromkeys(key[2] for key in results):
        cells = []
        for group in groups:
            r = results[(group, "linear", rows)]
            cells += [_cell(r["time_s"], ".3f"), _cell(r["peak_mib"], ".0f")]
        lines.append(f"| {rows or 'default'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["8192,1024,32000", "4096,2048,128256"],
        help="N,H,V triples",
    )
    parser.add_argument("--groups", default="LS,KD", help="comma-separated: LS, KD, TopK")
    parser.add_argument("--k", type=int, default=32, help="ids kept by the TopK group's reference")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (inputs)")
    parser.add_argument("--bias", action="store_true", help="heads with a bias")
    parser.add_argument(
        "--sweep", type=int, nargs="+", default=None, help="time the linear loss per chunk_rows"
    )
    parser.add_argument("--memory-limit-gib", type=float, default=0.0, help="RLIMIT_AS per run")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-time", action="store_true", help="skip the timed rounds")
    parser.add_argument("--quick", action="store_true", help=f"shape {QUICK_SHAPES}, 1 round")
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
    torch.set_num_threads(args.threads)
    _limit_memory(args)
    if args.child:
        run_child(args)
        return
    print(
        f"torch {torch.__version__}, device {args.device}, threads {args.threads}, "
        f"{args.dtype}, forward+backward, median of {args.repeat} interleaved rounds after "
        f"{args.warmup} warm-up; eps={EPS}, T={TEMPERATURE}, alpha={ALPHA}, bias={args.bias}, "
        f"top-k k={args.k}"
    )
    groups = args.groups.split(",")
    for shape in args.shapes:
        print(f"  {shape}: start, load average {os.getloadavg()}", file=sys.stderr, flush=True)
        if args.sweep is not None:
            results = measure_shape(shape, groups, ["linear"], args, args.sweep)
            print()
            print(format_sweep(shape, results, groups), flush=True)
        else:
            results = measure_shape(shape, groups, args.variants.split(","), args)
            print()
            print(format_table(shape, results), flush=True)
        print(f"  {shape}: end, load average {os.getloadavg()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
