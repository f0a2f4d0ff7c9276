"""The rules of the settings: numbers, flags and names given to a loss or a source."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from torch import Tensor

from softlabel.kernels.spec import DIVERGENCES

#: Reductions of every loss.
REDUCTIONS = ("mean", "sum", "none")

#: Largest temperature accepted: T^2 KL(p_t^T || p_s^T) loses precision as T grows (the KL
#: shrinks as 1/T^2 while its rounding error does not); above 1e3 it is mostly rounding in
#: float32, and T^2 overflows float32 near 1.8e19.
MAX_TEMPERATURE = 1e3


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return reduction


def check_number(name: str, value: Any) -> float:
    """A real number (a one-element tensor is read), as a float."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_smoothing(smoothing: Any, name: str = "smoothing") -> float:
    """Label smoothing's eps, in [0, 1)."""
    value = check_number(name, smoothing)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {smoothing!r}")
    return value


def check_alpha(alpha: Any) -> float:
    """The weight of the soft term (1 - alpha on the hard one), in [0, 1]."""
    value = check_number("alpha", alpha)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return value


def check_margin(margin: Any) -> float:
    """MbLS's logit-distance margin: a finite number >= 0."""
    return check_loss_weight("margin", margin)


def check_penalty(penalty: Any) -> float:
    """MbLS's penalty weight: a finite number >= 0."""
    return check_loss_weight("penalty", penalty)


def check_confidence_margin(margin: Any) -> float:
    """AdaLabel's margin below the eps cap, in [0, 1) (and <= (K - 1) / K, checked with K)."""
    value = check_number("margin", margin)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    return value


def check_power(power: Any) -> float:
    """AdaLabel's exponent of p_y / p_max: a finite number >= 0."""
    return check_loss_weight("power", power)


def check_correct_prob(correct_prob: Any, num_classes: int | None = None) -> float:
    """Tf-KD's virtual teacher's probability of the true class: in (1/K, 1), or in (0, 1)
    while K is not known yet."""
    value = check_number("correct_prob", correct_prob)
    low = 0.0 if num_classes is None else 1.0 / num_classes
    if not low < value < 1.0:
        allowed = (
            "(0, 1)" if num_classes is None else f"(1/K, 1) = ({low:.6g}, 1) for K={num_classes}"
        )
        raise ValueError(f"correct_prob must be in {allowed}, got {correct_prob!r}")
    return value


def check_divergence(divergence: Any) -> str:
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
    return divergence


def check_beta(beta: Any) -> float:
    """The JSD's mixture weight of the teacher, in [0, 1]."""
    value = check_number("beta", beta)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    return value


#: Default mixture weight of the JSD and default skew of the skew divergences.
DEFAULT_BETA = 0.5
DEFAULT_SKEW = 0.1

_SKEWED = ("skew_forward_kl", "skew_reverse_kl")


def check_skew(skew: Any) -> float:
    """The skew divergences' mixing weight a (DistiLLM), in [0, 1): NaN and inf fail too."""
    value = check_number("skew", skew)
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"skew must be a finite number in [0, 1), got {skew!r}")
    return value


def check_divergence_settings(divergence: Any, beta: Any, skew: Any) -> tuple[str, float, float]:
    """``divergence`` with its own parameter: ``beta`` is read by the JSD only and ``skew`` by
    the skew divergences only; the other one must keep its default (a value set for a
    divergence that ignores it is refused rather than silently unused)."""
    divergence = check_divergence(divergence)
    beta, skew = check_beta(beta), check_skew(skew)
    if divergence != "jsd" and beta != DEFAULT_BETA:
        raise ValueError(
            f"beta is only used by divergence='jsd', got beta={beta} with divergence={divergence!r}"
        )
    if divergence not in _SKEWED and skew != DEFAULT_SKEW:
        raise ValueError(
            f"skew is only used by divergence='skew_forward_kl' or 'skew_reverse_kl', got "
            f"skew={skew} with divergence={divergence!r}"
        )
    return divergence, beta, skew


def check_target_needed(target: Any, alpha: float) -> None:
    """A target is needed unless the hard term has weight 0 (``alpha`` = 1)."""
    if target is None and alpha < 1.0:
        raise ValueError(
            f"target=None is only allowed with alpha=1 (pure distillation), got alpha={alpha}; "
            "pass target for the hard cross-entropy term"
        )


def check_ignore_index(ignore_index: Any) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    return ignore_index


def check_chunk_rows(chunk_rows: Any) -> int | None:
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
    ):
        raise ValueError(f"chunk_rows must be None or an int >= 1, got {chunk_rows!r}")
    return chunk_rows


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_loss_weight(name: str, value: Any) -> float:
    """A finite number >= 0 (DKD's alpha, beta and ce_weight, DIST's beta and gamma, MbLS's
    margin and penalty, AdaLabel's power)."""
    number = check_number(name, value)
    if not 0.0 <= number < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_temperature(temperature: Any) -> float:
    value = check_number("temperature", temperature)
    if not 0.0 < value <= MAX_TEMPERATURE:
        raise ValueError(
            f"temperature must be a number in (0, {MAX_TEMPERATURE:g}], got {temperature!r}"
        )
    return value
