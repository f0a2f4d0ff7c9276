"""Benchmark of the teacher-free, adaptive and correlation losses against plain PyTorch
written from the same formulas, measured in the same run.

Groups (reference first): MbLS (``margin_smoothing_loss`` vs cross_entropy + the penalty
with ``amax``/``relu``), Tf-KD_reg (``virtual_teacher_loss`` vs a dense softened teacher,
``kl_div`` and cross_entropy), DIST (``dist_loss`` vs the formula with softmax and Pearson
correlations), OLS (``SoftTargetLoss(OnlineLabelSmoothing)`` one epoch in, i.e. with a (K, K)
prior, plus its statistics hook, vs ``label_smoothing_loss`` with a uniform prior), AdaLabel's
eps (``confidence_smoothing_loss`` vs the explicit per-row target and ``log_softmax``), ULD
(``uld_loss`` vs softmax, sort, zero padding and the L1 distance written in PyTorch; case
``uld``: a vocabulary of 49,152, SmolLM2's, on both sides; case ``uld_bytes``: a byte-level
student's 258 against SmolLM2's 49,152, the cross-tokenizer pair). Forward +
backward time (median of ``--repeat`` runs after a warm-up) and peak extra memory (CPU: a
fresh subprocess per variant, VmHWM after the run minus VmRSS once the inputs exist).

    python benchmarks/sources.py --threads 2 --repeat 3
    python benchmarks/sources.py --threads 2 --repeat 3 --cases uld,uld_bytes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import median_seconds
from loss import _reset_peak_rss, _status_kib

import softlabel.functional as SF
from softlabel import SoftTargetLoss
from softlabel.targets import OnlineLabelSmoothing

IGNORE, MARGIN, PENALTY, A, T, ALPHA, EPS = -100, 10.0, 0.1, 0.9, 20.0, 0.9, 0.5
ADA_MARGIN, ADA_POWER = 0.2, 2.0

# variant -> (group, reference variant of the group)
_MBLS, _TFKD, _DIST, _LS, _ADA, _ULD = (
    "MbLS: torch cross_entropy + relu(amax - s - m).sum",
    "Tf-KD: dense softened q + kl_div + cross_entropy",
    "DIST: torch softmax + Pearson (formula)",
    "LS: label_smoothing_loss (uniform prior)",
    "AdaLabel: explicit q from the detached softmax + log_softmax",
    "ULD: softmax + sort + pad + L1 + cross_entropy (formula)",
)
VARIANTS = {
    _MBLS: ("MbLS", None),
    "MbLS: margin_smoothing_loss": ("MbLS", _MBLS),
    _TFKD: ("Tf-KD", None),
    "Tf-KD: virtual_teacher_loss": ("Tf-KD", _TFKD),
    _DIST: ("DIST", None),
    "DIST: dist_loss": ("DIST", _DIST),
    _LS: ("OLS", None),
    "OLS: SoftTargetLoss(OnlineLabelSmoothing) + hook": ("OLS", _LS),
    _ADA: ("AdaLabel", None),
    "AdaLabel: confidence_smoothing_loss": ("AdaLabel", _ADA),
    _ULD: ("ULD", None),
    "ULD: uld_loss": ("ULD", _ULD),
}
#: cases: name -> (rows, classes, groups)
CASES = {
    "vocabulary": (2048, 32000, ("MbLS", "Tf-KD", "DIST", "AdaLabel")),
    "classes": (4096, 1000, ("MbLS", "Tf-KD", "DIST", "OLS", "AdaLabel")),
    "uld": (1024, 49152, ("ULD",)),
    "uld_bytes": (1024, 258, ("ULD",)),
}
#: cases whose teacher has another vocabulary than the student: name -> teacher classes
TEACHER_CLASSES = {"uld_bytes": 49152}


def make_inputs(case: str) -> dict[str, torch.Tensor]:
    n, k, _ = CASES[case]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n, k, generator=gen).mul_(4.0).requires_grad_()
    teacher = torch.randn(n, TEACHER_CLASSES.get(case, k), generator=gen).mul_(2.0)
    target = torch.randint(0, k, (n,), generator=gen)
    target[torch.rand(n, generator=gen) < 0.1] = IGNORE
    return {"logits": logits, "teacher": teacher, "target": target}


def make_step(variant: str, x: dict[str, torch.Tensor]) -> Callable[[], None]:
    s, t, y = x["logits"], x["teacher"], x["target"]
    k = s.shape[-1]
    valid = y != IGNORE
    n_valid = valid.sum().clamp_min(1)
    safe = y.masked_fill(~valid, 0)

    def mbls_reference() -> torch.Tensor:
        ce = F.cross_entropy(s, y, ignore_index=IGNORE, reduction="none")
        penalty = torch.relu(s.amax(dim=1, keepdim=True) - s - MARGIN).sum(dim=1)
        return ((ce + PENALTY * penalty) * valid).sum() / n_valid

    def tfkd_reference() -> torch.Tensor:
        b = (1 - A) / (k - 1)
        q = torch.full_like(s, b ** (1 / T)).scatter_(1, safe.unsqueeze(1), A ** (1 / T))
        q = q / q.sum(dim=1, keepdim=True)
        kl = F.kl_div(F.log_softmax(s / T, dim=1), q, reduction="none").sum(dim=1)
        ce = F.cross_entropy(s, y, ignore_index=IGNORE, reduction="none")
        return (((1 - ALPHA) * ce + ALPHA * T * T * kl) * valid).sum() / n_valid

    def dist_reference() -> torch.Tensor:
        p, q = torch.softmax(s[valid], dim=1), torch.softmax(t[valid], dim=1)

        def rho(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)

        soft = (1 - rho(p, q).mean()) + (1 - rho(p.t(), q.t()).mean())
        return 0.5 * F.cross_entropy(s, y, ignore_index=IGNORE) + 0.5 * soft

    def adalabel_reference() -> torch.Tensor:
        p = torch.softmax(s.detach(), dim=1)
        p_max = p.amax(dim=1)
        p_y = p.gather(1, safe.unsqueeze(1)).squeeze(1)
        cap = (k - 1) / k - ADA_MARGIN
        eps = (p_y / p_max) ** ADA_POWER * torch.clamp(1 - p_max, max=cap)
        q = (eps / (k - 1)).unsqueeze(1).expand(-1, k).clone()
        q.scatter_(1, safe.unsqueeze(1), (1 - eps).unsqueeze(1))
        per = -(q * torch.log_softmax(s, dim=1)).sum(dim=1)
        return (per * valid).sum() / n_valid

    def uld_reference() -> torch.Tensor:
        p = torch.softmax(s, dim=1).sort(dim=1, descending=True).values
        q = torch.softmax(t, dim=1).sort(dim=1, descending=True).values
        width = max(p.shape[1], q.shape[1])  # the shorter padded with zeros
        p, q = F.pad(p, (0, width - p.shape[1])), F.pad(q, (0, width - q.shape[1]))
        soft = (p - q).abs().sum(dim=1)
        ce = F.cross_entropy(s, y, ignore_index=IGNORE, reduction="none")
        return ((0.5 * ce + 0.5 * soft) * valid).sum() / n_valid

    ols = OnlineLabelSmoothing(EPS)
    if variant.startswith("OLS"):
        ols.on_train_batch_end(s.detach(), y)
        ols.on_train_epoch_end()  # a learnt (K, K) prior
    criterion = SoftTargetLoss(ols)

    def ols_step() -> torch.Tensor:
        loss = criterion(s, y)
        ols.on_train_batch_end(s.detach(), y)
        return loss

    losses: dict[str, Callable[[], torch.Tensor]] = {
        _MBLS: mbls_reference,
        "MbLS: margin_smoothing_loss": lambda: SF.margin_smoothing_loss(s, y, MARGIN, PENALTY),
        _TFKD: tfkd_reference,
        "Tf-KD: virtual_teacher_loss": lambda: SF.virtual_teacher_loss(s, y, A, T, ALPHA),
        _DIST: dist_reference,
        "DIST: dist_loss": lambda: SF.dist_loss(s, t, y),
        _LS: lambda: SF.label_smoothing_loss(s, y, EPS),
        "OLS: SoftTargetLoss(OnlineLabelSmoothing) + hook": ols_step,
        _ADA: adalabel_reference,
        "AdaLabel: confidence_smoothing_loss": lambda: SF.confidence_smoothing_loss(
            s, y, ADA_MARGIN, ADA_POWER
        ),
        _ULD: uld_reference,
        "ULD: uld_loss": lambda: SF.uld_loss(s, y, t, temperature=1.0, alpha=0.5),
    }

    def step() -> None:
        s.grad = None
        losses[variant]().backward()

    return step


def peak_memory_mib(variant: str, case: str, threads: int) -> float:
    cmd = [sys.executable, __file__, "--memory-child", variant, "--case", case]
    cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_mib"]


def _memory_child(variant: str, case: str) -> None:
    x = make_inputs(case)
    step = make_step(variant, x)
    _reset_peak_rss()
    base_kib = _status_kib("VmRSS")
    step()
    peak_kib = _status_kib("VmHWM")
    print(json.dumps({"peak_extra_mib": max(0, (peak_kib or 0) - (base_kib or 0)) / 1024}))


def run_case(case: str, args: argparse.Namespace) -> str:
    n, k, groups = CASES[case]
    x = make_inputs(case)
    rows: dict[str, tuple[float, float | None]] = {}
    for variant, (group, _) in VARIANTS.items():
        if group not in groups:
            continue
        seconds = median_seconds(make_step(variant, x), args.repeat)
        mib = None if args.no_memory else peak_memory_mib(variant, case, args.threads)
        rows[variant] = (seconds, mib)
        print(f"  {case}: {variant}: {seconds:.3f} s, {mib} MiB", file=sys.stderr, flush=True)
    teacher = f", teacher ({n}, {TEACHER_CLASSES[case]})" if case in TEACHER_CLASSES else ""
    lines = [
        f"### {case}: logits ({n}, {k}){teacher} fp32, 10% ignored",
        "",
        "| variant | time (s) | time / ref | peak extra (MiB) | peak / ref |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, (seconds, mib) in rows.items():
        ref = VARIANTS[variant][1]
        ref_s, ref_mib = rows[ref] if ref else (None, None)
        t_ratio = f"{seconds / ref_s:.2f}" if ref_s else "(ref)"
        m_ratio = "-" if mib is None else "(ref)"
        if ref_mib and mib is not None:
            m_ratio = f"{mib / ref_mib:.2f}"
        mem = "-" if mib is None else f"{mib:.0f}"
        lines.append(f"| {variant} | {seconds:.3f} | {t_ratio} | {mem} | {m_ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after a warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--cases", default="vocabulary,classes", help="comma-separated cases")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--case", default="classes", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        _memory_child(args.memory_child, args.case)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, repeat {args.repeat}")
    for case in args.cases.split(","):
        print(run_case(case, args) + "\n")


if __name__ == "__main__":
    main()
