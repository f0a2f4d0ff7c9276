"""Shared checks and the output convention of the built-in models."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_shape(input_shape: Sequence[int], allowed_dims: tuple[int, ...], model: str) -> tuple:
    """``input_shape`` as a tuple of positive ints with a length in ``allowed_dims``."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) not in allowed_dims or min(shape, default=0) < 1:
        raise ValueError(
            f"{model}: input_shape={tuple(input_shape)}; allowed: positive sizes with "
            f"{' or '.join(str(d) for d in allowed_dims)} dimensions"
        )
    return shape


def check_num_classes(num_classes: int, model: str) -> int:
    if int(num_classes) < 1:
        raise ValueError(f"{model}: num_classes={num_classes}; allowed: an integer >= 1")
    return int(num_classes)


def as_logits(output: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N, K)`` logits; with ``num_classes == 1`` the single logit is returned as ``(N,)``."""
    return output.squeeze(-1) if num_classes == 1 else output
