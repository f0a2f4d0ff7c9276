"""Built-in models. Each takes ``input_shape`` and ``num_classes`` keyword arguments and
returns logits ``(N, num_classes)``, or ``(N,)`` when ``num_classes == 1`` (binary)."""

from softlabel.models.build import build_model
from softlabel.models.cnn import CNN
from softlabel.models.hf import CausalLM, hf_causal_lm
from softlabel.models.mlp import MLP
from softlabel.models.resnet import (
    BasicBlock,
    CifarResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
)

__all__ = [
    "CNN",
    "CausalLM",
    "MLP",
    "BasicBlock",
    "CifarResNet",
    "build_model",
    "hf_causal_lm",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
]
