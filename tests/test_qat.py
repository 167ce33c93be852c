"""Quantization-aware training: it starts exactly where calibration left off, it recovers accuracy that
post-training quantization lost, and the result is still a fully integer artifact."""

from __future__ import annotations

import onnx
import pytest
import torch

import graphopt
from graphopt.pipeline.driver import FP32_KEEPS_QAT
from graphopt.quant import QuantizedLayer, QuantScheme
from graphopt.recovery import OptimizerConfig, RecoveryConfig
from graphopt.zoo import get_model
from tests.helpers import RecordingTraining, clipping_int8_target


def _calibrated_layer() -> QuantizedLayer:
    layer = QuantizedLayer(torch.nn.Conv2d(3, 8, 3, padding=1), QuantScheme())
    layer.freeze(input_scale=0.02)
    return layer


def test_thaw_starts_from_the_int8_weights_and_freeze_gives_them_back():
    layer = _calibrated_layer()
    x = torch.randn(2, 3, 6, 6)
    int8_out, weight, bias = layer(x), layer.weight_int8.clone(), layer.bias_int32.clone()
    layer.thaw()
    assert layer.qat and not layer.frozen
    torch.testing.assert_close(layer(x), int8_out, rtol=0, atol=1e-5)  # fake quant of dequantized = same
    layer.freeze(input_scale=0.02)
    assert torch.equal(layer.weight_int8, weight) and torch.equal(layer.bias_int32, bias)


def test_qat_weights_get_straight_through_gradients():
    layer = _calibrated_layer()
    layer.thaw()
    layer.train()(torch.randn(2, 3, 6, 6)).sum().backward()
    grad = layer.float_layer.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_quantized_layers_move_between_devices():
    """The MAC-counting geometry lives on the meta device; .to() must not try to copy it."""
    layer = _calibrated_layer()
    assert layer.to("cpu") is layer
    assert "mac_layer" not in dict(layer.named_modules())


def test_qat_recovers_what_post_training_quantization_lost(digits_model, digits, tmp_path):
    common = dict(
        example_inputs=(digits.test_x[:1],),
        calibration_data=[digits.train_x[i : i + 32] for i in range(0, 128, 32)],
        eval_data=digits.test_batches(),
    )
    ptq = graphopt.optimize(digits_model, clipping_int8_target(), **common)
    train = list(zip(digits.train_x.split(64), digits.train_y.split(64), strict=True))
    config = RecoveryConfig(epochs=3, optimizer=OptimizerConfig(lr=1e-4), quiet=True)
    qat = graphopt.optimize(digits_model, clipping_int8_target(), train_data=train, recovery=config, **common)

    assert [s.stage for s in qat.report.stages][-1] == "qat"
    ptq_accuracy, qat_accuracy = ptq.report.stages[-1].accuracy, qat.report.stages[-1].accuracy
    assert qat_accuracy >= ptq_accuracy + 0.04, (ptq_accuracy, qat_accuracy)

    path = qat.export(tmp_path / "qat.onnx", latency_guard=False)
    artifact = qat.report.stages[-1]
    assert abs(artifact.accuracy - qat_accuracy) <= 0.006  # the integer artifact keeps what QAT bought
    weights = [i for i in onnx.load(str(path)).graph.initializer if i.name.endswith("weight_int8")]
    assert len(weights) == 4 and all(w.data_type == onnx.TensorProto.INT8 for w in weights)


def test_qat_runs_for_int8_targets_given_train_data(digits_model, digits):
    model, inputs = get_model("resnet_basic").build()
    labels = torch.randint(0, 10, (32,))
    res = graphopt.optimize(
        model, "x86-int8", example_inputs=inputs,
        calibration_data=[torch.randn(8, *inputs[0].shape[1:])],
        train_data=[(torch.randn(32, *inputs[0].shape[1:]), labels)],
        recovery=RecoveryConfig(epochs=1, quiet=True, val_fraction=0.0, patience=None),
    )  # fmt: skip
    row = res.report.stage("qat")
    assert row.stats["qat_layers"] == 10 and row.stats["steps"] >= 1
    assert all(m.frozen for m in res.model.modules() if isinstance(m, QuantizedLayer))


