"""Cross-layer equalization: rescale the channels between two layers so that per-tensor int8 fits both.

The fp32 rewrite of DFQ (Nagel et al. 2019; the math in :mod:`graphopt.quant.equalization`): for two layers
with one path between them through operations that commute with a positive per-channel scale, channel ``i``
is divided by ``s_i = sqrt(r1_i / r2_i)`` in the first layer (weight and bias) and multiplied by ``s_i`` in
the second layer's input channel, so both weights' channel ranges become ``sqrt(r1_i r2_i)``. The function
is unchanged in fp32 (``exact = True``: the PassManager checks it); per-tensor int8 weights (and the
activation between) no longer lose the small channels. Per-channel int8 weights gain less: only the
activation between the layers and the second layer's input columns see it. Runs on the fp32 graph, after
``fold_batchnorm`` (whose gains are what spreads the ranges) and before ``insert_fake_quant``.

Pairs: conv -> conv (any groups, so conv -> depthwise -> conv is two pairs, equalized in turn until the
scales settle), linear -> linear, through ReLU, LeakyReLU, identity, dropout and (after a conv only) max /
average pooling and a mean over spatial axes; and conv -> linear, the classifier behind global average
pooling: ``GAP(a / s)[i] = GAP(a)[i] / s_i`` and flattening ``(N, C, 1, 1)`` to ``(N, C)`` keeps channel
``i`` at feature ``i``, so the conv's output channel ``i`` meets the linear's input column ``i`` exactly as
between two convs (``W_fc[:, i] *= s_i``). A flatten, reshape or view is on such a path only when the
shapes recorded on the graph show it dropping unit axes, ``(N, C, 1, ..., 1) -> (N, C)``; the linear must
read a ``(N, C)`` tensor. The first layer's output must have exactly one consumer all the way to the
second layer (another consumer would see the rescaled tensor), and neither module may be called at another
site.

ReLU6 (and ``Hardtanh(0, m)``): ``relu6(a / s) != relu6(a) / s``: the clamp at 6 would have to become a
per-channel clamp at ``6 / s_i``. graphopt keeps the pass exact instead: by default such pairs are left
alone and counted as ``skipped:relu6``. A per-channel clamp would be a new IR module every backend must
lower (ONNX ``Min`` with a tensor, ExecuTorch, LiteRT, Vela) and would break ONNX Runtime's Conv + Clip
fusion into QLinearConv, costing the speed int8 is for. DFQ's own choice, replacing the ReLU6 by a ReLU,
is available as ``relu6="replace_with_relu"``: it changes the function wherever a pre-activation exceeds 6,
so the pass instance is then lossy (``exact = False``), and the replaced clamps are counted
(``relu6_replaced``) and named in a note (``equalize:relu6_replaced``).

High-bias absorption (DFQ sec. 4.1; ``absorb_high_bias=True``, lossy; the math in
:mod:`graphopt.quant.bias_absorption`): after equalizing, for every pair with exactly one ReLU between and a
second layer without zero padding, the part ``c = max(0, lower bound)`` of each channel's pre-activation
that is always there moves from the first layer's bias into the second's (``b2 += W2 c``), shrinking the
range the activation quantizer after the ReLU covers. The lower bound is ``beta - 3 gamma`` from BatchNorm
statistics recorded before folding, else the smallest pre-activation on up to ``ABSORPTION_BATCHES``
calibration batches. Counted: ``biases_absorbed``, ``skipped:absorption_path``,
``skipped:absorption_no_statistics``; the ``equalize_absorbed`` table gives per layer the channels and the
largest amount moved.

Stats: ``pairs_equalized``, ``iterations``, ``skipped:<reason>`` per first layer without a pair
(``relu6``, ``shared_output``, ``shared_module``, ``no_next_layer``: the path reaches an operation that
does not commute with a per-channel scale, or the output; ``layout``: channel counts or axes that do not
line up), ``skipped:already_quantized``, ``already_balanced`` (pairs whose scales are all within
``tolerance`` of 1: a second run changes nothing). The ``equalize`` table gives, per layer, the spread
``max_i r_i / min_i r_i`` of its output-channel weight ranges before and after.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from graphopt.errors import ConfigError
from graphopt.ir.graph import call_sites, is_metadata_read, module_of
from graphopt.pipeline.pass_base import Pass, PassOptions, PassResult
from graphopt.quant import equalization as eq
from graphopt.quant.bias_absorption import absorb, absorbs_padding_free, smallest_output
from graphopt.quant.bias_correction import batchnorm_output_stats, rescale_output_stats, shift_output_stats
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer
from graphopt.reporting.notes import Note

#: Note keys (graphopt.reporting.notes).
RELU6_REPLACED = "equalize:relu6_replaced"
ALREADY_QUANTIZED = "equalize:already_quantized"

#: Calibration batches high-bias absorption reads (without BatchNorm statistics) for the smallest
#: pre-activation per channel.
ABSORPTION_BATCHES = 8

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYERS = (*_CONVS, nn.Linear)

#: Per-element ops with f(a / s) = f(a) / s for s > 0: allowed between any pair.
_ELEMENTWISE_MODULES = (nn.LeakyReLU, nn.Identity, nn.Dropout)
_ELEMENTWISE_FUNCTIONS = (F.leaky_relu, F.dropout)
#: ReLU, elementwise too; told apart for high-bias absorption, which needs exactly one ReLU on the path.
_RELU_FUNCTIONS = (torch.relu, F.relu)
_RELU_METHODS = ("relu", "relu_")
#: Per-channel spatial ops that commute with a per-channel scale on axis 1: only between convs.
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
_POOL_FUNCTIONS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
)  # fmt: skip
#: Reshapes that commute with a per-channel scale when they only drop unit axes (``_drops_unit_axes``).
_FLATTEN_FUNCTIONS = (torch.flatten, torch.reshape, torch.squeeze)
_FLATTEN_METHODS = ("flatten", "reshape", "view", "squeeze")


@dataclass(frozen=True)
class EqualizeOptions(PassOptions):
    """``relu6``: what to do with a ReLU6 between two layers (module docstring): ``"skip"`` keeps the pass
    exact; ``"replace_with_relu"`` is DFQ's choice and makes it lossy. ``max_iterations`` sweeps over the
    pairs at most; the sweeps stop once every scale is within ``tolerance`` (relative) of 1."""

    relu6: Literal["skip", "replace_with_relu"] = "skip"
    #: High-bias absorption after equalizing (DFQ sec. 4.1, :mod:`graphopt.quant.bias_absorption`): lossy.
    absorb_high_bias: bool = False
    max_iterations: int = 20
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if self.relu6 not in ("skip", "replace_with_relu"):
            raise ConfigError(f"relu6 must be 'skip' or 'replace_with_relu', got {self.relu6!r}")
        if self.max_iterations < 1:
            raise ConfigError(f"max_iterations must be >= 1, got {self.max_iterations}")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"tolerance must be in (0, 1), got {self.tolerance}")


@dataclass(frozen=True)
class LayerPair:
    """Two layers (module targets) with one scalable path between them; ``clamps``: ReLU6 nodes on it;
    ``path``: what each node between them is (``_kind``)."""

    first: str
    second: str
    clamps: tuple[fx.Node, ...] = ()
    path: tuple[str, ...] = ()


class Equalize(Pass):
    name = "equalize"
    slot = "cleanup"
    description = "Cross-layer equalization: balance per-channel weight ranges of consecutive layers (DFQ)."
    exact = True
    Options = EqualizeOptions

    def __init__(self, options: PassOptions | None = None, **fields: object):
        super().__init__(options, **fields)
        # Replacing ReLU6 by ReLU changes the function where a pre-activation exceeds 6: that instance is
        # lossy, so the PassManager must not hold it to the exact-pass check (nor repeat it to a fixed
        # point). So is high-bias absorption (exact only where no pre-activation falls below the amount).
        self.exact = self.options.relu6 == "skip" and not self.options.absorb_high_bias  # type: ignore[misc]

    def call(self, gm: fx.GraphModule) -> PassResult:
        if any(isinstance(m, (ActivationQuantizer, QuantizedLayer)) for m in gm.modules()):
            self.context.notes.append(
                Note(ALREADY_QUANTIZED, "equalize: the graph is already quantized; run equalize before "
                     "insert_fake_quant (its scales were computed from the weights it would change)")
            )  # fmt: skip
            return PassResult(gm, modified=False, stats={"skipped:already_quantized": 1})
        pairs, stats = self._find_pairs(gm)
        if not pairs:
            return PassResult(gm, modified=False, stats=dict(stats))
        weights = {name: _Weights.of(gm.get_submodule(name)) for p in pairs for name in (p.first, p.second)}
        spread_before = {
            name: eq.range_spread(eq.output_channel_ranges(w.weight)) for name, w in weights.items()
        }
        iterations, changed = self._balance(pairs, weights, gm)
        if not changed:
            stats["already_balanced"] = len(pairs)
            return PassResult(gm, modified=False, stats=dict(stats))
        if self.options.relu6 == "replace_with_relu":
            self._replace_clamps(gm, pairs, stats)
        for name, w in weights.items():
            w.store(gm.get_submodule(name))
        stats["pairs_equalized"], stats["iterations"] = len(pairs), iterations
        if self.options.absorb_high_bias:
            self._absorb_high_biases(gm, pairs, stats)
        self.context.tables["equalize"] = [
            {"layer": name, "spread_before": round(spread_before[name], 2),
             "spread_after": round(eq.range_spread(eq.output_channel_ranges(w.weight)), 2)}
            for name, w in weights.items()
        ]  # fmt: skip
        return PassResult(gm, modified=True, stats=dict(stats))

    def _find_pairs(self, gm: fx.GraphModule) -> tuple[list[LayerPair], Counter[str]]:
        stats: Counter[str] = Counter()
        sites = call_sites(gm)
        pairs = []
        for node in gm.graph.nodes:
            if not isinstance(module_of(gm, node), _LAYERS):
                continue
            found = _pair_from(gm, node, sites, allow_clamps=self.options.relu6 != "skip")
            if isinstance(found, str):
                stats[f"skipped:{found}"] += 1
            else:
                pairs.append(found)
        return pairs, stats

    def _balance(
        self, pairs: list[LayerPair], weights: dict[str, _Weights], gm: fx.GraphModule
    ) -> tuple[int, bool]:
        """Sweep the pairs until every scale is within tolerance of 1; return (sweeps, changed anything)."""
        limit = math.log1p(self.options.tolerance)
        cumulative = {
            p.first: torch.ones(weights[p.first].weight.shape[0], dtype=torch.float64) for p in pairs
        }
        sweeps = 0
        while sweeps < self.options.max_iterations:
            sweeps += 1
            largest = 0.0
            for pair in pairs:
                scales = weights[pair.first].equalize_with(
                    weights[pair.second], gm.get_submodule(pair.second)
                )
                cumulative[pair.first] *= scales
                largest = max(largest, float(scales.log().abs().max()))
            if largest < limit:
                break
        if all(float(s.log().abs().max()) < limit for s in cumulative.values()):
            return sweeps, False  # already balanced (a second run): leave the weights as they are
        for name, scales in cumulative.items():
            rescale_output_stats(gm, name, scales)
        return sweeps, True

    def _absorb_high_biases(self, gm: fx.GraphModule, pairs: list[LayerPair], stats: Counter[str]) -> None:
        """High-bias absorption over every pair with one ReLU between (:mod:`graphopt.quant.bias_absorption`),
        front to back: each pair's amount is measured with the earlier pairs' absorbed."""
        normals = batchnorm_output_stats(gm)
        data = self.context.calibration_data
        batches = list(data[:ABSORPTION_BATCHES]) if data else []
        if batches:
            gm.recompile()  # the graph runs below, with the ReLU6 already replaced

        rows = []
        for pair in pairs:
            first, second = gm.get_submodule(pair.first), gm.get_submodule(pair.second)
            if pair.path not in (("relu",), ("clamp",)) or not absorbs_padding_free(second):
                stats["skipped:absorption_path"] += 1  # no single ReLU between, or zero padding in the second
                continue
            if pair.first in normals:
                lower = normals[pair.first].mean - 3 * normals[pair.first].std
            elif batches:
                lower = smallest_output(gm, first, batches)
            else:
                stats["skipped:absorption_no_statistics"] += 1
                continue
            amount = lower.clamp(min=0)
            if not bool((amount > 0).any()):
                continue
            absorb(first, second, amount)
            shift_output_stats(gm, pair.first, -amount)
            stats["biases_absorbed"] += 1
            rows.append({"layer": pair.first, "channels": int((amount > 0).sum()),
                         "max_absorbed": float(f"{float(amount.max()):.4g}")})  # fmt: skip
        self.context.tables["equalize_absorbed"] = rows

    def _replace_clamps(self, gm: fx.GraphModule, pairs: list[LayerPair], stats: Counter[str]) -> None:
        replaced = []
        for clamp in (c for p in pairs for c in p.clamps):
            with gm.graph.inserting_after(clamp):
                relu = gm.graph.call_function(torch.relu, (clamp.args[0],))
            clamp.replace_all_uses_with(relu)
            replaced.append(clamp.name)
            gm.graph.erase_node(clamp)
        gm.delete_all_unused_submodules()
        stats["relu6_replaced"] = len(replaced)
        self.context.notes.append(
            Note(RELU6_REPLACED, f"equalize: {len(replaced)} ReLU6 replaced by ReLU (lossy where a "
                 f"pre-activation exceeds 6): {', '.join(replaced)}", nodes=tuple(replaced))
        )  # fmt: skip


@dataclass
class _Weights:
    """A layer's weight and bias in float64 while the sweeps run; stored back in the layer's dtype once."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, layer: nn.Module) -> _Weights:
        bias = layer.bias.detach().double() if layer.bias is not None else None
        return cls(layer.weight.detach().double(), bias)

    def equalize_with(self, second: _Weights, second_layer: nn.Module) -> torch.Tensor:
        """Balance this layer's output channels with ``second``'s input channels; return the scales."""
        groups = getattr(second_layer, "groups", 1)
        scales = eq.equalization_scales(
            eq.output_channel_ranges(self.weight), eq.input_channel_ranges(second.weight, groups)
        )
        self.weight = eq.scale_output_channels(self.weight, scales)
        if self.bias is not None:
            self.bias = self.bias / scales
        second.weight = eq.scale_input_channels(second.weight, scales, groups)
        return scales

    def store(self, layer: nn.Module) -> None:
        # New Parameters, not writes into the old ones: the exact-pass check keeps the previous stage as a
        # copy sharing its tensors.
        dtype = layer.weight.dtype
        layer.weight = nn.Parameter(self.weight.to(dtype), requires_grad=layer.weight.requires_grad)
        if self.bias is not None:
            layer.bias = nn.Parameter(self.bias.to(dtype), requires_grad=layer.bias.requires_grad)


