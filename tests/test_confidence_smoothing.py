"""confidence_smoothing_loss / ConfidenceSmoothing (AdaLabel's adaptive eps, uniform v) against
the formula of the authors' code written out here."""

import math

import pytest
import torch
import torch.nn.functional as tf
from loss_reference import SHAPES, TOL, K, assert_same_values_and_grads, masked_reduce

from softlabel import SoftTargetLoss
from softlabel.functional import confidence_smoothing_loss
from softlabel.functional.adaptive_smoothing import confidence_smoothing_eps
from softlabel.kernels import fused_soft_target_loss
from softlabel.schedules import Linear
from softlabel.targets import ConfidenceSmoothing


def _eps(logits, y, margin, power):
    """Wang et al. (2021), AdaLabLoss._get_epsilon: from the detached prediction,
    eps = (p_y / p_max)^power * min(1 - p_max, 1 / (1 + max v) - margin), max v = 1/(K-1)."""
    p = torch.softmax(logits.detach(), dim=-1)
    p_max = p.max(dim=-1).values
    p_y = p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    cap = 1.0 / (1.0 + 1.0 / (logits.shape[-1] - 1)) - margin
    return (p_y / p_max) ** power * torch.clamp(1.0 - p_max, max=cap)


def _target(logits, y, eps):
    """q = (1 - eps) onehot(y) + eps v, v uniform over the classes other than y."""
    k = logits.shape[-1]
    onehot = tf.one_hot(y, k).to(logits.dtype)
    v = (1.0 - onehot) / (k - 1)
    return (1.0 - eps).unsqueeze(-1) * onehot + eps.unsqueeze(-1) * v


