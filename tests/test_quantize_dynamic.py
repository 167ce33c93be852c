"""Dynamic int8 (x86-dynamic-int8): the eager simulation is what ONNX Runtime computes, the file fuses into
its dynamic int8 kernels, and transformers quantize end to end (Linear layers and embeddings)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import graphopt
from graphopt.artifacts.artifact_check import INT8_ROUNDS_DIFFERENTLY
from graphopt.quant.dynamic import DynamicInt8Linear
from graphopt.reporting.notes import note_keys
from tests.helpers import outputs


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 4)

    def forward(self, ids):
        return self.head(self.mlp(self.embed(ids)).mean(1))


def _optimized_histogram(path) -> collections.Counter:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path) + ".opt.onnx"
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("reduce_range", [True, False])
def test_the_eager_layer_computes_the_runtime_arithmetic(reduce_range):
    """Checked without ONNX: the simulation against a direct integer evaluation of the formula."""
    torch.manual_seed(0)
    layer = nn.Linear(48, 16)
    quantized, x = DynamicInt8Linear(layer, reduce_range=reduce_range), torch.randn(3, 5, 48) * 4
    scale = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 255
    zero = torch.round(-x.min().clamp(max=0) / scale)
    x_q = torch.clamp(torch.round(x / scale) + zero, 0, 255).long()
    acc = (x_q - zero.long()) @ quantized.weight_t.long()
    expected = acc.double() * scale.double() * quantized.weight_scale.double() + quantized.bias.double()
    torch.testing.assert_close(quantized(x).double(), expected, rtol=1e-6, atol=1e-6)
    assert quantized.weight_t.abs().max() <= (64 if reduce_range else 127)  # ORT's own ranges
    torch.testing.assert_close(quantized(x), layer(x), rtol=0.05, atol=0.1)  # within the quantization step


def test_per_token_scales_make_a_token_independent_of_its_batch_mates():
    """One scale per row: a token's output is the same alone and beside a token 1000x larger; with one
    scale per call that neighbour widens the range the small token is rounded with."""
    torch.manual_seed(0)
    layer = nn.Linear(48, 16)
    x = torch.randn(2, 5, 48)
    x[1] *= 1000
    x[0, 2] = 0  # an all-zero token: its scale's floor keeps it 0, not NaN
    for per_token, same in ((True, True), (False, False)):
        quantized = DynamicInt8Linear(layer, per_token=per_token)
        alone, beside = quantized(x[:1]), quantized(x)[:1]
        assert torch.equal(alone, beside) is same
        assert torch.allclose(alone[0, 2], layer.bias)
        torch.testing.assert_close(alone, layer(x[:1]), rtol=0.05, atol=0.05)  # alone, both are int8-close


class TokenEncoder(nn.Module):
    """An output per token, no normalization: a loud token stays loud through every Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

    def forward(self, ids):
        return self.mlp(self.embed(ids))


def test_the_per_token_target_runs_a_sentence_in_a_batch_as_it_runs_alone(tmp_path):
    """x86-dynamic-int8-per-token's file agrees with the model, and a sentence batched beside one of loud
    tokens (padded to its length) gives the outputs it gives alone; the per-call target's file does not."""
    torch.manual_seed(0)
    model = TokenEncoder().eval()
    with torch.no_grad():
        model.embed.weight[90:] *= 1000  # tokens 90-99
    ids = torch.randint(1, 90, (2, 16))
    ids[1] = torch.randint(90, 100, (16,))
    worst = {}
    for target in ("x86-dynamic-int8-per-token", "x86-dynamic-int8"):
        res = graphopt.optimize(model, target, example_inputs=(ids,), dynamic_shapes={0: {1: "seq"}})
        session = ort.InferenceSession(str(res.export(tmp_path / f"{target}.onnx", latency_guard=False)))
        name = session.get_inputs()[0].name
        batch = session.run(None, {name: ids.numpy()})[0]
        alone = session.run(None, {name: ids[:1].numpy()})[0][0]
        cosine = (
            (batch[0] * alone).sum(-1) / np.linalg.norm(batch[0], axis=-1) / np.linalg.norm(alone, axis=-1)
        )
        worst[target] = cosine.min()
        np.testing.assert_allclose(batch, outputs(res.model, ids).numpy(), rtol=1e-3, atol=1e-3)
    assert worst["x86-dynamic-int8-per-token"] > 0.99999 > worst["x86-dynamic-int8"]


