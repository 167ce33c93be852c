"""train_data without labels (inputs only): recovery distills from the original alone, regressing its
outputs (classes or embeddings alike), validated by agreement with the teacher (issue 42)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt import InvalidInputError, RecoveryConfig
from graphopt.data.dims import DynamicDims
from graphopt.data.labelled import UNLABELLED, read_labelled
from graphopt.errors import ConfigError
from graphopt.recovery.config import DistillConfig
from graphopt.recovery.losses import RecoveryLoss, output_matching_loss
from graphopt.reporting.evaluation import accuracy

SEQUENCE = DynamicDims.of({"ids": {1: "seq"}, "mask": {1: "seq"}}, ["ids", "mask"], 2)


def test_inputs_alone_are_read_unlabelled_and_a_mix_is_refused():
    images = [torch.randn(4, 1, 8, 8), torch.randn(3, 1, 8, 8)]
    data = read_labelled(images, "train_data", (images[0][:1],), inputs_only=True)
    assert len(data) == 7 and not data.has_labels and bool((data.labels == UNLABELLED).all())
    tokens = (torch.randint(0, 9, (1, 8)), torch.ones(1, 8, dtype=torch.long))
    texts = [(torch.randint(0, 9, (2, 12)), torch.ones(2, 12, dtype=torch.long))]  # another length
    assert not read_labelled(texts, "train_data", tokens, SEQUENCE, inputs_only=True).has_labels
    labelled = [(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))]
    with pytest.raises(InvalidInputError, match="mixes items with labels and items without"):
        read_labelled([*labelled, images[0]], "train_data", (images[0][:1],), inputs_only=True)
    with pytest.raises(InvalidInputError, match="must be an iterable of \\(inputs, labels\\)"):
        read_labelled(images, "validation_data", (images[0][:1],))  # decisions need labels


def test_the_loss_without_labels_is_the_relative_error_to_the_teacher_and_needs_one():
    teacher = torch.tensor([[3.0, 4.0]])
    assert output_matching_loss(teacher, teacher) == 0
    assert output_matching_loss(torch.zeros(1, 2), teacher) == pytest.approx(1.0)
    assert output_matching_loss(0.5 * teacher, teacher) == pytest.approx(0.25)
    student = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="train_data has no labels, so training needs a teacher"):
        RecoveryLoss(student, None, DistillConfig(), (), (torch.randn(1, 2),), labelled=False)
    loss = RecoveryLoss(student, nn.Linear(2, 2), DistillConfig(alpha=1.0), (), (), labelled=False)
    assert loss.uses_teacher  # even at alpha = 1 (labels alone): there are none


def test_a_student_learns_a_teachers_embeddings_from_inputs_alone():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16)).eval()  # no classes: a vector
    student = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16)).eval()
    inputs = [torch.randn(64, 8) for _ in range(8)]
    config = RecoveryConfig(epochs=30, optimizer=graphopt.OptimizerConfig(lr=1e-2), quiet=True)
    result = graphopt.distill(teacher, student, inputs, config)
    x = torch.randn(256, 8)
    with torch.no_grad():
        before, after = (output_matching_loss(m(x), teacher(x)).item() for m in (student, result.student))
    assert after < 0.1 < before
    stats = result.recovery.stats()
    assert stats["best_val_teacher_cosine"] > stats["val_teacher_cosine_before"]


def test_pruning_recovers_by_distillation_on_unlabelled_images(digits, digits_model):
    """Half the channels pruned, then recovery on the training images without their labels."""
    images = [digits.train_x[i : i + 64] for i in range(0, len(digits.train_x), 64)]
    common = {"example_inputs": (digits.test_x[:1],), "calibration_data": images[:2], "prune": 0.5}
    pruned = graphopt.optimize(digits_model, "generic-fp32", **common)
    recovery = RecoveryConfig(epochs=3, quiet=True)
    res = graphopt.optimize(digits_model, "generic-fp32", train_data=images, recovery=recovery, **common)
    stats = res.report.stage("recover").stats
    assert stats["best_val_teacher_cosine"] >= stats["val_teacher_cosine_before"]
    test = digits.test_batches()
    recovered, plain = 100 * accuracy(res.model, test), 100 * accuracy(pruned.model, test)
    assert recovered > plain + 1, (recovered, plain)


def test_early_exits_need_labels_and_say_so_before_any_work(digits, digits_model):
    with pytest.raises(InvalidInputError, match="early_exit trains exit heads on labels"):
        graphopt.optimize(
            digits_model, "generic-fp32", example_inputs=(digits.test_x[:1],),
            early_exit=graphopt.EarlyExitConfig(), train_data=[digits.train_x[:64]],
        )  # fmt: skip
