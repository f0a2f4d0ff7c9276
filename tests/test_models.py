"""Built-in models: output shapes, the binary (N,) convention, gradients, parameter
counts, and build_model."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from softlabel.models import CNN, MLP, CifarResNet, build_model, resnet8, resnet8x4, resnet32x4

CASES = [
    (MLP, (64,)),
    (MLP, (1, 8, 8)),
    (CNN, (1, 8, 8)),
    (CNN, (3, 32, 32)),
    (CNN, (1, 40)),
    (resnet8, (3, 32, 32)),
    (resnet8, (1, 28, 28)),
]


@pytest.mark.parametrize("model_class, input_shape", CASES)
@pytest.mark.parametrize("num_classes", [1, 7])
def test_output_shape_and_gradients(model_class, input_shape, num_classes):
    model = model_class(input_shape=input_shape, num_classes=num_classes)
    x = torch.randn(4, *input_shape)
    out = model(x)
    assert out.shape == ((4,) if num_classes == 1 else (4, num_classes))
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    first_layer = next(p for p in model.parameters() if p.dim() > 1)
    assert first_layer.grad.abs().sum() > 0


def test_mlp_structure_and_options():
    model = MLP(input_shape=(5,), num_classes=3, hidden=(8, 4), dropout=0.5, activation="gelu")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 8), (8, 4), (4, 3)]
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    with pytest.raises(ValueError, match="activation='swish'"):
        MLP(input_shape=(5,), num_classes=3, activation="swish")
    with pytest.raises(ValueError, match="num_classes=0"):
        MLP(input_shape=(5,), num_classes=0)


def test_mlp_input_dropout_drops_inputs_in_training_only():
    model = MLP(input_shape=(6,), num_classes=2, hidden=(4,), input_dropout=0.5)
    assert isinstance(model.net[1], nn.Dropout) and model.net[1].p == 0.5
    x = torch.ones(1000, 6)
    model.train()
    dropped = (model.net[1](x) == 0).float().mean().item()
    assert 0.4 < dropped < 0.6
    model.eval()
    torch.testing.assert_close(model.net[1](x), x)
    with pytest.raises(ValueError, match="input_dropout=1.0"):
        MLP(input_shape=(6,), num_classes=2, input_dropout=1.0)


def test_cnn_picks_the_convolution_dimension():
    assert any(isinstance(m, nn.Conv1d) for m in CNN(input_shape=(1, 40), num_classes=2).modules())
    assert any(
        isinstance(m, nn.Conv2d) for m in CNN(input_shape=(1, 8, 8), num_classes=2).modules()
    )
    with pytest.raises(ValueError, match=r"input_shape=\(64,\)"):
        CNN(input_shape=(64,), num_classes=10)


def expected_resnet_parameters(depth, filters, num_classes, in_channels=3):
    """Closed-form count: 3x3 convs without bias, BatchNorm (2 per channel), 1x1
    projection shortcuts where the width or stride changes, linear head."""
    count = 9 * in_channels * filters[0] + 2 * filters[0]
    width = filters[0]
    for stage, channels in enumerate(filters[1:]):
        for block in range((depth - 2) // 6):
            count += 9 * width * channels + 2 * channels + 9 * channels * channels + 2 * channels
            if block == 0 and (stage > 0 or width != channels):
                count += width * channels + 2 * channels
            width = channels
    return count + width * num_classes + num_classes


@pytest.mark.parametrize(
    "factory, depth, published",
    [(resnet8x4, 8, 1.23e6), (resnet32x4, 32, 7.43e6)],
)
def test_wide_resnet_parameter_counts(factory, depth, published):
    model = factory(num_classes=100)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_resnet_parameters(depth, (32, 64, 128, 256), 100)
    assert abs(count - published) / published < 0.1


def test_resnet_depths_and_filters():
    model = CifarResNet(depth=20, width_multiplier=1, num_classes=10)
    assert sum(len(stage) for stage in model.stages) == 9
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_resnet_parameters(20, (16, 16, 32, 64), 10)
    wide = CifarResNet(depth=8, width_multiplier=4, num_classes=100)
    assert [m.out_channels for m in wide.modules() if isinstance(m, nn.Conv2d)][0] == 32
    with pytest.raises(ValueError, match="depth=10"):
        CifarResNet(depth=10)


class UserNet(nn.Module):
    """A user's own model: only num_classes from the data."""

    def __init__(self, num_classes, width=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(width), nn.ReLU(), nn.Linear(width, num_classes)
        )

    def forward(self, x):
        return self.body(x)


def test_build_model_passes_data_arguments_only_when_accepted():
    mlp = build_model({"_target_": "softlabel.models.MLP", "hidden": [16]}, (1, 8, 8), 10)
    assert isinstance(mlp, MLP) and mlp(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    config = OmegaConf.create({"_target_": "softlabel.models.CNN", "num_classes": 3})
    cnn = build_model(config, (1, 8, 8), 10)
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 3)  # the config wins
    user = build_model({"_target_": f"{__name__}.UserNet", "width": 5}, (64,), 4)
    assert user(torch.randn(2, 64)).shape == (2, 4) and user.body[3].in_features == 5
    linear = build_model(
        {"_target_": "torch.nn.Linear", "in_features": 64, "out_features": 10}, (64,), 10
    )
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (10, 64)


def test_build_model_from_callables_and_modules():
    resnet = build_model(resnet8x4, (3, 16, 16), 5)
    assert resnet(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    existing = nn.Linear(2, 2)
    assert build_model(existing, (2,), 2) is existing
    with pytest.raises(TypeError, match="not nn.Module"):
        build_model({"_target_": "builtins.dict"}, (2,), 2)
    with pytest.raises(ValueError, match="_target_"):
        build_model({"hidden": [3]}, (2,), 2)
