"""Benchmark of the public soft-target losses against the textbook PyTorch formulations.

The rows users see are the public calls: ``softlabel.functional.label_smoothing_loss`` /
``distillation_loss`` / ``cross_entropy_loss`` and ``SoftTargetLoss`` around a source, input
checks included. The fused kernel called directly (``softlabel.kernels``, no checks) is an
extra row per group. Forward + backward time (median of ``--repeat`` runs after one warm-up)
and peak extra memory of each variant, with ratios to the reference measured in the same run.
On CPU the peak memory of each variant is measured in a fresh subprocess (peak resident size
VmHWM after the run minus the resident size VmRSS once the inputs exist); on CUDA with
``torch.cuda.max_memory_allocated``.

    python benchmarks/loss.py --threads 2 --n 4096 --k 32000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import median_seconds

import softlabel.functional as SF
from softlabel import SoftTargetLoss
from softlabel.kernels import fused_soft_target_loss
from softlabel.targets import Hard, Teacher, UniformPrior

EPS, TEMPERATURE, ALPHA, IGNORE = 0.1, 4.0, 0.9, -100
JSD_BETA, DKD_ALPHA, DKD_BETA, RELAX_ALPHA = 0.5, 1.0, 8.0, 0.1

#: Largest K for the class-conditional prior matrix group (LSM): the (K, K) matrix is an input.
MATRIX_MAX_K = 8192

# variant name -> (group, reference variant of the group)
_CE, _LS, _KD = (
    "CE: torch cross_entropy",
    "LS: torch cross_entropy(label_smoothing)",
    "KD: kl_div + cross_entropy",
)
VARIANTS = {
    "softmax (floor, forward only)": ("floor", None),
    _CE: ("CE", None),
    "CE: cross_entropy_loss": ("CE", _CE),
    "CE: SoftTargetLoss(Hard())": ("CE", _CE),
    "CE: kernel only (no checks)": ("CE", _CE),
    _LS: ("LS", None),
    "LS: one-hot soft targets (naive)": ("LS", _LS),
    "LS: label_smoothing_loss": ("LS", _LS),
    "LS: SoftTargetLoss(UniformPrior)": ("LS", _LS),
    "LS: kernel only (no checks)": ("LS", _LS),
    _KD: ("KD", None),
    "KD: distillation_loss": ("KD", _KD),
    "KD: SoftTargetLoss(Teacher)": ("KD", _KD),
    "KD: kernel only (no checks)": ("KD", _KD),
}

# The divergences, logit standardization, DKD, the prior matrix and label relaxation: the
# plain PyTorch formulation of each, and the public call (fused kernel).
_NEW_GROUPS = {
    "KD-rev": ("kl_div(reverse) + cross_entropy", "distillation_loss(reverse_kl)"),
    "KD-JSD": ("logsumexp mixture (TRL) + cross_entropy", "distillation_loss(jsd)"),
    "KD-TVD": ("abs(softmax - softmax) + cross_entropy", "distillation_loss(tvd)"),
    "KD-std": ("z-score + kl_div + cross_entropy", "distillation_loss(standardize)"),
    "DKD": ("masked softmaxes (as mdistiller) + cross_entropy", "decoupled_distillation_loss"),
    "LSM": ("soft targets (1 - eps) onehot + eps M[y]", "label_smoothing_loss(prior=M)"),
    "Relax": ("explicit p_r + KL", "label_relaxation_loss"),
}
for _group, (_plain, _public) in _NEW_GROUPS.items():
    VARIANTS[f"{_group}: {_plain}"] = (_group, None)
    VARIANTS[f"{_group}: {_public}"] = (_group, f"{_group}: {_plain}")


def make_inputs(case: str, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Logits (leaf, requires grad), labels with ignored positions, teacher logits."""
    gen = torch.Generator().manual_seed(0)
    shape = (args.n, args.k) if case == "multiclass" else (args.batch, args.seq, args.k)
    logits = torch.randn(shape, generator=gen).mul_(2.0).to(args.device).requires_grad_()
    teacher = torch.randn(shape, generator=gen).mul_(2.0).to(args.device)
    target = torch.randint(0, args.k, shape[:-1], generator=gen)
    if case == "token":
        target[torch.rand(shape[:-1], generator=gen) < args.ignore_frac] = IGNORE
    inputs = {"logits": logits, "teacher": teacher, "target": target.to(args.device)}
    if args.k <= MATRIX_MAX_K and _wants(args, "LSM"):
        matrix = torch.rand(args.k, args.k, generator=gen)
        inputs["matrix"] = (matrix / matrix.sum(1, keepdim=True)).to(args.device)
    return inputs


def _wants(args: argparse.Namespace, group: str) -> bool:
    return not args.variants or group in args.variants.split(",")


