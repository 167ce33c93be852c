"""Recovery training: distill(), the recover stage in optimize(), BN re-estimation, bad input, divergence."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import graphopt
from graphopt import (
    DistillConfig,
    FeatureHint,
    InvalidInputError,
    OptimizerConfig,
    PassError,
    RecoveryConfig,
    TrainingDivergedError,
)
from graphopt.data.digits import DigitsCNN, batches, random_shift
from graphopt.passes.recover import NO_TRAIN_DATA
from graphopt.recovery import fit, reestimate_batchnorm
from graphopt.reporting.evaluation import accuracy
from tests.conftest import assert_unchanged, state_snapshot

FAST = dict(epochs=6, batch_size=64, optimizer=OptimizerConfig(lr=0.01), schedule="onecycle", quiet=True)


def test_distill_trains_a_narrower_student(digits_model, digits):
    teacher_before = state_snapshot(digits_model)
    student = DigitsCNN(width=16)
    student_before = state_snapshot(student)
    result = graphopt.distill(digits_model, student, batches(digits.train_x, digits.train_y, 128),
                              RecoveryConfig(**FAST, augment=random_shift))  # fmt: skip
    assert accuracy(result.student, digits.test_batches()) > 0.93
    assert result.recovery.epochs_run == 6 and result.recovery.best_val_accuracy > 0.9
    assert_unchanged(digits_model, teacher_before, training=False)
    assert_unchanged(student, student_before, training=True)
    assert result.student is not student


def test_recovery_is_deterministic_with_a_seed(digits_model, digits):
    data = batches(digits.train_x[:512], digits.train_y[:512], 64)
    config = RecoveryConfig(**{**FAST, "epochs": 2}, seed=3)
    student = DigitsCNN(width=8)
    runs = [graphopt.distill(digits_model, student, data, config).student for _ in range(2)]
    for (name, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_best_weights_are_kept(digits_model, digits):
    torch.manual_seed(0)
    student = DigitsCNN(width=8)
    data = batches(digits.train_x[:600], digits.train_y[:600], 64)
    result = fit(student, digits_model, data, RecoveryConfig(**FAST, val_fraction=0.2, patience=None))
    history = [h.val_accuracy for h in result.history]
    assert result.best_val_accuracy == max([result.accuracy_before, *history])
    assert result.accuracy_before < 0.5 < result.best_val_accuracy  # untrained -> trained
    assert result.history[result.best_epoch - 1].val_accuracy == result.best_val_accuracy


def test_early_stopping(digits_model, digits):
    data = batches(digits.train_x[:400], digits.train_y[:400], 64)
    config = RecoveryConfig(
        epochs=30, patience=1, schedule="constant", optimizer=OptimizerConfig(lr=1e-7), quiet=True
    )
    result = fit(DigitsCNN(width=8), digits_model, data, config)
    assert result.stopped_early and result.epochs_run < 30


def test_feature_hints_with_adapters_train(digits_model, digits):
    hint = FeatureHint(student="features.3", teacher="features.3", weight=0.5)  # conv 8->16 vs 32->64
    config = RecoveryConfig(**{**FAST, "epochs": 2}, hints=(hint,))
    result = graphopt.distill(
        digits_model, DigitsCNN(width=8), batches(digits.train_x, digits.train_y, 128), config
    )
    assert result.recovery.best_val_accuracy > 0.5
    assert not any(m._forward_hooks for m in result.student.modules())
    assert not any(m._forward_hooks for m in digits_model.modules())


def test_divergence_restores_the_model(digits_model, digits):
    student = DigitsCNN(width=8)
    before = state_snapshot(student)
    config = RecoveryConfig(
        epochs=2, schedule="constant", optimizer=OptimizerConfig(name="sgd", lr=1e38), quiet=True
    )
    with pytest.raises(
        TrainingDivergedError, match=r"restored to its state before the stage.*Lower the learning rate"
    ):
        fit(student, digits_model, batches(digits.train_x[:256], digits.train_y[:256], 64), config)
    assert_unchanged(student, before, training=False)


def test_cuda_request_falls_back_to_cpu_or_uses_the_gpu(digits_model, digits):
    config = RecoveryConfig(**{**FAST, "epochs": 1}, device="cuda")
    result = fit(
        DigitsCNN(width=8), digits_model, batches(digits.train_x[:256], digits.train_y[:256], 64), config
    )
    assert result.device.startswith("cuda" if torch.cuda.is_available() else "cpu")
    said = "trained_on:cuda" if torch.cuda.is_available() else "unavailable:cuda"
    assert said in result.stats()  # the report says where it trained, not only a log line
    assert next(digits_model.parameters()).device.type == "cpu"  # everything is back on the CPU


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # (inputs alone are accepted: tests/test_unlabelled_distillation.py)
        (
            [(torch.randn(4, 1, 8, 8), torch.zeros(4), None)],
            r"must be an iterable of \(inputs, labels\) batches",
        ),
        (torch.randn(4, 1, 8, 8), r"must be an iterable of \(inputs, labels\) batches: .*; got Tensor"),
        ([], "train_data is empty"),
        (
            [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 10]))],
            r"labels in \[0, 10\] but the model outputs 10",
        ),
        ([(torch.randn(4, 1, 8, 8), torch.rand(4))], "labels of item 0 are not int tensors"),
        ([(torch.randn(4, 1, 9, 9), torch.zeros(4, dtype=torch.long))], r"per-sample shapes \[\(1, 9, 9\)\]"),
        ([(torch.randn(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))], "3 labels for inputs of batch"),
    ],
)
def test_bad_train_data(digits_model, digits, data, message):
    with pytest.raises(InvalidInputError, match=message):
        graphopt.optimize(digits_model, example_inputs=(digits.test_x[:1],), train_data=data,
                          recovery=RecoveryConfig(epochs=1))  # fmt: skip


def test_optimize_with_recovery_reports_the_stage(digits_model, digits):
    before = state_snapshot(digits_model)
    res = graphopt.optimize(
        digits_model,
        example_inputs=(digits.test_x[:1],),
        train_data=batches(digits.train_x[:512], digits.train_y[:512], 64),
        recovery=RecoveryConfig(epochs=2, optimizer=OptimizerConfig(lr=1e-4), quiet=True),
        eval_data=digits.test_batches(),
    )
    row = res.report.stage("recover")
    assert row.stats["epochs_run"] == 2 and "best_val_accuracy" in row.stats and row.seconds > 0
    assert row.accuracy > 0.9  # fine-tuning a trained model at a small lr keeps it trained
    assert "best_val_accuracy=" in str(res.report)
    assert_unchanged(digits_model, before, training=False)


def test_recover_without_train_data_says_why(digits_model, digits):
    res = graphopt.optimize(digits_model, example_inputs=(digits.test_x[:1],), passes=["recover"])
    assert res.report.stage("recover").stats == {"skipped:no_train_data": 1}
    assert res.report.note_keys() == [NO_TRAIN_DATA]


def test_divergence_inside_optimize_is_a_pass_error_and_loses_nothing(digits_model, digits):
    config = RecoveryConfig(
        epochs=1, schedule="constant", optimizer=OptimizerConfig(name="sgd", lr=1e38), quiet=True
    )
    with pytest.raises(PassError, match="pass 'recover' failed: TrainingDivergedError"):
        graphopt.optimize(digits_model, example_inputs=(digits.test_x[:1],), recovery=config,
                          train_data=batches(digits.train_x[:256], digits.train_y[:256], 64))  # fmt: skip


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_batchnorm_reestimation_recovers_true_statistics():
    model = BNNet().eval()
    data = [torch.randn(32, 1, 6, 6) * 3 + 1 for _ in range(4)]
    with torch.no_grad():
        features = torch.cat([model.conv(x) for x in data])
    model.bn.running_mean.fill_(5.0)
    model.bn.running_var.fill_(0.01)
    assert reestimate_batchnorm(model, data) == 4
    torch.testing.assert_close(model.bn.running_mean, features.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.bn.running_var, features.var((0, 2, 3)), rtol=0.02, atol=1e-3)
    assert model.bn.momentum == 0.1 and not model.training


def test_reestimate_batchnorm_pass_before_folding():
    model = BNNet().eval()
    model.bn.running_mean.fill_(5.0)
    calibration = [(torch.randn(16, 1, 6, 6),) for _ in range(3)]
    res = graphopt.optimize(model, example_inputs=(torch.randn(1, 1, 6, 6),), calibration_data=calibration,
                            passes=["reestimate_batchnorm", "fold_batchnorm"])  # fmt: skip
    assert res.report.stage("reestimate_batchnorm").stats == {"batches": 3}
    assert res.report.stage("fold_batchnorm").stats == {"folded": 1}
    assert model.bn.running_mean[0] == 5.0  # the caller's model keeps its statistics
    skipped = graphopt.optimize(
        model, example_inputs=(torch.randn(1, 1, 6, 6),), passes=["reestimate_batchnorm"]
    )
    assert skipped.report.stage("reestimate_batchnorm").stats == {"skipped:no_calibration_data": 1}


def test_distill_config_is_validated():
    with pytest.raises(graphopt.ConfigError, match="val_fraction"):
        RecoveryConfig(val_fraction=1.0)
    with pytest.raises(graphopt.ConfigError, match="schedule"):
        RecoveryConfig(schedule="linear")
    with pytest.raises(graphopt.ConfigError, match="optimizer must be"):
        OptimizerConfig(name="adam")
    with pytest.raises(graphopt.ConfigError, match="alpha"):
        RecoveryConfig(distill=DistillConfig(alpha=2))


def test_fit_leaves_the_teacher_as_it_was(digits_model, digits):
    """``recovery.fit`` may get the caller's model as the teacher: its grad flags and mode come back."""
    teacher = DigitsCNN()
    teacher.load_state_dict(digits_model.state_dict())
    teacher.train()
    teacher.features[0].weight.requires_grad_(False)  # the caller had frozen one layer
    flags = [p.requires_grad for p in teacher.parameters()]
    fit(DigitsCNN(width=16), teacher, batches(digits.train_x[:256], digits.train_y[:256], 64),
        RecoveryConfig(epochs=1, quiet=True), example_inputs=(digits.test_x[:1],))  # fmt: skip
    assert [p.requires_grad for p in teacher.parameters()] == flags and teacher.training


