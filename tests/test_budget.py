"""Dropout while retraining and BatchNorm recalibration, against hand computations."""

import pytest
import torch
from torch import nn

from src.data import iterate_batches
from src.pruning.budget import RECALIBRATION_BATCHES, dropout_rate, recalibrate_batch_norm

CPU = torch.device("cpu")


def conv_bn_net() -> nn.Sequential:
    """Dropout -> conv -> BatchNorm -> ReLU -> Linear: the BatchNorm's input is conv(x) exactly when dropout is off."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Dropout(0.5), nn.Conv2d(1, 3, 5), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 24 * 24, 10))


def hand_statistics(conv: nn.Conv2d, split, batch_size: int, seed: int, batches: int):
    """Per channel: the mean over batches of each batch's mean and unbiased variance of conv(x)."""
    means, variances = [], []
    with torch.no_grad():
        for i, (x, _) in enumerate(iterate_batches(split, batch_size, shuffle=True,
                                                   generator=torch.Generator().manual_seed(seed))):
            if i == batches:
                break
            z = conv(x).double().transpose(0, 1).flatten(1)  # (channels, samples * positions)
            means.append(z.mean(1))
            variances.append(z.var(1, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


@pytest.mark.parametrize("batch_size, batches", [(128, RECALIBRATION_BATCHES), (1024, RECALIBRATION_BATCHES)],
                         ids=["20-batches", "whole-split"])
def test_recalibration_gives_the_training_data_statistics_and_changes_nothing_else(mnist5k, batch_size, batches):
    model = conv_bn_net()
    norm = model[2]
    with torch.no_grad():  # stale statistics, as a pruned network has
        norm.running_mean.fill_(5.0)
        norm.running_var.fill_(9.0)
    parameters = {k: v.clone() for k, v in model.named_parameters()}
    model.eval()
    rng = torch.get_rng_state()
    seen = recalibrate_batch_norm(model, mnist5k.train, batch_size, torch.Generator().manual_seed(7), CPU, batches)
    assert seen == min(batches * batch_size, len(mnist5k.train))
    mean, var = hand_statistics(model[1], mnist5k.train, batch_size, 7, batches)
    torch.testing.assert_close(norm.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_var.double(), var, rtol=1e-5, atol=1e-5)
    # Only the statistics change: parameters, the momentum, the model's mode and the global random state stay.
    assert all(torch.equal(v, parameters[k]) for k, v in model.named_parameters())
    assert norm.momentum == 0.1 and not model.training and not any(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)


def test_recalibration_leaves_a_model_without_batch_norm_alone(mnist5k):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batch_norm(model, mnist5k.train, 128, torch.Generator().manual_seed(0), CPU) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_dropout_rate_holds_in_the_block_and_the_own_rates_come_back():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4), nn.Dropout(0.3))
    with dropout_rate(model, 0.0):
        assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.0, 0.0]
        x = torch.ones(64, 4)
        model.train()
        assert torch.equal(model(x), model.eval()(x))  # no units dropped in training mode
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5, 0.3]
    with pytest.raises(RuntimeError), dropout_rate(model, 0.9):
        raise RuntimeError("retraining failed")
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5, 0.3]
    with dropout_rate(model, None):
        assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5, 0.3]