def _reference(logits, target, margin, power, reduction="mean", weight=None):
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    q = _target(logits, safe, _eps(logits, safe, margin, power))
    per = -(q * torch.log_softmax(logits, dim=-1)).sum(-1)
    return masked_reduce(per, mask, safe, weight, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_written_out_formula(dtype, shape, reduction, weighted):
    logits = (torch.randn(*shape, K, dtype=dtype) * 2).requires_grad_()
    target = torch.randint(0, K, shape)
    target.view(-1)[::4] = -100
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = confidence_smoothing_loss(logits, target, 0.1, 1.5, reduction=reduction, weight=weight)
    reference = _reference(logits, target, 0.1, 1.5, reduction, weight)
    assert ours.dtype == dtype
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_eps_per_position_follows_the_confidence():
    logits = torch.tensor(
        [
            [9.0, 0.0, 0.0, 0.0, 0.0],  # confident and right: eps ~ 0
            [0.5, 0.4, 0.3, 0.0, 0.0],  # uncertain and right: the largest eps
            [0.0, 3.0, 0.0, 0.0, 0.0],  # wrong (p_y << p_max): small eps
            [0.0, 0.0, 0.0, 0.0, 0.0],  # uniform: eps = min(1 - 1/K, cap) = cap
        ],
        dtype=torch.float64,
    )
    target = torch.tensor([0, 0, 0, 2])
    eps = confidence_smoothing_eps(logits, target, 0.2, 2.0)
    torch.testing.assert_close(eps, _eps(logits, target, 0.2, 2.0), **TOL[torch.float64])
    assert eps[0] < 1e-3 and eps[2] < eps[1] and eps[0] < eps[1]
    assert eps[3].item() == pytest.approx((K - 1) / K - 0.2)
    assert not eps.requires_grad


def test_authors_code_returns_the_kl_with_the_same_gradient():
    """Their forward: kl_div(log p, q, reduction="sum"), q from _get_epsilon with the detached
    prediction. KL(q || p) = H(q, p) - H(q); H(q) is a constant, so the gradients agree."""
    logits = (torch.randn(7, K, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, K, (7,))
    log_p = torch.log_softmax(logits, dim=1)
    probs = log_p.detach().exp()
    p_max = probs.max(dim=1).values
    epsilon = 1 - p_max
    up_bond = 1 / (1 + 1 / (K - 1)) - 0.2
    epsilon = torch.where(epsilon > up_bond, torch.full_like(epsilon, up_bond), epsilon)
    epsilon = (probs.gather(1, target.unsqueeze(1)).squeeze(1) / p_max).pow(2) * epsilon
    q = _target(logits, target, epsilon)
    theirs = tf.kl_div(log_p, q, reduction="sum")
    ours = confidence_smoothing_loss(logits, target, 0.2, 2.0, reduction="sum")
    entropy = -(q * q.clamp_min(1e-300).log()).sum()
    torch.testing.assert_close(ours - entropy, theirs, **TOL[torch.float64])
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs, **TOL[torch.float64])


def test_correct_uncertain_rows_get_no_push_on_the_true_class():
    """The rule's fixed point: at a correct prediction with 1 - p_y below the cap, eps = 1 - p_y,
    so q_y = p_y and the true-class gradient p_y - q_y is 0. The target only reshapes the other
    classes, and a row gains confidence only up to p_y = 1 - cap (what the
    soft_label_sources recipe measures: an under-confident model)."""
    margin = 0.2
    cap = (K - 1) / K - margin
    logits = torch.zeros(3, K, dtype=torch.float64)
    logits[:, 0] = torch.tensor([2.0, 3.0, 5.0])  # p_y 0.45, 0.69, 0.94: all above 1 - cap
    logits[:, 1] = torch.tensor([0.5, -1.0, 1.0])
    logits.requires_grad_()
    target = torch.zeros(3, dtype=torch.long)
    p_y = torch.softmax(logits.detach(), dim=1)[:, 0]
    assert bool((1 - p_y < cap).all())
    loss = confidence_smoothing_loss(logits, target, margin, 2.0, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad[:, 0], torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert bool((grad[:, 1:].abs().sum(dim=1) > 1e-3).all())  # the other classes still move
    # below 1 - cap the cap binds: q_y = 1 - cap > p_y pulls the true class up
    flat = torch.zeros(1, K, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(
        confidence_smoothing_loss(flat, target[:1], margin, 2.0, reduction="sum"), flat
    )
    assert grad[0, 0].item() == pytest.approx(1 / K - (1 - cap))


def test_chunked_rows_do_not_depend_on_the_chunk_size():
    logits = (torch.randn(11, K, dtype=torch.float64) * 3).requires_grad_()
    index = torch.randint(0, K, (11,))
    valid = torch.rand(11) > 0.2
    cotangent = torch.rand(11, dtype=torch.float64)
    target = index.masked_fill(~valid, -100)

    def per_row(rows):
        return fused_soft_target_loss(
            logits, target, mode="confidence", margin=0.2, power=2.0, chunk_rows=rows
        )

    whole = per_row(11)
    (grad_whole,) = torch.autograd.grad(whole, logits, cotangent)
    eps = confidence_smoothing_eps(logits, target, 0.2, 2.0)
    for rows in (1, 3):
        chunked = per_row(rows)
        (grad,) = torch.autograd.grad(chunked, logits, cotangent)
        torch.testing.assert_close(chunked, whole, **TOL[torch.float64])
        torch.testing.assert_close(grad, grad_whole, **TOL[torch.float64])
    expected = torch.where(
        valid, _eps(logits, index, 0.2, 2.0), torch.zeros(11, dtype=torch.float64)
    )
    torch.testing.assert_close(eps, expected, **TOL[torch.float64])


def test_ignored_rows_may_hold_nan_and_all_ignored_is_zero():
    logits = torch.randn(4, K, dtype=torch.float64)
    logits[1] = float("nan")
    x = logits.clone().requires_grad_()
    target = torch.tensor([1, -100, 0, 4])
    ours = confidence_smoothing_loss(x, target)
    ours.backward()
    assert torch.isfinite(ours) and x.grad[1].eq(0).all() and torch.isfinite(x.grad).all()
    keep = target != -100
    torch.testing.assert_close(ours, _reference(logits[keep], target[keep], 0.2, 2.0))
    empty = confidence_smoothing_loss(x, torch.full((4,), -100))
    assert empty.item() == 0.0 and empty.grad_fn is not None


def test_half_precision_is_computed_in_float32():
    logits = (torch.randn(2, 3, K) * 2).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, K, (2, 3))
    ours = confidence_smoothing_loss(logits, target)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(
        ours, _reference(logits.float(), target, 0.2, 2.0), **TOL[torch.float32]
    )
    ours.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_double_backward_matches_the_formula():
    """Hessian-vector product under create_graph=True, eps a constant as in the formula."""
    logits = (torch.randn(2, 3, K, dtype=torch.float64) * 2).requires_grad_()
    target = torch.tensor([[0, 3, -100], [2, 1, 1]])
    vector = torch.randn_like(logits)
    results = []
    for loss in (
        confidence_smoothing_loss(logits, target, 0.1, 1.0),
        _reference(logits, target, 0.1, 1.0),
    ):
        (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
        results.append(torch.autograd.grad((grad * vector).sum(), logits)[0])
    torch.testing.assert_close(results[0], results[1], **TOL[torch.float64])


def test_source_equals_functional_and_schedules():
    source = ConfidenceSmoothing(margin=Linear(0.2, 0.0), power=1.0)
    assert source.name == "ls_confidence" and source.reference is None
    source.set_progress(0.5)
    assert source.values() == pytest.approx({"margin": 0.1, "power": 1.0})
    logits = torch.randn(2, 3, K, requires_grad=True)
    target = torch.randint(0, K, (2, 3))
    torch.testing.assert_close(
        SoftTargetLoss(source)(logits, target), confidence_smoothing_loss(logits, target, 0.1, 1.0)
    )
    with pytest.raises(ValueError, match="binary"):
        SoftTargetLoss(source, binary=True)(torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_bad_hyper_parameters_and_inputs_are_refused():
    logits, target = torch.randn(3, K), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"margin must be in \[0, 1\), got -0.1"):
        confidence_smoothing_loss(logits, target, margin=-0.1)
    with pytest.raises(ValueError, match=r"margin must be in \[0, 1\), got nan"):
        confidence_smoothing_loss(logits, target, margin=math.nan)
    with pytest.raises(ValueError, match="power must be a finite number >= 0, got -1.0"):
        confidence_smoothing_loss(logits, target, power=-1.0)
    with pytest.raises(ValueError, match="power must be a finite number >= 0, got inf"):
        confidence_smoothing_loss(logits, target, power=math.inf)
    with pytest.raises(ValueError, match="power must be a finite number >= 0, got -2.0"):
        ConfidenceSmoothing(power=-2.0)
    with pytest.raises(ValueError, match=r"margin must be <= \(K - 1\) / K = 0.5 for K = 2"):
        confidence_smoothing_loss(torch.randn(3, 2), torch.tensor([0, 1, 0]), margin=0.6)
    with pytest.raises(ValueError, match="at least 2 classes"):
        confidence_smoothing_loss(torch.randn(3, 1), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="class indices"):
        confidence_smoothing_loss(logits, torch.softmax(torch.randn(3, K), dim=1))
    with pytest.raises(ValueError, match=r"margin must be in \[0, 1\), got 1.0"):
        ConfidenceSmoothing(margin=Linear(0.2, 1.0))
    bad = logits.clone()
    bad[1, 3] = -math.inf  # every class gets target mass, so the loss is infinite
    with pytest.raises(ValueError, match=r"logits must be finite .* at position \(1, 3\)"):
        confidence_smoothing_loss(bad, target)
