"""CIFAR ResNets as used in the knowledge-distillation literature (RepDistiller):
``resnet8/14/20/32`` and the wide ``resnet8x4`` / ``resnet32x4``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from softlabel.models._common import as_logits, check_num_classes, check_shape


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``; the shortcut is a
    1x1 convolution + BatchNorm when the stride or the width changes."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def default_filters(width_multiplier: int) -> tuple[int, int, int, int]:
    """Stem and stage widths: ``(max(16, 8w), 16w, 32w, 64w)``, which gives RepDistiller's
    ``[16, 16, 32, 64]`` (w=1), ``[16, 32, 64, 128]`` (w=2), ``[32, 64, 128, 256]`` (w=4)."""
    w = int(width_multiplier)
    if w < 1:
        raise ValueError(f"CifarResNet: width_multiplier={width_multiplier}; allowed: int >= 1")
    return (max(16, 8 * w), 16 * w, 32 * w, 64 * w)


class CifarResNet(nn.Module):
    """3-stage ResNet with ``(depth - 2) / 6`` BasicBlocks per stage (strides 1, 2, 2),
    a 3x3 stem, global average pooling and a linear head.

    ``num_filters`` (stem + 3 stage widths) overrides ``default_filters(width_multiplier)``.
    Returns ``(N, num_classes)``, or ``(N,)`` when ``num_classes == 1``.
    """

    def __init__(
        self,
        depth: int = 20,
        width_multiplier: int = 1,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 100,
        num_filters: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CifarResNet: depth={depth}; allowed: 6n + 2 with n >= 1 (8, 14, 20...)"
            )
        shape = check_shape(input_shape, (3,), "CifarResNet")
        self.num_classes = check_num_classes(num_classes, "CifarResNet")
        filters = (
            tuple(num_filters) if num_filters is not None else default_filters(width_multiplier)
        )
        if len(filters) != 4:
            raise ValueError(f"CifarResNet: num_filters={filters}; allowed: 4 widths")
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(shape[0], filters[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(filters[0]),
            nn.ReLU(),
        )
        stages, in_channels = [], filters[0]
        for channels, stride in zip(filters[1:], (1, 2, 2)):
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, channels, stride if block == 0 else 1))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, self.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stages(self.stem(x))).flatten(1)
        return as_logits(self.fc(features), self.num_classes)


def resnet8(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, 1, input_shape, num_classes)


def resnet14(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    return CifarResNet(14, 1, input_shape, num_classes)


def resnet20(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    return CifarResNet(20, 1, input_shape, num_classes)


def resnet32(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, 1, input_shape, num_classes)


def resnet8x4(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """Depth 8, filters ``[32, 64, 128, 256]`` (~1.2M parameters for 100 classes)."""
    return CifarResNet(8, 4, input_shape, num_classes)


def resnet32x4(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """Depth 32, filters ``[32, 64, 128, 256]`` (~7.4M parameters for 100 classes)."""
    return CifarResNet(32, 4, input_shape, num_classes)
