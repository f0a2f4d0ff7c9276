"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from softlabel.models._common import as_logits, check_num_classes

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "elu": nn.ELU}


class MLP(nn.Module):
    """``Flatten -> [Dropout(input_dropout)] -> [Linear -> activation -> Dropout] * len(hidden)
    -> Linear``. Dropout on the inputs (20%) and hidden units (50%) is the regularised
    teacher of Hinton et al. (2015).

    Returns logits ``(N, num_classes)``, or ``(N,)`` when ``num_classes == 1``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        activation: str = "relu",
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation={activation!r}; allowed: {sorted(ACTIVATIONS)}")
        for name, rate in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"MLP: {name}={rate}; allowed: 0 <= {name} < 1")
        self.num_classes = check_num_classes(num_classes, "MLP")
        shape = tuple(int(d) for d in input_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"MLP: input_shape={tuple(input_shape)}; allowed: positive sizes")
        in_features = math.prod(shape)
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        for width in hidden:
            layers += [nn.Linear(in_features, int(width)), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = int(width)
        layers.append(nn.Linear(in_features, self.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_logits(self.net(x), self.num_classes)
