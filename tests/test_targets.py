"""Target sources: names, references, hyper-parameters, ClassPrior, Hydra construction."""

import pytest
import torch
import torch.nn.functional as tf

from softlabel import functional
from softlabel.schedules import Linear
from softlabel.targets import ClassPrior, Hard, PreviousModel, Teacher, UniformPrior

K = 4


def test_names_and_references():
    expected = {
        Hard(): ("hard", None),
        UniformPrior(): ("ls", None),
        ClassPrior(prior=[0.25] * 4): ("ls_prior", None),
        Teacher(): ("kd", "teacher_logits"),
        PreviousModel(): ("reloop", "previous_probs"),
    }
    for source, (name, reference) in expected.items():
        assert (source.name, source.reference) == (name, reference)


def test_defaults_and_values():
    assert Hard().values() == {}
    assert UniformPrior().values() == {"smoothing": 0.1}
    assert Teacher().values() == {"temperature": 4.0, "alpha": 0.9}
    assert PreviousModel().values() == {"alpha": 0.5}
    teacher = Teacher(temperature=2.0, alpha=0.3)
    assert (teacher.temperature, teacher.alpha) == (2.0, 0.3)


def test_source_losses_equal_functional():
    logits = torch.randn(5, K, dtype=torch.float64)
    target = torch.tensor([0, 1, -100, 3, 2])
    teacher = torch.randn(5, K, dtype=torch.float64)
    previous = torch.softmax(torch.randn(5, K, dtype=torch.float64), -1)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    kw = {"reduction": "sum", "weight": weight}
    pairs = [
        (
            Hard().loss(logits, target, **kw),
            tf.cross_entropy(logits, target, reduction="sum", weight=weight),
        ),
        (
            UniformPrior(0.2).loss(logits, target, **kw),
            functional.label_smoothing_loss(logits, target, 0.2, **kw),
        ),
        (
            ClassPrior(0.2, counts=[1, 2, 3, 4]).loss(logits, target, **kw),
            functional.label_smoothing_loss(logits, target, 0.2, prior=[0.1, 0.2, 0.3, 0.4], **kw),
        ),
        (
            Teacher(3.0, 0.4).loss(logits, target, teacher, **kw),
            functional.distillation_loss(logits, teacher, target, 3.0, 0.4, **kw),
        ),
        (
            PreviousModel(0.3).loss(logits, target, previous, **kw),
            functional.self_correction_loss(logits, target, previous, 0.3, **kw),
        ),
    ]
    for ours, expected in pairs:
        torch.testing.assert_close(ours, expected)


def test_hard_source_is_plain_cross_entropy_value():
    logits = torch.randn(5, K, dtype=torch.float64)
    target = torch.randint(0, K, (5,))
    torch.testing.assert_close(Hard().loss(logits, target), tf.cross_entropy(logits, target))


def test_sources_needing_a_reference_raise_without_one():
    logits, target = torch.randn(3, K), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="Teacher needs reference='teacher_logits'"):
        Teacher().loss(logits, target, None)
    with pytest.raises(ValueError, match="PreviousModel needs reference='previous_probs'"):
        PreviousModel().loss(logits, target)


def test_scheduled_source_uses_the_value_in_force():
    logits = torch.randn(6, K, dtype=torch.float64)
    target = torch.randint(0, K, (6,))
    source = UniformPrior(Linear(0.3, 0.0))
    source.set_progress(0.5)
    torch.testing.assert_close(
        source.loss(logits, target), tf.cross_entropy(logits, target, label_smoothing=0.15)
    )


class TestClassPrior:
    def test_counts_become_a_prior(self):
        source = ClassPrior(0.1, counts=torch.tensor([10, 30, 40, 20]))
        torch.testing.assert_close(
            source.prior, torch.tensor([0.1, 0.3, 0.4, 0.2], dtype=torch.float64)
        )

    def test_both_prior_and_counts_is_an_error(self):
        with pytest.raises(ValueError, match="prior or counts, not both"):
            ClassPrior(0.1, prior=[0.5, 0.5], counts=[1, 1])

    def test_neither_needs_set_class_counts_before_loss(self):
        source = ClassPrior(0.1)
        assert not source.has_prior and source.prior is None
        logits, target = torch.randn(3, K, dtype=torch.float64), torch.tensor([0, 1, 3])
        with pytest.raises(ValueError, match="no prior.*set_class_counts"):
            source.loss(logits, target)
        source.set_class_counts([2, 2, 4, 0])
        expected = functional.label_smoothing_loss(
            logits, target, 0.1, prior=[0.25, 0.25, 0.5, 0.0]
        )
        torch.testing.assert_close(source.loss(logits, target), expected)
        source.set_prior(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        torch.testing.assert_close(
            source.prior, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
        )

    @pytest.mark.parametrize(
        ("kwargs", "pattern"),
        [
            ({"prior": [0.5, 0.6]}, r"prior must sum to 1.*0\.6"),
            ({"prior": [1.5, -0.5]}, r"prior must be finite and >= 0.*-0\.5"),
            ({"counts": [0, 0, 0]}, "counts must have a positive sum"),
            ({"counts": [1, -1, 3]}, "counts must be finite and >= 0"),
            ({"counts": "abc"}, "counts must be"),
        ],
    )
    def test_bad_prior_or_counts(self, kwargs, pattern):
        with pytest.raises((ValueError, TypeError), match=pattern):
            ClassPrior(0.1, **kwargs)

    def test_prior_length_is_checked_against_the_logits(self):
        source = ClassPrior(0.1, prior=[0.2, 0.3, 0.5])
        with pytest.raises(ValueError, match=r"prior.*length 4"):
            source.loss(torch.randn(2, K), torch.tensor([0, 1]))

    def test_binary_prior(self):
        logits = torch.randn(5, dtype=torch.float64)
        target = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
        source = ClassPrior(0.2, counts=[3, 1])
        expected = tf.binary_cross_entropy_with_logits(logits, target * 0.8 + 0.2 * 0.25)
        torch.testing.assert_close(source.loss(logits, target), expected)


def test_sources_build_from_hydra_configs():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        {
            "ls": {"_target_": "softlabel.targets.UniformPrior", "smoothing": 0.1},
            "scheduled": {
                "_target_": "softlabel.targets.UniformPrior",
                "smoothing": {"_target_": "softlabel.schedules.Linear", "start": 0.2, "end": 0.0},
            },
            "by_kind": {
                "_target_": "softlabel.targets.Teacher",
                "temperature": {"kind": "cosine", "start": 4.0, "end": 1.0},
                "alpha": 0.5,
            },
            "prior": {"_target_": "softlabel.targets.ClassPrior", "prior": [0.25, 0.75]},
        }
    )
    assert instantiate(config.ls).values() == {"smoothing": 0.1}
    scheduled = instantiate(config.scheduled)
    scheduled.set_progress(0.5)
    assert scheduled.smoothing == pytest.approx(0.1)
    by_kind = instantiate(config.by_kind)
    by_kind.set_progress(1.0)
    assert by_kind.values() == {"temperature": pytest.approx(1.0), "alpha": 0.5}
    prior = instantiate(config.prior)
    torch.testing.assert_close(prior.prior, torch.tensor([0.25, 0.75], dtype=torch.float64))
