"""Fused soft-target loss kernel against the plain reference formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softlabel.kernels import fused, fused_soft_target_loss

IGNORE = -100
# (N, K, chunk_rows): N not divisible by the chunk, K = 2, one chunk, one row per chunk
SHAPES = [(7, 2, 3), (33, 17, 8), (10, 5, None), (5, 300, 1)]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def reference_loss(mode: str, s: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
    """Per-row loss from the textbook formulas (log_softmax, explicit soft targets)."""
    valid = y != IGNORE
    y_safe = y.masked_fill(~valid, 0)
    log_p = F.log_softmax(s, dim=1)
    one_hot = F.one_hot(y_safe, s.shape[1]).to(s.dtype)
    ce = -(one_hot * log_p).sum(1)
    if mode == "hard":
        loss = ce
    elif mode == "ls":
        eps = kw["eps"]
        prior = kw.get("prior")
        u = torch.full_like(s, 1.0 / s.shape[1]) if prior is None else prior.expand_as(s)
        loss = -(((1 - eps) * one_hot + eps * u) * log_p).sum(1)
    elif mode == "kd":
        temp, alpha = kw["temperature"], kw["alpha"]
        log_q = F.log_softmax(kw["teacher"] / temp, dim=1)
        kl = (log_q.exp() * (log_q - F.log_softmax(s / temp, dim=1))).sum(1)
        loss = (1 - alpha) * ce + alpha * temp**2 * kl
    else:
        alpha, prev = kw["alpha"], kw["previous"]
        p_y = log_p.exp().gather(1, y_safe[:, None]).squeeze(1)
        q_y = prev.gather(1, y_safe[:, None]).squeeze(1)
        loss = (1 - alpha) * ce + alpha * torch.relu(q_y - p_y)
    return torch.where(valid, loss, torch.zeros_like(loss))


def make_case(mode: str, n: int, k: int, dtype: torch.dtype, scale: float = 3.0):
    s = (torch.randn(n, k, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    y = torch.randint(0, k, (n,))
    y[torch.rand(n) < 0.2] = IGNORE
    kw: dict = {}
    if mode == "ls":
        kw = {"eps": 0.1}
    elif mode == "kd":
        kw = {"teacher": torch.randn(n, k, dtype=dtype) * scale, "temperature": 2.5, "alpha": 0.7}
    elif mode == "reloop":
        kw = {"alpha": 0.4, "previous": torch.softmax(torch.randn(n, k, dtype=dtype) * 3, 1)}
    return s, y, kw


def assert_matches(mode, s, y, kw, chunk_rows, tol):
    """Values and gradients (with per-row weights) equal the fp64 reference."""
    weights = torch.rand(s.shape[0], dtype=torch.float64)
    out = fused_soft_target_loss(s, y, mode=mode, chunk_rows=chunk_rows, **kw)
    (grad,) = torch.autograd.grad((out.double() * weights).sum(), s)
    s64 = s.detach().double().requires_grad_()
    kw64 = {key: v.double() if torch.is_tensor(v) else v for key, v in kw.items()}
    ref = reference_loss(mode, s64, y, **kw64)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), s64)
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol, atol=tol)
    assert grad.dtype == s.dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,chunk_rows", SHAPES)
@pytest.mark.parametrize("mode", ["hard", "ls", "kd", "reloop"])
def test_matches_reference(mode, n, k, chunk_rows, dtype):
    s, y, kw = make_case(mode, n, k, dtype)
    assert_matches(mode, s, y, kw, chunk_rows, TOL[dtype])


@pytest.mark.parametrize("mode", ["hard", "ls", "kd", "reloop"])
def test_default_chunks_span_several_chunks(mode, monkeypatch):
    """With a tiny byte budget the default chunking walks 40 rows in several chunks."""
    monkeypatch.setitem(fused.CHUNK_BYTES, "cpu", 5 * 64 * 8 * 7)  # KD: 7 rows, LS: 17 rows
    assert 1 < fused.default_chunk_rows(64, torch.float64, mode) < 40
    s, y, kw = make_case(mode, 40, 64, torch.float64)
    assert_matches(mode, s, y, kw, None, 1e-10)


def test_default_chunk_rows_per_device():
    """Cache-sized chunks on CPU, larger ones on CUDA, at least one row for any K."""
    cpu = fused.default_chunk_rows(32000, torch.float32, "kd", "cpu")
    cuda = fused.default_chunk_rows(32000, torch.float32, "kd", "cuda")
    assert cpu == fused.CHUNK_BYTES["cpu"] // (5 * 32000 * 4)
    assert cuda == fused.CHUNK_BYTES["cuda"] // (5 * 32000 * 4) and cuda > cpu
    assert fused.default_chunk_rows(32000, torch.float64, "ls") == fused.CHUNK_BYTES["cpu"] // (
        2 * 32000 * 8
    )
    assert fused.default_chunk_rows(10**9, torch.float64, "kd") == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_prior_smoothing(dtype):
    s, y, _ = make_case("ls", 21, 6, dtype)
    prior = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.05, 0.05], dtype=dtype)
    assert_matches("ls", s, y, {"eps": 0.3, "prior": prior}, 4, TOL[dtype])


@pytest.mark.parametrize("alpha,temperature", [(1.0, 4.0), (0.0, 2.0), (0.5, 1.0)])
def test_distillation_edge_settings(alpha, temperature):
    s, y, kw = make_case("kd", 19, 9, torch.float64)
    kw.update(alpha=alpha, temperature=temperature)
    assert_matches("kd", s, y, kw, 5, 1e-10)


def test_distillation_without_labels():
    s, _, kw = make_case("kd", 12, 7, torch.float64)
    kw["alpha"] = 1.0
    out = fused_soft_target_loss(s, None, mode="kd", chunk_rows=5, **kw)
    ref = reference_loss("kd", s, torch.zeros(12, dtype=torch.long), **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_reloop_previous_given_as_label_probability():
    s, y, kw = make_case("reloop", 15, 4, torch.float64)
    y[y == IGNORE] = 0
    q_y = kw["previous"].gather(1, y[:, None]).squeeze(1)
    full = fused_soft_target_loss(s, y, mode="reloop", alpha=0.4, previous=kw["previous"])
    gathered = fused_soft_target_loss(s, y, mode="reloop", alpha=0.4, previous=q_y)
    torch.testing.assert_close(full, gathered, rtol=0, atol=1e-12)
    assert (full > (1 - 0.4) * F.cross_entropy(s, y, reduction="none") + 1e-9).any()


@pytest.mark.parametrize("mode", ["hard", "ls", "kd", "reloop"])
def test_extreme_logits(mode):
    s, y, kw = make_case(mode, 16, 5, torch.float32)
    with torch.no_grad():
        s.copy_(torch.randint(0, 2, s.shape).float() * 2e4 - 1e4)
        if mode == "kd":
            kw["teacher"] = torch.randint(0, 2, s.shape).float() * 2e4 - 1e4
    assert_matches(mode, s, y, kw, 3, 1e-5)


@pytest.mark.parametrize("mode", ["hard", "ls", "kd", "reloop"])
def test_all_rows_ignored_give_zero_loss_and_grad(mode):
    s, _, kw = make_case(mode, 9, 4, torch.float32)
    y = torch.full((9,), IGNORE)
    out = fused_soft_target_loss(s, y, mode=mode, chunk_rows=4, **kw)
    (grad,) = torch.autograd.grad(out.sum(), s)
    assert torch.equal(out, torch.zeros(9)) and torch.equal(grad, torch.zeros_like(s))


def test_uniform_smoothing_equals_torch_cross_entropy_token_level():
    s = torch.randn(2, 6, 11, requires_grad=True)
    y = torch.randint(0, 11, (2, 6))
    y[0, :2] = IGNORE
    per_row = fused_soft_target_loss(s.reshape(-1, 11), y.reshape(-1), mode="ls", eps=0.2)
    mean = per_row.sum() / (y != IGNORE).sum()
    ref = F.cross_entropy(s.transpose(1, 2), y, label_smoothing=0.2, ignore_index=IGNORE)
    grad, ref_grad = (torch.autograd.grad(v, s)[0] for v in (mean, ref))
    torch.testing.assert_close(mean, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["ls", "kd"])
def test_half_inputs_computed_in_float32(mode, dtype):
    s, y, kw = make_case(mode, 13, 10, dtype)
    out = fused_soft_target_loss(s, y, mode=mode, chunk_rows=4, **kw)
    (grad,) = torch.autograd.grad(out.sum(), s)
    assert out.dtype == torch.float32 and grad.dtype == dtype
    s32 = s.detach().float().requires_grad_()
    kw32 = {key: v.float() if torch.is_tensor(v) else v for key, v in kw.items()}
    ref = reference_loss(mode, s32, y, **kw32)
    (ref_grad,) = torch.autograd.grad(ref.sum(), s32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("mode", ["hard", "ls", "kd", "reloop"])
def test_gradcheck_fp64(mode):
    s, y, kw = make_case(mode, 6, 4, torch.float64, scale=1.0)
    if mode == "reloop":  # keep every hinge away from its kink
        with torch.no_grad():
            p_y = torch.softmax(s, 1).gather(1, y.clamp_min(0)[:, None])
            q_y = torch.where(torch.arange(6)[:, None] % 2 == 0, p_y + 0.2, p_y * 0.5)
            kw["previous"] = torch.full((6, 4), 0.5, dtype=s.dtype).scatter(
                1, y.clamp_min(0)[:, None], q_y
            )
    assert torch.autograd.gradcheck(
        lambda x: fused_soft_target_loss(x, y, mode=mode, chunk_rows=4, **kw), (s,)
    )


def test_backward_scales_buffer_and_retained_graph_stays_valid():
    s, y, _ = make_case("hard", 8, 5, torch.float64)
    out = fused_soft_target_loss(s, y, mode="hard").sum()
    out.backward(retain_graph=True)
    first = s.grad.clone()
    out.backward()
    ref_grad = torch.autograd.grad(reference_loss("hard", s, y).sum(), s)[0]
    torch.testing.assert_close(first, ref_grad)
    torch.testing.assert_close(s.grad, 2 * ref_grad)


def test_no_grad_returns_loss_only():
    s, y, _ = make_case("ls", 8, 5, torch.float32)
    with torch.no_grad():
        out = fused_soft_target_loss(s, y, mode="ls", eps=0.1)
    assert not out.requires_grad
    torch.testing.assert_close(out, reference_loss("ls", s.detach(), y, eps=0.1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "focal"}, "mode"),
        ({"mode": "ls", "eps": 1.5}, "eps"),
        ({"mode": "kd", "teacher": torch.zeros(4, 3), "temperature": 0.0}, "temperature"),
        ({"mode": "kd", "alpha": 0.5}, "teacher"),
        ({"mode": "reloop", "alpha": 0.5}, "previous"),
        ({"mode": "ls", "eps": 0.1, "prior": torch.ones(4)}, "prior"),
        ({"mode": "hard", "chunk_rows": 0}, "chunk_rows"),
        ({"mode": "hard", "eps": 0.1}, "eps"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fused_soft_target_loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), **kwargs)


def test_bad_targets_raise():
    s = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 3\).*got 3"):
        fused_soft_target_loss(s, torch.tensor([0, 1, 3, IGNORE]), mode="hard")
    with pytest.raises(TypeError, match="target"):
        fused_soft_target_loss(s, torch.zeros(4), mode="hard")
    with pytest.raises(ValueError, match="target is required"):
        fused_soft_target_loss(s, None, mode="ls", eps=0.1)


def test_ignored_rows_with_non_finite_logits_give_zero():
    s, y, kw = make_case("kd", 6, 4, torch.float32)
    y[:] = torch.tensor([0, IGNORE, 1, IGNORE, 2, 3])
    with torch.no_grad():
        s[1] = float("nan")
        s[3] = float("inf")
    out = fused_soft_target_loss(s, y, mode="kd", chunk_rows=4, **kw)
    (grad,) = torch.autograd.grad(out.sum(), s)
    assert out[1] == 0 and out[3] == 0 and torch.isfinite(out).all()
    assert torch.equal(grad[[1, 3]], torch.zeros(2, 4)) and torch.isfinite(grad).all()
