import pytest
import torch

from src.config import ModelConfig
from src.errors import UserError
from src.models import build_model, check_model_fits_data, next_layer, prunable_layers


def test_mlp_shapes_and_prunable_layers():
    model = build_model(ModelConfig(hidden_sizes=(512, 256), dropout_rate=0.5))
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    layers = prunable_layers(model)
    assert [(l.index, l.kind, l.width) for l in layers] == [(0, "linear", 512), (1, "linear", 256)]
    assert [l.name for l in layers] == ["hidden.0.layer", "hidden.1.layer"]
    assert next_layer(model, 1) is model.output
    assert isinstance(model.hidden[0].dropout, torch.nn.Dropout)


def test_lenet_style_cnn():
    cfg = ModelConfig(type="cnn", conv_channels=(6, 16), kernel_size=5, fc_sizes=(120, 84))
    model = build_model(cfg)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    layers = prunable_layers(model)
    assert [(l.kind, l.width) for l in layers] == [("conv", 6), ("conv", 16), ("linear", 120), ("linear", 84)]
    assert model.hidden[0].layer.in_features == 16 * 4 * 4
    assert cfg.num_prunable == 4


def test_vgg_style_cnn_with_batchnorm_for_cifar():
    cfg = ModelConfig(type="cnn", input_shape=(3, 32, 32), conv_channels=(8, 8, 16, 16), kernel_size=3,
                      padding="same", pool_every=2, fc_sizes=(32,), batch_norm=True)
    model = build_model(cfg)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(model.conv[0].norm, torch.nn.BatchNorm2d)
    assert model.hidden[0].layer.in_features == 16 * 8 * 8
    assert len(prunable_layers(model)) == 5


def test_cnn_that_shrinks_the_image_away_is_a_user_error():
    with pytest.raises(UserError, match="leaves no spatial extent"):
        build_model(ModelConfig(type="cnn", conv_channels=(4, 4, 4, 4), kernel_size=5))


def test_model_must_fit_the_data():
    check_model_fits_data(ModelConfig(), (1, 28, 28), 10, "c.json")
    with pytest.raises(UserError, match="model.input_size is 784, but the dataset has 3072"):
        check_model_fits_data(ModelConfig(), (3, 32, 32), 10, "c.json")
    with pytest.raises(UserError, match="output_size is 10, but the dataset has 5 classes"):
        check_model_fits_data(ModelConfig(), (1, 28, 28), 5, "c.json")
