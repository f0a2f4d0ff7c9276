"""A small convolutional network for 1-D signals ``(C, L)`` or 2-D images ``(C, H, W)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from softlabel.models._common import as_logits, check_num_classes, check_shape

_LAYERS = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
}


class CNN(nn.Module):
    """Per entry of ``channels``: ``Conv(3, pad 1) -> BatchNorm -> ReLU -> MaxPool(2)``
    (the pooling is skipped once the spatial size is below 2), then global average
    pooling, ``Dropout`` and a ``Linear`` head.

    The convolution dimension follows ``input_shape``: ``(C, L)`` gives a 1-D net,
    ``(C, H, W)`` a 2-D net. Returns ``(N, num_classes)``, or ``(N,)`` when
    ``num_classes == 1``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shape = check_shape(input_shape, (2, 3), "CNN")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CNN: dropout={dropout}; allowed: 0 <= dropout < 1")
        if not channels:
            raise ValueError("CNN: channels is empty; give at least one convolution width")
        self.num_classes = check_num_classes(num_classes, "CNN")
        conv, norm, pool, global_pool = _LAYERS[len(shape) - 1]
        in_channels, size = shape[0], min(shape[1:])
        layers: list[nn.Module] = []
        for width in channels:
            layers += [conv(in_channels, int(width), 3, padding=1), norm(int(width)), nn.ReLU()]
            if size >= 2:
                layers.append(pool(2))
                size //= 2
            in_channels = int(width)
        layers += [global_pool(1), nn.Flatten(), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_logits(self.head(self.features(x)), self.num_classes)