def _pair_from(gm: fx.GraphModule, node: fx.Node, sites: Counter[str], allow_clamps: bool) -> LayerPair | str:
    """The pair ``node``'s layer starts, or why there is none."""
    first = module_of(gm, node)
    is_conv = isinstance(first, _CONVS)
    clamps: list[fx.Node] = []
    path: list[str] = []
    current = node
    while True:
        users = [u for u in current.users if not is_metadata_read(u)]
        if len(users) != 1:
            return "shared_output" if users else "no_next_layer"
        (user,) = users
        kind = _kind(gm, user) if user.args and user.args[0] is current else None
        if kind == "layer":
            return _check_pair(gm, node, user, sites, tuple(clamps), tuple(path))
        if kind == "clamp":
            if not allow_clamps:
                return "relu6"
            clamps.append(user)
        elif kind in ("pool", "flatten") and not is_conv:
            return "layout"  # pooling a linear's output runs over its features, not per feature
        elif kind is None:
            return "no_next_layer"
        path.append(kind)
        current = user


def _check_pair(
    gm: fx.GraphModule,
    node: fx.Node,
    user: fx.Node,
    sites: Counter[str],
    clamps: tuple[fx.Node, ...],
    path: tuple[str, ...],
) -> LayerPair | str:
    first, second = module_of(gm, node), module_of(gm, user)
    assert first is not None and second is not None
    if sites[str(node.target)] > 1 or sites[str(user.target)] > 1:
        return "shared_module"
    if first.weight.dim() != second.weight.dim() and not _classifier(first, second, user):
        return "layout"  # convs of other dimensions, or a linear reading more than the conv's channels
    in_channels = second.in_features if isinstance(second, nn.Linear) else second.in_channels
    if first.weight.shape[0] != in_channels:
        return "layout"
    return LayerPair(str(node.target), str(user.target), clamps, path)


