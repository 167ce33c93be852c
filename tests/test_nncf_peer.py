"""NNCF's PTQ as a `graphopt bench` peer, and the depthwise-separable Fashion-MNIST bench model."""

from __future__ import annotations

import os

import onnx
import pytest
import torch
from torch import nn

from graphopt.benchmark import parse_pipeline, peer_rows
from graphopt.benchmark.evaluate import evaluate, probes_of, reference_outputs
from graphopt.benchmark.models import BenchModel
from graphopt.benchmark.nncf_peer import NNCF_PRESETS, import_nncf, nncf_quantize
from graphopt.errors import ConfigError
from graphopt.reporting.notes import notes_with

STAGES = [f"{peer_rows.NNCF_PTQ} ({preset})" for preset in NNCF_PRESETS]


def _tiny_bench() -> BenchModel:
    """Conv -> depthwise conv -> linear on 8x8 images, labelled by its own outputs (accuracy 1 in fp32)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    ).eval()  # fmt: skip
    x = torch.randn(48, 1, 8, 8)
    with torch.no_grad():
        labels = model(x).argmax(-1)
    return BenchModel("tiny", model, (x[:1],), "random", calibration=[x[:8]], eval=[(x, labels)])


@pytest.fixture(scope="module")
def nncf_peers(tmp_path_factory):
    pytest.importorskip("nncf", reason="NNCF is an optional peer: pip install 'graphopt[nncf]'")
    bench = _tiny_bench()
    peers, notes = peer_rows.build_peers(bench, [parse_pipeline("x86-int8")], tmp_path_factory.mktemp("nncf"))
    probes = probes_of(None, bench.eval)
    references = reference_outputs(bench.model, probes)
    for candidate in peers:
        evaluate(candidate, probes, references, bench.eval, per_sample=False)
    return bench, {c.row.stage: c for c in peers}, notes


@pytest.mark.slow  # importing NNCF alone takes 3.4 s
def test_nncf_rows_are_int8_onnx_files_scored_and_runnable_in_ort(nncf_peers):
    bench, peers, notes = nncf_peers
    assert not notes
    fp32 = peers["ORT fp32"].row
    for stage in STAGES:
        candidate = peers[stage]
        row = candidate.row
        assert (row.kind, row.numeric, row.runtime) == ("peer", "int8", "onnxruntime")
        assert 0 < row.bytes < fp32.bytes and row.zipped_bytes > 0
        assert row.accuracy is not None and row.accuracy > 0.8  # scored on the labelled split in ORT
        assert row.cosine > 0.95
        assert candidate.bind(bench.example_inputs)() is not None  # what the interleaved timing calls
        model = onnx.load(str(candidate.runner.path))
        ops = {node.op_type for node in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
        int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
        assert len(int8) >= 3  # every conv's and the linear's weights stored in 8 bits


def test_a_failure_of_nncf_is_a_note_and_the_other_preset_still_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(peer_rows.importlib.util, "find_spec", lambda name: object())

    def quantize(model, inputs, samples, path, preset):
        if preset == "default":
            raise RuntimeError("unsupported op")
        assert len(samples) == 8 and samples[0][0].shape == (1, 1, 8, 8)  # graphopt's samples, one by one
        path.write_bytes(b"onnx")
        return path

    monkeypatch.setattr(peer_rows, "nncf_quantize", quantize)
    monkeypatch.setattr(peer_rows, "OnnxRunner", lambda path: path)  # the fake file is not a model
    added, notes = [], []
    peer_rows._nncf_peers(_tiny_bench(), tmp_path, lambda stage, *rest: added.append(stage), notes)
    assert added == [STAGES[1]]
    (note,) = notes_with(notes, peer_rows.PEER_FAILED)
    assert note.facts == {"peer": "nncf", "preset": "default", "error": "RuntimeError"}
    assert "unsupported op" in note


def test_without_nncf_the_result_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(peer_rows.importlib.util, "find_spec", lambda name: None)
    notes: list[str] = []
    peer_rows._nncf_peers(_tiny_bench(), tmp_path, lambda *args: pytest.fail("no row"), notes)
    (note,) = notes_with(notes, peer_rows.PEER_NOT_INSTALLED)
    assert note.facts == {"peer": "nncf", "extra": "nncf"}


@pytest.mark.parametrize(
    ("preset", "samples", "message"),
    [("best", [(torch.zeros(1, 1, 8, 8),)], "preset must be one of"), ("default", [], "at least one")],
)
def test_bad_nncf_settings_are_refused_by_name(preset, samples, message, tmp_path):
    bench = _tiny_bench()
    with pytest.raises(ConfigError, match=message):
        nncf_quantize(bench.model, bench.example_inputs, samples, tmp_path / "q.onnx", preset)


def test_nncf_is_imported_with_its_telemetry_switch_only_for_that_import(monkeypatch):
    pytest.importorskip("nncf")
    monkeypatch.delenv("NNCF_CI", raising=False)
    import_nncf()
    assert "NNCF_CI" not in os.environ


def test_the_fashion_mobilenet_is_depthwise_separable_with_relu6():
    from graphopt.benchmark.models import DIGITS_MODELS, known_models
    from graphopt.benchmark.peer_rows import model_cost
    from graphopt.zoo.mobilenet import InvertedResidual, mobilenet_fashion

    assert "fashion_mobilenet" in DIGITS_MODELS and "fashion_mobilenet" in known_models()
    model = mobilenet_fashion().eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups == c.in_channels == c.out_channels > 1]
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert convs[0].in_channels == 1 and len(blocks) == 6 and len(depthwise) == len(blocks)
    relu6 = sum(isinstance(m, nn.ReLU6) for m in model.modules())
    assert relu6 == 1 + 2 * len(blocks) - 1 + 1  # stem, two per block (the first has no expand), last 1x1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == len(convs)
    assert sum(b.use_residual for b in blocks) == 2
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    assert 1e6 <= model_cost(model, (x[:1],)).macs <= 5e6
