"""The digits training helpers the demo, tests and benchmarks share."""

from __future__ import annotations

import torch

from graphopt.data.digits import DigitsCNN, DigitsSplit, DigitsTraining, hold_out_validation, train_digits_cnn
from graphopt.reporting.evaluation import accuracy


def test_channels_last_training_learns_the_same_and_hands_back_the_default_layout(digits):
    trained = {
        layout: train_digits_cnn(digits, DigitsTraining(epochs=3, seed=0, channels_last=layout), quiet=True)
        for layout in (False, True)
    }
    weights = [p for p in trained[True].parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous() for p in weights)
    with torch.no_grad():
        predictions = {layout: model(digits.test_x).argmax(-1) for layout, model in trained.items()}
    assert float((predictions[True] == predictions[False]).float().mean()) > 0.95
    assert accuracy(trained[True], digits.test_batches()) > 0.9


def test_the_validation_split_is_stratified_and_disjoint_from_training(digits):
    kept, validation = hold_out_validation(digits, size=360)
    held_y = torch.cat([y for _, y in validation])
    assert len(kept.train_y) + len(held_y) == len(digits.train_y)
    assert torch.bincount(held_y, minlength=10).min() >= 30  # about 36 of each class
    held_x = torch.cat([x for x, _ in validation]).flatten(1)
    exact_copies = torch.cdist(held_x, kept.train_x.flatten(1)).min(dim=1).values == 0
    assert float(exact_copies.float().mean()) < 0.05  # (digits has a few duplicate images, nothing more)


def test_a_built_model_starts_from_weights_the_seed_draws(digits):
    """The bench's originals: the same seed gives the same model, whatever the process drew before."""
    small = DigitsSplit(digits.train_x[:128], digits.train_y[:128], digits.test_x[:8], digits.test_y[:8])
    runs = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # what ran earlier in the process left the global generator elsewhere
        runs.append(train_digits_cnn(small, DigitsTraining(epochs=1, seed=5), quiet=True, model=DigitsCNN))
    for (name, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), name
