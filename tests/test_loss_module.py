"""SoftTargetLoss: same values and gradients as the functional form, for every source."""

import subprocess
import sys

import pytest
import torch

from softlabel import SoftTargetLoss, functional
from softlabel.schedules import Linear
from softlabel.targets import ClassPrior, Hard, PreviousModel, Teacher, UniformPrior

K = 5
PRIOR = [0.1, 0.2, 0.3, 0.25, 0.15]


def _case(name, logits, target):
    """(source, reference, functional call) for one source."""
    binary = logits.shape == target.shape
    teacher = torch.randn_like(logits)
    previous = torch.sigmoid(teacher) if binary else torch.softmax(teacher, -1)
    prior = [0.3, 0.7] if binary else PRIOR
    cases = {
        "hard": (Hard(), None, lambda x, **kw: functional.cross_entropy_loss(x, target, **kw)),
        "ls": (
            UniformPrior(0.2),
            None,
            lambda x, **kw: functional.label_smoothing_loss(x, target, 0.2, **kw),
        ),
        "ls_prior": (
            ClassPrior(0.2, prior=prior),
            None,
            lambda x, **kw: functional.label_smoothing_loss(x, target, 0.2, prior=prior, **kw),
        ),
        "kd": (
            Teacher(3.0, 0.7),
            teacher,
            lambda x, **kw: functional.distillation_loss(x, teacher, target, 3.0, 0.7, **kw),
        ),
        "reloop": (
            PreviousModel(0.4),
            previous,
            lambda x, **kw: functional.self_correction_loss(x, target, previous, 0.4, **kw),
        ),
    }
    return cases[name]


@pytest.mark.parametrize("name", ["hard", "ls", "ls_prior", "kd", "reloop"])
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_equals_functional(name, binary, reduction):
    shape = (2, 3)
    logits = (
        torch.randn(*shape, dtype=torch.float64)
        if binary
        else torch.randn(*shape, K, dtype=torch.float64)
    )
    logits.requires_grad_()
    target = torch.randint(0, 2, shape).double() if binary else torch.randint(0, K, shape)
    target[0, 1] = -100
    weight = (
        torch.tensor([0.5, 2.0], dtype=torch.float64)
        if binary
        else torch.rand(K, dtype=torch.float64) + 0.1
    )
    source, reference, call = _case(name, logits, target)
    module = SoftTargetLoss(
        source, reduction=reduction, weight=weight, binary=binary or None
    ).double()
    ours = module(logits, target, reference)
    expected = call(
        logits, reduction=reduction, weight=weight, **({"binary": True} if binary else {})
    )
    cotangent = torch.rand_like(expected)
    (ours_grad,) = torch.autograd.grad(ours, logits, cotangent)
    (expected_grad,) = torch.autograd.grad(expected, logits, cotangent)
    assert module.name == name
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours_grad, expected_grad, atol=1e-12, rtol=1e-12)


def test_default_source_is_hard_cross_entropy():
    module = SoftTargetLoss()
    assert isinstance(module.source, Hard) and module.reference is None
    logits, target = torch.randn(4, K), torch.randint(0, K, (4,))
    torch.testing.assert_close(
        module(logits, target), torch.nn.functional.cross_entropy(logits, target)
    )


def test_weight_is_a_buffer_that_moves_with_the_module():
    module = SoftTargetLoss(UniformPrior(), weight=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert "weight" in dict(module.named_buffers())
    assert "weight" in module.state_dict()
    module = module.to(torch.float64)
    assert module.weight.dtype == torch.float64
    assert SoftTargetLoss().weight is None


def test_set_progress_and_values_forward_to_the_source():
    module = SoftTargetLoss(UniformPrior(Linear(0.2, 0.0)))
    module.set_progress(0.75)
    assert module.source.progress == 0.75
    assert module.values() == {"smoothing": pytest.approx(0.05)}
    logits, target = torch.randn(4, K, dtype=torch.float64), torch.randint(0, K, (4,))
    torch.testing.assert_close(
        module(logits, target),
        torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.05),
    )


def test_ignore_index_is_used():
    module = SoftTargetLoss(UniformPrior(0.1), ignore_index=0)
    logits, target = torch.randn(4, K), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(
        module(logits, target),
        torch.nn.functional.cross_entropy(logits, target, ignore_index=0, label_smoothing=0.1),
    )


def test_errors():
    logits, target = torch.randn(3, K), torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match="source must be a softlabel.targets source.*str"):
        SoftTargetLoss("ls")
    with pytest.raises(ValueError, match="reduction.*'avg'"):
        SoftTargetLoss(reduction="avg")
    with pytest.raises(ValueError, match="weight must be a 1-D.*\\(2, 5\\)"):
        SoftTargetLoss(weight=torch.ones(2, K))
    with pytest.raises(ValueError, match="Teacher needs reference='teacher_logits'"):
        SoftTargetLoss(Teacher())(logits, target)
    with pytest.raises(ValueError, match="UniformPrior takes no reference"):
        SoftTargetLoss(UniformPrior())(logits, target, torch.randn(3, K))


def test_import_softlabel_does_not_import_lightning_or_hydra():
    code = (
        "import sys, softlabel; "
        "bad = [m for m in ('lightning', 'torchmetrics', 'hydra') if m in sys.modules]; "
        "assert not bad, bad; assert softlabel.__version__ == '0.1.0'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["hard", "ls", "ls_prior", "kd", "reloop"])
def test_cuda_matches_cpu(name):
    logits = torch.randn(2, 3, K, dtype=torch.float64)
    target = torch.randint(0, K, (2, 3))
    target[0, 0] = -100
    source, reference, _ = _case(name, logits, target)
    module = SoftTargetLoss(source, weight=torch.rand(K, dtype=torch.float64) + 0.1)
    expected = module(logits, target, reference)
    module = module.to("cuda")
    assert module.weight.device.type == "cuda"
    moved = None if reference is None else reference.cuda()
    ours = module(logits.cuda(), target.cuda(), moved)
    torch.testing.assert_close(ours.cpu(), expected)
    half = module(logits.cuda().half(), target.cuda(), moved)
    assert half.dtype == torch.float32
