"""The fast activation round trip computes what PyTorch's reference ops compute; traced, it steps aside."""

import pytest
import torch
import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed
import torch.fx as fx

from graphopt.quant.modules import ActivationQuantizer
from graphopt.quant.observers import ObserverConfig
from graphopt.quant.round_trip import StraightThrough, is_plain_eager, round_trip
from graphopt.quant.scheme import QuantScheme

_qd = torch.ops.quantized_decomposed

# scales with awkward reciprocals, zero points at both ends and inside; values far outside the range too
CASES = [(0.0371, 0, 0, 255), (0.0123, 131, 0, 255), (0.25, 0, -128, 127), (1e-3, -7, -128, 127)]


def _values() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(4, 8, 9, 9) * 3
    x.view(-1)[:50] = torch.arange(50) * 0.125 - 3  # exact halves of many scales: round half to even
    x.view(-1)[50:60] = torch.tensor([1e3, -1e3]).repeat(5)  # clipped by every scale
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("scale", "zero", "low", "high"), CASES)
def test_inference_round_trip_is_bit_identical_to_quantized_decomposed(scale, zero, low, high):
    x = _values()
    dtype = torch.uint8 if low == 0 else torch.int8
    reference = _qd.dequantize_per_tensor(
        _qd.quantize_per_tensor(x, scale, zero, low, high, dtype), scale, zero, low, high, dtype
    )
    assert torch.equal(round_trip(x, scale, zero, low, high), reference)


@pytest.mark.parametrize(("scale", "zero", "low", "high"), CASES)
def test_straight_through_matches_fake_quantize_values_and_gradient(scale, zero, low, high):
    x = _values().requires_grad_()
    ours = StraightThrough.apply(x, scale, zero, low, high)
    weights = torch.randn_like(x)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    reference = torch.fake_quantize_per_tensor_affine(x, scale, zero, low, high)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), x)
    assert torch.equal(ours, reference)
    assert torch.equal(grad_ours, grad_reference)
    assert 0 < int((grad_ours == 0).sum()) < x.numel()  # the clamp bit somewhere, not everywhere


def _frozen_quantizer() -> ActivationQuantizer:
    quantizer = ActivationQuantizer(QuantScheme(), ObserverConfig())
    quantizer.scale, quantizer.zero_point = 0.05, 10
    return quantizer


def test_only_a_plain_eager_call_takes_the_fast_path():
    x = torch.randn(2, 3)
    assert is_plain_eager(x)
    assert not is_plain_eager(torch.nn.Parameter(x))
    graph = fx.symbolic_trace(_frozen_quantizer().eval())
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets), targets
    traced = torch.jit.trace(_frozen_quantizer().eval(), (x,))
    assert "quantize_per_tensor" in str(traced.graph)  # the exporters' ops, not the fast in-place ones


def test_exported_quantizer_keeps_the_reference_ops():
    exported = torch.export.export(_frozen_quantizer().eval(), (torch.randn(2, 3),))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets), targets
    assert not any("round" in t for t in targets), targets