def test_a_token_model_quantizes_fuses_and_matches_the_runtime(tmp_path):
    torch.manual_seed(0)
    model, ids = Tokens().eval(), torch.randint(0, 50, (1, 12))
    res = graphopt.optimize(model, "x86-dynamic-int8", example_inputs=(ids,), dynamic_shapes={0: {1: "seq"}})
    stats = res.report.stage("quantize_dynamic").stats
    assert (stats["int8_layers"], stats["int8_embeddings"], stats["kept_fp32:sensitive"]) == (3, 1, 0)
    assert {row["name"] for row in res.report.tables["int8"]} == {"embed", "mlp.0", "mlp.2", "head"}
    path = res.export(tmp_path / "tokens.onnx", latency_guard=False)
    assert INT8_ROUNDS_DIFFERENTLY not in note_keys(res.report.artifact("onnx"))
    ops = _optimized_histogram(path)
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] == 3 and ops["MatMul"] == 0
    session = ort.InferenceSession(str(path))
    longer = torch.randint(0, 50, (2, 20))
    (got,) = session.run(None, {session.get_inputs()[0].name: longer.numpy()})
    np.testing.assert_allclose(got, outputs(res.model, longer).numpy(), rtol=1e-4, atol=1e-4)


def test_a_dynamic_int8_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model, ids = Tokens().eval(), torch.randint(0, 50, (2, 12))
    res = graphopt.optimize(model, "x86-dynamic-int8", example_inputs=(ids,))
    loaded = graphopt.load(res.save(tmp_path / "tokens.pt2"))
    torch.testing.assert_close(loaded(ids), outputs(res.model, ids), rtol=1e-5, atol=1e-5)


def test_bert_quantizes_every_linear_and_embedding(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64)  # fmt: skip
    model = transformers.BertModel(config).eval()
    tokens = (torch.randint(0, 100, (1, 16)), torch.ones(1, 16, dtype=torch.long))
    dynamic = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}
    res = graphopt.optimize(model, "x86-dynamic-int8", example_inputs=tokens, dynamic_shapes=dynamic)
    linears = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    stats = res.report.stage("quantize_dynamic").stats
    assert stats["int8_layers"] + stats["kept_fp32:sensitive"] == linears and stats["int8_embeddings"] == 3
    assert stats["worst_cosine"] >= 0.99
    path = res.export(tmp_path / "bert.onnx", latency_guard=False)  # checked at 8, 16 and 32 tokens
    assert _optimized_histogram(path)["MatMul"] <= 4  # only attention's activation x activation products


class Outlier(nn.Module):
    """One channel of ``fc2``'s input is 1000x the others (and weighted down, so the output still depends on
    the rest): a per-tensor u8 step sized for the outlier erases the other channels."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8)
        gain = torch.ones(32)
        gain[0] = 1000.0
        self.register_buffer("gain", gain)
        with torch.no_grad():
            self.fc2.weight[:, 0] *= 1e-3

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)) * self.gain)))


def test_the_most_sensitive_layer_goes_back_to_fp32_until_the_cosine_holds():
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    calibration = [torch.randn(16, 16) for _ in range(2)]
    res = graphopt.optimize(
        Outlier().eval(), "x86-dynamic-int8", example_inputs=(x,), calibration_data=calibration
    )
    stats = res.report.stage("quantize_dynamic").stats
    assert stats["kept_fp32:sensitive"] == 1 and stats["worst_cosine"] >= 0.99
    kept = [row["name"] for row in res.report.tables["int8"] if "kept fp32" in row["kind"]]
    assert kept == ["fc2"]
    plain = graphopt.optimize(
        Outlier().eval(), example_inputs=(x,),
        passes=[graphopt.passes.QuantizeDynamic(graphopt.passes.QuantizeDynamicOptions(min_cosine=None))],
    )  # fmt: skip
    assert plain.report.stage("quantize_dynamic").stats["int8_layers"] == 3  # no fall-back asked: all int8


@pytest.mark.parametrize("source", ["zoo", "transformers"])
def test_vit_attention_and_mlp_linears_fuse_to_dynamic_int8(source, tmp_path):
    if source == "zoo":
        from graphopt.zoo import get_model

        model, inputs = get_model("vit").build()
    else:
        transformers = pytest.importorskip("transformers")
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=64)  # fmt: skip
        model, inputs = transformers.ViTModel(config).eval(), (torch.randn(1, 3, 32, 32),)
    res = graphopt.optimize(model, "x86-dynamic-int8", example_inputs=inputs)
    stats = res.report.stage("quantize_dynamic").stats
    linears = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    assert stats["int8_layers"] + stats["kept_fp32:sensitive"] == linears and stats["int8_layers"] > 0
    ops = _optimized_histogram(res.export(tmp_path / "vit.onnx", latency_guard=False))
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] == stats["int8_layers"]


def test_the_latency_guard_times_dynamic_int8_against_fp32(tmp_path):
    torch.manual_seed(0)
    model, ids = Tokens().eval(), torch.randint(0, 50, (1, 12))
    res = graphopt.optimize(model, "x86-dynamic-int8", example_inputs=(ids,))
    res.export(tmp_path / "guarded.onnx")
    record = res.report.stages[-1]
    assert {"guard_int8_ms", "guard_fp32_ms", "shipped_fp32"} <= set(record.stats)