def test_the_fp32_fall_back_keeps_what_qat_trained():
    """After QAT the latency guard's fp32 model is the trained graph without quantizers, not the pre-QAT
    copy."""
    from graphopt.quant.modules import ActivationQuantizer

    model, inputs = get_model("resnet_basic").build()
    shape = inputs[0].shape[1:]
    res = graphopt.optimize(
        model, "x86-int8", example_inputs=inputs, calibration_data=[torch.randn(8, *shape)],
        train_data=[(torch.randn(32, *shape), torch.randint(0, 10, (32,)))],
        recovery=RecoveryConfig(epochs=1, quiet=True, val_fraction=0.0, patience=None),
    )  # fmt: skip
    fp32 = res.fp32_model
    assert not any(isinstance(m, (ActivationQuantizer, QuantizedLayer)) for m in fp32.modules())
    int8_layers = {n: m for n, m in res.model.named_modules() if isinstance(m, QuantizedLayer)}
    for name, layer in int8_layers.items():  # every trained weight, dequantized, and nothing else
        assert torch.equal(fp32.get_submodule(name).weight, layer._dequantized_weight())
    x = torch.randn(4, *shape)
    int8_out, fp32_out = res.model(x), fp32(x)
    cosine = torch.nn.functional.cosine_similarity(int8_out.flatten(), fp32_out.flatten(), dim=0)
    assert 0.99 < cosine < 1.0  # the same model up to activation rounding
    assert FP32_KEEPS_QAT in res.report.note_keys()


def test_without_qat_the_fp32_fall_back_is_the_snapshot_before_int8(digits_model, digits):
    res = graphopt.optimize(
        digits_model, "x86-int8", example_inputs=(digits.test_x[:1],), calibration_data=[digits.train_x[:64]]
    )
    int8_layers = {n: m for n, m in res.model.named_modules() if isinstance(m, QuantizedLayer)}
    assert int8_layers
    for name, layer in int8_layers.items():  # the float weights from before int8, not the rounded ones
        weight, rounded = res.fp32_model.get_submodule(name).weight, layer._dequantized_weight()
        assert not torch.equal(weight, rounded)
        torch.testing.assert_close(weight, rounded, rtol=0, atol=float(layer.weight_scale.max()))
    assert FP32_KEEPS_QAT not in res.report.note_keys()


def test_qat_trains_at_its_own_rate_when_the_config_names_one(monkeypatch):
    """One RecoveryConfig trains recovery after pruning and QAT after it; ``qat_lr`` sets QAT's peak rate
    alone (a high rate that recovers a pruned network makes QAT of an accurate int8 graph diverge)."""
    from graphopt.pipeline.driver import OptimizeCall, run_call

    training = RecordingTraining(lambda config: config.optimizer.lr)
    model, inputs = get_model("resnet_basic").build()
    data = [(torch.randn(16, *inputs[0].shape[1:]), torch.randint(0, 10, (16,)))]
    config = RecoveryConfig(
        epochs=1, quiet=True, val_fraction=0.0, optimizer=OptimizerConfig(lr=0.01), qat_lr=1e-3
    )
    run_call(OptimizeCall(
        model, "x86-int8", inputs, calibration_data=[data[0][0]], train_data=data,
        prune=graphopt.PruneConfig(0.5, skip_int8_if_slower=False), recovery=config, training=training,
    ))  # fmt: skip
    assert training.seen == {"recover": 0.01, "qat": 1e-3}
    with pytest.raises(graphopt.ConfigError, match="qat_lr"):
        RecoveryConfig(qat_lr=0.0)
