"""KD from a cached teacher (dense or top-k) through the causal-LM module's linear head: the
same loss and gradients as on materialized logits, and no (B, L, V) student logits; sources
without a linear-head form say once why they materialize them."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from softlabel import SoftTargetLoss  # noqa: E402
from softlabel.models.hf import hf_causal_lm  # noqa: E402
from softlabel.modules.lm_module import CausalLMModule  # noqa: E402
from softlabel.modules.references import CachedTeacher  # noqa: E402
from softlabel.targets import DIST, OnlineLabelSmoothing, Teacher, TopKLogits  # noqa: E402

V, L = 13, 6
GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 8}


class _Table:
    """A teacher cache stand-in: rows of teacher logits (or their top-k) by dataset index."""

    def __init__(self, logits: torch.Tensor, k: int | None) -> None:
        self.logits, self.k = logits, k

    def lookup(self, index: torch.Tensor):
        rows = self.logits[index]
        return rows if self.k is None else TopKLogits.from_logits(rows, self.k)


def _module(source, cache, linear_head=True):
    provider = CachedTeacher(cache) if source.reference == "teacher_logits" else None
    torch.manual_seed(0)
    student = hf_causal_lm(
        config={**GPT2, **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.0)},
        num_classes=V,
    )
    return CausalLMModule(
        student,
        SoftTargetLoss(source),
        optimizer=functools.partial(torch.optim.SGD, lr=1.0),
        reference_provider=provider,
        vocab_size=V,
        linear_head=linear_head,
    )


@pytest.mark.parametrize("k", [None, 4])
@pytest.mark.parametrize("divergence", ["forward_kl", "skew_reverse_kl"])
def test_cached_teacher_runs_through_the_linear_head(k, divergence):
    gen = torch.Generator().manual_seed(1)
    cache = _Table(torch.randn(4, L, V, generator=gen) * 2, k)
    ids = torch.randint(0, V, (2, L), generator=gen)
    labels = ids.clone()
    labels[1, 4:] = -100
    index = torch.tensor([3, 1])
    source = Teacher(1.0, 0.5, divergence=divergence)
    results = []
    for linear in (True, False):
        module = _module(source, cache, linear)
        assert (module.linear_loss is not None) == linear
        calls: list[int] = []
        hook = module.student.model.lm_head.register_forward_hook(
            lambda *_, seen=calls: seen.append(1)
        )
        loss = module.token_loss_sum(ids, labels, index)
        hook.remove()
        assert bool(calls) != linear  # the linear path never runs the head's forward
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in module.student.parameters()]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for x, y in zip(grads_a, grads_b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("source", [DIST(), OnlineLabelSmoothing()], ids=["dist", "ols"])
def test_sources_without_a_linear_form_warn_once_and_materialize(source):
    cache = _Table(torch.randn(4, L, V), None)
    from softlabel.modules import lm_module

    lm_module._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = _module(source, cache)
        _module(source, cache)
    assert module.linear_loss is None
    messages = [str(w.message) for w in caught if "materialized" in str(w.message)]
    assert len(messages) == 1 and "because" in messages[0]