def _classifier(first: nn.Module, second: nn.Module, user: fx.Node) -> bool:
    """Whether ``second`` is a linear reading the conv ``first``'s channels as its features: its input is
    ``(N, C)`` (the path to it, checked by :func:`_pair_from`, pools and drops unit axes only)."""
    shape = user.args[0].meta.get("shape") if isinstance(user.args[0], fx.Node) else None
    return (
        isinstance(first, _CONVS) and isinstance(second, nn.Linear) and shape is not None and len(shape) == 2
    )


def _kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """What ``node`` is to a per-channel scale: a layer, a ReLU or another op it commutes with (``pool``
    and ``flatten`` only on a conv's channel axis), a ReLU6-like clamp, or None (anything else, which ends
    the path)."""
    module = module_of(gm, node)
    if isinstance(module, nn.Flatten):
        return "flatten" if _drops_unit_axes(node) else None
    if module is not None:
        return _module_kind(module)
    if node.target in _FLATTEN_FUNCTIONS or (node.op == "call_method" and node.target in _FLATTEN_METHODS):
        return "flatten" if _drops_unit_axes(node) else None
    if node.target is torch.mean or (node.op == "call_method" and node.target == "mean"):
        return "pool" if _spatial_mean(node) else None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            return "relu"
        if node.target in _ELEMENTWISE_FUNCTIONS:
            return "elementwise"
        if node.target in _POOL_FUNCTIONS and not node.kwargs.get("return_indices", False):
            return "pool" if len(node.args) < 7 else None
        if node.target is F.relu6 or (node.target is F.hardtanh and _hardtanh_min(node) == 0):
            return "clamp"
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return "relu"
    return None