def make_step(variant: str, x: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor | None]:
    """A closure running forward (+ backward except for the softmax floor)."""
    k = x["logits"].shape[-1]
    s2, t2, y = x["logits"].view(-1, k), x["teacher"].view(-1, k), x["target"].view(-1)
    valid = y != IGNORE
    n_valid = valid.sum().clamp_min(1)

    def fused(**kw) -> torch.Tensor:
        return fused_soft_target_loss(s2, y, ignore_index=IGNORE, **kw).sum() / n_valid

    def naive_ls() -> torch.Tensor:
        one_hot = F.one_hot(y.masked_fill(~valid, 0), k).to(s2.dtype)
        soft = one_hot * (1.0 - EPS) + EPS / k
        per_row = -(soft * F.log_softmax(s2, dim=-1)).sum(-1)
        return (per_row * valid).sum() / n_valid

    def kd_reference() -> torch.Tensor:
        # batchmean KL over all positions (ignored ones included) + CE with ignore_index
        kl = F.kl_div(
            F.log_softmax(s2 / TEMPERATURE, dim=-1),
            F.log_softmax(t2 / TEMPERATURE, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        ce = F.cross_entropy(s2, y, ignore_index=IGNORE)
        return kl * (TEMPERATURE**2 * ALPHA) + (1.0 - ALPHA) * ce

    s, t, target = x["logits"], x["teacher"], x["target"]  # the caller's shapes
    hard, smooth = SoftTargetLoss(Hard()), SoftTargetLoss(UniformPrior(EPS))
    distil = SoftTargetLoss(Teacher(TEMPERATURE, ALPHA))
    losses: dict[str, Callable[[], torch.Tensor]] = {
        _CE: lambda: F.cross_entropy(s2, y, ignore_index=IGNORE),
        "CE: cross_entropy_loss": lambda: SF.cross_entropy_loss(s, target),
        "CE: SoftTargetLoss(Hard())": lambda: hard(s, target),
        "CE: kernel only (no checks)": lambda: fused(mode="hard"),
        _LS: lambda: F.cross_entropy(s2, y, ignore_index=IGNORE, label_smoothing=EPS),
        "LS: one-hot soft targets (naive)": naive_ls,
        "LS: label_smoothing_loss": lambda: SF.label_smoothing_loss(s, target, EPS),
        "LS: SoftTargetLoss(UniformPrior)": lambda: smooth(s, target),
        "LS: kernel only (no checks)": lambda: fused(mode="ls", eps=EPS),
        _KD: kd_reference,
        "KD: distillation_loss": lambda: SF.distillation_loss(s, t, target, TEMPERATURE, ALPHA),
        "KD: SoftTargetLoss(Teacher)": lambda: distil(s, target, t),
        "KD: kernel only (no checks)": lambda: fused(
            mode="kd", teacher=t2, temperature=TEMPERATURE, alpha=ALPHA
        ),
    }
    losses.update(_new_losses(x, s2, t2, y, valid, n_valid))
    if variant.startswith("softmax"):
        return lambda: torch.softmax(x["logits"].detach(), dim=-1)

    def step() -> None:
        x["logits"].grad = None
        losses[variant]().backward()

    return step


def _new_losses(x, s2, t2, y, valid, n_valid) -> dict[str, Callable[[], torch.Tensor]]:
    """The plain formulations (soft terms over every row, CE with ignore_index; rows with an
    ignored label use class 0 where a label is read) and the public calls of _NEW_GROUPS."""
    temp = TEMPERATURE
    s, t, target = x["logits"], x["teacher"], x["target"]
    y0 = y.clamp_min(0)

    def with_ce(soft: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(s2, y, ignore_index=IGNORE)
        return soft.mean() * (temp**2 * ALPHA) + (1.0 - ALPHA) * ce

    def reverse() -> torch.Tensor:
        log_r, log_q = F.log_softmax(s2 / temp, -1), F.log_softmax(t2 / temp, -1)
        return with_ce(F.kl_div(log_q, log_r, log_target=True, reduction="none").sum(-1))

    def jsd() -> torch.Tensor:
        log_r, log_q = F.log_softmax(s2 / temp, -1), F.log_softmax(t2 / temp, -1)
        beta = torch.tensor(JSD_BETA)
        log_m = torch.logsumexp(
            torch.stack([log_r + torch.log1p(-beta), log_q + torch.log(beta)]), dim=0
        )
        kl_t = F.kl_div(log_m, log_q, log_target=True, reduction="none").sum(-1)
        kl_s = F.kl_div(log_m, log_r, log_target=True, reduction="none").sum(-1)
        return with_ce(JSD_BETA * kl_t + (1 - JSD_BETA) * kl_s)

    def tvd() -> torch.Tensor:
        diff = F.softmax(t2 / temp, -1) - F.softmax(s2 / temp, -1)
        return with_ce(0.5 * diff.abs().sum(-1))

    def standardized() -> torch.Tensor:
        def z(v: torch.Tensor) -> torch.Tensor:
            return (v - v.mean(-1, keepdim=True)) / (v.std(-1, keepdim=True) + 1e-7)

        log_r, log_q = F.log_softmax(z(s2) / temp, -1), F.log_softmax(z(t2) / temp, -1)
        return with_ce(F.kl_div(log_r, log_q, log_target=True, reduction="none").sum(-1))

    def dkd() -> torch.Tensor:
        gt = torch.zeros_like(s2, dtype=torch.bool).scatter_(1, y0[:, None], True)
        p_s, p_t = F.softmax(s2 / temp, -1), F.softmax(t2 / temp, -1)
        s_y, t_y = (p_s * gt).sum(-1), (p_t * gt).sum(-1)
        b_s, b_t = torch.stack([s_y, 1 - s_y], -1), torch.stack([t_y, 1 - t_y], -1)
        tckd = F.kl_div(b_s.log(), b_t, reduction="none").sum(-1)
        log_s_hat = F.log_softmax(s2 / temp - 1000.0 * gt, -1)
        log_t_hat = F.log_softmax(t2 / temp - 1000.0 * gt, -1)
        nckd = F.kl_div(log_s_hat, log_t_hat, log_target=True, reduction="none").sum(-1)
        soft = (temp**2) * (DKD_ALPHA * tckd + DKD_BETA * nckd)
        return F.cross_entropy(s2, y, ignore_index=IGNORE) + soft.mean()

    def matrix_ls() -> torch.Tensor:
        soft = torch.zeros_like(s2).scatter_(1, y0[:, None], 1.0 - EPS)
        soft.add_(x["matrix"][y0], alpha=EPS)
        per_row = -(soft * F.log_softmax(s2, dim=-1)).sum(-1)
        return (per_row * valid).sum() / n_valid

    def relax() -> torch.Tensor:
        p = F.softmax(s2, -1)
        gt = torch.zeros_like(s2, dtype=torch.bool).scatter_(1, y0[:, None], True)
        p_y = (p * gt).sum(-1, keepdim=True)
        p_r = torch.where(gt, 1 - RELAX_ALPHA, RELAX_ALPHA * p / (1 - p_y)).detach()
        kl = (p_r * (p_r.log() - F.log_softmax(s2, -1))).sum(-1)
        per_row = torch.where(p_y[:, 0] >= 1 - RELAX_ALPHA, 0.0, kl)
        return (per_row * valid).sum() / n_valid

    plain = {
        "KD-rev": reverse,
        "KD-JSD": jsd,
        "KD-TVD": tvd,
        "KD-std": standardized,
        "DKD": dkd,
        "LSM": matrix_ls,
        "Relax": relax,
    }
    public = {
        "KD-rev": lambda: SF.distillation_loss(s, t, target, temp, ALPHA, divergence="reverse_kl"),
        "KD-JSD": lambda: SF.distillation_loss(
            s, t, target, temp, ALPHA, divergence="jsd", beta=JSD_BETA
        ),
        "KD-TVD": lambda: SF.distillation_loss(s, t, target, temp, ALPHA, divergence="tvd"),
        "KD-std": lambda: SF.distillation_loss(s, t, target, temp, ALPHA, standardize=True),
        "DKD": lambda: SF.decoupled_distillation_loss(s, t, target, temp, DKD_ALPHA, DKD_BETA),
        "LSM": lambda: SF.label_smoothing_loss(s, target, EPS, prior=x["matrix"]),
        "Relax": lambda: SF.label_relaxation_loss(s, target, RELAX_ALPHA),
    }
    losses: dict[str, Callable[[], torch.Tensor]] = {}
    for group, (plain_name, public_name) in _NEW_GROUPS.items():
        losses[f"{group}: {plain_name}"] = plain[group]
        losses[f"{group}: {public_name}"] = public[group]
    return losses


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variant(variant: str, x: dict[str, torch.Tensor], args: argparse.Namespace) -> float:
    """Median wall time (s) of ``args.repeat`` runs after one warm-up run."""
    seconds = median_seconds(make_step(variant, x), args.repeat, lambda: _sync(args.device))
    x["logits"].grad = None
    return seconds


def peak_memory_mib(variant: str, case: str, args: argparse.Namespace) -> float:
    """Peak extra memory (MiB) of one forward + backward, beyond the inputs."""
    if args.device.startswith("cuda"):
        x = make_inputs(case, args)
        step = make_step(variant, x)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = step()
        torch.cuda.synchronize()
        del out
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, __file__, "--memory-child", variant, "--case", case]
    cmd += ["--n", str(args.n), "--k", str(args.k), "--batch", str(args.batch)]
    cmd += ["--seq", str(args.seq), "--ignore-frac", str(args.ignore_frac)]
    cmd += ["--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_mib"]


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
    """Reset VmHWM to the current resident size (Linux >= 4.0), so import peaks do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _memory_child(args: argparse.Namespace) -> None:
    """Peak extra memory in this fresh process: VmHWM after the run minus VmRSS before.

    ``ru_maxrss`` would also do, but Linux carries it over from the parent through
    fork + exec, so the peak of this process's own address space (VmHWM) is read instead.
    """
    x = make_inputs(args.case, args)
    step = make_step(args.memory_child, x)
    _reset_peak_rss()
    base_kib = _status_kib("VmRSS")
    step()
    peak_kib = _status_kib("VmHWM")
    if base_kib is None or peak_kib is None:  # no /proc: fall back to ru_maxrss
        base_kib, peak_kib = 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_extra_mib": max(0, peak_kib - base_kib) / 1024}))


def run_case(case: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """Time and memory of every variant on one input shape."""
    x = make_inputs(case, args)
    rows = []
    groups = set(args.variants.split(",")) if args.variants else None
    for variant, (group, _) in VARIANTS.items():
        if groups is not None and group not in groups and group != "floor":
            continue
        if group == "LSM" and "matrix" not in x:
            print(f"  {case}: LSM skipped: K={args.k} > {MATRIX_MAX_K}", file=sys.stderr)
            continue
        seconds = time_variant(variant, x, args)
        mib = None if args.no_memory else peak_memory_mib(variant, case, args)
        rows.append({"variant": variant, "group": group, "time_s": seconds, "peak_mib": mib})
        print(f"  {case}: {variant}: {seconds:.3f} s, {mib} MiB", file=sys.stderr, flush=True)
    return rows


def format_table(case: str, rows: list[dict[str, object]], shape: str) -> str:
    """Markdown table: absolute numbers and ratios to the reference of the same run."""
    by_name = {r["variant"]: r for r in rows}
    floor = by_name["softmax (floor, forward only)"]["time_s"]
    lines = [
        f"### {case}: logits {shape}",
        "",
        "| variant | time (s) | time / ref | time / softmax | peak extra (MiB) | peak / ref |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref_name = VARIANTS[r["variant"]][1]
        ref = by_name[ref_name] if ref_name else None
        t_ratio = f"{r['time_s'] / ref['time_s']:.2f}" if ref else "(ref)"
        mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        m_ratio = "-"
        if ref and r["peak_mib"] is not None and ref["peak_mib"]:
            m_ratio = f"{r['peak_mib'] / ref['peak_mib']:.2f}"
        elif r["peak_mib"] is not None and not ref:
            m_ratio = "(ref)"
        lines.append(
            f"| {r['variant']} | {r['time_s']:.3f} | {t_ratio} | {r['time_s'] / floor:.2f} "
            f"| {mem} | {m_ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="rows of the multiclass case")
    parser.add_argument("--k", type=int, default=32000, help="classes / vocabulary size")
    parser.add_argument("--batch", type=int, default=8, help="B of the token-level case")
    parser.add_argument("--seq", type=int, default=1024, help="T of the token-level case")
    parser.add_argument("--ignore-frac", type=float, default=0.1, help="ignored positions")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after a warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cases", default="multiclass,token", help="comma-separated cases")
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated groups to run (CE,LS,KD,KD-rev,KD-JSD,KD-TVD,KD-std,DKD,LSM,Relax; "
        f"default: all; LSM only for K <= {MATRIX_MAX_K})",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--case", default="multiclass", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        _memory_child(args)
        return
    print(
        f"torch {torch.__version__}, device {args.device}, threads {args.threads}, fp32, "
        f"forward+backward, median of {args.repeat} after 1 warm-up; "
        f"eps={EPS}, T={TEMPERATURE}, alpha={ALPHA}; JSD beta={JSD_BETA}, DKD alpha={DKD_ALPHA} "
        f"beta={DKD_BETA}, relaxation alpha={RELAX_ALPHA}"
    )
    for case in args.cases.split(","):
        if case == "multiclass":
            shape = f"({args.n}, {args.k})"
        elif case == "token":
            shape = f"({args.batch}, {args.seq}, {args.k}), {args.ignore_frac:.0%} ignored"
        else:
            raise ValueError(f"--cases: unknown case {case!r}; allowed: multiclass, token")
        print()
        print(format_table(case, run_case(case, args), shape), flush=True)


if __name__ == "__main__":
    main()
