"""The labelled 224x224 bench task: the linear probe and the RGB digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphopt import ConfigError
from graphopt.benchmark.probed import _fit_probe, digits_rgb, probed_model


def test_the_probe_folds_its_standardisation_into_the_classifier():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    raw = centres[labels] + 0.1 * torch.randn(300, 2, generator=generator)
    features = raw * torch.tensor([1000.0, 0.001]) + torch.tensor([5e4, -7.0])  # wildly scaled and offset
    classifier = nn.Linear(2, 3)
    _fit_probe(classifier, features, labels, seed=0)
    with torch.no_grad():
        accuracy = float((classifier(features).argmax(-1) == labels).float().mean())
    assert accuracy > 0.97


def test_digits_rgb_repeats_the_grey_channel():
    data = digits_rgb(size=16)
    assert data.train_x.shape[1:] == (3, 16, 16) and data.test_x.shape[1:] == (3, 16, 16)
    torch.testing.assert_close(data.train_x[:, 0], data.train_x[:, 2])


def test_an_unknown_architecture_is_refused():
    with pytest.raises(ConfigError, match=r"known: .*resnet18"):
        probed_model("vgg16", digits_rgb(size=8))