def _module_kind(module: nn.Module) -> str | None:
    if isinstance(module, _LAYERS):
        return "layer"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, _ELEMENTWISE_MODULES):
        return "elementwise"
    if isinstance(module, _POOL_MODULES):
        return "pool" if not getattr(module, "return_indices", False) else None
    if isinstance(module, nn.ReLU6) or (isinstance(module, nn.Hardtanh) and module.min_val == 0):
        return "clamp"
    return None


def _drops_unit_axes(node: fx.Node) -> bool:
    """Whether ``node`` turns ``(N, C, 1, ..., 1)`` into ``(N, C)`` (by the recorded shapes): channel ``i``
    stays feature ``i``, whatever the op (flatten, reshape, view, squeeze) and its arguments."""
    source = node.args[0] if node.args else None
    before = source.meta.get("shape") if isinstance(source, fx.Node) else None
    after = node.meta.get("shape")
    if before is None or after is None or len(before) < 2:
        return False
    return all(d == 1 for d in before[2:]) and tuple(after) == tuple(before[:2])


def _spatial_mean(node: fx.Node) -> bool:
    """Whether ``node`` (``torch.mean`` / ``Tensor.mean``) averages over spatial axes only (axis >= 2): per
    channel, so ``mean(a / s) = mean(a) / s``."""
    source = node.args[0] if node.args else None
    shape = source.meta.get("shape") if isinstance(source, fx.Node) else None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if shape is None or dims is None or "dtype" in node.kwargs:
        return False
    dims = [dims] if isinstance(dims, int) else list(dims)
    return bool(dims) and all(isinstance(d, int) and d % len(shape) >= 2 for d in dims)


def _hardtanh_min(node: fx.Node) -> object:
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