def test_optimize_trains_its_copy_of_a_frozen_model(digits_model, digits):
    frozen = DigitsCNN()
    frozen.load_state_dict(digits_model.state_dict())
    frozen.requires_grad_(False)  # an inference model, as often handed over
    res = graphopt.optimize(
        frozen, example_inputs=(digits.test_x[:1],), prune=0.5,
        train_data=batches(digits.train_x, digits.train_y, 64), recovery=RecoveryConfig(epochs=2, quiet=True),
    )  # fmt: skip
    assert res.report.stage("recover").modified
    assert not any(p.requires_grad for p in frozen.parameters())  # the caller's model is untouched


@pytest.mark.slow
def test_distill_defaults_come_within_a_point_of_the_tuned_settings(digits_model, digits):
    """A user who passes no config gets a good student: within 1 pp of bench/distill_digits.py's settings."""
    data = batches(digits.train_x, digits.train_y, 256)
    torch.manual_seed(0)
    default = graphopt.distill(digits_model, DigitsCNN(width=16), data).student
    tuned_config = RecoveryConfig(**{**FAST, "epochs": 30}, patience=None, augment=random_shift)
    torch.manual_seed(0)
    tuned = graphopt.distill(digits_model, DigitsCNN(width=16), data, tuned_config).student
    test = digits.test_batches()
    assert accuracy(default, test) >= accuracy(tuned, test) - 0.01


