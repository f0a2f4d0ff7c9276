"""Negative flip rate and error-reduction rate against hand-computed examples."""

import math

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from softlabel.loop.flips import ErrorReductionRate, NegativeFlipRate


def test_binary_hand_example():
    # sample:        0     1     2     3     4     5
    target = torch.tensor([1, 0, 1, 0, 1, 1])
    prev = torch.tensor([0.9, 0.2, 0.3, 0.6, 0.8, 0.1])  # correct: T T F F T F -> 3 errors
    new = torch.tensor([0.4, 0.1, 0.7, 0.4, 0.5, 0.2])  # correct: F T T T T F -> 2 errors
    # previous right & new wrong: sample 0 only -> NFR = 1/6; ERR = (3 - 2) / 3
    nfr, err = NegativeFlipRate(task="binary"), ErrorReductionRate(task="binary")
    nfr.update(new, prev, target)
    err.update(new, prev, target)
    assert nfr.compute().item() == pytest.approx(1 / 6)
    assert err.compute().item() == pytest.approx(1 / 3)


def test_threshold_is_inclusive_at_half():
    nfr = NegativeFlipRate(task="binary")
    nfr.update(
        torch.tensor([0.49]), torch.tensor([0.5]), torch.tensor([1])
    )  # prev right, new wrong
    assert nfr.compute().item() == 1.0


def test_multiclass_hand_example_accumulates_batches():
    target = torch.tensor([0, 1, 2, 2])
    prev = torch.tensor([[5.0, 0, 0], [0, 5, 0], [5, 0, 0], [0, 0, 5]])  # argmax 0 1 0 2: one error
    new = torch.tensor([[0.0, 5, 0], [0, 5, 0], [0, 0, 5], [0, 5, 0]])  # argmax 1 1 2 1: two errors
    # negative flips: samples 0 and 3 -> NFR = 2/4; ERR = (1 - 2) / 1 = -1
    nfr, err = NegativeFlipRate(task="multiclass"), ErrorReductionRate(task="multiclass")
    for half in (slice(0, 2), slice(2, 4)):
        nfr.update(new[half], prev[half], target[half])
        err.update(new[half], prev[half], target[half])
    assert nfr.compute().item() == pytest.approx(0.5)
    assert err.compute().item() == pytest.approx(-1.0)
    assert nfr.negative_flips.item() == 2 and err.previous_errors.item() == 1


def test_err_is_nan_without_previous_errors_and_states_sum():
    err = ErrorReductionRate(task="binary")
    err.update(torch.tensor([0.9]), torch.tensor([0.8]), torch.tensor([1]))
    assert math.isnan(err.compute().item())
    # DDP: every state is summed across processes
    assert all(err._reductions[name] is dim_zero_sum for name in err._defaults)


def test_bad_input():
    with pytest.raises(ValueError, match="task must be one of"):
        NegativeFlipRate(task="regression")
    with pytest.raises(ValueError, match="probabilities"):
        NegativeFlipRate(task="binary").update(
            torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([1])
        )
    with pytest.raises(ValueError, match="same shape"):
        NegativeFlipRate(task="binary").update(
            torch.tensor([0.2, 0.3]), torch.tensor([0.5]), torch.tensor([1, 0])
        )
