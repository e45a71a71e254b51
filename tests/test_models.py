from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from src.config import ModelConfig, parse_config
from src.errors import UserError
from src.models import (VGG, build_model, check_model_fits_data, cifar_resnet_20, cifar_resnet_32, cifar_resnet_56,
                        lenet5, next_layer, prunable_layers, vgg_11, vgg_16)


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


def resnet_params(depth: int, width: int, in_channels: int = 3, classes: int = 10) -> int:
    """He et al.'s CIFAR ResNet with option B shortcuts, counted by hand: 3x3 convs without
    bias, 2 BatchNorm parameters per channel, a 1x1 conv + BatchNorm where the width changes."""
    n = (depth - 2) // 6
    total = 9 * in_channels * width + 2 * width
    c_in = width
    for stage in range(3):
        c = width * 2**stage
        for block in range(n):
            total += 9 * c_in * c + 9 * c * c + 4 * c
            if c_in != c:
                total += c_in * c + 2 * c
            c_in = c
    return total + c_in * classes + classes


@pytest.mark.parametrize("build, depth, published", [
    (cifar_resnet_20, 20, 0.27e6), (cifar_resnet_32, 32, 0.46e6), (cifar_resnet_56, 56, 0.85e6)])
def test_cifar_resnets_have_he_et_als_sizes(build, depth, published):
    model = build()
    params = sum(p.numel() for p in model.parameters())
    assert params == resnet_params(depth, 16)
    projections = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64  # option B; He et al.'s Table 6 counts option A
    assert abs(params - projections - published) < 0.01e6  # He et al. 2016, Table 6, to 0.01 M
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert len([m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]) == depth - 1 + 2  # + 2 projections


def test_resnet56_macs_match_the_pruning_literature():
    # Torch-Pruning's ResNet-56/CIFAR-10 benchmark reports 125.49 M MACs for the dense model: those of
    # its convolutions and classifier (its counter adds BatchNorm, ReLU and pooling, ~1.6 M more here).
    model = cifar_resnet_56()
    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, 32, 32), layer_wise=True)
    macs = sum(layer_macs[m] for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert abs(macs - 125.49e6) / 125.49e6 < 0.005


def test_zoo_models_take_the_datasets_channels_and_classes():
    for dataset, shape in (("fashion-mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))):
        for model_type in ("resnet", "vgg", "lenet5"):
            cfg = parse_config({"model": {"type": model_type, "output_size": 7}, "data": {"dataset": dataset}},
                               Path("c.json")).model
            assert cfg.input_shape == shape
            check_model_fits_data(cfg, shape, 7, "c.json")
            assert build_model(cfg)(torch.rand(2, *shape)).shape == (2, 7)
    with pytest.raises(UserError, match=r"c.json: model.input_shape is \[3, 32, 32\], but the dataset's images are \[1, 28, 28\]"):
        check_model_fits_data(ModelConfig(type="resnet", depth=20, width=16, input_shape=(3, 32, 32)), (1, 28, 28), 10, "c.json")


def test_vgg_has_batchnorm_and_skips_pools_once_the_map_is_one_pixel():
    model = vgg_16((1, 28, 28))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and len([m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]) == 13
    assert len([m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]) == 4  # 28 -> 14 -> 7 -> 3 -> 1
    assert len([m for m in vgg_11().modules() if isinstance(m, torch.nn.MaxPool2d)]) == 5  # 32 -> 1
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert [c.out_channels for c in VGG(11, 16, (3, 32, 32), 10).modules() if isinstance(c, torch.nn.Conv2d)] == [
        16, 32, 64, 64, 128, 128, 128, 128]


def test_lenet5_is_the_classic_size():
    model = lenet5((1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) == 61_706  # LeCun et al. 1998 on 32 x 32 = 28 x 28 padded
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert lenet5((3, 32, 32))(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="lenet5 needs images of at least 12 x 12"):
        lenet5((1, 8, 8))
