"""Input that used to end in a raw exception, a silent wrong result or a file left behind.

Each test names the class of input from the reliability review (issue 18) and fails on the code before it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import graphopt
from graphopt import ConfigError, ExportError, InvalidInputError, InvalidModelError
from graphopt.pipeline.driver import PARAMETRIZATIONS_BAKED
from graphopt.zoo import ValueControlFlowNet, get_model


@pytest.fixture(scope="module")
def fp32_result():
    model, inputs = get_model("resnet_basic").build()
    return graphopt.optimize(model, "generic-fp32", example_inputs=inputs)


@pytest.fixture(scope="module")
def int8_result():
    model, (x,) = get_model("resnet_basic").build()
    calibration = [torch.randn(4, *x.shape[1:]) for _ in range(2)]
    return graphopt.optimize(model, "x86-int8", example_inputs=(x,), calibration_data=calibration)


# -- example inputs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: x[:0], r"no elements \(batch 0\?\)"),
        (lambda x: x * float("nan"), "NaN or inf"),
        (lambda x: x.clone().index_fill_(0, torch.tensor([0]), float("inf")), "NaN or inf"),
    ],
    ids=["batch-0", "nan", "inf"],
)
def test_empty_or_non_finite_example_inputs_are_refused(make, message):
    model, (x,) = get_model("resnet_basic").build()
    with pytest.raises(InvalidInputError, match=message):
        graphopt.optimize(model, example_inputs=(make(x),))


def test_an_int8_result_cannot_be_optimized_again(int8_result):
    x = int8_result.example_inputs[0]
    for kwargs in ({"prune": 0.5}, {"target": "x86-int8", "calibration_data": [x]}):
        with pytest.raises(InvalidModelError, match=r"already quantized by graphopt.*original fp32 model"):
            graphopt.optimize(int8_result.model, example_inputs=(x,), **kwargs)


def test_eval_labels_outside_the_models_classes_are_refused():
    model, (x,) = get_model("resnet_basic").build()
    with pytest.raises(
        InvalidInputError, match=r"eval_data has labels in \[10, 10\] but the model outputs 10"
    ):
        graphopt.optimize(model, example_inputs=(x,), eval_data=[(x, torch.tensor([10]))])


# -- export destinations ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("destination", "backend", "message"),
    [
        (lambda tmp: tmp, None, "is a folder"),
        (lambda tmp: None, None, "must be a file path.*NoneType"),
        (lambda tmp: bytes(tmp / "m.onnx"), None, "must be a file path.*bytes"),
        (lambda tmp: tmp / "m.onnx", "torchscript", r"does not end in \.pt.*name it m\.pt"),
        (lambda tmp: tmp / "file" / "m.onnx", None, "is a file, not a folder"),
    ],
    ids=["folder", "none", "bytes", "suffix-backend-mismatch", "file-as-folder"],
)
def test_bad_export_destinations_fail_before_any_work(fp32_result, tmp_path, destination, backend, message):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=message):
        fp32_result.export(destination(tmp_path), backend=backend)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_up_front(int8_result, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="cannot be written"):
        int8_result.export(locked / "sub" / "m.onnx")  # int8: the latency guard would run first


def test_an_unwritable_mount_is_refused_up_front(fp32_result):
    with pytest.raises(ConfigError, match=r"cannot be written.*refuses new files"):
        fp32_result.export(Path("/proc/graphopt-test/m.onnx"))


def test_timing_options_are_checked_before_the_file_is_written(fp32_result, tmp_path):
    with pytest.raises(ConfigError, match="warmup must be an integer >= 0"):
        fp32_result.export(tmp_path / "m.onnx", measure_latency=True, warmup=-1, repeat=0)
    assert not list(tmp_path.iterdir())


def test_a_failed_export_leaves_nothing_at_the_destination(tmp_path):
    res = graphopt.optimize(ValueControlFlowNet().eval(), example_inputs=(torch.randn(1, 3, 8, 8),))
    with pytest.raises(ExportError, match="torchscript artifact disagrees"):
        res.export(tmp_path / "m.pt")  # written, loaded, then refused by the probe check
    assert not list(tmp_path.iterdir())


def test_a_float64_model_is_refused_for_onnx_and_exports_to_torchscript(tmp_path):
    model, (x,) = get_model("resnet_basic").build()
    res = graphopt.optimize(model.double(), example_inputs=(x.double(),))
    with pytest.raises(ExportError, match=r"float64.*model\.float\(\)"):
        res.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    assert res.export(tmp_path / "m.pt").is_file()


class SquareRoot(nn.Module):
    """Finite on the example (positive inputs), NaN on the negated probe."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sqrt(self.fc(x).abs() + x)


