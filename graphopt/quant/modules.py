"""The modules int8 inserts into the IR.

:class:`ActivationQuantizer` sits on a tensor. While observing it passes values through and records their
range; once frozen it computes ``dequantize(quantize(x))`` with PyTorch's ``quantized_decomposed`` ops, which
the ONNX exporter lowers to a QuantizeLinear / DequantizeLinear pair with constant scale and zero point.

:class:`QuantizedLayer` replaces a conv or linear. Frozen, it holds the weight as an int8 tensor with
per-channel scales and the bias as an int32 tensor with scales ``s_in * s_w``, and dequantizes them in its
forward: exported, that is the canonical QDQ form (int8 / int32 initializers feeding DequantizeLinear) that
ONNX Runtime fuses into QLinearConv / QGemm, and the file stores weights in one byte each.

Eager, both compute exactly what the integer kernels compute, up to float rounding of the accumulation.

Weights below 8 bits (``scheme.weight_bits``, 2..7) keep the same tensors: ``weight_int8`` holds the b-bit
values (|q| <= 2^(b-1) - 1) in int8, ``weight_scale`` stays one scale per output channel; only the ONNX
file stores them narrower (packed INT4 for 2..4 bits, :mod:`graphopt.backends.onnx_ops`). With per-group
scales (``scheme.group_size``, Linear and 1x1 conv only) ``weight_scale`` is ``(C, G)``, one per block of
input channels (:mod:`graphopt.quant.groups`).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.ao.quantization.fx._decomposed
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.errors import ConfigError
from graphopt.quant import groups
from graphopt.quant.observers import ObserverConfig, RangeObserver
from graphopt.quant.round_trip import StraightThrough, is_plain_eager, round_trip
from graphopt.quant.scheme import (
    INT32_RANGE,
    QuantScheme,
    activation_qparams,
    quantize_bias,
    quantize_weight,
    sqnr_db,
    weight_scales,
)

_qd = torch.ops.quantized_decomposed

_FUNCTIONAL = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d, nn.Linear: F.linear}
QUANTIZABLE_LAYERS = tuple(_FUNCTIONAL)


class ActivationQuantizer(nn.Module):
    def __init__(self, scheme: QuantScheme, observer: ObserverConfig, seed: int = 0):
        super().__init__()
        self.scheme = scheme
        self.observer_config, self.seed = observer, seed
        self.observer: RangeObserver | None = self._new_observer()
        # Python numbers, not buffers: they become constants of the exported graph.
        self.scale: float | None = None
        self.zero_point: int | None = None
        #: Only calibration records ranges; other runs (numeric checks, evaluation) must not leak into them.
        self.observing = False
        #: SQNR of this quantizer's round trip on calibration data, in dB (set by ``calibrate``).
        self.sqnr_db: float | None = None

    @property
    def frozen(self) -> bool:
        return self.scale is not None

    def reset(self) -> None:
        """Forget what was observed (and any frozen scale): the quantizer observes afresh."""
        self.observer = self._new_observer()
        self.scale = self.zero_point = None

    def _new_observer(self) -> RangeObserver:
        return RangeObserver(self.observer_config, self.seed, keep_sample=self.scheme.power_of_two)

    def freeze(self) -> None:
        assert self.observer is not None
        lo, hi = self.observer.range(self.scheme)
        self.scale, self.zero_point = activation_qparams(lo, hi, self.scheme, self.observer.sample)
        self.observer = None

    def forward(self, x: Tensor) -> Tensor:
        if self.scale is None:
            if self.observing and self.observer is not None:
                self.observer.update(x)
            return x
        q_min, q_max = self.scheme.activation_range
        # a float32 tensor in a plain eager call: the reference ops' values, ~10x faster (round_trip.py)
        if is_plain_eager(x) and x.dtype == torch.float32:
            if self.training:
                return StraightThrough.apply(x, self.scale, self.zero_point, q_min, q_max)
            return round_trip(x, self.scale, self.zero_point, q_min, q_max)
        if self.training:  # QAT: straight-through estimator
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, q_min, q_max)
        dtype = self.scheme.activation_dtype
        q = _qd.quantize_per_tensor(x, self.scale, self.zero_point, q_min, q_max, dtype)
        return _qd.dequantize_per_tensor(q, self.scale, self.zero_point, q_min, q_max, dtype)

    def extra_repr(self) -> str:
        state = f"scale={self.scale:.4g}, zero_point={self.zero_point}" if self.frozen else "observing"
        return f"{self.scheme.activations}, {state}"


#: A frozen layer's tensors indexed by output channel first: its integers, scales and int32 bias.
_PER_CHANNEL_TENSORS = ("weight_int8", "weight_scale", "bias_int32", "bias_scale")


class QuantizedLayer(nn.Module):
    """A conv or linear with int8 weights and int32 bias once frozen; the fp32 layer until then."""

    def __init__(self, layer: nn.Module, scheme: QuantScheme):
        super().__init__()
        if scheme.group_size is not None:
            if not groups.takes_groups(layer):
                raise ConfigError(
                    f"group_size applies to Linear layers and 1x1 convs with groups=1, not {layer!r}: give "
                    "this layer a scheme without group_size (insert_fake_quant does: per channel)"
                )
            groups.check_divides(layer, scheme.group_size)
        self.scheme = scheme
        self.float_layer: nn.Module | None = layer
        #: The layer's geometry without weights, for MAC counting and lowering. Not a registered submodule:
        #: ``model.to(device)`` cannot move meta tensors and has nothing to move here.
        object.__setattr__(self, "mac_layer", copy.deepcopy(layer).to("meta"))
        #: Quantization-aware training: float weights, fake-quantized per channel in forward (see thaw).
        self.qat = False
        self.functional = _FUNCTIONAL[type(layer)]
        self.kwargs = {}
        if not isinstance(layer, nn.Linear):
            geometry = ("stride", "padding", "dilation", "groups")
            self.kwargs = {name: getattr(layer, name) for name in geometry}
        self.weight_sqnr_db: float | None = None

    @property
    def frozen(self) -> bool:
        return self.float_layer is None

    # Other nodes may read a layer's tensors as attributes (EdgeNeXt's positional encoding reads
    # ``token_projection.weight`` for its dtype and device): the int8 layer keeps answering them, with
    # the values it computes with (the dequantized int8 weight once frozen), so such graphs still lint.
    @property
    def weight(self) -> Tensor:
        layer = self.float_layer
        return self._dequantized_weight() if layer is None else layer.weight

    @property
    def bias(self) -> Tensor | None:
        layer = self.float_layer
        return self._dequantized_bias() if layer is None else layer.bias

    @property
    def weight_bits(self) -> int:
        """How many bits the weights take (8: int8; 2..7 are stored in the int8 tensor all the same)."""
        return self.scheme.weight_bits

    @property
    def group_size(self) -> int | None:
        """Input channels per weight scale (per-group scales), None for one scale per output channel."""
        return self.scheme.group_size

    def expanded_weight_scale(self) -> Tensor:
        """The frozen weight scale shaped to broadcast against ``weight_int8``: ``(C, 1, ..., 1)`` (per
        group: one per weight), so ``weight_int8 * expanded_weight_scale()`` is the dequantized weight
        whatever the scale granularity."""
        if self.group_size is not None:
            return groups.expand(self.weight_scale, self.weight_int8.shape, self.group_size)
        return self.weight_scale.reshape(-1, *([1] * (self.weight_int8.dim() - 1)))

    def freeze(self, input_scale: float) -> None:
        layer = self.float_layer
        assert layer is not None
        self.input_scale = float(input_scale)
        self._quantize(layer, self._weight_scales(layer.weight.detach()))
        # The fp32 layer stays reachable (not registered: not exported, not counted) so that a layer found
        # too sensitive for int8 can go back to exactly its fp32 weights (see passes/accuracy_budget.py).
        object.__setattr__(self, "fp32_layer", layer)
        self.float_layer, self.qat = None, False

    def set_weight_scales(self, scales: Tensor, channels: Tensor) -> None:
        """Quantize this frozen layer's fp32 weights again at ``scales`` (one per output channel) in the
        output ``channels`` (a bool mask): their integers, and their int32 bias, whose scale ``s_in * s_c``
        follows (the input scale is kept). The other channels keep their integers and bias as they are."""
        assert self.frozen and self.group_size is None, "set_weight_scales() needs a per-channel frozen layer"
        kept = ~channels
        before = {name: getattr(self, name).detach().clone() for name in _PER_CHANNEL_TENSORS}
        self._quantize(self.fp32_layer, scales.detach().float().reshape(self.weight_scale.shape))
        with torch.no_grad():
            for name, values in before.items():
                getattr(self, name)[kept] = values[kept]
        self.weight_sqnr_db = sqnr_db(self.fp32_layer.weight.detach(), self._dequantized_weight())

    def _quantize(self, layer: nn.Module, scales: Tensor) -> None:
        """The int8 tensors of ``layer``'s weights at ``scales`` and its bias at ``s_in * s_c``."""
        weight = layer.weight.detach()
        q_weight = self._quantize_weight(weight, scales)
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros(weight.shape[0])
        per_channel = scales if self.group_size is None else groups.bias_weight_scale(scales)
        bias_scales = per_channel * self.input_scale
        # int tensors as non-trainable Parameters: exported as initializers, counted as parameters.
        self.weight_int8 = nn.Parameter(q_weight, requires_grad=False)
        self.weight_scale = nn.Parameter(scales, requires_grad=False)
        self.bias_int32 = nn.Parameter(quantize_bias(bias, bias_scales), requires_grad=False)
        self.bias_scale = nn.Parameter(bias_scales.float(), requires_grad=False)
        self.channel_zero_points = nn.Parameter(
            torch.zeros(len(bias_scales), dtype=torch.int64), requires_grad=False
        )
        self.weight_sqnr_db = sqnr_db(weight, self._dequantized_weight())

    def requantized(self, weight_bits: int) -> QuantizedLayer:
        """A copy of this frozen layer with its fp32 weights quantized again at ``weight_bits``: same input
        scale, so the bias scale ``s_in * s_c`` follows the new weight scale. This layer is not changed."""
        assert self.frozen, "requantized() needs a frozen layer"
        copied = copy.deepcopy(self)
        copied.scheme = self.scheme.with_weight_bits(weight_bits)
        copied.float_layer = copied.fp32_layer
        copied.freeze(self.input_scale)
        return copied

    def thaw(self) -> None:
        """Undo :meth:`freeze` for quantization-aware training: the float layer comes back with the
        dequantized int8 values as its weights (so training starts exactly where calibration left off), and
        the forward fake-quantizes its weight per channel with a straight-through estimator. :meth:`freeze`
        quantizes the trained weights again."""
        if not self.frozen:
            return
        layer = self.as_float()
        # QAT starts from the dequantized weights, whose range a clipping scheme already cut to the frozen
        # scale: from here on the scale covers max|w| (see _weight_scales)
        self.thawed = True
        for name in (*_PER_CHANNEL_TENSORS, "channel_zero_points"):
            delattr(self, name)
        self.float_layer, self.qat = layer, True

    def as_float(self) -> nn.Module:
        """A new fp32 layer computing what this one computes without its quantizers: frozen, the dequantized
        int8 weights and int32 bias (``W = s_c * W_q``, ``b = s_in * s_c * b_q``); else the float layer."""
        if not self.frozen:
            assert self.float_layer is not None
            return copy.deepcopy(self.float_layer)
        layer = copy.deepcopy(self.mac_layer).to_empty(device=self.weight_int8.device)
        with torch.no_grad():
            layer.weight.copy_(self._dequantized_weight())
            if layer.bias is not None:
                layer.bias.copy_(self._dequantized_bias())
        return layer

    def _dequantized_bias(self) -> Tensor:
        low, high = INT32_RANGE
        zero = self.channel_zero_points
        return _qd.dequantize_per_channel(self.bias_int32, self.bias_scale, zero, 0, low, high, torch.int32)

    def _weight_scales(self, weight: Tensor) -> Tensor:
        """The scheme's weight scales; once thawed for QAT, ``max|w_c| / r`` whatever the clipping: the
        dequantized weights QAT starts from end at the clipped range, so covering their max is the frozen
        grid (no search every step), and freezing after QAT keeps the grid QAT trained on."""
        scheme = self.scheme
        if getattr(self, "thawed", False) and scheme.weight_clipping != "none":
            scheme = dataclasses.replace(scheme, weight_clipping="none")
        if scheme.group_size is None:
            return weight_scales(weight, scheme)
        # a block is a channel of the (C * G, g) view: the per-channel arithmetic, clipping included
        return weight_scales(groups.blocks(weight, scheme.group_size), scheme).reshape(weight.shape[0], -1)

    def _quantize_weight(self, weight: Tensor, scales: Tensor) -> Tensor:
        if self.group_size is None:
            return quantize_weight(weight, scales, self.scheme)
        flat = quantize_weight(groups.blocks(weight, self.group_size), scales.flatten(), self.scheme)
        return flat.reshape(weight.shape)

    def _fake_quantized_weight(self, weight: Tensor) -> Tensor:
        """``s_c * clamp(round(w / s_c), -b, b)`` (b the scheme's weight bound, 7 at 4 bits) with
        ``s_c = max|w_c| / b`` from the current weight; the
        gradient passes straight through the rounding (and is zero where the clamp bites)."""
        scales = self._weight_scales(weight).to(weight.device)
        rows = weight if self.group_size is None else groups.blocks(weight, self.group_size)
        scales = scales.flatten()
        zeros = torch.zeros(len(scales), dtype=torch.int32, device=weight.device)
        bound = self.scheme.weight_bound
        fake = torch.fake_quantize_per_channel_affine(rows, scales, zeros, 0, -bound, bound)
        return fake.reshape(weight.shape)

    def _dequantized_weight(self) -> Tensor:
        if self.group_size is None:
            zero = self.channel_zero_points
            return _qd.dequantize_per_channel(
                self.weight_int8, self.weight_scale, zero, 0, -128, 127, torch.int8
            )
        # ``(q - 0) * s_ck`` in float32 per block: what the file's blocked DequantizeLinear computes
        rows, scales = groups.blocks(self.weight_int8, self.group_size), self.weight_scale.flatten()
        zero = torch.zeros(len(scales), dtype=torch.int64, device=scales.device)
        flat = _qd.dequantize_per_channel(rows, scales, zero, 0, -128, 127, torch.int8)
        return flat.reshape(self.weight_int8.shape)

    def extra_repr(self) -> str:
        granularity = "per channel" if self.scheme.per_channel else "per tensor"
        if self.group_size is not None:
            granularity = f"per group of {self.group_size} input channels"
        return f"int{self.weight_bits} weights {granularity}" + ("" if self.frozen else ", fp32 until frozen")

    def forward(self, x: Tensor) -> Tensor:
        layer = self.float_layer
        if layer is None:
            return self.functional(x, self._dequantized_weight(), self._dequantized_bias(), **self.kwargs)
        if self.qat:
            return self.functional(x, self._fake_quantized_weight(layer.weight), layer.bias, **self.kwargs)
        return layer(x)
