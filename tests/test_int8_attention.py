"""Static int8 for attention's products on arm-int8: the calls written out exactly, both products' inputs
quantized, and the exported file's MatMuls fed by DequantizeLinear on both sides (what ORT fuses)."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.frontend.capture import capture
from graphopt.ir.shapes import propagate_shapes
from graphopt.quant.attention import decompose_attention
from graphopt.targets import TARGETS
from graphopt.zoo import get_model


class Attend(nn.Module):
    def __init__(self, mask: str):
        super().__init__()
        self.mask = mask

    def forward(self, q, k, v, m):
        if self.mask == "none":
            return F.scaled_dot_product_attention(q, k, v)
        if self.mask == "bool":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m > 0)
        if self.mask == "float":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_attention_written_out_computes_what_the_call_computes(mask):
    torch.manual_seed(0)
    inputs = (*(torch.randn(2, 4, 8, 16) for _ in range(3)), torch.randn(2, 1, 8, 8))
    gm = capture(Attend(mask)).gm
    propagate_shapes(gm, inputs)
    expected = gm(*inputs)
    written, left = decompose_attention(gm)
    assert (written, left) == ((0, 1) if mask == "causal" else (1, 0))
    torch.testing.assert_close(gm(*inputs), expected, rtol=1e-5, atol=1e-5)
    fused = [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert len(fused) == left


def _matmul_inputs_dequantized(path) -> list[bool]:
    """For each MatMul of two computed tensors in the file: whether both come out of DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    weights = {i.name for i in graph.initializer}
    products = [n for n in graph.node if n.op_type == "MatMul" and not set(n.input) & weights]
    return [all(producer.get(i) == "DequantizeLinear" for i in n.input) for n in products]


def test_arm_int8_quantizes_both_inputs_of_every_attention_product(tmp_path):
    model, (x,) = get_model("vit").build()
    calibration = [torch.randn(8, *x.shape[1:]) for _ in range(2)]
    res = graphopt.optimize(model, "arm-int8", example_inputs=(x,), calibration_data=calibration)
    stats = res.report.stage("insert_fake_quant").stats
    assert stats["int8_activation_products"] == 2 * len(model.blocks)
    cosine = res.report.stage("calibrate").stats["output_cosine"]  # int8 vs fp32 on calibration data
    path = res.export(tmp_path / "vit.onnx", latency_guard=False)
    dequantized = _matmul_inputs_dequantized(path)
    assert dequantized.count(True) >= 2 * len(model.blocks)
    without = dataclasses.replace(
        TARGETS["arm-int8"],
        name="arm-int8-float-attention",
        passes=tuple(
            dataclasses.replace(p, options=dataclasses.replace(p.options, attention=False))
            if p.name == "insert_fake_quant"
            else p
            for p in TARGETS["arm-int8"].passes
        ),
    )
    plain = graphopt.optimize(model, without, example_inputs=(x,), calibration_data=calibration)
    assert "int8_activation_products" not in plain.report.stage("insert_fake_quant").stats
    assert cosine > 0.99 and cosine > plain.report.stage("calibrate").stats["output_cosine"] - 0.005
    assert not any(_matmul_inputs_dequantized(plain.export(tmp_path / "plain.onnx", latency_guard=False)))