def test_channels_last_training_runs_channels_last_and_hands_back_the_default_format(digits_model, digits):
    student = DigitsCNN(width=16)
    formats: list[bool] = []
    conv = student.features[0]
    conv.register_forward_pre_hook(
        lambda _, args: (
            formats.append(args[0].is_contiguous(memory_format=torch.channels_last))
            if conv.training
            else None
        )
    )
    reference = DigitsCNN(width=16)
    reference.load_state_dict(student.state_dict())
    data = batches(digits.train_x, digits.train_y, 64)
    config = RecoveryConfig(**{**FAST, "epochs": 4}, channels_last=True)
    fit(student, digits_model, data, config)
    assert formats and all(formats)  # every training step saw channels-last input
    weights = [p for p in student.parameters() if p.dim() == 4]
    assert weights and all(w.is_contiguous() for w in weights)  # back in the default format
    fit(reference, digits_model, data, replace(config, channels_last=False))
    trained, default = (accuracy(m, digits.test_batches()) for m in (student, reference))
    assert trained > 0.9 and abs(trained - default) < 0.03  # the same training, another memory layout


class ViewsActivations(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))  # view fails on a channels-last activation


def test_channels_last_is_refused_up_front_for_a_model_that_views_activations(digits):
    student = ViewsActivations()
    before = state_snapshot(student)
    with pytest.raises(graphopt.ConfigError, match="channels_last=False"):
        fit(student, None, batches(digits.train_x[:128], digits.train_y[:128], 64),
            RecoveryConfig(epochs=1, quiet=True, channels_last=True))  # fmt: skip
    assert_unchanged(student, before, training=False)  # fit leaves its student in eval mode, even on failure


