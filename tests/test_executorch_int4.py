"""4-bit weights in ExecuTorch ``.pte`` files: linear layers as XNNPACK qc4w, convs in int8 storage (named in
a note), per-group scales refused, and the upstream facts behind that rule, checked so an upgrade shows."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.errors import ExportError
from graphopt.quant import QuantizedLayer, QuantScheme, WeightQuant
from graphopt.quant.storage import WEIGHT_STORAGE

pytest.importorskip(
    "executorch", reason="the executorch backend is optional: pip install 'graphopt[executorch]'"
)

from graphopt.backends.executorch_backend import ExecuTorchRunner, export_executorch
from graphopt.backends.executorch_form import xnnpack_form
from graphopt.backends.pte_weights import xnnpack_weight_storage
from graphopt.backends.xnnpack_int4 import INT8_KEPT, QC4W_RANGE, weight_form
from graphopt.backends.xnnpack_qdq import dequantize_int8, quantize_int8

QC4 = "xnn_datatype_qcint4"
QC8 = "xnn_datatype_qcint8"


class _Mlp(nn.Module):
    """Linear layers only: every weight can be 4-bit in the file (99 % of its bytes are weights)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 192), nn.Linear(192, 128), nn.Linear(128, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class _ConvThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


@functools.cache
def _optimized(net: type[nn.Module], bits: int) -> graphopt.OptimizeResult:
    torch.manual_seed(0)
    x = torch.randn(1, 256) if net is _Mlp else torch.randn(1, 3, 8, 8)
    calibration = [torch.randn(32, *x.shape[1:]) for _ in range(2)]
    return graphopt.optimize(net().eval(), "x86-int8", (x,), calibration_data=calibration,
                             weights=WeightQuant(bits=bits))  # fmt: skip


@pytest.fixture(scope="module")
def mlp_ptes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w4")
    return {
        bits: _optimized(_Mlp, bits).export(folder / f"w{bits}.pte", latency_guard=False) for bits in (8, 4)
    }


def test_4_bit_linear_weights_are_stored_4_bit_and_the_file_shrinks_by_half_their_bytes(mlp_ptes):
    w4, w8 = xnnpack_weight_storage(mlp_ptes[4]), xnnpack_weight_storage(mlp_ptes[8])
    assert (w4[QC4], w4[QC8]) == (3, 0) and (w8[QC4], w8[QC8]) == (0, 3)
    weights = sum(m.weight_int8.numel() for m in _optimized(_Mlp, 4).model.modules()
                  if isinstance(m, QuantizedLayer))  # fmt: skip
    saved = mlp_ptes[8].stat().st_size - mlp_ptes[4].stat().st_size
    assert 0.95 * weights / 2 <= saved <= weights / 2 + 1024, (saved, weights)  # half a byte each, + padding


def test_the_4_bit_pte_computes_what_the_eager_model_computes(mlp_ptes):
    res = _optimized(_Mlp, 4)
    x = torch.randn(6, 256)
    got = torch.as_tensor(ExecuTorchRunner(mlp_ptes[4]).run_batched(x)[0])
    torch.testing.assert_close(got, res.model(x), rtol=0, atol=1e-5)  # the same int4 values, XNNPACK's kernel


def test_the_report_row_says_every_layer_is_4_bit_in_the_file(mlp_ptes):
    row = _optimized(_Mlp, 4).report.artifact("executorch")
    (storage,) = [n for n in row.notes if getattr(n, "key", None) == WEIGHT_STORAGE]
    assert storage.facts["packed_int4"] == 3 and storage.facts["int8_storage"] == 0
    assert "qc4w" in storage and INT8_KEPT not in [getattr(n, "key", None) for n in row.notes]


def test_convs_keep_int8_storage_and_the_note_names_them(tmp_path):
    res = _optimized(_ConvThenLinear, 4)
    path = res.export(tmp_path / "m.pte", latency_guard=False)
    stored = xnnpack_weight_storage(path)
    assert (stored[QC4], stored[QC8]) == (1, 2)  # fc 4-bit; conv1 (3x3) and conv2 (1x1) int8
    row = res.report.artifact("executorch")
    (kept,) = [n for n in row.notes if getattr(n, "key", None) == INT8_KEPT]
    assert kept.facts["layers"] == ("conv1", "conv2") and "linear layers only" in kept
    (storage,) = [n for n in row.notes if getattr(n, "key", None) == WEIGHT_STORAGE]
    assert (storage.facts["packed_int4"], storage.facts["int8_storage"]) == (1, 2)
    x = torch.randn(1, 3, 8, 8)
    got = torch.as_tensor(ExecuTorchRunner(path).run(x)[0])
    torch.testing.assert_close(got, res.model(x), rtol=0, atol=1e-5)


def _frozen(layer: nn.Module, bits: int) -> QuantizedLayer:
    quantized = QuantizedLayer(layer, dataclasses.replace(QuantScheme(), weight_bits=bits))
    quantized.freeze(input_scale=0.05)
    return quantized


@pytest.mark.parametrize(("layer", "bits", "stored"), [
    (nn.Linear(8, 4), 4, 4), (nn.Linear(8, 4), 2, 4), (nn.Linear(8, 4), 5, 8), (nn.Linear(8, 4), 8, 8),
    (nn.Conv2d(3, 4, 1), 4, 8), (nn.Conv2d(3, 4, 3), 4, 8),
])  # fmt: skip
def test_only_linears_of_at_most_4_bits_take_the_4_bit_form(layer, bits, stored):
    assert weight_form(_frozen(layer, bits)).stored_bits == stored


def test_per_group_scales_are_refused_naming_the_layer():
    layer = _frozen(nn.Linear(8, 4), 4)
    layer.weight_scale = nn.Parameter(layer.weight_scale[:, None].repeat(1, 2), requires_grad=False)
    model = nn.Sequential(layer)
    with pytest.raises(ExportError, match=r"^0 have weight scales per group.*dynamically quantized"):
        xnnpack_form(model)


# --- what ExecuTorch 1.5.1's XNNPACK does with 4-bit conv weights (why convs stay int8) -------------------


class _Qc4wConv(nn.Module):
    """A conv on weights declared 4-bit (-8..7) between int8 activations: what a 4-bit conv would lower as."""

    def __init__(self, kernel: int):
        super().__init__()
        self.register_buffer("weight", torch.randint(-7, 8, (8, 4, kernel, kernel), dtype=torch.int8))
        self.register_buffer("scale", torch.full((8,), 0.01))
        self.register_buffer("zero", torch.zeros(8, dtype=torch.int64))

    def forward(self, x):
        x = dequantize_int8(quantize_int8(x, 0.05, 0), 0.05, 0)
        qd = torch.ops.quantized_decomposed
        w = qd.dequantize_per_channel(self.weight, self.scale, self.zero, 0, *QC4W_RANGE, torch.int8)
        return dequantize_int8(quantize_int8(F.conv2d(x, w), 0.05, 0), 0.05, 0)


@pytest.mark.parametrize("kernel", [3, 1])
def test_xnnpack_still_refuses_4_bit_conv_weights(kernel, tmp_path):
    """If this fails, an ExecuTorch upgrade takes 4-bit convs: widen backends/xnnpack_int4.weight_form."""
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ExportError):
        path = export_executorch(_Qc4wConv(kernel).eval(), (x,), tmp_path / "conv.pte")  # 3x3 fails here
        ExecuTorchRunner(path).run(x)  # 1x1 lowers, and the runtime refuses the program


def test_a_pte_whose_weights_cannot_be_read_back_says_so(monkeypatch, tmp_path):
    """ExecuTorch's reader is private API: when it fails, the note says so and nothing raises."""
    from torch import nn

    import backends.pte_weights as pte_weights
    from graphopt.quant import QuantizedLayer, QuantScheme
    from graphopt.quant.storage import WEIGHT_STORAGE, weight_storage_note

    def broken(path):
        raise OSError("flatc not found")

    monkeypatch.setattr(pte_weights, "xnnpack_weight_storage", broken)
    layer = QuantizedLayer(nn.Linear(4, 4), QuantScheme(weight_bits=4))
    layer.freeze(input_scale=0.1)
    reader = pte_weights.qc4w_weights
    note = weight_storage_note(nn.Sequential(layer), "executorch", tmp_path / "m.pte", reader)
    assert note is not None and note.key == WEIGHT_STORAGE
    assert "could not be read back (ExecuTorch's .pte reader failed: OSError: flatc not found)" in str(note)