def test_a_model_that_is_nan_on_a_probe_still_exports(tmp_path):
    x = torch.rand(2, 4) + 1
    res = graphopt.optimize(SquareRoot(), example_inputs=(x,))
    assert res.export(tmp_path / "m.onnx").is_file()


def test_save_into_an_unwritable_place_names_the_place_not_control_flow(fp32_result):
    with pytest.raises(ConfigError, match="cannot be written") as info:
        fp32_result.save("/proc/graphopt-test/m.pt2")
    assert "torch.cond" not in str(info.value)


def test_dump_ir_onto_an_existing_file_is_refused(tmp_path):
    model, inputs = get_model("resnet_basic").build()
    (tmp_path / "ir").write_text("")
    with pytest.raises(ConfigError, match="is a file: give a folder"):
        graphopt.optimize(model, example_inputs=inputs, dump_ir=tmp_path / "ir")


# -- distill --------------------------------------------------------------------------------------------
def _digits_like_batches(channels: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(8, channels, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]


def _cnn(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.Flatten(), nn.Linear(144, 10))


def test_distill_config_must_be_a_recovery_config():
    with pytest.raises(ConfigError, match=r"RecoveryConfig, got dict"):
        graphopt.distill(_cnn(1), _cnn(1), _digits_like_batches(), config={"epochs": 1})


def test_distill_student_with_other_inputs_is_refused_before_training():
    with pytest.raises(InvalidInputError, match=r"the student fails on train_data's inputs.*same inputs"):
        graphopt.distill(_cnn(1), _cnn(3), _digits_like_batches())


@pytest.mark.parametrize("version", ["0.0.1", "latest", "1.20", "1.20.1; rm -rf /"])
def test_a_foreign_runtime_version_is_validated_before_any_set_up(version):
    from graphopt.verify.runtime import ForeignRuntime

    with pytest.raises(ConfigError, match=r"onnxruntime version must look like 1.20.1"):
        ForeignRuntime("x86_64", version)


# -- silent wrong results ------------------------------------------------------------------------------------
class Recurrent(nn.Module):
    def __init__(self, kind: type[nn.RNNBase]):
        super().__init__()
        self.rnn = kind(16, 32, num_layers=2, batch_first=True)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


@pytest.mark.parametrize(("kind", "gates"), [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_recurrent_layers_are_counted_and_said_to_stay_fp32(kind, gates):
    x = torch.randn(1, 10, 16)
    res = graphopt.optimize(
        Recurrent(kind), "x86-int8", example_inputs=(x,), calibration_data=[torch.randn(4, 10, 16)]
    )
    per_step = gates * 32 * (16 + 32) + gates * 32 * (32 + 32)  # layer 1, layer 2
    assert res.report.stages[0].macs == 10 * per_step + 32 * 5
    assert res.report.stage("insert_fake_quant").stats[f"kept_fp32:{kind.__name__}"] == 1


def test_int8_on_a_loaded_aten_graph_is_refused_not_silently_fp32(fp32_result, tmp_path):
    loaded = graphopt.load(fp32_result.save(tmp_path / "m.pt2"))
    x = fp32_result.example_inputs[0]
    with pytest.raises(graphopt.PassError, match=r"no conv or linear layer.*ATen graph.*original nn.Module"):
        graphopt.optimize(loaded, "x86-int8", example_inputs=(x,), calibration_data=[x])


def test_int8_on_a_float64_model_is_refused():
    model, (x,) = get_model("resnet_basic").build()
    with pytest.raises(graphopt.PassError, match=r"starts from a float32 model.*float64.*model\.float\(\)"):
        graphopt.optimize(
            model.double(), "x86-int8", example_inputs=(x.double(),), calibration_data=[x.double()]
        )


class TokensAndMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.fc = nn.Embedding(100, 16), nn.Linear(16, 4)

    def forward(self, ids, mask):
        return self.fc((self.embed(ids) * mask.unsqueeze(-1).float()).mean(1))


def test_calibration_pairs_of_integer_tensors_are_the_inputs_of_a_two_input_model():
    ids, mask = torch.randint(0, 100, (1, 12)), torch.ones(1, 12, dtype=torch.long)
    calibration = [(torch.randint(0, 100, (4, 12)), torch.ones(4, 12, dtype=torch.long)) for _ in range(3)]
    res = graphopt.optimize(
        TokensAndMask(), "x86-int8", example_inputs=(ids, mask), calibration_data=calibration
    )
    assert res.report.stage("calibrate").stats["batches"] == 3


# -- misleading messages ----------------------------------------------------------------------------------
def test_a_float16_model_passes_the_exact_checks_and_exports(tmp_path):
    model, (x,) = get_model("resnet_basic").build()
    res = graphopt.optimize(model.half(), "generic-fp32", example_inputs=(x.half(),))
    assert res.report.stage("fold_batchnorm").stats["folded"] > 0
    assert res.export(tmp_path / "m.onnx").is_file()  # held to float16's precision, not float32's


class WeightNormed(nn.Module):
    def __init__(self):
        super().__init__()
        from torch.nn.utils.parametrizations import weight_norm

        self.conv = weight_norm(nn.Conv2d(3, 8, 3))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_a_weight_normed_conv_is_baked_and_quantized():
    model, x = WeightNormed(), torch.randn(1, 3, 8, 8)
    res = graphopt.optimize(
        model, "x86-int8", example_inputs=(x,), calibration_data=[torch.randn(4, 3, 8, 8)]
    )
    assert res.report.stage("insert_fake_quant").stats["int8_layers"] == 2
    assert "conv.weight" in res.report.note(PARAMETRIZATIONS_BAKED).facts["tensors"]
    assert type(model.conv).__name__ == "ParametrizedConv2d"  # the caller's model is untouched


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 36, 4)

    def forward(self, x):
        return self.fc(self.conv(x).view(1, -1))


def test_a_fixed_batch_model_calibrates_on_larger_batches_sample_by_sample():
    x = torch.randn(1, 3, 8, 8)
    res = graphopt.optimize(
        FixedBatch(), "x86-int8", example_inputs=(x,), calibration_data=[torch.randn(4, 3, 8, 8)]
    )
    assert res.report.stage("calibrate").stats["int8_layers"] == 2


def test_library_messages_lose_their_terminal_colours():
    from graphopt.errors import first_line

    assert first_line(RuntimeError("\x1b[1m\x1b[31mError\x1b[0m: no kernel\ntraceback")) == "Error: no kernel"


# -- leftovers and noise ----------------------------------------------------------------------------------
class FixedBatchGelu(FixedBatch):
    """Not covered by the direct ONNX lowering (GELU, fixed batch): torch.export runs, and retries."""

    def forward(self, x):
        return self.fc(torch.nn.functional.gelu(self.conv(x)).view(1, -1))


def test_a_successful_export_and_save_print_nothing(tmp_path, capfd):
    res = graphopt.optimize(FixedBatchGelu(), example_inputs=(torch.randn(1, 3, 8, 8),))
    res.export(tmp_path / "m.onnx")
    res.save(tmp_path / "m.pt2")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


class DictOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls, self.box = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return {"logits": self.cls(x), "boxes": self.box(x)}


def test_dict_outputs_keep_their_keys_as_onnx_output_names(tmp_path):
    import onnx

    res = graphopt.optimize(DictOutputs(), example_inputs=(torch.randn(2, 4),))
    path = res.export(tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["logits", "boxes"]
    assert [i.name for i in graph.input] == ["x"]