def test_recovery_picks_its_epoch_on_validation_data_when_the_call_has_it(digits_model, digits):
    """Held-out ``validation_data`` is what the best epoch is chosen on, not a share of ``train_data``
    (which the original was trained on): validation labels shifted by one class make that visible."""
    train = batches(digits.train_x, digits.train_y, 64)
    shifted = [(x, (y + 1) % 10) for x, y in digits.test_batches()]
    config = RecoveryConfig(epochs=1, quiet=True)
    runs = {
        name: graphopt.optimize(digits_model, example_inputs=(digits.test_x[:1],), prune=0.5,
                                train_data=train, recovery=config, **extra).report.stage("recover").stats
        for name, extra in (("held_out", {"validation_data": shifted}), ("train_share", {}))
    }  # fmt: skip
    assert runs["held_out"]["best_val_accuracy"] < 0.2 < 0.8 < runs["train_share"]["best_val_accuracy"]


def _teacher_calls(teacher: nn.Module) -> list[int]:
    calls: list[int] = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    return calls


def test_the_teacher_runs_once_over_the_data_when_every_epoch_shows_it_the_same_inputs(digits_model, digits):
    import copy

    data = batches(digits.train_x[:600], digits.train_y[:600], 64)
    config = RecoveryConfig(**{**FAST, "epochs": 3}, val_fraction=0.0, seed=1)
    teacher = copy.deepcopy(digits_model)
    calls = _teacher_calls(teacher)
    torch.manual_seed(0)
    cached = DigitsCNN(width=8)
    fit(cached, teacher, data, config)
    assert calls == [256, 256, 88]  # once over the 600 samples, not once per step (3 x 10 steps)
    # the same training as a teacher run at every step (an augmentation that changes nothing turns it off)
    calls.clear()
    torch.manual_seed(0)
    per_step = DigitsCNN(width=8)
    fit(per_step, teacher, data, replace(config, augment=lambda x, generator: x))
    assert len(calls) == 30
    for (name, a), b in zip(cached.state_dict().items(), per_step.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "change",
    [{"epochs": 1}, {"augment": random_shift}, {"distill": DistillConfig(alpha=1.0)}],
    ids=["one-epoch", "augmented", "labels-only"],
)
def test_the_teacher_is_not_cached_where_it_would_not_pay_or_is_not_read(digits_model, digits, change):
    import copy

    data = batches(digits.train_x[:256], digits.train_y[:256], 64)
    teacher = copy.deepcopy(digits_model)
    calls = _teacher_calls(teacher)
    config = RecoveryConfig(**{**FAST, "epochs": 2, **change}, val_fraction=0.0)
    fit(DigitsCNN(width=8), teacher, data, config)
    steps = change.get("epochs", 2) * 4
    assert len(calls) == (0 if "distill" in change else steps)
